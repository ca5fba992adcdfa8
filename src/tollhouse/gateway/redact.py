"""Keep secrets the gateway injected out of what the caller receives.

A caller with a gateway key (`th-...`) never holds the real provider key: the gateway puts it on the upstream
request. An upstream error that reflects the headers it received (some proxies and OpenAI-compatible servers
do) would hand it over. Every upstream response to a call where the gateway injected a key passes through
here: the secret is replaced by `[redacted]` in the body and the headers, whether it appears as sent, URL-
encoded, or inside base64 (e.g. `Basic` credentials or an encoded dump of the request) at any alignment. A
stream is redacted chunk by chunk with a carry-over window, so a secret split across chunks is caught too;
only a chunk's tail that could be the start of a secret is held back (until the next chunk or the end).

A route builds its Redactor once, at start-up (`ProviderRoute.redactor`); calls without an injected key pass
None and cost one comparison.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

from tollhouse.gateway.http import StreamTransport

MARK = b"[redacted]"
_MIN_SECRET = 8  # shorter "secrets" would redact ordinary text; provider keys are far longer


def _base64_cores(secret: bytes) -> set[bytes]:
    """The part of any base64 encoding of data containing `secret` that depends on the secret alone, for each
    of the three byte alignments it can start at (standard and URL-safe alphabets)."""
    cores: set[bytes] = set()
    n = len(secret)
    for pad in range(3):
        first = -(-8 * pad // 6)  # the first character holding no bit of the bytes before the secret
        last = 8 * (pad + n) // 6  # the characters after it hold bits of what follows
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            core = encode(b"\0" * pad + secret)[first:last]
            if len(core) >= _MIN_SECRET:
                cores.add(core)
    return cores


def forms(secret: str) -> set[bytes]:
    """Every byte string the secret is removed as: as is, URL-encoded, and its base64 cores."""
    raw = secret.encode()
    every_byte = "".join(f"%{b:02X}" for b in raw)  # some encoders escape every byte, letters included
    found = {raw, quote(secret, safe="").encode(), quote_plus(secret, safe="").encode(), every_byte.encode(),
             every_byte.lower().encode(), *_base64_cores(raw)}
    return {f for f in found if len(f) >= _MIN_SECRET}


class Redactor:
    """Removes the given secrets (in all their forms) from response bytes and headers."""

    __slots__ = ("_forms", "_pattern", "_text_pattern", "window")

    def __init__(self, secrets: Iterable[str]) -> None:
        found: set[bytes] = set()
        for secret in secrets:
            if secret:
                found |= forms(secret)
        self._forms = tuple(sorted(found, key=len, reverse=True))  # the longest form wins where several match
        self._pattern = re.compile(b"|".join(re.escape(f) for f in self._forms)) if self._forms else None
        self._text_pattern = (re.compile("|".join(re.escape(f.decode("latin-1")) for f in self._forms))
                              if self._forms else None)
        self.window = max((len(f) for f in self._forms), default=1) - 1  # the most a chunk may hold back

    def scrub(self, data: bytes) -> bytes:
        if self._pattern is None:
            return data
        return self._pattern.sub(MARK, data)

    def scrub_text(self, value: str) -> str:
        if self._text_pattern is None:
            return value
        return self._text_pattern.sub(MARK.decode(), value)

    def scrub_headers(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [(name, self.scrub_text(value)) for name, value in headers]

    def held_back(self, data: bytes) -> int:
        """How many bytes at the end of `data` could be the beginning of a secret (0 almost always)."""
        hold = 0
        size = len(data)
        for form in self._forms:
            start = max(0, size - len(form) + 1)
            i = data.find(form[:1], start)
            while i != -1:
                if form.startswith(data[i:]):
                    hold = max(hold, size - i)
                    break
                i = data.find(form[:1], i + 1)
        return hold


class StreamRedactor:
    """One stream's redaction state: feed chunks in order, then `finish()` for what was held back."""

    __slots__ = ("_carry", "_redactor")

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._carry = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._redactor.scrub(self._carry + chunk if self._carry else chunk)
        hold = self._redactor.held_back(data)
        if hold:
            self._carry = data[-hold:]
            return data[:-hold]
        self._carry = b""
        return data

    def finish(self) -> bytes:
        tail, self._carry = self._carry, b""
        return tail  # already redacted: a partial secret that never completed is not the secret


class RedactedStream:
    """A response stream whose every chunk is redacted; `flush()` sends what a chunk's tail held back."""

    __slots__ = ("_inner", "_state")

    def __init__(self, inner: StreamTransport, redactor: Redactor) -> None:
        self._inner = inner
        self._state = StreamRedactor(redactor)

    async def send_bytes(self, data: bytes) -> None:
        out = self._state.feed(data)
        if out:
            await self._inner.send_bytes(out)

    async def flush(self) -> None:
        tail = self._state.finish()
        if tail:
            await self._inner.send_bytes(tail)

    def end(self) -> None:
        self._inner.end()


# What the request path calls, with the redactor of the key the gateway injected (None when it injected none:
# then each is one comparison and returns its input unchanged).

def body(data: bytes, redactor: Redactor | None) -> bytes:
    return data if redactor is None else redactor.scrub(data)


def headers(items: list[tuple[str, str]], redactor: Redactor | None) -> list[tuple[str, str]]:
    return items if redactor is None else redactor.scrub_headers(items)


def stream(transport: StreamTransport, redactor: Redactor | None) -> StreamTransport:
    return transport if redactor is None else RedactedStream(transport, redactor)


async def flush(transport: StreamTransport) -> None:
    """Send what a redacted stream still holds (nothing for any other transport)."""
    if isinstance(transport, RedactedStream):
        await transport.flush()

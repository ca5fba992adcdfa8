"""Incremental Server-Sent Events parser (a protocol layer: bytes in, events out, no I/O).

Follows the WHATWG event-stream rules that matter for LLM APIs: lines end in LF, CRLF or CR;
an empty line dispatches the event; `data` lines join with LF; comment lines start with ':'.
Each event also keeps its raw bytes so a proxy can forward or drop it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str
    data: bytes
    raw: bytes


class SseParser:
    __slots__ = ("_buf", "_max")

    def __init__(self, max_event_bytes: int = 16 * 1024 * 1024) -> None:
        self._buf = b""
        self._max = max_event_bytes

    @property
    def pending(self) -> bytes:
        """Bytes received that do not yet form a complete event."""
        return self._buf

    def feed(self, chunk: bytes) -> list[SseEvent]:
        buf = self._buf + chunk if self._buf else chunk
        events: list[SseEvent] = []
        start = 0
        n = len(buf)
        while True:
            end, sep_len = _find_blank_line(buf, start)
            if end < 0:
                break
            raw = buf[start : end + sep_len]
            events.append(_parse_block(buf[start:end], raw))
            start = end + sep_len
        rest = buf[start:] if start < n else b""
        if len(rest) > self._max:
            # A peer that never ends an event: keep memory bounded, drop what cannot be parsed.
            rest = b""
        self._buf = rest
        return events


def _find_blank_line(buf: bytes, start: int) -> tuple[int, int]:
    """Index where the event block ends and the length of the separator, or (-1, 0)."""
    best = -1
    best_len = 0
    for sep in (b"\n\n", b"\r\n\r\n", b"\r\r"):
        i = buf.find(sep, start)
        if i >= 0 and (best < 0 or i < best):
            best, best_len = i, len(sep)
    if best >= 0:
        # "\r\n\n" and "\n\r\n" are blank lines too.
        for sep in (b"\r\n\n", b"\n\r\n"):
            i = buf.find(sep, start, best + best_len)
            if i >= 0 and i < best:
                best, best_len = i, len(sep)
    return best, best_len


def _parse_block(block: bytes, raw: bytes) -> SseEvent:
    event = ""
    data: list[bytes] = []
    for line in block.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        field, sep, value = line.partition(b":")
        if sep and value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            event = value.decode("utf-8", "replace")
    return SseEvent(event=event, data=b"\n".join(data), raw=raw)

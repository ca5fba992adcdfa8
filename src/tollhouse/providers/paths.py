"""Request paths as the gateway judges them, and exactly as it forwards them.

A path is split into segments, each segment percent-decoded (so `%2F` becomes a separator, `%2e%2e` a
dot segment), empty and `.` segments dropped, `..` resolved, and the result re-encoded in one canonical
form: the characters a path segment may carry literally stay literal, everything else is `%XX`
(upper-case hex, UTF-8). The upstream decodes the canonical form back to exactly the segments the gateway
classified, so what was judged is what is forwarded.

Case is kept: ids, deployment and model names in paths are case-sensitive. Classification matches
case-insensitively instead (see `classify`).
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

# pchar minus '%' and '/': unreserved (letters, digits, -._~, which quote never escapes) + sub-delims + ':@'
_SEGMENT_SAFE = "!$&'()*+,;=:@"
_HEX = frozenset("0123456789abcdefABCDEF")
# A path with none of these is canonical already (apart from a trailing slash): the common case, kept fast.
_NOT_PLAIN = re.compile(r"[^A-Za-z0-9\-._~!$&'()*+,;=:@/]|//|/\.")


class PathError(ValueError):
    """A request path the gateway refuses to judge: it leaves its root, or does not decode cleanly.
    The message says what is wrong; it is safe to show the caller."""


def _check_escapes(raw: str) -> None:
    i = raw.find("%")
    while i != -1:
        if i + 2 >= len(raw) or raw[i + 1] not in _HEX or raw[i + 2] not in _HEX:
            raise PathError(f"the path {raw!r} has a malformed percent-escape at character {i} "
                            "(write '%' as %25)")
        i = raw.find("%", i + 3)


def _decode(raw_segment: str, raw: str) -> str:
    if "%" not in raw_segment:
        return raw_segment
    try:
        return unquote(raw_segment, errors="strict")
    except UnicodeDecodeError:
        raise PathError(f"the path {raw!r} percent-encodes bytes that are not UTF-8") from None


def segments(raw: str) -> list[str]:
    """The decoded segments of a raw (percent-encoded) path, before dot segments are resolved.
    Raises PathError for what no API path carries: control characters, backslashes, bad escapes."""
    if not raw.startswith("/"):
        raise PathError(f"the path {raw!r} must start with '/'")
    _check_escapes(raw)
    out: list[str] = []
    for raw_segment in raw.split("/"):
        decoded = _decode(raw_segment, raw)
        if any(c < " " or c in "\x7f\\" for c in decoded):
            raise PathError(f"the path {raw!r} carries a control character or a backslash, which no provider "
                            "API path has")
        out.extend(s for s in decoded.split("/") if s and s != ".")
    return out


def resolve(parts: list[str], raw: str) -> list[str]:
    """Resolve `..` segments (the list has no empty or `.` segments left); refuse to climb above the root."""
    stack: list[str] = []
    for part in parts:
        if part == "..":
            if not stack:
                raise PathError(f"the path {raw!r} climbs above its root with '..'; send the path the API "
                                "documents, without dot segments")
            stack.pop()
        else:
            stack.append(part)
    return stack


def encode(parts: list[str]) -> str:
    """The canonical path of decoded segments."""
    return "/" + "/".join(quote(p, safe=_SEGMENT_SAFE) for p in parts)


def normalise_path(raw: str) -> str:
    """The canonical form of a raw request path (the part before any '?').

    Percent-escapes are decoded (`%2F` is a separator), duplicate slashes, `.` segments and a trailing
    slash are dropped, `..` is resolved; a path that climbs above '/' raises PathError. Idempotent:
    normalise_path(normalise_path(p)) == normalise_path(p)."""
    if raw.startswith("/") and _NOT_PLAIN.search(raw) is None:
        return "/" + raw[1:].rstrip("/")
    return encode(resolve(segments(raw), raw))


def split_provider(raw_path: str) -> tuple[str, str]:
    """(provider id, normalised tail) of a gateway path `/{provider}/...`, from the path as sent.

    The provider segment is decoded like every other (`/%6Fpenai/...` is openai's), and the tail's root is
    the provider prefix: `/groq/../x` raises PathError rather than leave it. The tail is what the gateway
    classifies and exactly what it forwards upstream (after the upstream's own base path)."""
    if raw_path.startswith("/") and _NOT_PLAIN.search(raw_path) is None:
        provider, _, tail = raw_path[1:].rstrip("/").partition("/")
        if provider:
            return provider, "/" + tail
    parts = segments(raw_path)
    if not parts or parts[0] == "..":
        raise PathError(f"the path {raw_path!r} names no provider; Tollhouse proxies /{{provider}}/..., "
                        "e.g. /openai/v1/chat/completions")
    return parts[0], encode(resolve(parts[1:], raw_path))


def decoded(normalised: str) -> str:
    """The decoded form of a canonical path (what model names in paths are read from)."""
    return unquote(normalised) if "%" in normalised else normalised

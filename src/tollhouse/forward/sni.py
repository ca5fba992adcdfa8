"""The server name (SNI) a TLS client asks for, read from its first bytes (the ClientHello), without decrypting
anything: what a tunnel to an address, or to a name other than the one it CONNECTed to, is really for."""

from __future__ import annotations

_HANDSHAKE, _CLIENT_HELLO, _SNI, _HOST_NAME = 0x16, 0x01, 0x0000, 0x00


def _u16(data: bytes, at: int) -> int:
    return int.from_bytes(data[at:at + 2], "big")


def server_name(data: bytes) -> str | None:
    """The SNI host name in a ClientHello at the start of `data` (in its first record), or None (not TLS, no SNI,
    or the hello does not fit in what is there)."""
    if len(data) < 5 or data[0] != _HANDSHAKE or data[1] != 0x03:
        return None
    end = min(len(data), 5 + _u16(data, 3))
    at = 5
    if end < at + 4 or data[at] != _CLIENT_HELLO:
        return None
    at += 4 + 2 + 32  # handshake header, client version, random
    if at >= end:
        return None
    at += 1 + data[at]  # session id
    at += 2 + _u16(data, at)  # cipher suites
    if at >= end:
        return None
    at += 1 + data[at]  # compression methods
    if at + 2 > end:
        return None
    extensions_end = min(end, at + 2 + _u16(data, at))
    at += 2
    while at + 4 <= extensions_end:
        kind, size = _u16(data, at), _u16(data, at + 2)
        at += 4
        if kind == _SNI and at + 5 <= extensions_end and data[at + 2] == _HOST_NAME:
            length = _u16(data, at + 3)
            name = data[at + 5:at + 5 + length]
            if len(name) != length:
                return None
            try:
                return name.decode("ascii").lower().rstrip(".")
            except UnicodeDecodeError:
                return None
        at += size
    return None

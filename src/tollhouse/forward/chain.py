"""A tunnel's upstream end reached through the organisation's own HTTP proxy (`upstream_proxy`): one CONNECT to
it, then the bytes flow as on a direct connection. Only http:// proxies (the usual corporate egress proxy)."""

from __future__ import annotations

import asyncio
import base64
from typing import cast
from urllib.parse import unquote, urlsplit

MAX_HEAD = 16 * 1024


class ChainError(OSError):
    """The upstream proxy could not be used or refused the tunnel; the message says which and why."""


class _HeadReader(asyncio.Protocol):
    """Reads the proxy's answer to our CONNECT (up to its blank line); then the tunnel's end takes over."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.done: asyncio.Future[bytes] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end >= 0 and not self.done.done():
            assert self.transport is not None
            self.transport.pause_reading()
            self.done.set_result(bytes(self.buffer[:end]))
            del self.buffer[:end + 4]
        elif len(self.buffer) > MAX_HEAD and not self.done.done():
            self.done.set_exception(ChainError(f"the upstream proxy's answer exceeds {MAX_HEAD} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ChainError("the upstream proxy closed the connection before answering"))


def _authorization(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.username is None:
        return None
    secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
    return "Basic " + base64.b64encode(secret).decode()


async def connect_via(loop: asyncio.AbstractEventLoop, proxy_url: str, host: str, port: int,
                      end: asyncio.Protocol, timeout_s: float) -> asyncio.Transport:
    """A transport to host:port through `proxy_url`, handed to `end` (its connection_made called). Raises
    ChainError or OSError; TimeoutError past `timeout_s`."""
    parts = urlsplit(proxy_url)
    if parts.scheme != "http" or not parts.hostname:
        raise ChainError(f"upstream_proxy {parts.scheme}://{parts.hostname}: tunnels go through http:// proxies "
                         "only")
    reader = _HeadReader(loop)
    async with asyncio.timeout(timeout_s):
        transport, _ = await loop.create_connection(lambda: reader, parts.hostname, parts.port or 80)
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        auth = _authorization(proxy_url)
        transport.write((f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
                         + (f"Proxy-Authorization: {auth}\r\n" if auth else "") + "\r\n").encode("latin-1"))
        try:
            head = await reader.done
        except BaseException:
            transport.abort()
            raise
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1", "replace")
    fields = status_line.split(" ", 2)
    if len(fields) < 2 or fields[1] != "200":
        transport.abort()
        raise ChainError(f"the upstream proxy {parts.hostname}:{parts.port or 80} refused the tunnel to "
                         f"{authority}: {status_line[:200]}")
    transport.set_protocol(end)
    end.connection_made(transport)
    if reader.buffer:
        end.data_received(bytes(reader.buffer))
    transport.resume_reading()
    return transport

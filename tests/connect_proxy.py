"""A tiny HTTP proxy for tests, served from a background thread: CONNECT tunnels (how clients reach https
origins through a corporate proxy) and absolute-form requests (how they reach http origins), with optional
Basic proxy authentication. It records what went through it.

    with ConnectProxy() as proxy:              # or ConnectProxy(auth=("svc", "s3cret"))
        client_configured_with(proxy.url)      # http://127.0.0.1:PORT (proxy.url_with_auth for credentials)
        ...
        assert proxy.tunnels == ["127.0.0.1:8443"]       # CONNECT targets
        assert proxy.requests == ["POST http://127.0.0.1:8787/api/v1/agent/events"]
        assert proxy.refused == 0                           # 407s (missing or wrong credentials)
"""

from __future__ import annotations

import asyncio
import base64
from urllib.parse import urlsplit

from loopback_server import LoopbackServer, pipe

_HOP = (b"proxy-authorization", b"proxy-connection", b"connection", b"keep-alive")


class ConnectProxy(LoopbackServer):
    def __init__(self, auth: tuple[str, str] | None = None) -> None:
        super().__init__("connect-proxy")
        self._auth = auth
        self.tunnels: list[str] = []
        self.requests: list[str] = []
        self.refused = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url_with_auth(self) -> str:
        user, password = self._auth or ("", "")
        return f"http://{user}:{password}@127.0.0.1:{self.port}"

    def _authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        if self._auth is None:
            return True
        expected = b"Basic " + base64.b64encode(f"{self._auth[0]}:{self._auth[1]}".encode())
        return any(name == b"proxy-authorization" and value == expected for name, value in headers)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # one connection may carry several absolute-form requests
                head = await _read_head(reader)
                if head is None:
                    return
                method, target, headers = head
                if not self._authorized(headers):
                    self.refused += 1
                    writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                                 b"Proxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n")
                    await writer.drain()
                    continue
                if method == "CONNECT":
                    self.tunnels.append(target)
                    await self._tunnel(target, reader, writer)
                    return
                self.requests.append(f"{method} {target}")
                await self._forward(method, target, headers, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def _tunnel(self, target: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, _, port = target.rpartition(":")
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return
        writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        await writer.drain()
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def _forward(self, method: str, target: str, headers: list[tuple[bytes, bytes]],
                       reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One request to an http origin over a fresh connection (closed after it), its answer relayed."""
        parts = urlsplit(target)
        length = int(next((v for n, v in headers if n == b"content-length"), b"0"))
        body = await reader.readexactly(length) if length else b""
        try:
            up_reader, up_writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"{method} {path} HTTP/1.1".encode()]
        lines += [n + b": " + v for n, v in headers if n not in _HOP]
        up_writer.write(b"\r\n".join([*lines, b"Connection: close", b"", b""]) + body)
        await up_writer.drain()
        status_and_headers = await up_reader.readuntil(b"\r\n\r\n")
        size = next((line.split(b":", 1)[1] for line in status_and_headers.lower().split(b"\r\n")
                     if line.startswith(b"content-length:")), None)
        # with a length, exactly that much; without one the origin ends the answer by closing (Connection: close)
        rest = await up_reader.readexactly(int(size)) if size is not None else await up_reader.read()
        up_writer.close()
        writer.write(status_and_headers + rest)
        await writer.drain()


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str, list[tuple[bytes, bytes]]] | None:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = raw[:-4].split(b"\r\n")
    method, target, _ = lines[0].decode("latin-1").split(" ", 2)
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.strip().lower(), value.strip()))
    return method, target, headers

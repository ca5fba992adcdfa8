"""An HTTP/1.1 server that runs handlers in the event loop's own thread (asyncio + llhttp).

llhttp (through httptools) parses; this module keeps connections: keep-alive, pipelined requests answered in
order, request bodies handed to the handler as they arrive (with back-pressure), responses whole
(content-length) or streamed (chunked), `Expect: 100-continue`, and limits on header size and idle time.
Each request reaches the handler as (`Head`, `Exchange`), where the exchange offers the handler the small
protocol `tollhouse.gateway.http.HTTPProtocol` describes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import unquote

import httptools

log = logging.getLogger("tollhouse.server")

__all__ = ["Exchange", "Head", "HttpServer", "ProtocolClosed"]


class ProtocolClosed(Exception):
    """The client's connection is gone: nothing more can be sent to it."""


_REASONS = {s.value: s.phrase for s in HTTPStatus}
_MAX_HEAD_BYTES = 64 * 1024
_BODY_HIGH_WATER = 1 << 20  # body bytes buffered ahead of the handler before we stop reading
_MAX_PIPELINED = 16


class Headers:
    """Request headers in arrival order; names in lower case. `get` is case-insensitive; repeated
    headers are joined with ', ' (RFC 9110 §5.3)."""

    __slots__ = ("_items", "_map")

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items
        self._map: dict[str, str] | None = None

    def get(self, key: str, default: Any = None) -> Any:
        m = self._map
        if m is None:
            m = {}
            for name, value in self._items:
                m[name] = f"{m[name]}, {value}" if name in m else value
            self._map = m
        return m.get(key.lower(), default)

    def items(self) -> list[tuple[str, str]]:
        return self._items

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


class Head:
    """The request line and headers."""

    __slots__ = ("headers", "method", "path", "query_string", "raw_path")

    def __init__(self, method: str, raw_path: str, query_string: str, headers: Headers) -> None:
        self.method = method
        self.raw_path = raw_path  # as sent (still percent-encoded): what a proxy forwards
        self.path = unquote(raw_path) if "%" in raw_path else raw_path
        self.query_string = query_string
        self.headers = headers


Handler = Callable[[Head, "Exchange"], Awaitable[None]]


class _Stream:
    """A chunked response body."""

    __slots__ = ("_conn",)

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn

    async def send_bytes(self, data: bytes) -> None:
        conn = self._conn
        if conn.closed:
            raise ProtocolClosed("the client disconnected")
        if not data:
            return
        assert conn.transport is not None
        conn.transport.write(b"%x\r\n%b\r\n" % (len(data), data) if conn.chunked_out else data)
        if conn.write_paused:
            await conn.drained()


class Exchange:
    """One request's body and its one response."""

    __slots__ = ("_body", "_body_done", "_body_size", "_conn", "_waiter", "expect_continue", "http11",
                 "keep_alive", "responded", "streamed")

    def __init__(self, conn: _Connection, keep_alive: bool, expect_continue: bool) -> None:
        self._conn = conn
        self._body: deque[bytes] = deque()
        self._body_done = False
        self._body_size = 0
        self._waiter: asyncio.Future[None] | None = None
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.http11 = True  # the request's HTTP version, taken when its head is parsed
        self.responded = False
        self.streamed = False

    # --- the request body ---

    def _feed(self, data: bytes) -> None:
        self._body.append(data)
        self._body_size += len(data)
        self._wake()

    def _end(self) -> None:
        self._body_done = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _more(self) -> None:
        conn = self._conn
        if conn.closed:
            raise ProtocolClosed("the client disconnected before sending the whole body")
        if self.expect_continue:
            self.expect_continue = False
            assert conn.transport is not None
            conn.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        conn.resume_reading()
        self._waiter = conn.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _take(self) -> bytes:
        data = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        self._body.clear()
        self._body_size = 0
        return data

    async def __call__(self) -> bytes:
        """The whole body."""
        parts: list[bytes] = []
        while not self._body_done:
            if self._body:
                parts.append(self._take())
            await self._more()
        if self._body:
            parts.append(self._take())
        self._conn.resume_reading()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        while True:
            if self._body:
                yield self._take()
                continue
            if self._body_done:
                return
            await self._more()

    async def client_disconnect(self) -> None:
        await self._conn.lost_future()

    def client_address(self) -> str | None:
        """The peer's IP address (None if the connection is gone or not over IP)."""
        transport = self._conn.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        return str(peer[0]) if isinstance(peer, tuple) and peer else None

    # --- the response ---

    def _head(self, status: int, headers: list[tuple[str, str]], length: int | None) -> str:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in headers]
        if length is not None:
            lines.append(f"content-length: {length}\r\n")
        if not self.keep_alive:
            lines.append("connection: close\r\n")
        lines.append("\r\n")
        return "".join(lines)

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        conn = self._conn
        if self.responded:
            raise RuntimeError("this request was already answered")
        self.responded = True
        if conn.closed:
            return
        if not self._body_done:
            self.keep_alive = False  # the rest of an unread body would be taken for the next request
        head = self._head(status, headers, len(body)).encode("latin-1")
        assert conn.transport is not None
        conn.transport.write(head + body if body and not conn.head_request else head)

    def response_stream(self, status: int, headers: list[tuple[str, str]]) -> _Stream:
        conn = self._conn
        if self.responded:
            raise RuntimeError("this request was already answered")
        self.responded = self.streamed = True
        if not self._body_done:
            self.keep_alive = False
        if conn.closed:
            return _Stream(conn)
        conn.chunked_out = conn.http11 and not conn.head_request
        if not conn.chunked_out:
            self.keep_alive = False  # an HTTP/1.0 client reads the body until the connection closes
        extra = [("transfer-encoding", "chunked")] if conn.chunked_out else []
        assert conn.transport is not None
        conn.transport.write(self._head(status, [*headers, *extra], None).encode("latin-1"))
        return _Stream(conn)


class _Connection(asyncio.Protocol):
    __slots__ = ("_current", "_disconnected", "_drain", "_exchange", "_handler", "_head_bytes", "_head_raw",
                 "_headers", "_in_head", "_pending", "_read_paused", "_server", "_url", "chunked_out", "closed",
                 "head_request", "http11", "last_active", "loop", "parser", "transport", "write_paused")

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._handler = server.handler
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._head_bytes = 0
        self._head_raw = 0  # bytes of whole reads that arrived while the current head was incomplete
        self._in_head = False
        self._exchange: Exchange | None = None  # the request being parsed
        self._current: asyncio.Task[None] | None = None  # the handler answering the oldest request
        self._pending: deque[tuple[Head, Exchange]] = deque()  # pipelined requests waiting their turn
        self._read_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._disconnected: asyncio.Future[None] | None = None
        self.closed = False
        self.write_paused = False
        self.chunked_out = False
        self.head_request = False
        self.http11 = True
        self.last_active = self.loop.time()

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not registered subclasses
        self._server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.last_active = self.loop.time()
        try:
            if self._in_head:  # llhttp holds a header line until it ends: bound what a head may make it hold
                self._head_raw += len(data)
            self.parser.feed_data(data)
            if self._in_head and self._head_raw > _MAX_HEAD_BYTES:
                raise _HeadTooLarge
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not supported here")
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):  # raised in a callback: httptools wraps it
                self._refuse(431, f"request line and headers exceed {_MAX_HEAD_BYTES} bytes")
            else:
                self._refuse(400, f"malformed HTTP request: {exc}")
        except _HeadTooLarge:
            self._refuse(431, f"request line and headers exceed {_MAX_HEAD_BYTES} bytes")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._server.connections.discard(self)
        if self._disconnected is not None and not self._disconnected.done():
            self._disconnected.set_result(None)
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        exchange = self._exchange
        if exchange is not None:
            exchange._wake()  # a handler waiting for more body finds the connection closed
        self._pending.clear()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    async def drained(self) -> None:
        if self.closed:
            raise ProtocolClosed("the client disconnected")
        self._drain = self.loop.create_future()
        await self._drain
        if self.closed:
            raise ProtocolClosed("the client disconnected")

    def lost_future(self) -> asyncio.Future[None]:
        if self._disconnected is None:
            self._disconnected = self.loop.create_future()
            if self.closed:
                self._disconnected.set_result(None)
        return self._disconnected

    def resume_reading(self) -> None:
        if self._read_paused and not self.closed:
            self._read_paused = False
            assert self.transport is not None
            self.transport.resume_reading()

    def _pause_reading(self) -> None:
        if not self._read_paused and not self.closed:
            self._read_paused = True
            assert self.transport is not None
            self.transport.pause_reading()

    def _refuse(self, status: int, message: str) -> None:
        if self.closed:
            return
        body = json.dumps({"error": {"message": message, "code": "bad_request"}}).encode()
        assert self.transport is not None
        if self._current is None:  # nothing is mid-answer on this connection: say why before closing
            self.transport.write(f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: application/json\r\n"
                                 f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body)
        self.transport.close()
        self.closed = True

    # --- llhttp callbacks ---

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._head_bytes = 0
        self._head_raw = 0
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > _MAX_HEAD_BYTES:
            raise _HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > _MAX_HEAD_BYTES:
            raise _HeadTooLarge
        self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        parser = self.parser
        method = parser.get_method().decode("latin-1")
        url = self._url.decode("latin-1")
        path, _, query = url.partition("?")
        headers = Headers(self._headers)
        self._in_head = False
        exchange = Exchange(self, parser.should_keep_alive(), self._expects_continue())
        exchange.http11 = parser.get_http_version() == "1.1"  # by its turn the parser may be on a later request
        self._exchange = exchange
        head = Head(method, path, query, headers)
        if self._current is None:
            self._run(head, exchange)
        else:
            self._pending.append((head, exchange))
            if len(self._pending) >= _MAX_PIPELINED:
                self._pause_reading()

    def _expects_continue(self) -> bool:
        for name, value in self._headers:
            if name == "expect":
                return value.lower() == "100-continue"
        return False

    def on_body(self, body: bytes) -> None:
        exchange = self._exchange
        if exchange is not None:
            exchange._feed(body)
            if exchange._body_size > _BODY_HIGH_WATER:
                self._pause_reading()

    def on_message_complete(self) -> None:
        exchange = self._exchange
        if exchange is not None:
            exchange._end()
            self._exchange = None

    # --- running handlers, one at a time, in order ---

    def _run(self, head: Head, exchange: Exchange) -> None:
        self.head_request = head.method == "HEAD"
        self.http11 = exchange.http11
        self.chunked_out = False
        self._current = task = self.loop.create_task(self._serve(head, exchange))
        self._server.in_flight.add(task)
        task.add_done_callback(self._server.in_flight.discard)

    async def _serve(self, head: Head, exchange: Exchange) -> None:
        try:
            await self._handler(head, exchange)
        except ProtocolClosed:
            pass
        except Exception:
            log.exception("unhandled error answering %s %s", head.method, head.path)
            if not exchange.responded:
                exchange.keep_alive = False
                exchange.response_bytes(500, [("content-type", "application/json")],
                                        b'{"error": {"message": "internal error", "code": "internal_error"}}')
        finally:
            self._finish(exchange)

    def _finish(self, exchange: Exchange) -> None:
        self._current = None
        if self.closed:
            return
        transport = self.transport
        assert transport is not None
        if not exchange.responded:
            exchange.keep_alive = False
            exchange.response_bytes(500, [("content-type", "application/json")],
                                    b'{"error": {"message": "no response", "code": "internal_error"}}')
        elif exchange.streamed and self.chunked_out:
            transport.write(b"0\r\n\r\n")
        if not exchange.keep_alive or self._server.stopping:
            transport.close()
            self.closed = True
            return
        if self._pending:
            head, nxt = self._pending.popleft()
            self._run(head, nxt)
        self.resume_reading()


class _HeadTooLarge(Exception):
    pass


class HttpServer:
    """Listens on host:port and answers every request with `handler(head, exchange)`."""

    def __init__(self, handler: Handler, *, keepalive_timeout_s: float = 75.0, head_timeout_s: float = 30.0
                 ) -> None:
        self.handler = handler
        self.loop = asyncio.get_running_loop()
        self.connections: set[_Connection] = set()
        self.in_flight: set[asyncio.Task[None]] = set()
        self.stopping = False
        self._keepalive_timeout_s = keepalive_timeout_s
        self._head_timeout_s = head_timeout_s
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        """Listen; returns the port (useful with port 0)."""
        self._server = await self.loop.create_server(lambda: _Connection(self), host, port, backlog=1024,
                                                     reuse_port=reuse_port or None)
        self._sweeper = self.loop.create_task(self._sweep(), name="tollhouse-http-idle")
        sock = self._server.sockets[0]
        return int(sock.getsockname()[1])

    async def _sweep(self) -> None:
        """Close connections idle past the keep-alive timeout (and ones that never finish their headers)."""
        while True:
            await asyncio.sleep(min(5.0, self._keepalive_timeout_s / 2))
            now = self.loop.time()
            for conn in list(self.connections):
                if conn._current is not None or conn.transport is None:
                    continue
                limit = self._head_timeout_s if conn._in_head else self._keepalive_timeout_s
                if now - conn.last_active > limit:
                    conn.transport.close()

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop listening, let calls in flight finish (up to `grace_s`), then close every connection."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            if conn._current is None and conn.transport is not None:
                conn.transport.close()
        if self.in_flight:
            await asyncio.wait(list(self.in_flight), timeout=grace_s)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        for task in list(self.in_flight):
            task.cancel()

"""An HTTP/1.1 server that runs handlers in the event loop's own thread (asyncio + llhttp).

llhttp (through httptools) parses; this module keeps connections: keep-alive, pipelined requests answered in
order, request bodies handed to the handler as they arrive (with back-pressure), responses whole
(content-length) or streamed (chunked), `Expect: 100-continue`, and the bounds of `ServerLimits`: head size
and header count, absolute deadlines for a request's head and body, an idle keep-alive timeout, a write
deadline for clients that stop reading, and a cap on open connections. Deadlines are checked by one sweeper
per server over timestamps the connections keep (no timer per request).
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

from tollhouse.wire.limits import ServerLimits, default_max_connections, raise_fd_limit

log = logging.getLogger("tollhouse.server")

__all__ = ["Exchange", "Head", "HttpServer", "ProtocolClosed", "ServerLimits"]


class ProtocolClosed(Exception):
    """The client's connection is gone: nothing more can be sent to it."""


_REASONS = {s.value: s.phrase for s in HTTPStatus}
_NEVER = float("inf")
_WRITE_PROGRESS = 64 * 1024  # what a client must read per write_timeout_s while its connection is backed up
_JSON = [("content-type", "application/json")]
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

    __slots__ = ("_conn", "_exchange")

    def __init__(self, conn: _Connection, exchange: Exchange) -> None:
        self._conn = conn
        self._exchange = exchange

    async def send_bytes(self, data: bytes) -> None:
        conn = self._conn
        if conn.closed:
            raise ProtocolClosed("the client disconnected")
        if not data:
            return
        assert conn.transport is not None
        if self._exchange.ended:
            raise RuntimeError("this response's body was already ended")
        conn.transport.write(b"%x\r\n%b\r\n" % (len(data), data) if conn.chunked_out else data)
        if conn.write_paused:
            await conn.drained()

    def end(self) -> None:
        """The body is complete: the client gets its end now, not when the handler returns, and a client that
        hangs up from here no longer cancels the handler (it may still be finishing its work on the call). An
        HTTP/1.0 body ends when the connection closes, after the handler."""
        self._exchange.end_body()


class Exchange:
    """One request's body and its one response."""

    __slots__ = ("_body", "_body_done", "_body_size", "_conn", "_waiter", "ended", "expect_continue", "http11",
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
        self.ended = False  # a streamed body's end was sent (`_Stream.end`)

    def end_body(self) -> None:
        """Send the end of a chunked (streamed) body, once: `_Stream.end`, or when the handler returns."""
        conn = self._conn
        if self.ended or not self.streamed or not conn.chunked_out:
            return
        self.ended = True
        if not conn.closed:
            assert conn.transport is not None
            conn.transport.write(b"0\r\n\r\n")

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

    @property
    def client_gone(self) -> bool:
        """The client's connection is closed (a handler cancelled by the server can tell why)."""
        return self._conn.closed

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
        if conn.closed:  # (the server may have answered it already: 408 to a body that stopped coming)
            self.responded = True
            return
        if self.responded:
            raise RuntimeError("this request was already answered")
        self.responded = True
        if not self._body_done:
            self.keep_alive = False  # the rest of an unread body would be taken for the next request
        head = self._head(status, headers, len(body)).encode("latin-1")
        assert conn.transport is not None
        conn.transport.write(head + body if body and not conn.head_request else head)

    def response_stream(self, status: int, headers: list[tuple[str, str]]) -> _Stream:
        conn = self._conn
        if conn.closed:
            self.responded = self.streamed = True
            return _Stream(conn, self)
        if self.responded:
            raise RuntimeError("this request was already answered")
        self.responded = self.streamed = True
        if not self._body_done:
            self.keep_alive = False
        conn.chunked_out = conn.http11 and not conn.head_request
        if not conn.chunked_out:
            self.keep_alive = False  # an HTTP/1.0 client reads the body until the connection closes
        extra = [("transfer-encoding", "chunked")] if conn.chunked_out else []
        assert conn.transport is not None
        conn.transport.write(self._head(status, [*headers, *extra], None).encode("latin-1"))
        return _Stream(conn, self)


DISCONNECT_GRACE_S = 0.25


def _cancel_if_running(task: asyncio.Task[None]) -> None:
    if not task.done():
        task.cancel()


class _Connection(asyncio.Protocol):
    __slots__ = ("_current", "_disconnected", "_drain", "_exchange", "_handler", "_head_bytes", "_head_raw",
                 "_headers", "_hosts", "_in_head", "_max_head_bytes", "_max_headers", "_paused_at", "_paused_size",
                 "_pending", "_read_deadline", "_read_paused", "_server", "_serving", "_upgraded", "_url",
                 "chunked_out", "closed", "head_request", "http11", "last_active", "loop", "parser", "transport",
                 "write_paused")

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
        self._hosts = 0  # Host headers of the request being parsed
        self._max_head_bytes = server.max_header_bytes
        self._max_headers = server.max_headers
        self._exchange: Exchange | None = None  # the request being parsed
        self._serving: Exchange | None = None  # the request whose handler is running
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
        self._upgraded = False  # a request asked to switch protocols: what follows its head is not HTTP
        self.last_active = now = self.loop.time()
        # A fresh connection's first request must have its head in within the head timeout of the accept;
        # later ones, of their own first byte (on_message_begin). _NEVER: no request being read.
        self._read_deadline = now + server.head_timeout_s
        self._paused_at = 0.0  # since when the client has read less than _WRITE_PROGRESS of its answer
        self._paused_size = 0  # the write buffer then

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not registered subclasses
        server = self._server
        if len(server.connections) >= server.max_connections:
            self.closed = True
            server.refuse_connection(self.transport)
            return
        server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.last_active = self.loop.time()
        if self._upgraded:
            return  # (a client that waits for 101 sends nothing more; the connection closes after the answer)
        try:
            if self._in_head:  # llhttp holds a header line until it ends: bound what a head may make it hold
                self._head_raw += len(data)
            self.parser.feed_data(data)
            if self._in_head:
                self._check_partial_head(data)
        except httptools.HttpParserUpgrade:
            # A bodiless request asking to switch protocols (WebSocket): its handler answers it in HTTP/1.1 (no
            # protocol is switched here) and the connection then closes (on_headers_complete). Anything after
            # its head is the other protocol's and is not read.
            self._upgraded = True
        except httptools.HttpParserError as exc:
            refusal = exc.__context__  # raised in a callback: httptools wraps it
            if isinstance(refusal, _Refusal):
                self._refuse(refusal.status, str(refusal))
            elif data.startswith(b"PRI * HTTP/2.0"):  # an HTTP/2 client with prior knowledge
                self._refuse(505, "HTTP/2 is not served here; use HTTP/1.1")
            else:
                self._refuse(400, f"malformed HTTP request: {exc}")
        except _Refusal as refusal:
            self._refuse(refusal.status, str(refusal))

    def _check_partial_head(self, data: bytes) -> None:
        """A head still incomplete after a read: not too large, and not a request line without a version."""
        if self._head_raw > self._server.max_header_bytes:
            raise self._server.head_too_large()
        # llhttp takes `GET /` + CRLF for HTTP/0.9 and waits for headers; its version stays 0.0 until a
        # request line's version is read.
        url = self._url
        if url and self.parser.get_http_version() == "0.0" and (url + b"\r\n" in data or url + b"\n" in data):
            raise _Refusal(400, "the request line has no HTTP version (HTTP/0.9 is not served); "
                                "send e.g. 'GET / HTTP/1.1'")

    def connection_lost(self, exc: Exception | None) -> None:
        serving, task = self._serving, self._current
        self.closed = True
        self._server.connections.discard(self)
        self._serving = None
        if self._disconnected is not None and not self._disconnected.done():
            self._disconnected.set_result(None)
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        exchange = self._exchange
        if exchange is not None:
            exchange._wake()  # a handler waiting for more body finds the connection closed
        self._pending.clear()
        if serving is not None and serving.streamed and not serving.ended and task is not None and not task.done():
            # The server owns cancellation: a handler still streaming to a client that is gone is cancelled
            # (it sees `client_gone`). A moment's grace first: a client may hang up the moment it has the last
            # event, while the upstream's end of stream is still on its way.
            self.loop.call_later(DISCONNECT_GRACE_S, _cancel_if_running, task)

    def pause_writing(self) -> None:
        self.write_paused = True
        self._paused_at = self.loop.time()
        assert self.transport is not None
        self._paused_size = self.transport.get_write_buffer_size()

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
        body = _error_body(status, message)
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
        self._hosts = 0
        self._in_head = True
        if self._read_deadline == _NEVER:  # (the first request's deadline counts from the accept)
            self._read_deadline = self.last_active + self._server.head_timeout_s

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self._server.max_header_bytes:
            raise self._server.head_too_large()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        headers = self._headers
        if self._head_bytes > self._max_head_bytes or len(headers) >= self._max_headers:
            raise (self._server.head_too_large() if self._head_bytes > self._max_head_bytes
                   else self._server.too_many_headers())
        key = name.decode("latin-1").lower()
        if key == "host":
            self._hosts += 1
        headers.append((key, value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        parser = self.parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            if version == "0.9":
                raise _Refusal(400, "the request line has no HTTP version (HTTP/0.9 is not served); "
                                    "send e.g. 'GET / HTTP/1.1'")
            raise _Refusal(505, f"HTTP/{version} is not served here over HTTP/1 framing; use HTTP/1.1")
        if self._hosts != 1 and (self._hosts > 1 or version == "1.1"):  # RFC 9112 §3.2
            raise _Refusal(400, "a request must carry exactly one Host header" if self._hosts else
                           "an HTTP/1.1 request must carry a Host header")
        method = parser.get_method().decode("latin-1")
        url = self._url.decode("latin-1")
        path, _, query = url.partition("?")
        headers = Headers(self._headers)
        self._in_head = False
        self._read_deadline = self.last_active + self._server.body_timeout_s
        keep_alive = parser.should_keep_alive()
        if parser.should_upgrade():  # Connection: upgrade with an Upgrade header (llhttp stops after the head)
            if self._declares_body():  # llhttp would take the body for the new protocol's: never half-read it
                raise _Refusal(400, "a request that asks to switch protocols (Upgrade) cannot carry a body here; "
                                    "send it without the Upgrade header")
            keep_alive = False  # what would follow is not HTTP/1.1
        exchange = Exchange(self, keep_alive, self._expects_continue())
        exchange.http11 = version == "1.1"  # by its turn the parser may be on a later request
        self._exchange = exchange
        head = Head(method, path, query, headers)
        if self._current is None:
            self._run(head, exchange)
        else:
            self._pending.append((head, exchange))
            if len(self._pending) >= _MAX_PIPELINED:
                self._pause_reading()

    def _declares_body(self) -> bool:
        for name, value in self._headers:
            if name == "transfer-encoding" or (name == "content-length" and value.strip() not in ("", "0")):
                return True
        return False

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
        self._read_deadline = _NEVER
        exchange = self._exchange
        if exchange is not None:
            exchange._end()
            self._exchange = None

    # --- running handlers, one at a time, in order ---

    def _run(self, head: Head, exchange: Exchange) -> None:
        self.head_request = head.method == "HEAD"
        self.http11 = exchange.http11
        self.chunked_out = False
        self._serving = exchange
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
        self._serving = None
        if self.closed:
            return
        self.last_active = self.loop.time()  # idle from here
        transport = self.transport
        assert transport is not None
        if not exchange.responded:
            exchange.keep_alive = False
            exchange.response_bytes(500, [("content-type", "application/json")],
                                    b'{"error": {"message": "no response", "code": "internal_error"}}')
        else:
            exchange.end_body()
        if not exchange.keep_alive or self._server.stopping:
            transport.close()
            self.closed = True
            return
        if self._pending:
            head, nxt = self._pending.popleft()
            self._run(head, nxt)
        self.resume_reading()


    # --- deadlines (the server's sweeper calls this for every connection) ---

    def check(self, now: float) -> None:
        if self.closed or self.transport is None:
            return
        server = self._server
        if self.write_paused:
            size = self.transport.get_write_buffer_size()
            if size + _WRITE_PROGRESS <= self._paused_size:  # a slow reader, but a reader: a new period
                self._paused_size = size
                self._paused_at = now
            elif now - self._paused_at > server.write_timeout_s:
                # The client reads (next to) nothing of its answer: cut it off; the handler sees it gone.
                log.info("closing a connection whose client read less than %d bytes in %g s "
                         "(limits.write_timeout_s)", _WRITE_PROGRESS, server.write_timeout_s)
                self.transport.abort()
                self.closed = True
                return
        deadline = self._read_deadline
        if deadline <= now:
            if not self._read_paused:  # (while paused, the wait is ours, not the client's)
                self._read_timed_out()
        elif deadline == _NEVER and self._current is None and now - self.last_active > server.idle_timeout_s:
            self.transport.close()
            self.closed = True

    def _read_timed_out(self) -> None:
        server = self._server
        transport = self.transport
        assert transport is not None
        if self._in_head:
            if self._current is None:  # (else: judged once the answer under way is done)
                self._refuse(408, f"the request's headers did not arrive within {server.head_timeout_s:g} s "
                                  f"(limits.head_timeout_s in the Tollhouse config)")
            return
        exchange = self._exchange
        if exchange is None:  # a connection that never sent a byte: nobody to answer
            transport.close()
            self.closed = True
            return
        if exchange is not self._serving:
            return  # the body of a pipelined request: judged in its turn
        if not exchange.responded:
            exchange.keep_alive = False
            exchange.response_bytes(408, _JSON, _error_body(
                408, f"the request body did not arrive within {server.body_timeout_s:g} s of its headers "
                     f"(limits.body_timeout_s in the Tollhouse config)"))
        transport.close()
        self.closed = True
        exchange._wake()  # the handler waiting for the rest of the body finds the connection closed


_CODES = {408: "request_timeout", 431: "request_header_fields_too_large", 503: "too_many_connections",
          505: "http_version_not_supported"}


def _error_body(status: int, message: str) -> bytes:
    return json.dumps({"error": {"message": message, "code": _CODES.get(status, "bad_request")}}).encode()


class _Refusal(Exception):
    """A request refused before its handler runs (raised in a parser callback; data_received answers it)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


_TOO_MANY_BODY = _error_body(503, "the gateway has as many connections open as it allows "
                                   "(limits.max_connections in the Tollhouse config); retry shortly")
_TOO_MANY_CONNECTIONS = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\nconnection: close\r\nretry-after: 1\r\n\r\n%b"
                         % (len(_TOO_MANY_BODY), _TOO_MANY_BODY))


class HttpServer:
    """Listens on host:port and answers every request with `handler(head, exchange)`."""

    def __init__(self, handler: Handler, *, limits: ServerLimits | None = None,
                 on_refused: Callable[[], None] | None = None) -> None:
        """`on_refused`: called for each connection refused over `limits.max_connections` (a metric)."""
        self.handler = handler
        self.loop = asyncio.get_running_loop()
        self.connections: set[_Connection] = set()
        self.in_flight: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.limits = limits = limits if limits is not None else ServerLimits()
        self.max_header_bytes = limits.max_header_bytes
        self.max_headers = limits.max_headers
        self.head_timeout_s = limits.head_timeout_s
        self.body_timeout_s = limits.body_timeout_s
        self.idle_timeout_s = limits.idle_timeout_s
        self.write_timeout_s = limits.write_timeout_s
        self.max_connections = limits.max_connections or 0  # set at start when not given
        self.refused = 0  # connections refused over max_connections
        self._on_refused = on_refused
        self._sweep_every_s = max(0.01, min(1.0, limits.head_timeout_s / 4, limits.body_timeout_s / 4,
                                            limits.idle_timeout_s / 4, limits.write_timeout_s / 4))
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        """Listen; returns the port (useful with port 0). Without `limits.max_connections`, raises the soft
        RLIMIT_NOFILE to the hard limit and takes `default_max_connections` of it."""
        if self.limits.max_connections is None:
            self.max_connections = default_max_connections(raise_fd_limit())
        self._server = await self.loop.create_server(lambda: _Connection(self), host, port, backlog=1024,
                                                     reuse_port=reuse_port or None)
        self._sweeper = self.loop.create_task(self._sweep(), name="tollhouse-http-idle")
        sock = self._server.sockets[0]
        return int(sock.getsockname()[1])

    def start_detached(self) -> None:
        """Serve only connections handed over with `connection_protocol` (no listening socket): keep their
        deadlines. The forward proxy's TLS sessions are served so."""
        if self.limits.max_connections is None:
            self.max_connections = default_max_connections(raise_fd_limit())
        self._sweeper = self.loop.create_task(self._sweep(), name="tollhouse-http-idle")

    def connection_protocol(self) -> asyncio.Protocol:
        """A protocol serving one connection made elsewhere; call its `connection_made` with the transport."""
        return _Connection(self)

    def head_too_large(self) -> _Refusal:
        return _Refusal(431, f"the request line and headers exceed {self.limits.max_header_bytes} bytes "
                             f"(limits.max_header_bytes in the Tollhouse config)")

    def too_many_headers(self) -> _Refusal:
        return _Refusal(431, f"the request has more than {self.limits.max_headers} headers "
                             f"(limits.max_headers in the Tollhouse config)")

    def refuse_connection(self, transport: asyncio.Transport) -> None:
        """Over max_connections: say so and close at once; the connections already open are untouched."""
        self.refused += 1
        if self._on_refused is not None:
            self._on_refused()
        if self.refused & (self.refused - 1) == 0:  # log the 1st, 2nd, 4th, 8th, ... refusal
            log.warning("refused a connection: %d are open (limits.max_connections); %d refused so far",
                        len(self.connections), self.refused)
        transport.write(_TOO_MANY_CONNECTIONS)
        transport.close()

    async def _sweep(self) -> None:
        """Enforce every connection's deadlines (head, body, write, idle) a few times per shortest deadline."""
        while True:
            await asyncio.sleep(self._sweep_every_s)
            now = self.loop.time()
            for conn in list(self.connections):
                conn.check(now)

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

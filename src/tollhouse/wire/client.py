"""A pooled HTTP/1.1 client for one upstream origin that runs in the event loop's own thread.

llhttp (through httptools) parses the responses; this module only keeps connections: dial (directly, through
an HTTP proxy, or tunnelled with CONNECT for https), reuse while the upstream keeps them alive, and time a
silent upstream out. Nothing crosses a thread, which is what makes a call cheap (README.md,
"Choosing the stack"; benchmarks/bench_stack.py). Responses are never decoded, redirects never followed
and no cookies kept.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
from collections import deque
from dataclasses import dataclass
from typing import cast
from urllib.parse import unquote, urlsplit

import httptools

from tollhouse.wire.limits import ClientLimits

__all__ = ["Client", "ClientLimits", "ConnectError", "ConnectTimeoutError", "RequestError", "RequestTimeoutError",
           "UpstreamLimitError", "UpstreamResponse"]

log = logging.getLogger("tollhouse.client")


class RequestError(Exception):
    """The call did not get a whole answer from the upstream."""


class ConnectError(RequestError):
    """No connection to the upstream (or to the proxy in front of it)."""


class ConnectTimeoutError(ConnectError):
    pass


class RequestTimeoutError(RequestError):
    """The upstream went silent for longer than the read timeout, or its response took longer in all than the
    total timeout."""


class UpstreamLimitError(RequestError):
    """The upstream's response is larger than a limit allows (the message names the limit and its config key)."""


def _limit_error(origin: Origin, message: str) -> UpstreamLimitError:
    log.warning("%s://%s: %s", origin.scheme, origin.host_header, message)
    return UpstreamLimitError(message)


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int
    base_path: str  # the upstream URL's own path, put before every request's path
    host_header: str

    @classmethod
    def of(cls, url: str) -> Origin:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        default = 443 if parts.scheme == "https" else 80
        port = parts.port or default
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        return cls(parts.scheme, host, port, parts.path.rstrip("/"),
                   shown if port == default else f"{shown}:{port}")


@dataclass(frozen=True, slots=True)
class _Proxy:
    origin: Origin
    authorization: str | None  # the Proxy-Authorization value, from credentials in the proxy URL

    @classmethod
    def of(cls, url: str) -> _Proxy:
        parts = urlsplit(url)
        auth = None
        if parts.username is not None:
            raw = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            auth = "Basic " + base64.b64encode(raw).decode()
        return cls(Origin.of(url), auth)


_EMPTY_BODY_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})


class UpstreamResponse:
    """Status and headers as they arrived; the body is read whole (`read`) or chunk by chunk (`next_chunk`).
    A response must end in `read`, a `next_chunk` that returns None, or `close`."""

    __slots__ = ("_conn", "headers", "status")

    def __init__(self, conn: _Connection, status: int, headers: list[tuple[str, str]]) -> None:
        self._conn = conn
        self.status = status
        self.headers = headers  # names in lower case, values as sent

    async def read(self) -> bytes:
        """The whole body: at most `limits.max_response_bytes`, within `limits.total_timeout_s` of the send."""
        conn = self._conn
        limit = conn.max_response_bytes
        parts: list[bytes] = []
        try:
            while not conn.done:
                if conn.chunks:  # take them, so that a long body does not pause reading from the upstream
                    parts += conn.chunks
                    conn.chunks.clear()
                    if conn.received > limit:
                        raise conn.too_large()
                    if conn.paused:
                        conn.resume()
                await conn.wait()
            if conn.received > limit:
                raise conn.too_large()
        except BaseException:
            conn.release()
            raise
        parts += conn.chunks
        conn.chunks.clear()
        conn.release()
        return b"".join(parts)

    async def next_chunk(self) -> bytes | None:
        """The next piece of the body as it arrived (chunked framing removed); None at the end."""
        conn = self._conn
        if not conn.streaming:
            conn.stream_mode()
        while not conn.chunks:
            if conn.done:
                conn.release()
                return None
            try:
                await conn.wait()
            except BaseException:
                conn.release()
                raise
        chunk = conn.chunks.popleft()
        if conn.paused and len(conn.chunks) < _RESUME_AT:
            conn.resume()
        return chunk

    @property
    def ended(self) -> bool:
        """The upstream has sent the whole body and every piece of it has been taken (`next_chunk`): the last
        one taken was the end."""
        return self._conn.done and not self._conn.chunks

    def close(self) -> None:
        """Stop reading: a connection with an unread body left is not reused."""
        self._conn.release()


_PAUSE_AT = 64  # chunks buffered while nobody reads: stop reading from the upstream
_RESUME_AT = 8


class _Connection(asyncio.Protocol):
    __slots__ = (
        "_body_by_eof",
        "_client",
        "_deadline",
        "_head",
        "_head_raw",
        "_headers",
        "_in_head",
        "_is_head",
        "_last_rx",
        "_loop",
        "_max_header_bytes",
        "_max_headers",
        "_parser",
        "_reusable",
        "_started",
        "_timer",
        "_waiter",
        "chunks",
        "done",
        "error",
        "idle_since",
        "in_use",
        "lost",
        "max_response_bytes",
        "paused",
        "received",
        "streaming",
        "transport",
    )

    def __init__(self, client: Client) -> None:
        self._client = client
        self._loop = client.loop
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self._head: asyncio.Future[UpstreamResponse] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._headers: list[tuple[str, str]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._last_rx = 0.0
        self._body_by_eof = True
        self._is_head = False
        self._reusable = False
        self.chunks: deque[bytes] = deque()
        self.done = False
        self.error: RequestError | None = None
        self.lost = False
        self.paused = False
        self.in_use = False
        self.idle_since = 0.0
        limits = client.limits
        self._max_header_bytes = limits.max_header_bytes
        self._max_headers = limits.max_headers
        self.max_response_bytes = limits.max_response_bytes
        self._in_head = False
        self._head_raw = 0  # bytes of whole reads that arrived while the head was incomplete
        self._started = self._deadline = 0.0
        self.received = 0  # body bytes of the current response
        self.streaming = False

    # --- the request ---

    def start(self, data: bytes, is_head: bool) -> asyncio.Future[UpstreamResponse]:
        assert self.transport is not None
        self._head = self._loop.create_future()
        self._headers = []
        self._body_by_eof = True
        self._is_head = is_head
        self._reusable = False
        self.chunks.clear()
        self.done = False
        self.error = None
        self.in_use = True
        self._in_head = True
        self._head_raw = self.received = 0
        self.streaming = False
        now = self._loop.time()
        self._last_rx = self._started = now
        client = self._client
        self._deadline = deadline = now + client.limits.total_timeout_s
        at = now + client.read_timeout_s
        if deadline < at:
            at = deadline
        timer = self._timer  # the last call's, still pending: fine if it fires no later (it re-arms itself)
        if timer is None or timer.when() > at:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(at, self._check_timeout)
        self.transport.write(data)
        return self._head

    async def wait(self) -> None:
        if self.error is not None:
            raise self.error
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self.error is not None and not self.done:
            raise self.error

    def release(self) -> None:
        """The caller is finished with the response: pool the connection if it can carry another call."""
        if not self.in_use:
            return
        self.in_use = False  # (a pooled connection keeps its timer: the next call reuses it; see start)
        if self.done and self._reusable and not self.lost and not self._is_head:
            self._client.pool(self)
        else:
            self.abort()

    def abort(self) -> None:
        self._stop_timer()
        if self.transport is not None and not self.lost:
            self.transport.abort()

    def resume(self) -> None:
        self.paused = False
        if self.transport is not None and not self.lost:
            self.transport.resume_reading()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def stream_mode(self) -> None:
        """The body is read chunk by chunk from now on: the stream's total deadline replaces the whole
        response's."""
        self.streaming = True
        self._deadline = self._started + self._client.limits.stream_total_timeout_s
        timer = self._timer
        if timer is not None and self._deadline < timer.when():
            timer.cancel()
            self._timer = self._loop.call_at(self._deadline, self._check_timeout)

    def too_large(self) -> UpstreamLimitError:
        return _limit_error(self._client.origin,
                            f"the upstream's response body exceeds {self.max_response_bytes} bytes (limits."
                            f"max_response_bytes in the Tollhouse config; streamed responses have no such cap)")

    def _check_timeout(self) -> None:
        self._timer = None
        if self.done or self.lost or not self.in_use:
            return
        now = self._loop.time()
        if now >= self._deadline:
            limits = self._client.limits
            total, key = ((limits.stream_total_timeout_s, "limits.stream_total_timeout_s") if self.streaming
                          else (limits.total_timeout_s, "limits.upstream_total_timeout_s"))
            self._fail(RequestTimeoutError(f"the upstream's response took longer than {total:g} s in all "
                                           f"({key} in the Tollhouse config)"))
            self.abort()
            return
        silent = now - self._last_rx
        timeout = self._client.read_timeout_s
        if self.paused or silent < timeout:  # a paused read waits on our own reader, not the upstream
            at = now + timeout if self.paused else self._last_rx + timeout
            self._timer = self._loop.call_at(min(at, self._deadline), self._check_timeout)
            return
        self._fail(RequestTimeoutError(f"no data from the upstream for {timeout:g} s"))
        self.abort()

    def _fail(self, error: RequestError) -> None:
        if self.error is None:
            self.error = error
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not registered subclasses

    def data_received(self, data: bytes) -> None:
        self._last_rx = self._loop.time()
        if self._in_head:  # llhttp holds a header line until it ends: bound what a head may make it hold
            self._head_raw += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            cause = exc.__context__  # an exception raised in a callback, wrapped by httptools
            self._fail(cause if isinstance(cause, UpstreamLimitError)
                       else RequestError(f"the upstream sent a malformed HTTP response ({exc})"))
            self.abort()
            return
        if self._in_head and self._head_raw > self._max_header_bytes:
            self._fail(self._head_too_large())
            self.abort()
            return
        if self.in_use and not self.paused and len(self.chunks) >= _PAUSE_AT and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost decides what the EOF meant

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._stop_timer()
        self._client.forget(self)
        if not self.in_use or self.done:
            return
        if self._head is not None and self._head.done() and self._body_by_eof and self.error is None:
            self.done = True  # a body without a length ends where the connection does
            self._wake()
            return
        detail = f": {exc}" if exc is not None else ""
        self._fail(RequestError(f"the upstream closed the connection before the response was complete{detail}"))

    # --- llhttp callbacks ---

    def _head_too_large(self) -> UpstreamLimitError:
        return _limit_error(self._client.origin, f"the upstream's response headers exceed {self._max_header_bytes} "
                                                 f"bytes (limits.max_header_bytes in the Tollhouse config)")

    def on_header(self, name: bytes, value: bytes) -> None:
        # The head's limits are checked once it is complete (`on_headers_complete`), not per header: until then
        # `data_received` bounds the raw bytes of an unfinished head, so one read (at most the transport's read
        # size) is all a head can add before it is judged.
        key = name.decode("latin-1").lower()
        if key == "content-length" or key == "transfer-encoding":
            self._body_by_eof = False
        self._headers.append((key, value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        headers = self._headers
        if len(headers) > self._max_headers:
            raise _limit_error(self._client.origin, f"the upstream's response has more than {self._max_headers} "
                                                    f"headers (limits.max_headers in the Tollhouse config)")
        # names and values are at most the raw bytes read so far: summed only when those exceed the limit
        if self._head_raw > self._max_header_bytes and \
                sum(len(k) + len(v) for k, v in headers) > self._max_header_bytes:
            raise self._head_too_large()
        head = self._head
        status = self._parser.get_status_code()
        if status < 200:  # an interim response (100 Continue): the real one follows
            self._headers = []
            return
        self._in_head = False
        if self._is_head or status in (204, 304):
            self.done = True
        if head is not None and not head.done():
            head.set_result(UpstreamResponse(self, status, self._headers))

    def on_body(self, body: bytes) -> None:
        self.received += len(body)
        self.chunks.append(body)
        self._wake()

    def on_message_complete(self) -> None:
        if self._parser.get_status_code() < 200:
            return
        self._reusable = self._parser.should_keep_alive()  # (llhttp forgets it once the message is over)
        self.done = True
        self._wake()


class _Tunnel(asyncio.Protocol):
    """Reads a proxy's answer to CONNECT."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.answer: asyncio.Future[bytes] = loop.create_future()
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if b"\r\n\r\n" in self._buffer and not self.answer.done():
            self.answer.set_result(self._buffer)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(ConnectError("the proxy closed the connection during CONNECT"))


class Client:
    """Connections to one upstream origin, reused while idle for less than `idle_timeout_s`."""

    def __init__(self, upstream: str, *, read_timeout_s: float, connect_timeout_s: float = 10.0,
                 proxy: str | None = None, idle_timeout_s: float = 30.0, max_idle: int = 512,
                 ssl_context: ssl.SSLContext | None = None, limits: ClientLimits | None = None) -> None:
        self.origin = Origin.of(upstream)
        self.loop = asyncio.get_running_loop()
        self.read_timeout_s = read_timeout_s  # silence allowed between two reads
        self.limits = limits if limits is not None else ClientLimits()
        self._connect_timeout_s = connect_timeout_s
        self._proxy = _Proxy.of(proxy) if proxy else None
        self._idle_timeout_s = idle_timeout_s
        self._max_idle = max_idle
        self._ssl = ssl_context if ssl_context is not None else (
            ssl.create_default_context() if self.origin.scheme == "https" else None)
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._closed = False
        origin = self.origin
        # What goes before every path: the absolute URL when an http proxy forwards it, else the base path.
        self._target_prefix = (f"{origin.scheme}://{origin.host_header}{origin.base_path}"
                               if self._proxy is not None and origin.scheme == "http" else origin.base_path)
        extra = f"host: {origin.host_header}\r\n"
        if self._proxy is not None and self._proxy.authorization and origin.scheme == "http":
            extra += f"proxy-authorization: {self._proxy.authorization}\r\n"
        self._fixed_headers = extra

    async def send(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> UpstreamResponse:
        """Send `method path` (path: everything after the upstream URL, query included) and wait for the
        status and headers."""
        if self._closed:
            raise RequestError("this client was closed (the gateway is changing its upstream proxy); retry")
        lines = [f"{method} {self._target_prefix}{path} HTTP/1.1\r\n", self._fixed_headers]
        lines += [f"{name}: {value}\r\n" for name, value in headers]
        if body or method not in _EMPTY_BODY_METHODS:
            lines.append(f"content-length: {len(body)}\r\n")
        lines.append("\r\n")
        try:
            data = "".join(lines).encode("latin-1")
        except UnicodeEncodeError as exc:
            raise RequestError(f"a request header cannot be sent over HTTP/1.1 ({exc.reason})") from None
        if body:
            data += body
        conn = self._take_idle()
        if conn is None:
            conn = await self._connect()
        head = conn.start(data, method == "HEAD")
        try:
            return await head
        except BaseException:
            conn.in_use = False
            conn.abort()
            raise

    def pool(self, conn: _Connection) -> None:
        if self._closed or len(self._idle) >= self._max_idle:
            conn.abort()
            return
        conn.idle_since = self.loop.time()
        self._idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        self._open.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)

    def _take_idle(self) -> _Connection | None:
        idle = self._idle
        if not idle:
            return None
        oldest_allowed = self.loop.time() - self._idle_timeout_s
        while idle:
            conn = idle.pop()  # the most recently used: the likeliest to be alive
            if conn.idle_since >= oldest_allowed and not conn.lost:
                if idle and idle[0].idle_since < oldest_allowed:
                    self._drop_stale(oldest_allowed)
                return conn
            conn.abort()
        return None

    def _drop_stale(self, oldest_allowed: float) -> None:
        keep = [c for c in self._idle if c.idle_since >= oldest_allowed]
        for conn in self._idle:
            if conn.idle_since < oldest_allowed:
                conn.abort()
        self._idle[:] = keep

    async def _connect(self) -> _Connection:
        origin = self.origin
        target = self._proxy.origin if self._proxy is not None else origin
        conn = _Connection(self)
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                if self._proxy is not None and origin.scheme == "https":
                    await self._tunnel(conn)
                else:
                    await self.loop.create_connection(
                        lambda: conn, target.host, target.port, ssl=self._ssl,
                        server_hostname=origin.host if self._ssl is not None else None)
        except TimeoutError:
            raise ConnectTimeoutError(f"connecting to {target.host}:{target.port} took longer than "
                                      f"{self._connect_timeout_s:g} s") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"cannot connect to {target.host}:{target.port}: {exc}") from None
        self._open.add(conn)
        return conn

    async def _tunnel(self, conn: _Connection) -> None:
        assert self._proxy is not None and self._ssl is not None
        proxy, origin = self._proxy, self.origin
        tunnel = _Tunnel(self.loop)
        transport, _ = await self.loop.create_connection(lambda: tunnel, proxy.origin.host, proxy.origin.port)
        auth = f"proxy-authorization: {proxy.authorization}\r\n" if proxy.authorization else ""
        transport.write(f"CONNECT {origin.host}:{origin.port} HTTP/1.1\r\nhost: {origin.host}:{origin.port}\r\n"
                        f"{auth}\r\n".encode("latin-1"))
        try:
            answer = await tunnel.answer
            status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")
            parts = status_line.split(" ", 2)
            if len(parts) < 2 or parts[1] != "200":
                raise ConnectError(f"the proxy refused to tunnel to {origin.host}:{origin.port}: {status_line}")
            tls = await self.loop.start_tls(transport, tunnel, self._ssl, server_hostname=origin.host)
        except BaseException:
            transport.abort()
            raise
        if tls is None:
            raise ConnectError("TLS through the proxy's tunnel failed")
        tls.set_protocol(conn)
        conn.connection_made(tls)

    def close(self) -> None:
        """Close idle connections now; a connection still carrying a call closes when that call ends."""
        self._closed = True
        for conn in self._idle:
            conn.abort()
        self._idle.clear()

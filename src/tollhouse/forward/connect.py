"""The forward proxy's listener: HTTP CONNECT only, bounded and timed.

A connection sends one CONNECT head (at most `max_head_bytes`, within `head_timeout_s` of the accept). Then:
- a host in `forward_proxy.deny` (by name, wildcard, or any address it resolves to): 403, recorded;
- an intercepted host (`forward_proxy.intercept`): 200, TLS with a leaf certificate from the local CA (ALPN
  http/1.1 only, within `handshake_timeout_s`), and the decrypted HTTP/1.1 stream is served by the gateway's own
  HTTP server and application, as `/{provider}{path}`: the same identity, policy, budgets and events;
- any other host: 200 and a tunnel, bytes copied untouched both ways (see tunnel.py), recorded by host.
Other methods get 405 (plain-HTTP proxying is not offered). At most `max_connections` connections and tunnels
are open at once; one sweeper enforces the head timeout and the tunnels' idle timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import cast

from tollhouse.config import ForwardProxyConfig
from tollhouse.forward.ca import LeafCache
from tollhouse.forward.chain import connect_via
from tollhouse.forward.hostmatch import HostList, ip_of, name_matches
from tollhouse.forward.hosts import HostBook
from tollhouse.forward.metrics import ProxyMetrics
from tollhouse.forward.sni import server_name
from tollhouse.forward.tunnel import Tunnel
from tollhouse.wire.server import HttpServer

log = logging.getLogger("tollhouse.forward")

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_HOST = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?)*\.?")
_MAX_HEADERS = 100
_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


class ProxyListenError(OSError):
    """The forward proxy cannot listen on forward_proxy.port; the message says where and why."""


class ProxyAuthRefused(Exception):
    """Proxy-Authorization was given and names no valid key (407)."""


# (Proxy-Authorization header or None, the client's address) → the person the connection is recorded under
Who = Callable[[str | None, str], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class ProxyRoutes:
    """Which hosts are refused, and which are intercepted for which provider."""

    intercept: HostList
    deny: HostList
    provider_hosts: tuple[tuple[str, str], ...]  # (host or *.wildcard, provider id)

    def provider_for(self, host: str) -> str | None:
        """The provider an intercepted host stands for; None: the host is not intercepted."""
        if self.intercept.name_match(host) is None:
            return None
        for pattern, provider in self.provider_hosts:
            if name_matches(host, pattern):
                return provider
        return None


def _answer(status: int, message: str, code: str, extra: list[tuple[str, str]] | None = None) -> bytes:
    body = json.dumps({"error": {"message": message, "code": code}}).encode()
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "content-type: application/json",
             f"content-length: {len(body)}", "connection: close",
             *(f"{name}: {value}" for name, value in extra or [])]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass(frozen=True, slots=True)
class _Target:
    host: str
    port: int
    headers: Mapping[str, str]


class _Refused(Exception):
    def __init__(self, status: int, message: str, code: str, extra: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.answer = _answer(status, message, code, extra)


def parse_connect(head: bytes) -> _Target:
    """The CONNECT request in `head` (request line and headers, without the blank line), or _Refused."""
    lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _Refused(400, "malformed request line; a forward-proxy request looks like "
                            "'CONNECT api.example.com:443 HTTP/1.1'", "bad_request")
    method, target, _ = parts
    if method != "CONNECT":
        if target.startswith("http://"):
            raise _Refused(405, "this is Tollhouse's forward proxy: it proxies HTTPS (CONNECT) only and does not "
                                "forward plain-HTTP requests; send them directly, or point the tool at the "
                                "gateway's base URL (e.g. http://127.0.0.1:8787/openai/v1)", "method_not_allowed",
                           [("allow", "CONNECT")])
        raise _Refused(405, f"{method} is not served here: this is Tollhouse's forward proxy (HTTPS_PROXY), which "
                            "takes CONNECT host:port only; the gateway's API is on its own port",
                       "method_not_allowed", [("allow", "CONNECT")])
    host, sep, port_text = target.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _Refused(400, f"CONNECT needs host:port (e.g. CONNECT api.openai.com:443), got {target[:200]!r}",
                       "bad_request")
    host = host.lower()
    if host.startswith("[") and host.endswith("]"):
        if ip_of(host) is None:
            raise _Refused(400, f"{host[:200]!r} is not an IPv6 address", "bad_request")
        host = host[1:-1]
    elif not _HOST.fullmatch(host) or len(host) > 253:
        raise _Refused(400, f"{host[:200]!r} is not a host name or address", "bad_request")
    headers: dict[str, str] = {}
    if len(lines) - 1 > _MAX_HEADERS:
        raise _Refused(431, f"more than {_MAX_HEADERS} headers", "request_header_fields_too_large")
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise _Refused(400, f"malformed header line {line[:100]!r}", "bad_request")
        headers[name.lower()] = value.strip()
    return _Target(host.rstrip("."), int(port_text), headers)


class _ProxyConnection(asyncio.Protocol):
    """A client's connection until its CONNECT is answered (then a tunnel or a TLS session takes it)."""

    def __init__(self, proxy: ForwardProxy) -> None:
        self.proxy = proxy
        self.loop = proxy.loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.scanned = 0  # bytes of the buffer already searched for the head's end (a head sent a byte at a time
        #                  costs linear time, not quadratic)
        self.deadline = self.loop.time() + proxy.cfg.head_timeout_s
        self.task: asyncio.Task[None] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        proxy = self.proxy
        if proxy.open_count() >= proxy.cfg.max_connections:
            proxy.refused += 1
            if proxy.refused & (proxy.refused - 1) == 0:
                log.warning("forward proxy: refused a connection: %d are open (forward_proxy.max_connections); "
                            "%d refused so far", proxy.open_count(), proxy.refused)
            self.close(_answer(503, "the forward proxy has as many connections open as it allows "
                                    "(forward_proxy.max_connections); retry shortly", "too_many_connections",
                               [("retry-after", "1")]))
            return
        proxy.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.task is not None or self.closed:
            self.buffer += data  # (reading is paused once the head is in; a little may still arrive)
            return
        self.buffer += data
        limit = self.proxy.cfg.max_head_bytes
        end = _HEAD_END.search(self.buffer, max(0, self.scanned - 3))
        self.scanned = len(self.buffer)
        if end is None or end.start() > limit:
            if len(self.buffer) > limit:
                self.close(_answer(431, f"the CONNECT request's head exceeds {limit} bytes "
                                        "(forward_proxy.max_head_bytes)", "request_header_fields_too_large"))
            return
        head, early = bytes(self.buffer[:end.start()]), bytes(self.buffer[end.end():])
        self.buffer = bytearray(early)
        try:
            target = parse_connect(head)
        except _Refused as refusal:
            self.close(refusal.answer)
            return
        assert self.transport is not None
        self.transport.pause_reading()
        self.deadline = float("inf")
        self.task = self.loop.create_task(self._dispatch(target))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.proxy.connections.discard(self)
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def close(self, answer: bytes | None = None, outcome: str = "refused") -> None:
        """Answer (a refusal: counted under `outcome`) and close."""
        if self.closed:
            return
        self.closed = True
        if answer is not None:
            self.proxy.count(outcome)
        self.proxy.connections.discard(self)
        if self.transport is not None:
            if answer is not None:
                self.transport.write(answer)
            self.transport.close()

    def check(self, now: float) -> None:
        if now > self.deadline:
            self.close(_answer(408, f"the CONNECT request did not arrive within {self.proxy.cfg.head_timeout_s:g} "
                                    "s (forward_proxy.head_timeout_s)", "request_timeout"))

    def _address(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"

    async def _dispatch(self, target: _Target) -> None:
        try:
            await self._answer(target)
        except Exception:
            # The proxy's error boundary: logged with the details, the client told, never a traceback to it.
            log.exception("forward proxy: internal error answering CONNECT %s:%d", target.host, target.port)
            self.close(_answer(500, "the forward proxy hit an internal error; it has been logged. Retry, and tell "
                                    "your Tollhouse administrator if it persists", "internal_error"), "failed")

    async def _answer(self, target: _Target) -> None:
        proxy = self.proxy
        try:
            person = await proxy.who(target.headers.get("proxy-authorization"), self._address())
        except ProxyAuthRefused as exc:
            self.close(_answer(407, str(exc), "proxy_auth_required", [("proxy-authenticate",
                                                                        'Basic realm="tollhouse"')]))
            return
        host = target.host
        denied = proxy.routes.deny.name_match(host)
        if denied is not None:
            self._deny(host, person, denied)
            return
        provider = proxy.routes.provider_for(host)
        if provider is not None:
            await self._intercept(host, provider, person)
        else:
            await self._tunnel(target, person)

    def _deny(self, host: str, person: str, entry: str) -> None:
        self.proxy.book.connection(host, person, self.proxy.now_ms(), denied=True)
        log.info("forward proxy: refused a tunnel to %s for %s (forward_proxy.deny: %s)", host, person, entry)
        self.close(_answer(403, f"connections to {host} are refused by your organisation's Tollhouse policy "
                                f"(forward_proxy.deny: {entry}); ask your Tollhouse administrator if you need it",
                           "host_denied"), "denied")

    async def _intercept(self, host: str, provider: str, person: str) -> None:
        proxy = self.proxy
        if self.buffer:
            self.close(_answer(400, "the client sent data before the proxy answered its CONNECT; wait for the "
                                    "200 before starting TLS", "bad_request"))
            return
        ctx = proxy.leaves.context(host)
        proxy.book.connection(host, person, proxy.now_ms(), intercepted=True)
        transport = self.transport
        assert transport is not None
        transport.write(_ESTABLISHED)
        inner = proxy.inner[provider]
        session = inner.connection_protocol()
        try:
            tls = await self.loop.start_tls(transport, session, ctx, server_side=True,
                                            ssl_handshake_timeout=proxy.cfg.handshake_timeout_s)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            log.info("forward proxy: no TLS session with %s for %s (%s); a client that does not trust the "
                     "forward-proxy CA (tollhouse ca export) fails here", self._address(), host,
                     exc or type(exc).__name__)
            proxy.count("failed")
            transport.abort()
            return
        finally:
            self.closed = True
            proxy.connections.discard(self)
        if tls is None:
            transport.abort()
            return
        proxy.count("intercepted")
        session.connection_made(tls)

    async def _tunnel(self, target: _Target, person: str) -> None:
        proxy = self.proxy
        host, port = target.host, target.port
        via = proxy.upstream_proxy()
        if via is not None:
            await self._tunnel_via(via, target, person)
            return
        try:
            infos = await asyncio.wait_for(self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM),
                                           proxy.cfg.connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            proxy.book.connection(host, person, proxy.now_ms())
            self.close(_answer(502, f"cannot resolve {host}: {exc or 'timed out'}", "bad_gateway"), "failed")
            return
        for info in infos:
            entry = proxy.routes.deny.address_match(str(info[4][0]))
            if entry is not None:
                self._deny(host, person, f"{entry}, which {host} resolves into")
                return
        tunnel = Tunnel(self.loop, proxy.tunnel_closed, host, person)
        failure: BaseException | None = None
        for info in infos:
            try:
                await asyncio.wait_for(self.loop.create_connection(lambda: tunnel.upstream, str(info[4][0]), port),
                                       proxy.cfg.connect_timeout_s)
                break
            except (OSError, TimeoutError) as exc:
                failure = exc
        else:
            proxy.book.connection(host, person, proxy.now_ms())
            self.close(_answer(502, f"cannot reach {host}:{port}: {failure or 'no address'}", "bad_gateway"),
                       "failed")
            return
        proxy.book.connection(host, person, proxy.now_ms())
        self._join(tunnel)

    async def _tunnel_via(self, via: str, target: _Target, person: str) -> None:
        """Through the organisation's proxy (`upstream_proxy`): names only are judged by the deny list here, the
        addresses being the upstream proxy's to resolve."""
        proxy = self.proxy
        tunnel = Tunnel(self.loop, proxy.tunnel_closed, target.host, person)
        try:
            await connect_via(self.loop, via, target.host, target.port, tunnel.upstream, proxy.cfg.connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            proxy.book.connection(target.host, person, proxy.now_ms())
            self.close(_answer(502, f"cannot reach {target.host}:{target.port} through the upstream proxy: "
                                    f"{exc or 'timed out'}", "bad_gateway"), "failed")
            return
        proxy.book.connection(target.host, person, proxy.now_ms())
        self._join(tunnel)

    def _join(self, tunnel: Tunnel) -> None:
        """Answer 200 and hand the client's connection to the tunnel (whose upstream end is connected)."""
        proxy = self.proxy
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            tunnel.close()
            return
        self.closed = True
        tunnel.inspect = lambda first: self._server_name_allowed(tunnel, first)
        proxy.connections.discard(self)
        proxy.tunnels.add(tunnel)
        proxy.count("tunnelled")
        transport.write(_ESTABLISHED)
        tunnel.attach_client(transport, bytes(self.buffer))


    def _server_name_allowed(self, tunnel: Tunnel, first: bytes) -> bool:
        """A tunnel whose TLS asks for another name than the one CONNECTed to (an address, a fronting domain) is
        recorded under that name too, and closed when that name is intercepted or denied: reaching a governed
        host so would bypass its governance."""
        name = server_name(first)
        if name is None or name == tunnel.host:
            return True
        proxy = self.proxy
        denied = proxy.routes.deny.name_match(name)
        bypass = denied is not None or proxy.routes.provider_for(name) is not None
        proxy.book.connection(name, tunnel.person, proxy.now_ms(), denied=bypass)
        if bypass:
            log.warning("forward proxy: closed a tunnel to %s whose TLS asks for %s (%s); CONNECT %s:443 instead",
                        tunnel.host, name, "forward_proxy.deny" if denied else "intercepted", name)
            proxy.count("denied")
        return not bypass


class ForwardProxy:
    """The CONNECT listener; intercepted sessions are served by `inner[provider]` (the gateway's HTTP server)."""

    def __init__(self, cfg: ForwardProxyConfig, routes: ProxyRoutes, leaves: LeafCache,
                 inner: Mapping[str, HttpServer], book: HostBook, who: Who,
                 clock: Callable[[], float] = time.time,
                 upstream_proxy: Callable[[], str | None] = lambda: None,
                 metrics: ProxyMetrics | None = None) -> None:
        """`upstream_proxy()`: the organisation's proxy tunnels go through, read per connection (it can change)."""
        self.cfg = cfg
        self.routes = routes
        self.leaves = leaves
        self.inner = inner
        self.book = book
        self.who = who
        self.clock = clock
        self.upstream_proxy = upstream_proxy
        self.metrics = metrics if metrics is not None else ProxyMetrics()
        self.metrics.open.set_function(self.open_count)
        self.loop = asyncio.get_running_loop()
        self.connections: set[_ProxyConnection] = set()
        self.tunnels: set[Tunnel] = set()
        self.refused = 0
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.port = 0

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def open_count(self) -> int:
        return len(self.connections) + len(self.tunnels)

    def count(self, outcome: str) -> None:
        self.metrics.connections.labels(outcome).inc()

    def tunnel_closed(self, tunnel: Tunnel) -> None:
        self.tunnels.discard(tunnel)
        self.metrics.tunnel_bytes.labels("up").inc(tunnel.up)
        self.metrics.tunnel_bytes.labels("down").inc(tunnel.down)
        self.book.transferred(tunnel.host, tunnel.person, self.now_ms(), tunnel.up, tunnel.down)

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        for server in self.inner.values():
            server.start_detached()
        try:
            self._server = await self.loop.create_server(lambda: _ProxyConnection(self), host, port, backlog=1024,
                                                         reuse_port=reuse_port or None)
        except OSError as exc:
            for server in self.inner.values():
                await server.stop(0)
            raise ProxyListenError(f"the forward proxy cannot listen on {host}:{port} (forward_proxy.port): "
                                   f"{exc.strerror or exc}; choose a free port, or stop what uses it") from None
        self._sweeper = self.loop.create_task(self._sweep(), name="tollhouse-forward-sweep")
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def _sweep(self) -> None:
        every = max(0.01, min(1.0, self.cfg.head_timeout_s / 4, self.cfg.idle_timeout_s / 4))
        while True:
            await asyncio.sleep(every)
            now = self.loop.time()
            for conn in list(self.connections):
                conn.check(now)
            for tunnel in list(self.tunnels):
                tunnel.check(now, self.cfg.idle_timeout_s)

    async def stop(self, grace_s: float = 5.0) -> None:
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            conn.close()
        for tunnel in list(self.tunnels):
            tunnel.close()
        for server in self.inner.values():
            await server.stop(grace_s)

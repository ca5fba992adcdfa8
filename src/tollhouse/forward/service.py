"""The forward proxy as a component of the gateway (`tollhouse serve`) and the agent (`tollhouse agent`): built
from `forward_proxy` and `providers.NAME.hosts`, started and stopped by the state's lifespan, its host tallies
flushed to the store in batches, its port and CA shown under /healthz `forward_proxy`."""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
from collections.abc import Iterable

from tollhouse.config import Settings
from tollhouse.events.store import StoreError
from tollhouse.forward.ca import LeafCache, load_or_create
from tollhouse.forward.connect import ForwardProxy, ProxyAuthRefused, ProxyRoutes
from tollhouse.forward.hostmatch import HostList
from tollhouse.forward.hosts import save_hosts
from tollhouse.forward.intercept import as_provider
from tollhouse.forward.metrics import ProxyMetrics
from tollhouse.gateway.state import GatewayState, add_health_section
from tollhouse.gateway.wire_limits import server_limits
from tollhouse.lifespan import Background
from tollhouse.wire.server import Handler, HttpServer

log = logging.getLogger("tollhouse.forward")

FLUSH_EVERY_S = 2.0


def routes_of(settings: Settings) -> ProxyRoutes:
    cfg = settings.forward_proxy
    owners = tuple((host, pid) for pid, provider in settings.providers.items() for host in provider.hosts)
    return ProxyRoutes(HostList.of(cfg.intercept), HostList.of(cfg.deny), owners)


def proxy_key(authorization: str | None) -> str | None:
    """The gateway key in a Proxy-Authorization header: Basic (the password, else the user name) or Bearer."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return password or user or None


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class _Who:
    """Who a connection is recorded under: a gateway key's subject (Proxy-Authorization), else the configured
    default user (the agent: this machine's person), else the client's address. With `required`, a connection
    without a key is refused (a proxy reachable from the network is no open proxy)."""

    def __init__(self, state: GatewayState, required: bool) -> None:
        self.state = state
        self.required = required

    async def __call__(self, authorization: str | None, address: str) -> str:
        if not authorization and self.required:
            raise ProxyAuthRefused("this forward proxy takes connections with a Tollhouse gateway key only "
                                   "(forward_proxy.require_auth): use HTTPS_PROXY=http://user:GATEWAY_KEY@host:port")
        if authorization:
            key = proxy_key(authorization)
            subject = await self.state.keys.subject_for(key) if key else None
            if subject is None:
                raise ProxyAuthRefused("Proxy-Authorization does not carry a valid Tollhouse gateway key; use "
                                       "HTTPS_PROXY=http://user:GATEWAY_KEY@host:port, or no credentials at all")
            return subject
        return self.state.settings.identity.default_user or address


def _inner_servers(state: GatewayState, app: Handler, providers: Iterable[str]) -> dict[str, HttpServer]:
    """One HTTP server per intercepted provider (no socket of its own): the gateway's app under /{provider}."""
    limits = server_limits(state.settings.limits)
    return {pid: HttpServer(as_provider(app, pid), limits=limits, on_refused=state.metrics.connections_refused.inc)
            for pid in sorted(set(providers))}


async def flush_hosts(state: GatewayState) -> None:
    """Add what the book holds to the store (put back if the store is unavailable)."""
    rows = state.hosts.take()
    if not rows:
        return
    try:
        await state.runner.run(lambda s: save_hosts(s, rows))
    except StoreError as exc:
        state.hosts.restore(rows)
        log.warning("forward proxy: host tallies not stored (%s); kept to try again", exc)


async def _flusher(state: GatewayState) -> None:
    while True:
        await asyncio.sleep(FLUSH_EVERY_S)
        await flush_hosts(state)


def add_forward_proxy(state: GatewayState, host: str, app: Handler, reuse_port: bool = False) -> None:
    """With `forward_proxy.port` set, run the proxy (bound to `forward_proxy.host`, else `host`) under the
    state's lifespan: added before the gateway's own server, it is listening by the time the gateway is.
    `reuse_port`: one of `serve --workers N`, which share the proxy's port as they share the gateway's."""
    settings = state.settings
    cfg = settings.forward_proxy
    if cfg.port is None:
        return
    routes = routes_of(settings)
    bind = cfg.host or host
    required = cfg.require_auth if cfg.require_auth is not None else not _loopback(bind)
    running: list[ForwardProxy] = []

    async def start() -> None:
        ca = await asyncio.to_thread(load_or_create, state.data_dir, cfg.intercept)
        providers = (pid for _, pid in routes.provider_hosts)
        proxy = ForwardProxy(cfg, routes, LeafCache(ca, cfg.leaf_cache), _inner_servers(state, app, providers),
                             state.hosts, _Who(state, required), state.clock,
                             lambda: state.live_settings.current.upstream_proxy, ProxyMetrics(state.metrics.registry))
        assert cfg.port is not None
        port = await proxy.start(bind, cfg.port, reuse_port)
        running.append(proxy)
        log.info("forward proxy listening on http://%s:%d (HTTPS_PROXY); intercepting %s; CA %s%s", bind, port,
                 ", ".join(cfg.intercept) or "nothing", ca.files.cert,
                 "; a gateway key is required (Proxy-Authorization)" if required else "")
        add_health_section(state, "forward_proxy", lambda: {
            "port": port, "host": bind, "intercept": list(cfg.intercept), "ca": str(ca.files.cert),
            "ca_bundle": str(ca.files.bundle), "ca_sha256": ca.fingerprint, "open": proxy.open_count(),
            "refused": proxy.refused, "leaf_certificates": len(proxy.leaves), "require_auth": required,
            "tls_sessions": sum(len(server.connections) for server in proxy.inner.values())})

    async def stop() -> None:
        for proxy in running:
            await proxy.stop()
        await flush_hosts(state)

    state.lifespan.add("forward proxy", start, stop)
    Background("tollhouse-forward-hosts", lambda: _flusher(state)).add_to(state.lifespan)

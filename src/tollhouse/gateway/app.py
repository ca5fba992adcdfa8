"""The application: a request to its route (gateway/router.py) or to the provider pipeline, the error boundary,
and the server lifecycle."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from tollhouse.alerts import service as alerts
from tollhouse.config import Settings
from tollhouse.console import render
from tollhouse.events.store import StoreError
from tollhouse.forward.hosts import prune_hosts
from tollhouse.forward.service import add_forward_proxy
from tollhouse.gateway import access, admin, pipeline
from tollhouse.gateway.console_session import sign_in_redirect, signed_in
from tollhouse.gateway.errors import error_response
from tollhouse.gateway.http import Request, Response, json_response
from tollhouse.gateway.router import Found, Handler, Router
from tollhouse.gateway.routes import router
from tollhouse.gateway.state import GatewayState, MakeLedger, build_state
from tollhouse.gateway.wire_limits import server_limits
from tollhouse.lifespan import Background
from tollhouse.providers.family import Family
from tollhouse.wire.server import Exchange, Head, HttpServer, ProtocolClosed

log = logging.getLogger("tollhouse")

# Runs once the state is built, before the server listens (the agent applies its cached policy bundle and
# starts syncing); returns what to run on the way out, before the state closes.
Extension = Callable[[GatewayState], Awaitable[Callable[[], Awaitable[None]]]]

# Paths the router answers (gateway/routes.py); every other path is a provider's: /{provider}/...
_ROUTED = ("/api/v1/", "/console", "/healthz", "/metrics")


def _not_a_provider() -> Response:
    return json_response({"error": {"message": "Tollhouse proxies /{provider}/...; e.g. /openai/v1/chat/completions. "
                                    "See /api/v1/openapi.json for the API.", "code": "not_found"}}, 404)


def routes() -> list[tuple[str, str]]:
    """(method, path) of every control-plane route, path parameters as {name} (for docs and tests)."""
    return router().listing()


def _resolve(request: Request, state: GatewayState, routes: Router) -> Handler | Response | None:
    """The handler for a control-plane or console path, once the caller may call it; else the answer. None: not
    the router's path after all (a provider whose name starts like one: /consoles/...)."""
    path = request.path
    found = routes.match(request.method, path)
    console = path.startswith("/console/") or path == "/console"
    if isinstance(found, Found):
        request.params.update(found.params)
        refused = access.refusal(found.route, request, state)
        return refused if refused is not None else found.route.handler
    if console:
        user = signed_in(request, state)
        if user is None:  # nobody signed in learns nothing, not even which console paths exist
            return sign_in_redirect(path + (f"?{request.query_string}" if request.query_string else ""))
        if found.allowed:
            page = render.error_page(request, state, user, 405, f"{request.method} is not allowed on {path}")
            page.headers.append(("allow", ", ".join(found.allowed)))
            return page
        return render.error_page(request, state, user, 404, f"There is no console page at {path}.")
    if not (path.startswith("/api/v1/") or found.allowed):
        return None
    if found.allowed:
        resp = admin.api_error(405, f"{request.method} is not allowed on {path} (allowed: "
                               f"{', '.join(found.allowed)})", "method_not_allowed")
        resp.headers.append(("allow", ", ".join(found.allowed)))
        return resp
    return admin.api_error(404, f"no such endpoint: {path}; see /api/v1/openapi.json", "not_found")


class GatewayApp:
    """The handler the HTTP server calls for every request, over one frozen GatewayState."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self.routes = router()  # compiled once

    async def __call__(self, head: Head, proto: Exchange) -> None:
        request = Request(head.method, head.path, head.query_string, head.headers, proto, head.raw_path)
        path = head.path
        handler: Handler
        routed = _resolve(request, self.state, self.routes) if path.startswith(_ROUTED) else None
        if routed is not None:
            if isinstance(routed, Response):
                proto.response_bytes(routed.status, routed.headers, routed.body)
                return
            handler = routed
        elif path.count("/") < 2:
            resp = _not_a_provider()
            proto.response_bytes(resp.status, resp.headers, resp.body)
            return
        else:
            handler = pipeline.handle  # the hot path: a provider's call, after one prefix check
        try:
            result = await handler(request, self.state)
        except ProtocolClosed:
            return  # the client went away; the handler has recorded what it must
        except admin.ApiError as exc:
            result = exc.response
        except Exception:
            # The one error boundary: log the details, answer in the caller's shape, never a traceback.
            log.exception("internal error on %s %s", request.method, request.path)
            result = _internal_error(request)
        if isinstance(result, Response):
            proto.response_bytes(result.status, result.headers, result.body)


def _internal_error(request: Request) -> Response:
    message = ("Tollhouse hit an internal error handling this call; it has been logged. The call may not have "
               "reached the provider. Retry, and report it to your Tollhouse administrator if it persists.")
    if request.path.startswith("/api/v1/"):
        return admin.api_error(500, message, "internal_error")
    family = Family.anthropic if request.path.startswith("/anthropic/") else (
        Family.gemini if request.path.startswith("/gemini/") else Family.openai)
    return error_response(family, 500, message, "internal_error")


async def serve(settings: Settings, data_dir: Path, host: str, port: int,
                ready: Callable[[GatewayState, int], None] | None = None,
                stop: asyncio.Event | None = None, clock: Callable[[], float] = time.time,
                worker: int | None = None, extension: Extension | None = None,
                make_ledger: MakeLedger | None = None) -> None:
    """Run the gateway in the current event loop until `stop` is set; flush events on the way out.
    `worker`: this process is one of `serve --workers N` (they share the port through SO_REUSEPORT).
    `extension`: what the agent adds (see Extension).

    Every component runs under the state's one Lifespan: started in order, stopped in reverse (see
    build_state for the state's own; here: the start-up announcement, the extension, the store follower, the
    counter warmer, the ledger sweeper, the server, and the agents' long-polls)."""
    state = await build_state(settings, data_dir, f"http://{host}:{port}", clock, worker, make_ledger)
    lifespan = state.lifespan
    lifespan.add("start-up audit", lambda: _announce(state))
    alerts.install(state)  # the alert service (issue 19), when alerts.channels are configured
    cleanup: Callable[[], Awaitable[None]] | None = None

    async def start_extension() -> None:
        nonlocal cleanup
        if extension is not None:
            cleanup = await extension(state)

    async def stop_extension() -> None:
        if cleanup is not None:
            await cleanup()

    lifespan.add("extension", start_extension, stop_extension)
    Background("tollhouse-follow-store", lambda: _follow_store(state)).add_to(lifespan)
    warmer = Background("tollhouse-ledger-warm", lambda: warm_counters(state)).add_to(lifespan)
    Background("tollhouse-ledger-sweeper", lambda: _expire_reservations(state)).add_to(lifespan)
    Background("tollhouse-hosts-prune", lambda: _prune_hosts(state)).add_to(lifespan)
    app = GatewayApp(state)  # the gateway's server and the forward proxy's intercepted sessions share it
    server = HttpServer(app, limits=server_limits(settings.limits),
                        on_refused=state.metrics.connections_refused.inc)

    async def listen() -> None:
        nonlocal port
        try:
            # --workers: every worker listens on the same port and the kernel spreads connections over them
            port = await server.start(host, port, reuse_port=worker is not None)
        except OSError as exc:
            raise OSError(f"could not listen on {host}:{port}: {exc.strerror or exc}") from None

    add_forward_proxy(state, host, app, worker is not None)  # forward_proxy.port (issue 21)
    lifespan.add("server", listen, lambda: server.stop(grace_s=10))
    lifespan.add("agent long-polls", stop=state.docs.feed.close)  # answered first, rather than hold the shutdown
    await lifespan.start()
    try:
        # Listening already; give the counters a moment to load before saying so (a big directory goes on
        # loading in the background).
        assert warmer.task is not None
        await asyncio.wait([warmer.task], timeout=2.0)
        if ready is not None:
            ready(state, port)
        await (stop or asyncio.Event()).wait()
    finally:
        await lifespan.stop()


async def _announce(state: GatewayState) -> None:
    """Audit the start (and an enforcement switch since the last one)."""
    settings = state.settings
    status = state.policies.status()
    await _audit_mode_switch(state)
    state.audit.record("gateway.started", "gateway", {
        "enforcement": settings.enforcement.value, "enforce_teams": list(settings.policy.enforce_teams),
        "capture_mode": settings.capture_mode.value, "policy_version": status.version,
        "policy_source": status.source, "rules": [r.id for r in state.policy.current.rules],
        "counters": "redis" if settings.counters.url != "local://" else "local"})


async def _expire_reservations(state: GatewayState, every_s: float = 1.0) -> None:
    """Release stale reservations (every 10 s) and expire leases agents stopped renewing (every second)."""
    n = 0
    while True:
        await asyncio.sleep(every_s)
        now_ms = int(state.clock() * 1000)
        n += 1
        if n % 10 == 0:
            state.ledger.expire(now_ms)
        try:
            await state.leases.sweep(now_ms)
        except StoreError as exc:
            log.warning("budget leases could not be swept (counters unavailable: %s); trying again", exc)


async def warm_counters(state: GatewayState) -> None:
    """Right after start, load the budget counters of everyone the directory names (in the background, one
    subject at a time): without it each person's first call after a restart waits for a store read, queued
    behind the store thread's event inserts."""
    policy = state.policy.current
    directory = state.directory.current
    now_ms = int(state.clock() * 1000)
    try:
        for subject_id in directory.subject_ids():
            caps = policy.subject_caps(directory.subject(subject_id))
            if caps:
                await state.ledger.warm(caps, now_ms)
    except StoreError as exc:
        log.warning("could not preload budget counters (%s); each loads on its first call instead", exc)


async def _audit_mode_switch(state: GatewayState) -> None:
    """Enforcement switched on or off (or its rollout or capture mode changed) since the last start: say so."""
    settings = state.settings
    now = {"enforcement": settings.enforcement.value, "enforce_teams": list(settings.policy.enforce_teams),
           "capture_mode": settings.capture_mode.value}
    last = await state.runner.run(lambda s: s.last_audit_entry("gateway.started"))
    if last is None:
        return
    before = {k: last.data.get(k) for k in now}
    if before != now:
        state.audit.record("enforcement.changed", "config", {
            "before": before, "after": now, "changed": sorted(k for k in now if before[k] != now[k])})


async def _prune_hosts(state: GatewayState, every_s: float = 3600.0) -> None:
    """Delete the forward proxy's host rows not seen for `forward_proxy.hosts_retention_days` (at start, then
    hourly): this gateway's tallies and the agents' reports alike (a control plane takes reports without running
    a proxy of its own)."""
    days = state.settings.forward_proxy.hosts_retention_days
    while True:
        before_ms = int((state.clock() - days * 86400) * 1000)
        try:
            removed = await state.runner.run(lambda s, b=before_ms: prune_hosts(s, b))  # type: ignore[misc]
        except StoreError as exc:
            log.warning("could not delete forward-proxy hosts not seen for %d days: %s", days, exc)
        else:
            if removed:
                log.info("deleted %d forward-proxy host rows not seen for %d days "
                         "(forward_proxy.hosts_retention_days)", removed, days)
        await asyncio.sleep(every_s)


async def _follow_store(state: GatewayState, every_s: float = 1.0) -> None:
    """Adopt policy, directory and agent-policy versions other gateways sharing the store published, and the
    console sessions they signed out or revoked, and the addresses locked out for wrong admin tokens over all of
    them."""
    while True:
        await asyncio.sleep(every_s)
        try:
            versions = await state.docs.latest_versions()  # one read serves all three
            await state.policies.poll(versions)
            await state.directories.poll(versions)
            await state.docs.refresh(versions)
            await state.sessions.refresh()
            state.guard.adopt(await state.runner.run(state.guard.read_shared))
        except StoreError as exc:
            log.warning("cannot check the store for control-plane changes: %s", exc)

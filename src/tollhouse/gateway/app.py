"""The application: routing, admin auth, the error boundary, and the server lifecycle."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from tollhouse.alerts import api as alerts_api
from tollhouse.alerts import service as alerts
from tollhouse.config import Settings
from tollhouse.console import pages as console_pages
from tollhouse.events.store import StoreError
from tollhouse.forward import api as forward_api
from tollhouse.forward.service import add_forward_proxy
from tollhouse.gateway import (
    admin,
    agent_api,
    backtest_api,
    baseline,
    console_session,
    events_api,
    exemption_routes,
    lease_api,
    pipeline,
    policy_api,
    spend,
    usage_api,
)
from tollhouse.gateway.errors import error_response
from tollhouse.gateway.http import Request, Response, Streamed, json_response
from tollhouse.gateway.state import GatewayState, MakeLedger, build_state
from tollhouse.gateway.wire_limits import server_limits
from tollhouse.lifespan import Background
from tollhouse.providers.family import Family
from tollhouse.wire.server import Exchange, Head, HttpServer, ProtocolClosed

log = logging.getLogger("tollhouse")

Handler = Callable[[Request, GatewayState], Awaitable[Response | Streamed]]
# Runs once the state is built, before the server listens (the agent applies its cached policy bundle and
# starts syncing); returns what to run on the way out, before the state closes.
Extension = Callable[[GatewayState], Awaitable[Callable[[], Awaitable[None]]]]

# (method, path) → (handler, admin only)
_API: dict[tuple[str, str], tuple[Handler, bool]] = {
    ("GET", "/healthz"): (admin.healthz, False),
    ("GET", "/metrics"): (admin.metrics, False),
    ("GET", "/api/v1/openapi.json"): (admin.openapi, False),
    ("GET", "/api/v1/events"): (events_api.list_events, True),
    # usage from the rollups: series, the spend report (CSV, FOCUS), a team's baseline
    ("GET", "/api/v1/usage"): (usage_api.usage, True),
    ("GET", "/api/v1/reports/spend.csv"): (usage_api.spend_csv, True),
    ("GET", "/api/v1/baseline"): (baseline.baseline, True),
    ("GET", "/api/v1/spend"): (spend.spend, True),
    ("GET", "/api/v1/audit"): (admin.list_audit, True),
    ("GET", "/api/v1/alerts"): (alerts_api.list_alerts, True),
    ("GET", "/api/v1/hosts"): (forward_api.hosts, True),  # hosts seen by the forward proxy (issue 21)
    ("GET", "/api/v1/keys"): (admin.list_gateway_keys, True),
    ("POST", "/api/v1/keys"): (admin.create_gateway_key, True),
    # versioned policy and agent policy
    ("GET", "/api/v1/policy"): (policy_api.get_policy, True),
    ("PUT", "/api/v1/policy"): (policy_api.put_policy, True),
    ("GET", "/api/v1/policy/versions"): (policy_api.list_versions, True),
    ("GET", "/api/v1/policy/diff"): (policy_api.diff_versions, True),
    ("POST", "/api/v1/policy/rollback"): (policy_api.rollback_policy, True),
    ("POST", "/api/v1/policy/backtest"): (backtest_api.backtest, True),
    ("GET", "/api/v1/agent-policy"): (policy_api.get_agent_policy, True),
    ("PUT", "/api/v1/agent-policy"): (policy_api.put_agent_policy, True),
    ("GET", "/api/v1/agent-policy/versions"): (policy_api.list_versions, True),
    ("GET", "/api/v1/agent-policy/diff"): (policy_api.diff_versions, True),
    ("GET", "/api/v1/directory"): (policy_api.get_directory, True),
    ("PUT", "/api/v1/directory"): (policy_api.put_directory, True),
    ("GET", "/api/v1/directory/versions"): (policy_api.list_versions, True),
    ("GET", "/api/v1/directory/diff"): (policy_api.diff_versions, True),
    # agents: enrollment tokens (admin); bundle and telemetry (an enrollment token or the admin token)
    ("POST", "/api/v1/agent/tokens"): (agent_api.create_token, True),
    ("GET", "/api/v1/agent/tokens"): (agent_api.list_tokens, True),
    ("GET", "/api/v1/agents"): (agent_api.list_agents, True),
    ("GET", "/api/v1/agent/bundle"): (agent_api.bundle, False),
    ("POST", "/api/v1/agent/events"): (agent_api.ingest_events, False),
    ("POST", "/api/v1/agent/notices"): (agent_api.notices, False),
    ("POST", "/api/v1/agent/leases"): (lease_api.leases, False),
    ("POST", "/api/v1/agent/hosts"): (forward_api.agent_hosts, False),  # agents' forward-proxy hosts (issue 21)
}
_API_PREFIXED: dict[tuple[str, str], tuple[Handler, bool, str]] = {
    ("DELETE", "/api/v1/keys/"): (admin.revoke_gateway_key, True, "prefix"),
    ("GET", "/api/v1/events/"): (admin.get_event, True, "id"),
    ("GET", "/api/v1/policy/versions/"): (policy_api.get_version, True, "version"),
    ("GET", "/api/v1/agent-policy/versions/"): (policy_api.get_version, True, "version"),
    ("GET", "/api/v1/directory/versions/"): (policy_api.get_version, True, "version"),
    ("DELETE", "/api/v1/agent/tokens/"): (agent_api.revoke_token, True, "prefix"),
}


def routes() -> list[tuple[str, str]]:
    """(method, path) of every control-plane route, path parameters as {name} (for docs and tests)."""
    fixed = [(m, p) for m, p in _API]
    templated = [(m, f"{p}{{{param}}}") for (m, p), (_, _, param) in _API_PREFIXED.items()]
    exemptions = [(m, p) for m, p, _, _ in exemption_routes.ROUTES]  # exemption workflow (issue 6)
    pages = [(page.method, page.path) for page in console_pages.registry().PAGES]
    return sorted(fixed + templated + exemptions + pages)


def _route(request: Request) -> tuple[Handler, bool] | Response:
    path = request.path
    found = _API.get((request.method, path))
    if found is not None:
        return found
    # --- exemption workflow (issue 6): its API and console paths route themselves ---
    exemption = exemption_routes.match(request)
    if exemption is not None:
        return exemption
    # --- end exemption workflow ---
    if path.startswith("/console/"):
        return console_pages.route(request)
    if path.startswith("/api/v1/") or path in ("/healthz", "/metrics", "/console/"):
        for (method, prefix), (handler, admin_only, param) in _API_PREFIXED.items():
            if path.startswith(prefix) and len(path) > len(prefix) and "/" not in path[len(prefix):]:
                if request.method != method:
                    break
                request.params[param] = path[len(prefix):]
                return handler, admin_only
        if any(p == path for _, p in _API):
            return admin.api_error(405, f"{request.method} is not allowed on {path}", "method_not_allowed")
        return admin.api_error(404, f"no such endpoint: {path}; see /api/v1/openapi.json", "not_found")
    if path.count("/") < 2:
        return json_response({"error": {"message": "Tollhouse proxies /{provider}/...; e.g. /openai/v1/chat/"
                                        "completions. See /api/v1/openapi.json for the API.",
                                        "code": "not_found"}}, 404)
    return pipeline.handle, False


class GatewayApp:
    """The handler the HTTP server calls for every request, over one frozen GatewayState."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state

    async def __call__(self, head: Head, proto: Exchange) -> None:
        request = Request(head.method, head.path, head.query_string, head.headers, proto, head.raw_path)
        if head.path.startswith("/console") and (refused := console_session.gate(request, self.state)) is not None:
            proto.response_bytes(refused.status, refused.headers, refused.body)  # a console page, nobody signed in
            return
        routed = _route(request)
        if isinstance(routed, Response):
            proto.response_bytes(routed.status, routed.headers, routed.body)
            return
        handler, admin_only = routed
        if admin_only and not admin.authorized(request, self.state):
            resp = admin.api_error(401, "missing or wrong admin token: send 'Authorization: Bearer <admin_token>' "
                                   "(config admin_token or TOLLHOUSE_ADMIN_TOKEN)", "unauthorized")
            proto.response_bytes(resp.status, resp.headers, resp.body)
            return
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
    server = HttpServer(GatewayApp(state), limits=server_limits(settings.limits),
                        on_refused=state.metrics.connections_refused.inc)

    async def listen() -> None:
        nonlocal port
        try:
            # --workers: every worker listens on the same port and the kernel spreads connections over them
            port = await server.start(host, port, reuse_port=worker is not None)
        except OSError as exc:
            raise OSError(f"could not listen on {host}:{port}: {exc.strerror or exc}") from None

    add_forward_proxy(state, host, GatewayApp(state), worker is not None)  # forward_proxy.port (issue 21)
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


async def _follow_store(state: GatewayState, every_s: float = 1.0) -> None:
    """Adopt policy, directory and agent-policy versions other gateways sharing the store published."""
    while True:
        await asyncio.sleep(every_s)
        try:
            versions = await state.docs.latest_versions()  # one read serves all three
            await state.policies.poll(versions)
            await state.directories.poll(versions)
            await state.docs.refresh(versions)
        except StoreError as exc:
            log.warning("cannot check the store for control-plane changes: %s", exc)

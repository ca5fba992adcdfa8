"""The aiohttp application: routes, admin auth, lifecycle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from tollhouse.config import Settings
from tollhouse.gateway import admin, console, proxy
from tollhouse.gateway.state import GatewayState, build_state

log = logging.getLogger("tollhouse")

STATE: web.AppKey[GatewayState] = web.AppKey("state", GatewayState)

_Handler = Callable[[web.Request, GatewayState], Awaitable[web.StreamResponse]]


def _bind(state: GatewayState, handler: _Handler, admin_only: bool = False
          ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def bound(request: web.Request) -> web.StreamResponse:
        if admin_only and not admin.authorized(request, state):
            return admin.api_error(401, "missing or wrong admin token: send 'Authorization: Bearer "
                                   "<admin_token>' (config admin_token or TOLLHOUSE_ADMIN_TOKEN)", "unauthorized")
        return await handler(request, state)

    return bound


def build_app(state: GatewayState) -> web.Application:
    # The body limit is enforced (with a provider-shaped 413) by the proxy itself.
    app = web.Application(client_max_size=state.settings.limits.max_body_bytes + 1)
    app[STATE] = state
    r = app.router
    r.add_get("/healthz", _bind(state, admin.healthz))
    r.add_get("/metrics", _bind(state, admin.metrics))
    r.add_get("/console/", _bind(state, console.console))
    r.add_get("/api/v1/openapi.json", _bind(state, admin.openapi))
    r.add_get("/api/v1/events", _bind(state, admin.list_events, admin_only=True))
    r.add_get("/api/v1/keys", _bind(state, admin.list_gateway_keys, admin_only=True))
    r.add_post("/api/v1/keys", _bind(state, admin.create_gateway_key, admin_only=True))
    r.add_delete("/api/v1/keys/{prefix}", _bind(state, admin.revoke_gateway_key, admin_only=True))
    r.add_route("*", "/{provider}/{tail:.*}", _bind(state, proxy.handle))

    async def start(app: web.Application) -> None:
        state.writer.start()
        state.policy.start()

    async def stop(app: web.Application) -> None:
        await state.close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app


async def serve(settings: Settings, data_dir: Path, host: str, port: int,
                ready: Callable[[GatewayState, int], None] | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Run the gateway until `stop` is set (or forever); flush events on the way out."""
    state = await build_state(settings, data_dir, f"http://{host}:{port}")
    app = build_app(state)
    # handler_cancellation: a client that goes away cancels its handler, even while the upstream is
    # silent, so the call is recorded (and the upstream released) at once.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5,
                           handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
    await site.start()
    bound_port = int(runner.addresses[0][1]) if port == 0 else port
    if ready is not None:
        ready(state, bound_port)
    try:
        await (stop.wait() if stop is not None else asyncio.Event().wait())
    finally:
        await runner.cleanup()

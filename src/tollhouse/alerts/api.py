"""GET /api/v1/alerts: alerts newest first, each with its deliveries' states (secrets never appear: a
delivery names its channel, and an address only for email), and the channels' health."""

from __future__ import annotations

from tollhouse.alerts import outbox
from tollhouse.alerts.model import KINDS
from tollhouse.gateway.admin import BadParameter, api_error, int_param
from tollhouse.gateway.http import Request, Response, json_response
from tollhouse.gateway.state import GatewayState


async def list_alerts(request: Request, state: GatewayState) -> Response:
    query = request.query
    try:
        limit = int_param(query, "limit", 100, 1, 1000) or 100
        before = int_param(query, "before_ms", None, 0, 2**62)
    except BadParameter as exc:
        return api_error(400, str(exc), "bad_parameter")
    kind = query.get("kind")
    if kind is not None and kind not in KINDS:
        return api_error(400, f"kind must be one of {', '.join(KINDS)}, got {kind!r}", "bad_parameter")
    rows = await state.runner.run(lambda s: outbox.list_alerts(s, limit, before, kind))
    body: dict[str, object] = {"alerts": rows, "channels": state.settings.alerts.describe()}
    section = state.health.current.get("alerts")
    if section is not None:
        body["health"] = section()
    if len(rows) == limit:
        body["next"] = f"/api/v1/alerts?limit={limit}&before_ms={rows[-1]['created_ms']}"
    return json_response(body)

"""POST /api/v1/agent/leases: an agent asks for (renews, returns) its budget leases, all caps in one request.

Body: {"epoch": "<the agent process's id>", "leases": [{"rule", "scope", "id", "consumed", "need",
"release"}]}; the agent is named by its `X-Tollhouse-Agent-Id` header. Answer, in the same order:
{"ttl_s", "leases": [{"granted", "used", "limit", "ttl_s", "error"}]} (amounts in counter units:
nano-dollars for spend caps, tokens or requests for the others).
"""

from __future__ import annotations

from tollhouse.control.leases import LeaseItem, LeaseRequestError
from tollhouse.events.store import StoreError
from tollhouse.gateway.admin import api_error
from tollhouse.gateway.agent_api import agent_identity
from tollhouse.gateway.http import Request, Response, json_response
from tollhouse.gateway.policy_api import json_body
from tollhouse.gateway.state import GatewayState

MAX_ITEMS = 256
_AGENT_ID_MAX = 200


def agent_name(request: Request, who: str) -> str:
    """The agent's id (its header), else its token's prefix."""
    ident = (request.header("x-tollhouse-agent-id") or "").strip()
    return ident[:_AGENT_ID_MAX] if ident else who


async def leases(request: Request, state: GatewayState) -> Response:
    who = await agent_identity(request, state)
    if isinstance(who, Response):
        return who
    data = await json_body(request)
    if not isinstance(data, dict) or not isinstance(data.get("leases"), list) or not isinstance(data.get("epoch"), str):
        return api_error(400, 'body must be {"epoch": "...", "leases": [{"rule", "scope", "id", "consumed", '
                         '"need"}, ...]}', "bad_request")
    raw = data["leases"]
    if len(raw) > MAX_ITEMS:
        return api_error(400, f"at most {MAX_ITEMS} leases per request, got {len(raw)}", "bad_request")
    try:
        items = [LeaseItem.parse(item, f"leases[{n}]") for n, item in enumerate(raw)]
    except LeaseRequestError as exc:
        return api_error(400, str(exc), "bad_request")
    now_ms = int(state.clock() * 1000)
    try:
        grants = await state.leases.grant(agent_name(request, who), data["epoch"][:100], items,
                                          state.policy.current, now_ms)
    except StoreError as exc:
        return api_error(503, f"budget counters unavailable: {exc}", "counters_unavailable")
    state.metrics.lease_requests.inc()
    return json_response({"ttl_s": state.leases.sizing.ttl_s, "leases": [g.json() for g in grants]})

"""GET /api/v1/events: recorded calls, newest first, filtered by person, team, project, cost centre, provider,
model and decision (each comma-separated values; a team includes the teams below it). A parameter it does not
take is a 400 naming those it does; a team, project or person no one knows is a 404."""

from __future__ import annotations

from urllib.parse import urlencode

from tollhouse.events.model import event_json
from tollhouse.gateway import usage_params as params
from tollhouse.gateway.admin import ApiError, BadParameter, int_param, read
from tollhouse.gateway.http import Request, Response, json_response
from tollhouse.gateway.state import GatewayState

DECISIONS = ("allow", "warn", "redirect", "block")
_FILTERS = ("subject", "person", "team", "project", "cost_centre", "provider", "model", "decision")
CONTENT_ROLES = ("admin", "auditor")  # who reads captured prompts and responses
_PARAMS = ("limit", "before", "include", *_FILTERS)


async def list_events(request: Request, state: GatewayState) -> Response:
    query = request.query
    params.check_names(query, _PARAMS)
    try:
        limit = int_param(query, "limit", 100, 1, 10_000) or 100
        before = int_param(query, "before", None, 0, 2**62)
    except BadParameter as exc:
        raise params.bad(str(exc)) from None
    include = query.get("include")
    if include not in (None, "content"):
        raise ApiError(400, f"query parameter 'include' can only be 'content', got {include!r}", "bad_parameter")
    if include is not None and request.user is not None and request.user.role not in CONTENT_ROLES:
        raise ApiError(403, f"your role ({request.user.role}) may not read what calls said (include=content); it "
                       "needs the role admin or auditor", "forbidden")
    decisions = tuple(v for v in query.get("decision", "").split(",") if v)
    if "decision" in query and (not decisions or set(decisions) - set(DECISIONS)):
        raise params.bad(f"query parameter 'decision' takes {', '.join(DECISIONS)} (comma-separated); "
                         f"got {query['decision']!r}")
    found = await params.filters({k: v for k, v in query.items() if k in params.FILTERS}, state,
                                 state.directory.current)
    columns = dict(found.columns)
    if decisions:
        columns["decision"] = decisions
    # Read your own writes, but never hang: a store that does not answer gets a 503 within seconds.
    rows, unsaved = await read(state, lambda s: s.list_events(limit, None, before, content=include is not None,
                                                              filters=columns))
    body: dict[str, object] = {"events": [event_json(r) for r in rows]}
    if unsaved:
        body["unsaved"] = unsaved  # recorded, not yet in the store (storage failing): listed once written
    if rows and len(rows) == limit:
        kept = urlencode({k: v for k, v in query.items() if k not in ("limit", "before")})
        body["next"] = f"/api/v1/events?limit={limit}&before={rows[-1]['seq']}{'&' + kept if kept else ''}"
    return json_response(body)

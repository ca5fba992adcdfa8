"""GET /api/v1/spend: what a person, team, project or the org has spent, and the headroom of each cap."""

from __future__ import annotations

from datetime import UTC, datetime

from tollhouse.events.store import StoreError
from tollhouse.gateway.admin import api_error
from tollhouse.gateway.http import Request, Response, json_response
from tollhouse.gateway.state import GatewayState
from tollhouse.gateway.usage_params import check_names, known_ids
from tollhouse.ledger.local import NANO_PER_USD
from tollhouse.ledger.windows import window_bounds_ms
from tollhouse.policy.rules import MONTHLY, parse_count_window
from tollhouse.policy.shadow import shadow_ids
from tollhouse.policy.timewindow import zone

_CHECKED = {"subject": "person", "team": "team", "project": "project"}
_SCOPES = {"person": "subject", "subject": "subject", "individual": "subject", "service": "subject",
           "team": "team", "project": "project", "org": "org"}


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def spend(request: Request, state: GatewayState) -> Response:
    q = request.query
    check_names(q, ("scope", "id", "window", "provider"))
    scope = _SCOPES.get(q.get("scope", ""))
    ident = q.get("id", "*" if scope == "org" else "")
    if scope is None or not ident:
        return api_error(400, "use ?scope=person|team|project|service|org&id=ID[&window=month|24h|7d|30d]"
                         "[&provider=P]", "bad_parameter")
    try:
        window = parse_count_window(q.get("window", "month"), MONTHLY)
    except ValueError as exc:
        return api_error(400, f"window: {exc}", "bad_parameter")
    provider = q.get("provider")
    now_ms = int(state.clock() * 1000)
    lc = state.settings.ledger
    start, end = window_bounds_ms(window, now_ms, lc.billing_day, zone(lc.timezone))
    directory, policy = state.directory.current, state.policy.current  # one version of each for the answer
    # a team: it and the teams below it; an id neither the directory nor the history knows: 404
    ids = (ident,) if scope == "org" else await known_ids(state, directory, _CHECKED[scope], ident)
    await state.writer.flush(2.0)  # never hang on failing storage
    totals = await state.runner.run(lambda s: s.usage_totals(scope, ids, start, min(end, now_ms + 1)))
    if provider:
        totals = {p: v for p, v in totals.items() if p == provider}
    subject = directory.subject(ident) if scope == "subject" else None
    caps = policy.caps_counting(scope, ident, subject)
    shadow = shadow_ids(policy)
    if policy.shadow is not None:  # shadow rules' caps are counted too (never refusing): shown, marked
        caps += [c for c in policy.shadow.caps_counting(scope, ident, subject) if c.rule.id in shadow]
    cap_rows = []
    lease_rows: list[dict[str, object]] = []  # budget leases agents hold on these caps (counted in `used`)
    for cap in caps:
        try:
            used = await state.ledger.cap_used(cap, now_ms)
        except StoreError as exc:
            return api_error(503, f"budget counters unavailable: {exc}", "counters_unavailable")
        limit = cap.units
        scale = NANO_PER_USD if cap.metric == "spend" else 1
        leased = state.leases.holding(cap)
        for lease in leased:
            lease_rows.append({"agent": lease.agent, "rule_id": lease.cap.rule.id, "metric": lease.cap.metric,
                               "window": lease.cap.window.label, "outstanding": lease.held / scale,
                               "granted": lease.granted / scale, "drawn": lease.drawn / scale,
                               "live": lease.live, "expires": _iso(lease.expires_ms)})
        cap_rows.append({
            "rule_id": cap.rule.id, "type": cap.rule.type_name, "metric": cap.metric,
            "window": cap.window.label, "providers": sorted(cap.providers) if cap.providers else None,
            "limit": limit / scale, "used": used / scale, "remaining": max(limit - used, 0) / scale,
            "severity": cap.rule.severity.name, "shadow": cap.rule.id in shadow,
            "leases_outstanding": sum(lease.held for lease in leased) / scale,
        })
    spend_nusd = sum(v[0] for v in totals.values())
    return json_response({
        "scope": q.get("scope"), "id": ident, "window": window.label, "start": _iso(start),
        "end": _iso(end if window.monthly else now_ms),
        "spend_usd": spend_nusd / NANO_PER_USD,
        "input_tokens": sum(v[1] for v in totals.values()),
        "output_tokens": sum(v[2] for v in totals.values()),
        "requests": sum(v[3] for v in totals.values()),
        "by_provider": {p: {"spend_usd": v[0] / NANO_PER_USD, "input_tokens": v[1], "output_tokens": v[2],
                            "requests": v[3]} for p, v in sorted(totals.items())},
        "caps": cap_rows,
        "leases": lease_rows,
    })

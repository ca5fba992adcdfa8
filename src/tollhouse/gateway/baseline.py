"""GET /api/v1/baseline?team=ID&days=14: what "normal" looks like for a team (and the teams below it) over the
last complete local days: calls, tokens and cost per day as median and spread (quartiles, min, max), weekdays
and weekends apart, and the model mix. Days without a call count as zero days."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any

from tollhouse.gateway import usage_params as params
from tollhouse.gateway.admin import BadParameter, int_param
from tollhouse.gateway.http import Request, Response, json_response
from tollhouse.gateway.state import GatewayState
from tollhouse.gateway.usage_api import rows
from tollhouse.gateway.usage_series import Totals, bucketer, by_bucket, usd

_PARAMS = ("team", "days", "to")


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, quartiles, mean, min and max of `values` (zeros when there are none)."""
    if not values:
        return {"median": 0, "p25": 0, "p75": 0, "mean": 0, "min": 0, "max": 0}
    ordered = sorted(values)
    if len(ordered) > 1:
        p25, _, p75 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        p25 = p75 = ordered[0]
    return {"median": statistics.median(ordered), "p25": p25, "p75": p75, "mean": statistics.fmean(ordered),
            "min": ordered[0], "max": ordered[-1]}


def _summary(days: list[dict[str, Any]]) -> dict[str, Any]:
    return {"days": len(days),
            "calls": spread([d["calls"] for d in days]),
            "tokens": spread([d["input_tokens"] + d["output_tokens"] for d in days]),
            "cost_usd": {k: round(v, 9) for k, v in spread([d["cost_usd"] for d in days]).items()}}


async def baseline(request: Request, state: GatewayState) -> Response:
    query = request.query
    params.check_names(query, _PARAMS)
    team = query.get("team")
    if not team:
        raise params.bad("query parameter 'team' is required: /api/v1/baseline?team=ID[&days=14]")
    try:
        days = int_param(query, "days", 14, 1, 366) or 14
    except BadParameter as exc:
        raise params.bad(str(exc)) from None
    directory = state.directory.current
    teams = await params.known_ids(state, directory, "team", team)
    tz, billing_day = params.org_zone(state)
    if "to" in query:  # the last day included (a date): for looking back at a past fortnight
        end_day = date.fromisoformat(query["to"]) + timedelta(days=1) if _is_date(query["to"]) else None
        if end_day is None:
            raise params.bad(f"query parameter 'to' must be a date such as 2026-11-30; got {query['to']!r}")
    else:
        end_day = datetime.fromtimestamp(state.clock(), tz).date()  # today is not complete: up to its start
    first_day = end_day - timedelta(days=days)
    since = params.local_ms(datetime(first_day.year, first_day.month, first_day.day, tzinfo=tz))
    until = params.local_ms(datetime(end_day.year, end_day.month, end_day.day, tzinfo=tz))
    rng = params.Range(since, until, tz, billing_day)
    found = await rows(state, "day", ["provider", "model"], rng, params.Filters({"team": teams}))
    daily_totals: dict[int, Totals] = {}
    day_of = bucketer("day", "day", tz, billing_day, since, until)
    for buckets in by_bucket(found, [], day_of).values():
        for (start, _), t in buckets.items():
            daily_totals[start] = t
    daily: list[dict[str, Any]] = []
    for i in range(days):
        day = first_day + timedelta(days=i)
        start = params.local_ms(datetime(day.year, day.month, day.day, tzinfo=tz))
        t = daily_totals.get(start, Totals())
        daily.append({"date": day.isoformat(), "weekend": day.weekday() >= 5, "calls": t.calls,
                      "input_tokens": t.input_tokens, "output_tokens": t.output_tokens, "cost_usd": usd(t.cost_nusd),
                      "blocked": t.blocked, "would_block": t.would_block})
    mix = by_bucket(found, ["provider", "model"], bucketer("total", "day", tz, billing_day, since, until))
    total_calls = sum(d["calls"] for d in daily) or 1
    total_cost = sum(t.cost_nusd for b in mix.values() for t in b.values()) or 1
    models: list[dict[str, Any]] = []
    for (provider, model), buckets in mix.items():
        t = next(iter(buckets.values()))
        models.append({"provider": provider, "model": model, "calls": t.calls, "share": round(t.calls / total_calls, 4),
                       "tokens": t.input_tokens + t.output_tokens, "cost_usd": usd(t.cost_nusd),
                       "cost_share": round(t.cost_nusd / total_cost, 4)})
    models.sort(key=lambda m: (-m["calls"], str(m["model"])))
    return json_response({
        "team": team, "teams": list(teams), "days": days, "from": first_day.isoformat(),
        "to": (end_day - timedelta(days=1)).isoformat(), "timezone": tz.key,
        "per_day": _summary(daily),
        "weekdays": _summary([d for d in daily if not d["weekend"]]),
        "weekends": _summary([d for d in daily if d["weekend"]]),
        "model_mix": models, "daily": daily,
    })


def _is_date(raw: str) -> bool:
    try:
        date.fromisoformat(raw)
    except ValueError:
        return False
    return len(raw) == 10

"""GET /api/v1/usage (series by team, project, cost centre, person, provider or model, per hour or day) and
GET /api/v1/reports/spend.csv (the same as CSV, or in FOCUS columns), served from the hourly rollups."""

from __future__ import annotations

import functools
from typing import Any

from tollhouse.events.rollup import DAY_MS, HOUR_MS, local_date_ms
from tollhouse.gateway import usage_params as params
from tollhouse.gateway import usage_report
from tollhouse.gateway.admin import ApiError
from tollhouse.gateway.http import Request, Response, json_response
from tollhouse.gateway.state import GatewayState
from tollhouse.gateway.storage import StorageUnavailable, read_store
from tollhouse.gateway.usage_series import Key, Totals, bucketer, by_bucket, measures_json

_USAGE_PARAMS = ("group_by", "interval", "from", "to", *params.FILTERS)
_REPORT_PARAMS = (*_USAGE_PARAMS, "format")
_MAX_DAYS = {"hour": 93, "day": 1100, "month": 1100, "total": 1100}


async def rows(state: GatewayState, source: str, columns: list[str], rng: params.Range, filters: params.Filters,
               by_period: bool = True) -> list[dict[str, Any]]:
    """The rollup rows of a view (`source`: hour or day), after the events recorded so far are written (never
    hanging). Hours: those starting in the range, and the one `from` falls in; days: the local dates it touches.
    Not `by_period`: a row per key, summed over those hours or days."""
    if source == "hour":
        since, until = rng.since_ms // HOUR_MS * HOUR_MS, rng.until_ms
    else:
        since, until = local_date_ms(rng.since_ms, rng.tz), local_date_ms(rng.until_ms - 1, rng.tz) + DAY_MS
    try:
        found: list[dict[str, Any]]
        found, _ = await read_store(state.writer, state.runner.run,
                                    lambda s: s.usage_rows(source, columns, since, until, filters.columns, by_period))
    except StorageUnavailable as exc:
        raise ApiError(503, f"usage cannot be read right now: {exc}. Retry shortly.", "event_store_unavailable"
                       ) from None
    return found


def source_of(interval: str) -> str:
    """The rollup an interval is read from: hours for hours, local days for the rest."""
    return "hour" if interval == "hour" else "day"


def _key_json(names: list[str], key: Key) -> Any:
    return key[0] if len(names) == 1 else ("all" if not names else dict(zip(names, key, strict=True)))


async def usage(request: Request, state: GatewayState) -> Response:
    query = request.query
    params.check_names(query, _USAGE_PARAMS)
    dims = params.group_by(query, many=False, default=None)
    interval = params.choice(query, "interval", ("day", "hour"), "day")
    rng = params.time_range(query, state, _MAX_DAYS[interval])
    filters = await params.filters(query, state, state.directory.current)
    columns = [params.DIMENSIONS[d] for d in dims]
    source = source_of(interval)
    found = await rows(state, source, columns, rng, filters)
    grouped = by_bucket(found, columns, bucketer(interval, source, rng.tz, rng.billing_day, rng.since_ms,
                                                 rng.until_ms))
    series = []
    grand = Totals()
    iso = functools.cache(rng.iso)  # every series has the same few bucket starts
    for key, buckets in grouped.items():
        total = Totals()
        points = []
        for (start, _), t in sorted(buckets.items()):
            points.append({"t": iso(start), **measures_json(t)})
            total.merge(t)
        grand.merge(total)
        series.append({"key": _key_json(dims, key), "totals": measures_json(total), "points": points})
    series.sort(key=lambda s: (-s["totals"]["cost_usd"], -s["totals"]["calls"], str(s["key"])))
    return json_response({
        "group_by": dims[0] if dims else None, "interval": interval, "from": rng.iso(rng.since_ms),
        "to": rng.iso(rng.until_ms), "timezone": rng.tz.key,
        "filters": {name: list(v) for name, v in filters.columns.items()},
        "totals": measures_json(grand), "series": series,
    })


async def spend_csv(request: Request, state: GatewayState) -> Response:
    query = request.query
    params.check_names(query, _REPORT_PARAMS)
    fmt = params.choice(query, "format", ("csv", "focus"), "csv")
    dims = params.group_by(query, many=True, default="team")
    interval = params.choice(query, "interval", ("day", "hour", "month", "total"), "day")
    rng = params.time_range(query, state, _MAX_DAYS[interval])
    filters = await params.filters(query, state, state.directory.current)
    if fmt == "focus":  # a FOCUS row is one service (provider) and SKU (model) per day
        dims = [*dims, *(d for d in ("provider", "model") if d not in dims)]
        interval = "day"
    columns = [params.DIMENSIONS[d] for d in dims]
    source = source_of(interval)
    found = await rows(state, source, columns, rng, filters)
    grouped = by_bucket(found, columns, bucketer(interval, source, rng.tz, rng.billing_day, rng.since_ms,
                                                 rng.until_ms))
    if fmt == "focus":
        body = usage_report.focus_csv(dims, grouped, rng, state.directory.current.org or "tollhouse")
    else:
        body = usage_report.plain_csv(dims, grouped, rng)
    suffix = "-focus" if fmt == "focus" else ""
    name = f"tollhouse-spend-{rng.iso(rng.since_ms)[:10]}-{rng.iso(rng.until_ms)[:10]}{suffix}"
    return Response(200, body.encode(), [("content-type", "text/csv; charset=utf-8"),
                                         ("content-disposition", f'attachment; filename="{name}.csv"')])

"""The usage explorer (/console/usage): usage grouped by one dimension per day or hour over a range, filtered,
as a table and a stacked chart; /console/usage.csv is the same query as the spend report's CSV
(/api/v1/reports/spend.csv, the same code) for a console user signed in by cookie."""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import urlencode

from tollhouse.console.pages import MONEY, Page
from tollhouse.console.render import error_page, render
from tollhouse.console.usage_data import chart, label, top_series, usd
from tollhouse.gateway import usage_api
from tollhouse.gateway import usage_params as params
from tollhouse.gateway.admin import ApiError
from tollhouse.gateway.console_session import ConsoleUser
from tollhouse.gateway.http import Request, Response
from tollhouse.gateway.state import GatewayState
from tollhouse.gateway.storage import StorageUnavailable

FILTERS = ("team", "project", "cost_centre", "person", "provider", "model")
PARAMS = ("group_by", "interval", "from", "to", *FILTERS)
MAX_DAYS = {"day": 1100, "hour": 93}
TOP = 10  # keys drawn in the chart (the rest as one); the table has them all


def query_of(request: Request) -> dict[str, str]:
    """The query without the empty fields a GET form sends, in a stable order."""
    raw = request.query
    return {name: raw[name].strip() for name in PARAMS if raw.get(name, "").strip()}


def _form(state: GatewayState, query: dict[str, str]) -> dict[str, Any]:
    directory = state.directory.current
    return {"q": query, "dimensions": list(params.DIMENSIONS), "filters": FILTERS,
            "choices": {"team": sorted(t.id for t in directory.config.teams), "project": directory.project_ids(),
                        "person": sorted(p.id for p in directory.config.people)}}


async def usage(request: Request, state: GatewayState, user: ConsoleUser) -> Response:
    raw = request.query
    query = query_of(request)
    base = _form(state, query)
    try:
        params.check_names(raw, PARAMS)
        dims = params.group_by(query, many=False, default=None)
        interval = params.choice(query, "interval", ("day", "hour"), "day")
        rng = params.time_range(query, state, MAX_DAYS[interval])
        found = await params.filters({k: v for k, v in query.items() if k in FILTERS}, state,
                                     state.directory.current)
        data = await top_series(state, dims, interval, rng, found, TOP)
    except ApiError as exc:
        return render(request, state, user, "usage.html", "Usage", exc.response.status, problem=str(exc),
                      rows=None, **base)
    except StorageUnavailable as exc:
        return error_page(request, state, user, 503, f"Usage cannot be read right now: {exc}. Reload shortly.")
    rows = [{"key": label(key), "calls": t.calls, "input_tokens": t.input_tokens, "output_tokens": t.output_tokens,
             "cost": usd(t.cost_nusd), "blocked": t.blocked, "would_block": t.would_block}
            for key, t in data.ranked()]
    g = data.grand
    total = {"calls": g.calls, "input_tokens": g.input_tokens, "output_tokens": g.output_tokens,
             "cost": usd(g.cost_nusd), "blocked": g.blocked, "would_block": g.would_block}
    return render(request, state, user, "usage.html", "Usage", problem=None, rows=rows, total=total,
                  group=dims[0] if dims else None, interval=interval, since=rng.iso(rng.since_ms),
                  until=rng.iso(rng.until_ms), csv=f"/console/usage.csv?{urlencode(query)}",
                  chart={**chart(data, top=TOP, now_ms=int(state.clock() * 1000)), "timezone": rng.tz.key}, **base)


async def usage_csv(request: Request, state: GatewayState, user: ConsoleUser) -> Response:
    """The spend report's CSV for the explorer's query (its handler, handed the cleaned query)."""
    query = query_of(request)
    try:
        params.check_names(request.query, (*PARAMS, "format"))
        if request.query.get("format"):
            query["format"] = request.query["format"]
        return await usage_api.spend_csv(dataclasses.replace(request, query_string=urlencode(query)), state)
    except ApiError as exc:
        return error_page(request, state, user, exc.response.status, str(exc))


PAGES = (
    Page("GET", "/console/usage", usage, MONEY, "Usage"),
    Page("GET", "/console/usage.csv", usage_csv, MONEY),
)

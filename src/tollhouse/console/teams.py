"""Teams: the index (/console/teams: each team's month so far) and one team's page (/console/teams/{id}): its
baseline over the last 14 complete days (the /api/v1/baseline computation), the caps in force on it with a
burn-down of each monthly one, its members and projects. A team neither the directory nor the history knows
is the 404 page."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import orjson

from tollhouse.console import budgets
from tollhouse.console.errors import failed
from tollhouse.console.pages import MONEY, Page
from tollhouse.console.render import error_page, render
from tollhouse.console.usage_data import Series, chart, month_range, series, usd
from tollhouse.gateway import baseline as baseline_api
from tollhouse.gateway import usage_params as params
from tollhouse.gateway.admin import ApiError
from tollhouse.gateway.console_session import ConsoleUser
from tollhouse.gateway.http import Request, Response
from tollhouse.gateway.state import GatewayState
from tollhouse.gateway.storage import StorageUnavailable
from tollhouse.gateway.usage_params import Filters
from tollhouse.policy.engine import Cap

BASELINE_DAYS = 14


async def index(request: Request, state: GatewayState, user: ConsoleUser) -> Response:
    directory = state.directory.current
    now_ms = int(state.clock() * 1000)
    try:
        data = await series(state, ["team"], "day", month_range(state, now_ms), Filters())
    except (ApiError, StorageUnavailable) as exc:
        return failed(request, state, user, exc)
    cfg = directory.config
    teams = []
    for team in cfg.teams:
        t = data.totals.get((team.id,))
        below = [data.totals[(d,)] for d in directory.descendants(team.id) if (d,) in data.totals]
        teams.append({"id": team.id, "parent": team.parent, "cost_centre": team.cost_centre,
                      "people": sum(1 for p in cfg.people if p.team == team.id),
                      "projects": sum(1 for p in cfg.projects if p.team == team.id),
                      "cost": usd(t.cost_nusd if t else 0), "calls": t.calls if t else 0,
                      "cost_all": usd(sum(b.cost_nusd for b in below))})
    return render(request, state, user, "teams.html", "Teams", teams=teams, month_start=data.starts[0])


async def _baseline(request: Request, state: GatewayState, team: str) -> dict[str, Any]:
    """What /api/v1/baseline?team=ID&days=14 answers (its handler, asked in-process)."""
    asked = dataclasses.replace(request, query_string=urlencode({"team": team, "days": BASELINE_DAYS}), params={})
    answer = await baseline_api.baseline(asked, state)
    found: dict[str, Any] = orjson.loads(answer.body)
    return found


def _burn_down(cap: Cap, days: Series, now_ms: int) -> dict[str, Any]:
    """A monthly cap's remaining budget at the end of each day so far, and the straight line to zero."""
    scale = Decimal(1_000_000_000) if cap.metric == "spend" else Decimal(1)
    limit = Decimal(cap.units) / scale
    measure = {"spend": "cost_nusd", "input_tokens": "input_tokens", "output_tokens": "output_tokens",
               "requests": "calls"}.get(cap.metric)
    spent = Decimal(0)
    remaining: list[float | None] = []
    for start in days.starts:
        if start > now_ms:
            remaining.append(None)
            continue
        for buckets in days.groups.values():
            t = buckets.get(start)
            if t is not None:
                spent += Decimal(t.input_tokens + t.output_tokens if measure is None else getattr(t, measure)) / scale
        remaining.append(float(limit - spent))
    n = len(days.starts)
    ideal = [float(limit - limit * (i + 1) / n) for i in range(n)]
    unit = "usd" if cap.metric == "spend" else "count"
    return {"x": [s // 1000 for s in days.starts], "stacked": False, "unit": unit,
            "series": [{"label": f"{cap.rule.id}: remaining", "values": remaining}],
            "lines": [{"label": "even pace", "values": ideal}]}


async def team_page(request: Request, state: GatewayState, user: ConsoleUser) -> Response:
    team_id = request.params["id"]
    directory = state.directory.current
    now_ms = int(state.clock() * 1000)
    try:
        teams = await params.known_ids(state, directory, "team", team_id)
    except ApiError:
        return error_page(request, state, user, 404, f"There is no team {team_id!r}: the directory does not name it "
                          "and no recorded call has it. See the list of teams at /console/teams.")
    try:
        base = await _baseline(request, state, team_id)
        month = month_range(state, now_ms)
        caps = budgets.caps_for(state, [("team", team_id)])
        statuses = [await budgets.status(state, cap, now_ms) for cap in caps]
        burn = []
        for cap in caps:
            if not cap.window.monthly:
                continue
            filters = Filters({"team": teams, **({"provider": tuple(sorted(cap.providers))} if cap.providers else {})})
            days = await series(state, [], "day", month, filters)
            burn.append({"rule": cap.rule.id, "chart": {**_burn_down(cap, days, now_ms), "timezone": month.tz.key}})
        baseline_start = params.local_ms(datetime.fromisoformat(base["from"]).replace(tzinfo=month.tz))
        mix_days = await series(state, ["model"], "day", params.Range(
            min(baseline_start, month.since_ms), month.until_ms, month.tz, month.billing_day),
            Filters({"team": teams}))
    except (ApiError, StorageUnavailable) as exc:
        return failed(request, state, user, exc)
    cfg = directory.config
    team = next((t for t in cfg.teams if t.id == team_id), None)
    return render(
        request, state, user, "team.html", f"Team {team_id}", team_id=team_id, team=team,
        sub_teams=[t for t in teams if t != team_id],
        members=[p for p in cfg.people if p.team == team_id], services=[s for s in cfg.services if s.team == team_id],
        projects=[p for p in cfg.projects if p.team == team_id], baseline=base, caps=statuses, burn=burn,
        daily_chart={**chart(mix_days, top=6, now_ms=now_ms), "timezone": month.tz.key})


PAGES = (
    Page("GET", "/console/teams", index, MONEY, "Teams"),
    Page("GET", "/console/teams/{id}", team_page, MONEY),
)

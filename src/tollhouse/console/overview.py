"""The overview page (/console/): this billing month against the same days of the last one, spend over time by
team, the top models and people, blocked and would-be-blocked calls, and the budgets at risk. Every figure is
the organisation's total from the usage rollups."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tollhouse.alerts.console_banner import alert_banner
from tollhouse.console import blocked, budgets
from tollhouse.console.errors import failed
from tollhouse.console.pages import ALL_ROLES, AUDIT, Page
from tollhouse.console.render import render
from tollhouse.console.usage_data import Series, chart, label, month_range, series, top_series, usd
from tollhouse.events.audit_search import count_kinds
from tollhouse.events.store import Store
from tollhouse.gateway.admin import ApiError, read
from tollhouse.gateway.console_session import ConsoleUser
from tollhouse.gateway.http import Request, Response
from tollhouse.gateway.session_revocations import SignedIn, load_signed_in
from tollhouse.gateway.sign_in_guard import FAILED, LOCKED
from tollhouse.gateway.state import GatewayState
from tollhouse.gateway.storage import StorageUnavailable
from tollhouse.gateway.usage_params import Filters, Range
from tollhouse.gateway.usage_series import Totals

TOP = 8


def _between(data: Series, since_ms: int, until_ms: int) -> Totals:
    """The totals of the buckets starting in [since_ms, until_ms)."""
    out = Totals()
    for buckets in data.groups.values():
        for start, t in buckets.items():
            if since_ms <= start < until_ms:
                out.merge(t)
    return out


def _top(data: Series) -> list[dict[str, Any]]:
    return [{"key": label(k), "raw": k[0], "cost": usd(t.cost_nusd), "calls": t.calls,
             "tokens": t.input_tokens + t.output_tokens} for k, t in data.ranked()[:TOP]]


async def overview(request: Request, state: GatewayState, user: ConsoleUser) -> Response:
    try:
        return await _overview(request, state, user)
    except (ApiError, StorageUnavailable) as exc:
        return failed(request, state, user, exc)


async def _overview(request: Request, state: GatewayState, user: ConsoleUser) -> Response:
    now_ms = int(state.clock() * 1000)
    this, last = month_range(state, now_ms), month_range(state, now_ms, 1)
    tz = this.tz
    both = Range(last.since_ms, this.until_ms, tz, this.billing_day)
    by_team = await series(state, ["team"], "day", both, Filters())
    today = datetime.fromtimestamp(now_ms / 1000, tz)
    elapsed_days = (today.date() - datetime.fromtimestamp(this.since_ms / 1000, tz).date()).days + 1
    last_days = [s for s in by_team.starts if last.since_ms <= s < this.since_ms][:elapsed_days]
    last_until = last_days[-1] + 1 if last_days else last.since_ms
    mtd = _between(by_team, this.since_ms, this.until_ms)
    last_month = _between(by_team, last.since_ms, this.since_ms)
    last_same = _between(by_team, last.since_ms, last_until)
    mtd_range = Range(this.since_ms, this.until_ms, tz, this.billing_day)
    # only the totals of these are shown: each key's summed in the store, the days of the top few alone read
    by_model = await top_series(state, ["model"], "day", mtd_range, Filters(), TOP)
    by_person = await top_series(state, ["person"], "day", mtd_range, Filters(), TOP)
    by_project = await top_series(state, ["project"], "day", mtd_range, Filters(), TOP)
    stopped = await blocked.blocked(state, this.since_ms, this.until_ms)
    active = [("org", "*")] + [("team", t.id) for t in state.directory.current.config.teams] + [
        ("project", p) for p in state.directory.current.project_ids()] + [
        ("subject", k[0]) for k in by_person.totals if k[0]]
    caps = await budgets.statuses(state, active, now_ms)
    security = await _security(state, now_ms) if user.role in AUDIT else None
    change = None
    if last_same.cost_nusd:
        change = (mtd.cost_nusd - last_same.cost_nusd) / last_same.cost_nusd
    return render(
        request, state, user, "overview.html", "Overview", banner=alert_banner(state),
        month_start=this.since_ms, last_start=last.since_ms, elapsed_days=elapsed_days,
        mtd_cost=usd(mtd.cost_nusd), mtd_calls=mtd.calls, last_same_cost=usd(last_same.cost_nusd),
        last_same_calls=last_same.calls, last_month_cost=usd(last_month.cost_nusd), change=change,
        blocked_total=mtd.blocked, would_total=mtd.would_block,
        chart={**chart(by_team, top=TOP, now_ms=now_ms), "timezone": tz.key},
        top_models=_top(by_model), top_people=_top(by_person), top_projects=_top(by_project),
        by_rule=stopped.by_rule, recent_blocked=stopped.recent,
        at_risk=[c for c in caps if c.at_risk], caps_count=len(caps), security=security)


_SECURITY_KINDS = (FAILED, LOCKED)


async def _security(state: GatewayState, now_ms: int) -> dict[str, int]:
    """For admins and auditors: console sessions signed in now, wrong admin tokens and lockouts in 24 hours."""
    since_ms = now_ms - 86_400_000

    def counts(s: Store) -> tuple[list[SignedIn], dict[str, int]]:
        return load_signed_in(s, now_ms), count_kinds(s, _SECURITY_KINDS, since_ms)

    (rows, kinds), _ = await read(state, counts)
    return {"sessions": len(state.sessions.working(rows)),
            "failed": kinds[FAILED], "locked": kinds[LOCKED]}


PAGES = (
    Page("GET", "/console/", overview, ALL_ROLES, "Overview"),
)

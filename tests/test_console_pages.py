"""The console's overview, usage and team pages over HTTP: sign-in, roles (403 page), unknown ids (404 page),
wrong queries (400), the usage CSV, and the budget projection."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from conftest import ADMIN, Gateway, Mock
from console_roles import role_cookie
from console_seed import NOW, seeded_gateway
from tollhouse.console import budgets, registry
from tollhouse.console.pages import ADMIN as ADMIN_ONLY
from tollhouse.console.pages import Page
from tollhouse.console.render import render
from tollhouse.console.usage_data import month_range


@pytest.fixture
def gw(mock: Mock, tmp_path: Path) -> Iterator[Gateway]:
    with seeded_gateway(mock.url, tmp_path) as gateway:
        yield gateway


def as_role(gw: Gateway, path: str, role: str) -> tuple[int, str, dict[str, str]]:
    status, body, headers = gw.request("GET", path, token=None,
                                       headers={"Cookie": role_cookie(ADMIN, f"a-{role}", role, NOW)})
    return status, body.decode(), headers


def test_anonymous_browsers_are_sent_to_sign_in(gw: Gateway) -> None:
    for path in ("/console/", "/console/usage?group_by=team", "/console/usage.csv", "/console/teams/platform",
                 "/console/events/x"):
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        conn.request("GET", path)
        resp = conn.getresponse()
        status, headers = resp.status, {k.lower(): v for k, v in resp.getheaders()}
        conn.close()
        assert status == 303 and headers["location"].startswith("/console/login?next=/console/"), path


def test_every_role_sees_the_overview_usage_and_teams(gw: Gateway) -> None:
    for role in ("admin", "policy_owner", "finance", "auditor"):
        for path in ("/console/", "/console/usage", "/console/teams", "/console/teams/ml"):
            status, body, headers = as_role(gw, path, role)
            assert status == 200, (role, path, body)
            assert "content-security-policy" in headers and "<script>" not in body  # no inline script


def test_a_page_outside_the_role_answers_the_403_page(mock: Mock, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    async def secret(request: Any, state: Any, user: Any) -> Any:
        return render(request, state, user, "error.html", "Secret", message="admins only")

    # the app compiles its routes when it starts: the page is registered before
    monkeypatch.setattr(registry, "PAGES", (*registry.PAGES, Page("GET", "/console/secret", secret, ADMIN_ONLY,
                                                                    "Secret")))
    with seeded_gateway(mock.url, tmp_path) as gw:
        _a_page_outside_the_role(gw)


def _a_page_outside_the_role(gw: Gateway) -> None:
    status, body, _ = as_role(gw, "/console/secret", "finance")
    assert status == 403 and "Your role (finance) may not open this page; it is for admin" in body
    status, body, _ = as_role(gw, "/console/", "finance")
    assert status == 200 and 'href="/console/secret"' not in body  # not in finance's navigation
    status, body, _ = as_role(gw, "/console/secret", "admin")
    assert status == 200 and "admins only" in body


def test_unknown_team_and_event_are_404_pages(gw: Gateway) -> None:
    status, body, headers = as_role(gw, "/console/teams/nobody", "finance")
    assert status == 404 and "There is no team &#39;nobody&#39;" in body
    assert headers["content-type"].startswith("text/html")
    status, body, _ = as_role(gw, "/console/events/ev-none", "auditor")
    assert status == 404 and "There is no recorded call ev-none" in body
    status, body, _ = as_role(gw, "/console/teams/platform/extra", "admin")
    assert status == 404


def test_wrong_usage_queries_say_what_was_wrong(gw: Gateway) -> None:
    status, body, _ = as_role(gw, "/console/usage?group_by=colour", "finance")
    assert status == 400 and "group_by &#39;colour&#39; is not a dimension" in body and 'id="usage-query"' in body
    status, body, _ = as_role(gw, "/console/usage?team=nobody", "finance")
    assert status == 404 and "no team &#39;nobody&#39;" in body
    status, body, _ = as_role(gw, "/console/usage?colour=red", "finance")
    assert status == 400 and "unknown query parameter(s) colour" in body
    status, body, _ = as_role(gw, "/console/usage?from=2026-12-05&to=2026-12-01", "finance")
    assert status == 400 and "must be after" in body


def test_usage_form_fields_left_empty_are_ignored(gw: Gateway) -> None:
    status, body, _ = as_role(gw, "/console/usage?group_by=team&interval=day&from=&to=&team=&model=", "finance")
    assert status == 200 and 'href="/console/usage.csv?group_by=team&amp;interval=day"' in body


def test_usage_csv_is_the_spend_report_for_a_cookie_user(gw: Gateway) -> None:
    query = "group_by=team,model&from=2026-11-01&to=2026-12-10&team=engineering"
    status, csv_text, headers = as_role(gw, f"/console/usage.csv?{query}", "finance")
    assert status == 200 and headers["content-type"] == "text/csv; charset=utf-8"
    assert headers["content-disposition"].startswith('attachment; filename="tollhouse-spend-2026-11-01')
    api_status, api_body, _ = gw.get(f"/api/v1/reports/spend.csv?{query}")
    assert api_status == 200 and csv_text == api_body.decode()
    assert "sales" not in csv_text and "platform,gpt-4o," in csv_text
    status, focus, _ = as_role(gw, f"/console/usage.csv?{query}&format=focus", "auditor")
    assert status == 200 and "BilledCost" in focus.splitlines()[0]
    status, body, _ = as_role(gw, "/console/usage.csv?group_by=nope", "finance")
    assert status == 400 and "is not a dimension" in body


def test_overview_counts_the_whole_org_not_a_page_of_events(mock: Mock, tmp_path: Path, store_url: str) -> None:
    with seeded_gateway(mock.url, tmp_path, store_url) as gw:  # SQLite and PostgreSQL
        status, body, _ = as_role(gw, "/console/", "finance")
        blocked_status, blocked_body, _ = as_role(gw, "/console/events/" + _first_blocked(gw), "auditor")
    assert status == 200 and blocked_status == 200 and "no-gpt4o" in blocked_body
    assert '<div class="big">$24.75</div>' in body  # 9 days x ($1.5 + $1 + $0.25), plus today's cheap calls
    assert '<div class="big">$90.00</div>' in body  # November: 30 x $3
    assert "platform-budget" in body and "2026-12-15" in body  # $13.50 of $20 by the 10th: out on the 15th
    by_rule = body.split('id="blocked-by-rule"')[1].split("</table>")[0]
    assert '<td>no-gpt4o</td><td class="num">2</td><td class="num">0</td>' in by_rule
    assert body.split('id="recent-blocked"')[1].count("/console/events/") == 2


def _first_blocked(gw: Gateway) -> str:
    status, body, _ = gw.get("/api/v1/events?decision=block&limit=1")
    assert status == 200, body
    return str(json.loads(body)["events"][0]["id"])


def test_projection_is_linear_over_the_billing_month() -> None:
    day = 86_400_000
    start, end = 0, 30 * day
    assert budgets.project(0, 100, start, end, 10 * day) == (0, None)
    assert budgets.project(10, 100, start, end, 10 * day) == (30, None)  # a third of the way: 30 at the end
    assert budgets.project(50, 100, start, end, 10 * day) == (150, 20 * day)  # reaches 100 on day 20
    assert budgets.project(120, 100, start, end, 10 * day) == (360, 10 * day)  # already over: now


def test_billing_month_follows_billing_day_and_timezone() -> None:
    state: Any = SimpleNamespace(settings=SimpleNamespace(ledger=SimpleNamespace(timezone="America/New_York",
                                                                                 billing_day=15)))
    tz = ZoneInfo("America/New_York")
    now = int(datetime(2026, 12, 10, 12, tzinfo=tz).timestamp() * 1000)  # before the 15th: November's month
    this, last = month_range(state, now), month_range(state, now, 1)
    assert datetime.fromtimestamp(this.since_ms / 1000, tz) == datetime(2026, 11, 15, tzinfo=tz)
    assert datetime.fromtimestamp(this.until_ms / 1000, tz) == datetime(2026, 12, 15, tzinfo=tz)
    assert datetime.fromtimestamp(last.since_ms / 1000, tz) == datetime(2026, 10, 15, tzinfo=tz)
    assert last.until_ms == this.since_ms


def test_teams_index_sums_the_teams_below(gw: Gateway) -> None:
    status, body, _ = as_role(gw, "/console/teams", "finance")
    assert status == 200
    row = body.split('href="/console/teams/engineering"')[1].split("</tr>")[0]
    # engineering's own calls: none; with platform ($13.50) and ml ($9) below it: $22.50 (+ today's cheap calls)
    assert '<td class="num">$0.00</td><td class="num">$22.50' in row


def test_chart_keeps_the_biggest_series_sums_the_rest_and_stops_at_now() -> None:
    from tollhouse.console.usage_data import Series, chart
    from tollhouse.gateway.usage_series import Totals

    def totals(cost: int) -> Totals:
        t = Totals()
        t.cost_nusd, t.calls = cost, 1
        return t

    day = 86_400_000
    groups = {("a",): {0: totals(3_000_000_000)}, ("b",): {0: totals(1_000_000_000), day: totals(500_000_000)},
              ("c",): {day: totals(250_000_000)}, (None,): {0: totals(100_000_000)}}
    sums = {k: Totals() for k in groups}
    for k, buckets in groups.items():
        for t in buckets.values():
            sums[k].merge(t)
    data = Series("day", [0, day, 2 * day], groups, sums, Totals())
    drawn = chart(data, top=2, now_ms=day)
    assert drawn["x"] == [0, 86_400, 172_800] and drawn["unit"] == "usd" and drawn["stacked"]
    assert [(s["label"], s["values"]) for s in drawn["series"]] == [
        ("a", [3.0, 0.0, None]), ("b", [1.0, 0.5, None]), ("(others)", [0.1, 0.25, None])]

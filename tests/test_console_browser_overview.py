"""The console's overview, usage and team pages in a real browser (Debian's chromium): the charts draw, the
figures shown are the sums of the recorded calls, the roles see what they may, and nothing errs in the page."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from browser import PageProblems, sign_in_admin, sign_in_cookie
from conftest import ADMIN, Gateway, Mock
from console_roles import role_cookie
from console_seed import NOW, seeded_gateway
from tollhouse.console.render import usd

pytestmark = pytest.mark.slow
MONTH_START = "2026-12-01T00:00:00Z"


@pytest.fixture
def gw(mock: Mock, tmp_path: Path) -> Any:
    with seeded_gateway(mock.url, tmp_path) as gateway:
        yield gateway


def _events(gw: Gateway) -> list[dict[str, Any]]:
    status, body, _ = gw.get("/api/v1/events?limit=1000")
    assert status == 200, body
    events: list[dict[str, Any]] = json.loads(body)["events"]
    return events


def _cost(events: list[dict[str, Any]]) -> Decimal:
    return sum((Decimal(str(e["cost_usd"] or 0)) for e in events), Decimal(0))


def _this_month(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["ts"] >= MONTH_START]


def _legend_series(page: Page, chart: str) -> list[str]:
    """The series labels of a drawn uPlot chart (its legend, without the x axis' row)."""
    page.wait_for_selector(f"{chart} canvas")
    labels = page.locator(f"{chart} .u-legend .u-series .u-label").all_inner_texts()
    return labels[1:]


def test_overview_shows_the_org_totals_and_draws_spend_by_team(gw: Gateway, page: Page) -> None:
    events = _events(gw)
    month = _this_month(events)
    sign_in_admin(page, gw.url, ADMIN, "ada")
    assert page.url == f"{gw.url}/console/"
    assert page.inner_text("#mtd .big") == usd(_cost(month))
    assert f"{len(month)} calls" in page.inner_text("#mtd .sub")
    # last month, its first ten days (today is the 10th), and all of it
    november = [e for e in events if e["ts"] < MONTH_START]
    first_ten = [e for e in november if e["ts"] < "2026-11-11"]
    assert page.inner_text("#last-same .big") == usd(_cost(first_ten))
    assert page.inner_text("#last-month .big") == usd(_cost(november))
    blocked = sum(1 for e in month if e["decision"] == "block")
    assert blocked == 2 and page.inner_text("#blocked-card .big") == f"{blocked} / 0"
    # the chart: one series per team with spend, in the last two months
    teams = {e["team"] for e in events if e["cost_usd"]}
    assert sorted(_legend_series(page, "#spend-chart")) == sorted(teams)
    # top people: each one's cost this month
    for row in page.locator("#top-people tr").all()[1:]:
        person, cost = row.locator("td").nth(0).inner_text(), row.locator("td").nth(1).inner_text()
        assert cost == usd(_cost([e for e in month if e["subject"] == person]))
    # budgets at risk: platform's cap, as used as the spend API says
    status, body, _ = gw.get("/api/v1/spend?scope=team&id=platform")
    assert status == 200, body
    cap = json.loads(body)["caps"][0]
    risk = page.locator("table.caps tr.risk")
    assert risk.count() == 1 and "platform-budget" in risk.inner_text()
    assert f"{cap['used'] / cap['limit'] * 100:.0f}%" in risk.inner_text()
    # linear projection: used over 9.625 days of 31 (Dec 10, 15:00)
    assert usd(Decimal(str(cap["used"])) * 31 * 24 // Decimal(9 * 24 + 15)).split(".")[0] in risk.inner_text()
    # the recent blocked calls link to each call's page
    page.click("#recent-blocked a >> nth=0")
    assert "no-gpt4o" in page.inner_text("#event") and "carol" in page.inner_text("#event")


def test_usage_explorer_for_finance_requeries_and_downloads_csv(gw: Gateway, page: Page) -> None:
    month = _this_month(_events(gw))
    sign_in_cookie(page, gw.url, role_cookie(ADMIN, "fiona", "finance", NOW))
    page.goto(f"{gw.url}/console/usage?group_by=model")
    assert sorted(_legend_series(page, "#usage-chart")) == sorted({e["model"] for e in month})
    assert page.locator("#usage-total th").nth(4).inner_text() == usd(_cost(month))
    # re-query without a reload: group by team instead (htmx swaps the results and pushes the URL)
    page.select_option("select[name=group_by]", "team")
    page.wait_for_url("**group_by=team**")
    expect(page.locator("#usage-chart .u-legend .u-series")).to_have_count(4)  # time, and three teams
    assert sorted(_legend_series(page, "#usage-chart")) == ["ml", "platform", "sales"]
    rows = {r.locator("td").nth(0).inner_text(): r.locator("td").nth(4).inner_text()
            for r in page.locator("#usage-table tr").all()[1:-1]}
    assert rows == {t: usd(_cost([e for e in month if e["team"] == t])) for t in ("ml", "platform", "sales")}
    # the CSV link: the spend report for the same query, downloadable with the console's cookie
    href = page.get_attribute("#csv", "href")
    assert href is not None and href.startswith("/console/usage.csv?") and "group_by=team" in href
    answer = page.request.get(gw.url + href)
    assert answer.status == 200 and answer.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(answer.text())))
    assert sum(Decimal(r["cost_usd"]) for r in table) == _cost(month)
    # finance may not change the policy: the overview and usage are all it needs; its nav shows them
    assert "Usage" in page.inner_text("header nav")


def test_team_page_draws_baseline_and_burn_down_and_unknown_team_is_404(
        gw: Gateway, page: Page, page_problems: PageProblems) -> None:
    sign_in_cookie(page, gw.url, role_cookie(ADMIN, "aud", "auditor", NOW))
    page.goto(f"{gw.url}/console/teams")
    page.click("#teams a:text-is('platform')")
    assert page.url == f"{gw.url}/console/teams/platform"
    assert _legend_series(page, "#team-chart") == ["gpt-4o", "gpt-4o-mini"]
    page.wait_for_selector(".chart.burn canvas")
    assert _legend_series(page, ".chart.burn") == ["platform-budget: remaining", "even pace"]
    status, body, _ = gw.get("/api/v1/baseline?team=platform&days=14")
    assert status == 200, body
    base = json.loads(body)
    median = Decimal(str(base["per_day"]["cost_usd"]["median"]))
    assert page.inner_text("#baseline-cost td >> nth=1") == usd(median)
    assert "platform-budget" in page.inner_text("table.caps")
    assert page.locator("#members li").all_inner_texts() == ["alice (employee)"]
    assert page.locator("#projects li").all_inner_texts() == ["checkout"]
    page_problems.expect_status(404)
    answer = page.goto(f"{gw.url}/console/teams/no-such-team")
    assert answer is not None and answer.status == 404
    assert "There is no team 'no-such-team'" in page.inner_text("main")


def test_screenshots_of_the_overview_and_a_team_page(gw: Gateway, page: Page) -> None:
    """docs/screenshots/overview.png and team.png, from the fixed history above at 1280x800."""
    folder = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    sign_in_cookie(page, gw.url, role_cookie(ADMIN, "ada", "admin", NOW))
    for name, path, chart in (("overview", "/console/", "#spend-chart"), ("team", "/console/teams/platform",
                                                                          "#team-chart")):
        page.goto(gw.url + path)
        page.wait_for_selector(f"{chart} canvas")
        target = folder / f"{name}.png"
        page.screenshot(path=str(target), full_page=True)
        assert target.stat().st_size > 10_000


def test_a_page_outside_the_role_shows_the_403_page(gw: Gateway, page: Page, page_problems: PageProblems) -> None:
    sign_in_cookie(page, gw.url, role_cookie(ADMIN, "fiona", "finance", NOW))
    page.goto(f"{gw.url}/console/")
    assert page.locator("header nav a").all_inner_texts() == ["Overview", "Usage", "Teams", "Policy", "Exemptions",
                                                              "Directory"]
    page_problems.expect_status(403)
    answer = page.goto(f"{gw.url}/console/keys")  # the admin's
    assert answer is not None and answer.status == 403
    assert "Your role (finance) may not open this page" in page.inner_text("main")

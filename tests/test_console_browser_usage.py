"""The console on a gateway with no calls yet, and the usage explorer's wrong queries, in a real browser: the
pages and charts draw without an error, and a wrong range is said in place (htmx), not as a broken page."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from browser import PageProblems, sign_in_admin, sign_in_cookie
from conftest import ADMIN, Gateway
from console_roles import role_cookie

pytestmark = pytest.mark.slow


def test_an_empty_gateway_draws_every_page(gateway: Gateway, page: Page) -> None:
    sign_in_admin(page, gateway.url, ADMIN)
    page.wait_for_selector("#spend-chart canvas")
    assert page.inner_text("#mtd .big") == "$0.00"
    assert "No calls this month." in page.inner_text("#top-models")
    assert "No spend or token cap is in force." in page.inner_text("#no-risk")
    page.click("header nav a:text-is('Usage')")
    page.wait_for_selector("#usage-chart canvas")
    assert "No calls in this range." in page.inner_text("#usage-table")
    page.click("header nav a:text-is('Teams')")
    page.click("#teams a:text-is('platform')")
    page.wait_for_selector("#team-chart canvas")
    assert "No calls in these days." in page.inner_text("#model-mix")
    assert page.locator("#members li").all_inner_texts() == ["alice (employee)", "bob (employee)",
                                                             "support-bot (service)"]


def test_a_wrong_range_is_said_in_place(gateway: Gateway, page: Page, page_problems: PageProblems) -> None:
    sign_in_cookie(page, gateway.url, role_cookie(ADMIN, "fiona", "finance"))
    page.goto(f"{gateway.url}/console/usage?group_by=provider&interval=hour")
    page.wait_for_selector("#usage-chart canvas")
    page_problems.expect_status(400)
    page.fill("input[name=from]", "2026-12-20")
    page.fill("input[name=to]", "2026-12-01")
    expect(page.locator("#problem")).to_contain_text("must be after")
    assert page.locator("#usage-query").count() == 1  # the form stays, to put right
    page.fill("input[name=from]", "2026-11-01")
    expect(page.locator("#usage-chart canvas")).to_have_count(1)
    assert "group_by=provider" in page.url and "from=2026-11-01" in page.url

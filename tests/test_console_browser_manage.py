"""The console's deciding pages in a real browser (Debian's chromium): the policy editor checks as you type,
publishes after a review with diff and backtest, shows the diff in the history and rolls back; an exemption is
approved from the queue and the blocked call then passes, and the audit page shows the chain intact and the
approval; each role sees only what it may do."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from browser import PageProblems, sign_in_admin, sign_in_cookie
from conftest import ADMIN, Gateway, Mock, upstreams
from console_roles import role_cookie
from test_exemptions import _blocked, _file, _passes
from test_policy_gateway import ALLOWLIST, DIRECTORY

pytestmark = pytest.mark.slow

NO_O1 = {"id": "no-o1", "scope": "org", "severity": "BLOCK", "condition": {"type": "MODEL_DENYLIST", "models": ["o1"]}}
BAD = "- id: no-o1\n  scope: org\n  condition:\n    type: MODEL_DENYLIST\n    modelz: [o1]\n"
TRIAL = ("- id: no-o1\n  scope: org\n  condition: {type: MODEL_DENYLIST, models: [o1]}\n"
         "- id: research-budget\n  scope: team\n  team: research\n  mode: shadow\n"
         "  condition: {type: budget, threshold: 100}\n")


@pytest.fixture
def gw(mock: Mock, tmp_path: Path) -> Iterator[Gateway]:
    gateway = Gateway({"identity": {"trust_user_header": True}, "providers": upstreams(mock.url),
                       "enforcement": "on", "directory": DIRECTORY, "policy": {"rules": [ALLOWLIST, NO_O1]}},
                      tmp_path / "data").start()
    try:
        yield gateway
    finally:
        gateway.stop()


def _as(page: Page, gw: Gateway, role: str, name: str) -> None:
    sign_in_cookie(page, gw.url, role_cookie(ADMIN, name, role))


def test_policy_editor_publishes_diffs_and_rolls_back(gw: Gateway, page: Page) -> None:
    _as(page, gw, "policy_owner", "olga")
    page.goto(f"{gw.url}/console/policy")
    expect(page.locator("#in-force")).to_contain_text("Rule no-o1: Everyone: a call to the model o1 is blocked.")
    expect(page.locator("#check")).to_contain_text("OK: 2 rules (2 enabled)")  # checked on load
    page.fill("#rules", BAD)
    expect(page.locator("#check")).to_contain_text(
        "line 5: rule no-o1: condition.modelz: unknown field (did you mean 'models'?)")
    page.fill("#rules", TRIAL)
    expect(page.locator("#check")).to_contain_text("OK: 2 rules (2 enabled)")
    page.fill("input[name=note]", "research budget trial")
    page.click("#review")
    expect(page.locator("#diff")).to_contain_text("added: research-budget")
    expect(page.locator("#diff")).to_contain_text("removed: approved-models")
    expect(page.locator("#diff")).to_contain_text("Shadow mode: judged and recorded as 'would', never applied.")
    expect(page.locator("#backtest")).to_contain_text("calls replayed")  # loaded beside the diff
    page.click("#publish")
    expect(page.locator("[role=status]").first).to_contain_text("Published version 2")
    expect(page.locator("#in-force")).to_contain_text("Published by olga")
    expect(page.locator("#in-force")).to_contain_text("research budget trial")

    page.click("#history a:text-is('diff with 1')")
    expect(page.locator("#diff")).to_contain_text("added: research-budget")
    expect(page.locator("#diff table.diff")).to_contain_text("rules[approved-models]")
    page.goto(f"{gw.url}/console/policy")
    page.click("#history tr:has-text('config') a.rollback")
    expect(page.locator("#diff")).to_contain_text("added: approved-models")
    page.check("#confirm")
    page.click("#do-rollback")
    expect(page.locator("[role=status]").first).to_contain_text("Rolled back: version 3")
    expect(page.locator("#in-force")).to_contain_text("Rule approved-models")
    assert "research-budget" not in page.inner_text("#in-force")
    _, body, _ = gw.get("/api/v1/policy")
    assert [r["id"] for r in json.loads(body)["rules"]] == ["approved-models", "no-o1"]


def test_an_exemption_approved_from_the_queue_lets_the_call_through(gw: Gateway, page: Page) -> None:
    assert _blocked(gw)["rule_id"] == "approved-models"
    exemption_id = _file(gw)
    _as(page, gw, "policy_owner", "olga")
    page.goto(f"{gw.url}/console/exemptions")
    row = page.locator(f"#x-{exemption_id}")
    expect(row).to_contain_text("benchmarking gpt-4o for the demo")
    row.locator("input[name=hours]").fill("2")
    row.locator("input[name=note]").fill("for the demo only")
    row.locator("form.approve button").click()
    expect(page.locator("#pending")).to_contain_text("Nothing is waiting.")
    expect(page.locator("#history")).to_contain_text("approved (in force)")
    assert _passes(gw)["x-tollhouse-exemption"] == exemption_id

    page.context.clear_cookies()
    _as(page, gw, "auditor", "aud")
    page.goto(f"{gw.url}/console/audit?kind=exemption.approved")
    expect(page.locator("#chain")).to_contain_text("Chain OK:")
    expect(page.locator("#entries")).to_contain_text(exemption_id)
    expect(page.locator("#entries")).to_contain_text("olga")


def test_each_role_sees_what_it_may_do(gw: Gateway, page: Page, page_problems: PageProblems) -> None:
    exemption_id = _file(gw)
    _as(page, gw, "auditor", "aud")
    page.goto(f"{gw.url}/console/policy")
    expect(page.locator("#in-force")).to_contain_text("Rule no-o1")
    assert page.locator("#editor").count() == 0 and page.locator("a.rollback").count() == 0
    page.goto(f"{gw.url}/console/exemptions")
    expect(page.locator("#pending")).to_contain_text(exemption_id)
    assert page.locator("form.approve").count() == 0 and page.locator("form.deny").count() == 0
    page_problems.expect_status(403)
    refused = page.request.post(f"{gw.url}/console/exemptions/{exemption_id}/approve", form={"hours": "1"})
    assert refused.status == 403
    refused = page.request.post(f"{gw.url}/console/policy/publish", form={"rules": "[]"})
    assert refused.status == 403
    nav = page.locator("header nav").inner_text()
    assert "Audit" in nav and "Agents" in nav and "Keys" not in nav

    page.context.clear_cookies()
    _as(page, gw, "finance", "fiona")
    page.goto(f"{gw.url}/console/")
    assert "Audit" not in page.locator("header nav").inner_text()
    response = page.goto(f"{gw.url}/console/audit")
    assert response is not None and response.status == 403
    expect(page.locator("main")).to_contain_text("Your role (finance) may not open this page")
    _, body, _ = gw.get(f"/api/v1/exemptions/{exemption_id}")
    assert json.loads(body)["exemption"]["status"] == "pending"  # nothing was decided


def test_admin_pages_draw_and_act(gw: Gateway, page: Page) -> None:
    _as(page, gw, "admin", "ada")
    page.goto(f"{gw.url}/console/keys")
    page.fill("input[name=user]", "alice")
    page.fill("input[name=label]", "laptop")
    page.click("#create button")
    secret = page.inner_text("#secret")
    assert secret.startswith("th-")
    page.goto(f"{gw.url}/console/keys")
    assert secret not in page.content()
    page.click("#keys button:text-is('Revoke')")
    expect(page.locator("[role=status]")).to_contain_text(f"Revoked {secret[:10]}")

    page.click("header nav a:text-is('Agents')")
    page.fill("input[name=label]", "laptops")
    page.click("#tokens button:text-is('Create token')")
    expect(page.locator("#new-token")).to_contain_text("shown only this once")
    expect(page.locator("#tokens table")).to_contain_text("laptops")

    page.click("header nav a:text-is('Hosts')")
    expect(page.locator("#hosts")).to_contain_text("0 hosts, of which 0 known AI services not managed")
    page.select_option("select[name=view]", "shadow")
    page.click("#hosts button:text-is('Show')")
    expect(page.locator("#hosts")).to_contain_text("No host in this view was seen in the last 30 days")
    assert "view=shadow" in page.url

    page.click("header nav a:text-is('Directory')")
    expect(page.locator("#cost-centres")).to_contain_text("CC-100")
    page.fill("textarea[name=directory]", "teams:\n  - id: a\n    parent: nowhere\n")
    expect(page.locator("#check")).to_contain_text("nowhere")
    page.fill("textarea[name=directory]", json.dumps(dict(DIRECTORY, people=[{"id": "zed", "team": "research"},
                                                                             *DIRECTORY["people"]])))
    expect(page.locator("#check")).to_contain_text("OK:")
    page.click("#editor button")
    expect(page.locator("[role=status]").first).to_contain_text("Published directory version 2")
    expect(page.locator("#people")).to_contain_text("zed")


def test_an_admin_ends_the_session_of_another_browser(gw: Gateway, page: Page, browser: Browser) -> None:
    """Bob signs in with the login form in a browser of his own; Ada, an admin, finds him on the sessions page
    and ends his session: his next page sends him to the sign-in, while hers goes on."""
    other = browser.new_context()
    try:
        bob = other.new_page()
        sign_in_admin(bob, gw.url, ADMIN, "bob", "/console/audit")
        expect(bob.locator("header .who")).to_contain_text("bob (admin)")
        sign_in_admin(page, gw.url, ADMIN, "ada", "/console/sessions")
        expect(page.locator("#sessions")).to_contain_text("ada (this session)")
        page.click("#sessions tr:has-text('bob') button:text-is('End this session')")
        expect(page.locator("[role=status]")).to_contain_text("Ended: bob")
        assert "bob" not in page.inner_text("#sessions")
        bob.goto(f"{gw.url}/console/audit")
        assert bob.url.startswith(f"{gw.url}/console/login?next=/console/audit")
        page.click("header nav a:text-is('Audit')")
        expect(page.locator("#entries")).to_contain_text("console.session_revoked")
    finally:
        other.close()

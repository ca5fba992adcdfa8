"""The console's policy page over HTTP: the rules in words for every role, the live check, review with the diff
and a backtest, publish and rollback for policy roles only, CSRF refusals that change nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conftest import Gateway, Mock, upstreams
from console_http import Browser, text
from test_policy_gateway import ALLOWLIST, DIRECTORY

NO_O1 = {"id": "no-o1", "scope": "org", "severity": "BLOCK", "condition": {"type": "MODEL_DENYLIST", "models": ["o1"]}}
SHADOW = {"id": "research-budget", "scope": "team", "team": "research", "mode": "shadow",
          "condition": {"type": "budget", "threshold": 100}}


@pytest.fixture
def gw(mock: Mock, gateway_factory: Any) -> Gateway:
    gateway: Gateway = gateway_factory({"identity": {"trust_user_header": True}, "providers": upstreams(mock.url),
                                        "enforcement": "on", "directory": DIRECTORY,
                                        "policy": {"rules": [ALLOWLIST, NO_O1]}})
    return gateway


def _versions(gw: Gateway) -> list[int]:
    _, body, _ = gw.get("/api/v1/policy/versions")
    return [v["version"] for v in json.loads(body)["versions"]]


def test_every_role_reads_the_rules_in_words(gw: Gateway) -> None:
    for role in ("admin", "policy_owner", "finance", "auditor"):
        status, page, _ = Browser(gw, role).get("/console/policy")
        assert status == 200, role
        words = text(page)
        assert "Rule no-o1: Everyone: a call to the model o1 is blocked." in words
        assert "In force: version 1" in words and "Published by" in words
        editable = b'action="/console/policy/review"' in page
        assert editable == (role in ("admin", "policy_owner")), role


def test_live_check_names_line_and_field(gw: Gateway) -> None:
    owner = Browser(gw, "policy_owner")
    bad = "- id: no-o1\n  scope: org\n  condition:\n    type: MODEL_DENYLIST\n    modelz: [o1]\n"
    status, frag, _ = owner.post("/console/policy/validate", {"rules": bad})
    assert status == 200
    assert "line 5: rule no-o1: condition.modelz: unknown field (did you mean 'models'?)" in text(frag)
    status, frag, _ = owner.post("/console/policy/validate", {"rules": "- id: [\n"})
    assert "line 2, column 1: not valid YAML/JSON" in text(frag) or "line 1" in text(frag)
    status, frag, _ = owner.post("/console/policy/validate", {"rules": json.dumps([NO_O1])})
    assert "OK: 1 rule (1 enabled)" in text(frag)


def test_review_publish_history_rollback(gw: Gateway) -> None:
    owner = Browser(gw, "policy_owner", "olga")
    rules = json.dumps([ALLOWLIST, SHADOW])
    status, page, _ = owner.post("/console/policy/review", {"rules": rules, "note": "budget trial"})
    assert status == 200
    words = text(page)
    assert "removed: no-o1" in words and "added: research-budget" in words and "Publish as version 2" in words
    assert "Shadow mode: judged and recorded as 'would', never applied." in words
    status, frag, _ = owner.post("/console/policy/backtest", {"rules": rules, "days": "14"})
    assert status == 200 and "calls replayed" in text(frag)

    status, _, headers = owner.post("/console/policy/publish", {"rules": rules, "note": "budget trial",
                                                                 "base_version": "1"})
    assert status == 303 and headers["location"].startswith("/console/policy?published=2")
    assert _versions(gw) == [2, 1]
    words = text(Browser(gw, "auditor").get("/console/policy")[1])
    assert "In force: version 2" in words and "Published by olga" in words and "budget trial" in words
    status, page, _ = owner.get("/console/policy/diff?from=1&to=2")
    assert status == 200 and "removed: no-o1" in text(page)
    # publishing from a stale base is refused, nothing changes
    status, page, _ = owner.post("/console/policy/publish", {"rules": rules, "base_version": "1"})
    assert status == 409 and _versions(gw) == [2, 1]

    status, page, _ = owner.get("/console/policy/rollback/1")
    assert status == 200 and "added: no-o1" in text(page)
    status, page, _ = owner.post("/console/policy/rollback", {"version": "1"})
    assert status == 400 and _versions(gw) == [2, 1]  # not confirmed
    status, _, _ = owner.post("/console/policy/rollback", {"version": "1", "confirm": "yes"})
    assert status == 303 and _versions(gw) == [3, 2, 1]
    _, body, _ = gw.get("/api/v1/policy")
    assert [r["id"] for r in json.loads(body)["rules"]] == ["approved-models", "no-o1"]


def test_roles_csrf_and_missing_versions(gw: Gateway) -> None:
    rules = json.dumps([NO_O1])
    for role in ("auditor", "finance"):
        status, page, _ = Browser(gw, role).post("/console/policy/publish", {"rules": rules})
        assert status == 403 and b"may not open this page" in page
        assert Browser(gw, role).get("/console/policy/rollback/1")[0] == 403
    owner = Browser(gw, "admin")
    status, page, _ = owner.post("/console/policy/publish", {"rules": rules}, csrf=False)
    assert status == 400 and b"security token" in page
    status, _, _ = owner.post("/console/policy/publish", {"rules": rules, "csrf": "0" * 64}, csrf=False)
    assert status == 400
    status, _, _ = owner.post("/console/policy/rollback", {"version": "1", "confirm": "yes"}, csrf=False)
    assert status == 400 and _versions(gw) == [1]
    status, page, _ = owner.post("/console/policy/publish", {"rules": rules}, headers={"Origin": "http://evil.example"})
    assert status == 403 and b"another site" in page and _versions(gw) == [1]  # even with the token
    assert owner.get("/console/policy/rollback/9")[0] == 404
    assert owner.get("/console/policy/diff?from=1&to=9")[0] == 404
    assert owner.get("/console/policy/diff?from=x")[0] == 400
    # an invalid policy is not published: the editor comes back with the problems
    status, page, _ = owner.post("/console/policy/publish", {"rules": "- id: x\n  condition: {type: nope}\n"})
    assert status == 400 and b"rule x" in page and _versions(gw) == [1]


def test_a_slow_backtest_is_said_not_waited_for(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    from tollhouse.console import policy

    monkeypatch.setattr(policy, "BACKTEST_WAIT_S", 0.0)  # the gateway runs in this process: no replay is that fast
    status, frag, _ = Browser(gw, "policy_owner").post("/console/policy/backtest", {"rules": json.dumps([NO_O1])})
    assert status == 200 and "took longer than 0 s" in text(frag) and "tollhouse policy backtest" in text(frag)
    status, frag, _ = Browser(gw, "policy_owner").post("/console/policy/backtest", {"rules": "[]", "days": "999"})
    assert "days must be a whole number from 1 to 366" in text(frag)


def test_a_rules_file_policy_is_edited_in_the_file(mock: Mock, gateway_factory: Any, tmp_path: Any) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(json.dumps([NO_O1]))
    gw: Gateway = gateway_factory({"providers": upstreams(mock.url), "policy": {"rules_file": str(rules)}})
    owner = Browser(gw, "policy_owner")
    page = owner.get("/console/policy")[1]
    assert f"This gateway's policy is the rules file {rules}" in text(page) and b'class="rollback"' not in page
    status, page, _ = owner.post("/console/policy/publish", {"rules": "[]"})
    assert status == 409 and "rules file" in text(page) and _versions(gw) == [1]

"""The console's audit, keys, agents and directory pages over HTTP: what each role sees and may do, secrets shown
once, CSRF refusals that change nothing, the audit chain's status (intact, then tampered)."""

from __future__ import annotations

import json
import re
import sqlite3
from typing import Any

import pytest

from conftest import ADMIN, Gateway, Mock, upstreams
from console_http import Browser, text
from test_policy_gateway import ALLOWLIST, DIRECTORY


@pytest.fixture
def gw(mock: Mock, gateway_factory: Any) -> Gateway:
    gateway: Gateway = gateway_factory({"identity": {"trust_user_header": True}, "providers": upstreams(mock.url),
                                        "enforcement": "on", "directory": DIRECTORY,
                                        "policy": {"rules": [ALLOWLIST]}})
    return gateway


def _api(gw: Gateway, method: str, path: str, body: Any = None) -> Any:
    status, raw, _ = gw.request(method, path, body)
    assert status < 300, raw
    return json.loads(raw)


def _secret(page: bytes) -> str:
    found = re.search(rb'<code id="secret">([^<]+)</code>', page)
    assert found is not None, page
    return found.group(1).decode()


def test_audit_search_chain_and_export(gw: Gateway) -> None:
    auditor = Browser(gw, "auditor")
    _api(gw, "PUT", "/api/v1/policy", {"rules": [], "note": "open the gates"})
    status, page, _ = auditor.get("/console/audit")
    assert status == 200 and "policy.changed" in text(page) and "gateway.started" in text(page)
    status, frag, _ = auditor.get("/console/audit/chain")
    assert status == 200 and "Chain OK:" in text(frag) and "entries, intact" in text(frag)
    page = auditor.get("/console/audit?kind=policy.changed")[1]
    assert b"<td>policy.changed</td>" in page and b"<td>gateway.started</td>" not in page
    assert "open the gates" in text(auditor.get("/console/audit?q=OPEN+THE")[1])
    assert "No entries match" in text(auditor.get("/console/audit?q=nothing-like-this")[1])
    assert "No entries match" in text(auditor.get("/console/audit?from=2001-01-01&to=2001-01-02")[1])
    status, page, _ = auditor.get("/console/audit?from=yesterday")
    assert status == 200 and "'yesterday' is not a date" in text(page)

    status, body, headers = auditor.get("/console/audit/export?kind=policy.changed&format=jsonl")
    assert status == 200 and "attachment" in headers["content-disposition"]
    lines = [json.loads(line) for line in body.decode().splitlines()]
    assert lines and all(e["kind"] == "policy.changed" for e in lines)
    status, body, _ = auditor.get("/console/audit/export?format=cef")
    assert status == 200 and body.startswith(b"CEF:0|Tollhouse|")
    assert auditor.get("/console/audit/export?format=xml")[0] == 400

    for role in ("finance", "policy_owner"):
        status, page, _ = Browser(gw, role).get("/console/audit")
        assert status == 403 and b"may not open this page" in page
        assert Browser(gw, role).get("/console/audit/export?format=jsonl")[0] == 403

    db = sqlite3.connect(gw.data_dir / "tollhouse.db")
    db.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 1")
    db.commit()
    db.close()
    words = text(auditor.get("/console/audit/chain")[1])
    assert "Chain BROKEN: entry #1" in words and "edited" in words


def test_keys_are_admin_only_and_shown_once(gw: Gateway) -> None:
    admin = Browser(gw, "admin")
    status, page, _ = admin.post("/console/keys", {"user": "alice", "label": "laptop"})
    assert status == 201
    assert "New key for alice" in text(page)
    secret = _secret(page)
    assert secret.startswith("th-")
    status, page, _ = admin.get("/console/keys")
    assert status == 200 and secret.encode() not in page and secret[:10].encode() in page
    status, page, _ = admin.post("/console/keys", {"user": "nobody"})
    assert status == 400 and "is not a person or service of the directory" in text(page)
    before = _api(gw, "GET", "/api/v1/keys")["keys"]
    assert admin.post("/console/keys", {"user": "bob"}, csrf=False)[0] == 400
    assert admin.post(f"/console/keys/{secret[:10]}/revoke", {}, csrf=False)[0] == 400
    assert _api(gw, "GET", "/api/v1/keys")["keys"] == before  # nothing changed
    for role in ("auditor", "finance", "policy_owner"):
        assert Browser(gw, role).get("/console/keys")[0] == 403
        assert Browser(gw, role).post("/console/keys", {"user": "bob"})[0] == 403
    status, _, _ = admin.post(f"/console/keys/{secret[:10]}/revoke", {})
    assert status == 303
    assert _api(gw, "GET", "/api/v1/keys")["keys"][0]["revoked"] is True
    assert admin.post(f"/console/keys/{secret[:10]}/revoke", {})[0] == 404


def test_agents_page_and_enrollment_tokens(gw: Gateway) -> None:
    admin = Browser(gw, "admin")
    status, page, _ = admin.post("/console/agents/tokens", {"label": "laptops"})
    assert status == 201
    token = _secret(page)
    # an agent checks in, holding policy version 1, as carol, in observe mode
    status, _, _ = gw.request("GET", "/api/v1/agent/bundle?wait=0", token=token, headers={
        "x-tollhouse-agent-id": "agent-1", "x-tollhouse-hostname": "carol-mbp", "x-tollhouse-agent-version": "9.9",
        "x-tollhouse-user": "carol", "x-tollhouse-enforcement": "off", "if-none-match": '"p1.a0.d1.x0"'})
    assert status == 200
    for role in ("admin", "auditor"):
        words = text(Browser(gw, role).get("/console/agents")[1])
        assert "agent-1 carol-mbp carol 9.9" in words and "version 1" in words and " off " in words
        assert "laptops" in words and token not in words
    assert b'action="/console/agents/tokens"' not in Browser(gw, "auditor").get("/console/agents")[1]
    assert Browser(gw, "auditor").post("/console/agents/tokens", {"label": "x"})[0] == 403
    for role in ("finance", "policy_owner"):
        assert Browser(gw, role).get("/console/agents")[0] == 403
    assert admin.post("/console/agents/tokens", {"label": "x"}, csrf=False)[0] == 400
    assert len(_api(gw, "GET", "/api/v1/agent/tokens")["tokens"]) == 1
    assert admin.post(f"/console/agents/tokens/{token[:12]}/revoke", {})[0] == 303
    assert gw.request("GET", "/api/v1/agent/bundle?wait=0", token=token)[0] == 401


def test_directory_read_by_all_edited_by_admin(gw: Gateway) -> None:
    for role in ("admin", "policy_owner", "finance", "auditor"):
        status, page, _ = Browser(gw, role).get("/console/directory")
        words = text(page)
        assert status == 200 and "CC-100 team platform" in words and "rita research" in words
        assert (b'action="/console/directory/publish"' in page) == (role == "admin")
    admin = Browser(gw, "admin")
    current = _api(gw, "GET", "/api/v1/directory")
    bad = "teams:\n  - id: platform\npeople:\n  - id: zed\n    team: nowhere\n"
    status, frag, _ = admin.post("/console/directory/validate", {"directory": bad})
    assert status == 200 and "nowhere" in text(frag)
    status, _, _ = admin.post("/console/directory/publish", {"directory": bad})
    assert status == 400 and _api(gw, "GET", "/api/v1/directory") == current
    new = dict(DIRECTORY, people=[*DIRECTORY["people"], {"id": "zed", "team": "research"}])
    assert admin.post("/console/directory/publish", {"directory": json.dumps(new)}, csrf=False)[0] == 400
    assert Browser(gw, "finance").post("/console/directory/publish", {"directory": json.dumps(new)})[0] == 403
    assert _api(gw, "GET", "/api/v1/directory") == current
    status, _, _ = admin.post("/console/directory/publish", {"directory": json.dumps(new), "note": "zed"})
    assert status == 303
    after = _api(gw, "GET", "/api/v1/directory")
    assert after["version"] == current["version"] + 1 and "zed" in [p["id"] for p in after["directory"]["people"]]
    status, page, _ = Browser(gw, "finance").get(f"/console/directory/diff?from={current['version']}")
    assert status == 200 and "added people[zed]" in text(page)
    assert admin.get("/console/directory/diff?from=99")[0] == 404


def test_unknown_console_paths_and_methods(gw: Gateway) -> None:
    admin = Browser(gw, "admin")
    assert admin.get("/console/policy/nope")[0] == 404
    assert admin.get("/console/keys/abc/revoke")[0] == 405
    assert admin.get("/console/audit/chain/x")[0] == 404
    status, page, _ = admin.get("/console/nothing-here")
    assert status == 404 and b"There is no console page" in page
    assert ADMIN.encode() not in page


def test_exemption_queue_roles_and_unknown_ids(gw: Gateway) -> None:
    status, raw, _ = gw.request("POST", "/api/v1/exemptions", {"subject": "alice", "rule": "approved-models",
                                                               "justification": "evals"}, token=None)
    assert status == 201
    exemption_id = json.loads(raw)["id"]
    for role in ("finance", "auditor"):
        status, page, _ = Browser(gw, role).get("/console/exemptions")
        assert status == 200 and exemption_id.encode() in page and b"/approve" not in page and b"Read-only" in page
        assert Browser(gw, role).post(f"/console/exemptions/{exemption_id}/deny", {"reason": "no"})[0] == 403
    owner = Browser(gw, "policy_owner", "olga")
    page = owner.get("/console/exemptions")[1]
    assert f"/console/exemptions/{exemption_id}/approve".encode() in page
    status, page, _ = owner.post("/console/exemptions/ex-nope/approve", {"hours": "2"})
    assert status == 404 and b"Not decided" in page
    assert owner.post(f"/console/exemptions/{exemption_id}/approve", {"hours": "2"}, csrf=False)[0] == 400
    status, page, _ = owner.get("/console/exemptions?status=bogus&from=x")
    assert status == 200 and "'bogus' is not one of" in text(page) and "'x' is not a date" in text(page)
    assert json.loads(gw.get(f"/api/v1/exemptions/{exemption_id}")[1])["exemption"]["status"] == "pending"
    assert owner.post(f"/console/exemptions/{exemption_id}/approve", {"hours": "2", "models": "gpt-4o gpt-4.1"}
                      )[0] == 303
    words = text(owner.get("/console/exemptions?status=approved&subject=ali")[1])
    assert "approved (in force)" in words and "olga" in words and "gpt-4.1" in words
    assert "None match these filters" in text(owner.get("/console/exemptions?subject=nobody")[1])


def test_an_agent_silent_for_ten_minutes_is_stale() -> None:
    from tollhouse.console.agents import STALE_S, _row
    from tollhouse.events.records import AgentRecord

    now = 10_000_000_000
    seen = AgentRecord("a", "h", "1", "the-x", 0, now - STALE_S * 1000 - 1, {"policy_version": 2})
    row = _row(seen, now, current=3)
    assert row["stale"] and row["behind"] and row["policy"] == 2
    fresh = _row(AgentRecord("a", "h", "1", None, 0, now - 1000, {"policy_version": 3}), now, current=3)
    assert not fresh["stale"] and not fresh["behind"]


def test_hosts_page_shows_what_the_forward_proxy_saw_and_flags_unmanaged_ai(gw: Gateway) -> None:
    """/console/hosts: the rows of GET /api/v1/hosts (here an agent's report), the known AI services not managed
    counted and filterable, for admin and auditor only; a bad view or window is a 400 that says what is allowed."""
    token = _api(gw, "POST", "/api/v1/agent/tokens", {"label": "laptops"})["token"]
    now_ms = _api(gw, "GET", "/api/v1/agent/tokens")["tokens"][0]["created_ms"]
    rows = [{"host": "api.mistral.ai", "person": "carol", "connections": 7, "intercepted": 0, "denied": 0,
             "bytes_up": 2048, "bytes_down": 3 * 1024 * 1024, "first_ms": now_ms - 1000, "last_ms": now_ms},
            {"host": "api.openai.com", "person": "bob", "connections": 2, "intercepted": 2, "denied": 0,
             "bytes_up": 10, "bytes_down": 20, "first_ms": now_ms - 1000, "last_ms": now_ms},
            {"host": "intranet.example", "person": "bob", "connections": 1, "intercepted": 0, "denied": 1,
             "bytes_up": 0, "bytes_down": 0, "first_ms": now_ms - 1000, "last_ms": now_ms}]
    status, body, _ = gw.request("POST", "/api/v1/agent/hosts", {"hosts": rows}, token=token,
                                 headers={"X-Tollhouse-Agent-Id": "laptop-1"})
    assert status == 200, body
    for role in ("admin", "auditor"):
        status, page, _ = Browser(gw, role).get("/console/hosts")
        words = text(page)
        assert status == 200 and "3 hosts, of which 1 known AI service not managed" in words, words
        assert "api.mistral.ai Mistral no 7 0 2.0 kB 3.0 MB carol 1" in words, words
        assert "api.openai.com" in words and "intranet.example" in words
    shadow = text(Browser(gw, "auditor").get("/console/hosts?view=shadow&days=7")[1])
    assert "api.mistral.ai" in shadow and "api.openai.com" not in shadow and "intranet.example" not in shadow
    managed = text(Browser(gw, "auditor").get("/console/hosts?view=managed")[1])
    assert "api.openai.com" in managed and "api.mistral.ai" not in managed
    status, page, _ = Browser(gw, "admin").get("/console/hosts?view=everything&days=5")
    assert status == 400 and "view must be one of all, shadow, managed; got 'everything'" in text(page)
    assert "days must be one of 1, 7, 30, 90; got '5'" in text(page)
    for role in ("finance", "policy_owner"):
        assert Browser(gw, role).get("/console/hosts")[0] == 403

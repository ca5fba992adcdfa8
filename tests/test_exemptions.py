"""The exemption workflow (issue 6), through the public HTTP surface: a blocked call's exemption link, the
pre-filled form, filing, the policy owner's queue, approve (a one-off override that expires on its own) or
deny, and the audit trail."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import openai
import pytest

import raw_http
from conftest import ADMIN, Gateway, Mock, upstreams
from test_audit import _entries, _verify
from test_gateway_sdks import oai
from test_ledger_gateway import PRICED, FakeClock, budget_rule
from test_policy_gateway import ALLOWLIST, DIRECTORY, REDIRECT
from tollhouse.config import DirectoryConfig
from tollhouse.control.overrides import OverrideSet
from tollhouse.directory import Directory
from tollhouse.events.records import APPROVED, OVERRIDE, Exemption
from tollhouse.policy.engine import CallFacts, CompiledPolicy
from tollhouse.policy.rules import parse_rules

NO_O1 = {"id": "no-o1", "scope": "org", "severity": "BLOCK",
         "condition": {"type": "MODEL_DENYLIST", "models": ["o1"]}}
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
CHAT = [{"role": "user", "content": "x"}]
Reply = raw_http.Reply


def _http(gw: Gateway, method: str, path: str, body: bytes | None = None,
          headers: dict[str, str] | None = None) -> Reply:
    """One request, redirects not followed (to see Location and Set-Cookie)."""
    return raw_http.request(gw.port, method, path, body, headers)


def _api(gw: Gateway, method: str, path: str, data: Any = None, token: str | None = ADMIN,
         actor: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if actor:
        headers["X-Tollhouse-Actor"] = actor
    body = data if isinstance(data, bytes) else None if data is None else json.dumps(data).encode()
    status, raw, _ = _http(gw, method, path, body, headers)
    return status, json.loads(raw) if raw else None


def _form(gw: Gateway, path: str, fields: dict[str, str], headers: dict[str, str] | None = None) -> Reply:
    return _http(gw, "POST", path, urlencode(fields).encode(),
                 {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})})


class _Inputs(HTMLParser):
    """The named fields of an HTML page's forms, with their pre-filled values."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self.actions: list[str] = []
        self._textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self.actions.append(a.get("action") or "")
        if tag in ("input", "textarea") and a.get("name"):
            self.values[a["name"] or ""] = a.get("value") or ""
            self._textarea = a["name"] if tag == "textarea" else None

    def handle_data(self, data: str) -> None:
        if self._textarea:
            self.values[self._textarea] += data

    def handle_endtag(self, tag: str) -> None:
        self._textarea = None


def _inputs(html: bytes) -> _Inputs:
    parser = _Inputs()
    parser.feed(html.decode())
    return parser


def _blocked(gw: Gateway, model: str = "gpt-4o", user: str = "alice") -> dict[str, Any]:
    with pytest.raises(openai.PermissionDeniedError) as exc:
        oai(gw, user).chat.completions.create(model=model, messages=CHAT)
    body = exc.value.body
    assert isinstance(body, dict)
    return body


def _passes(gw: Gateway, model: str = "gpt-4o", user: str = "alice") -> dict[str, str]:
    raw = oai(gw, user).chat.completions.with_raw_response.create(model=model, messages=CHAT)
    raw.parse()
    return dict(raw.headers)


def _audit(gw: Gateway, kind: str) -> list[dict[str, Any]]:
    return [e for e in _entries(gw) if e["kind"] == kind]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def enforcing(mock: Mock, tmp_path: Path, clock: FakeClock) -> Iterator[Gateway]:
    """Enforcing the approved-models allowlist and an o1 ban, on a fake clock."""
    gw = Gateway({"identity": {"trust_user_header": True}, "providers": upstreams(mock.url), "enforcement": "on",
                  "directory": DIRECTORY, "policy": {"rules": [ALLOWLIST, NO_O1]}}, tmp_path / "data",
                 clock=clock).start()
    try:
        yield gw
    finally:
        gw.stop()


def _file(gw: Gateway, **fields: Any) -> str:
    data = {"subject": "alice", "rule": "approved-models", "justification": "benchmarking gpt-4o for the demo",
            **fields}
    status, body = _api(gw, "POST", "/api/v1/exemptions", data, token=None)
    assert status == 201, body
    exemption_id: str = body["id"]
    return exemption_id


def test_blocked_call_to_form_to_override_that_expires(enforcing: Gateway, mock: Mock, clock: FakeClock,
                                                       tmp_path: Path) -> None:
    gw = enforcing
    block = _blocked(gw)
    link = urlsplit(block["exemption_url"])
    assert link.path == "/console/exemptions/new"

    # The link opens a form pre-filled with the call; the requester adds a justification and files it.
    status, page, _ = _http(gw, "GET", f"{link.path}?{link.query}")
    assert status == 200
    form = _inputs(page)
    assert {k: form.values[k] for k in ("subject", "rule", "provider", "model", "team", "project")} == {
        "subject": "alice", "rule": "approved-models", "provider": "openai", "model": "gpt-4o", "team": "platform",
        "project": "checkout"}
    assert form.values["ts"] == "2026-03-02T10:00:00+00:00" and form.values["justification"] == ""
    assert b"See infosec/approved-models.md" in page  # what the rule says
    assert form.actions == ["/console/exemptions"]
    status, _, headers = _form(gw, form.actions[0], {**form.values, "justification": "customer demo on gpt-4o"})
    assert status == 303
    status_path = headers["location"]
    exemption_id = status_path.split("/")[-1].split("?")[0]
    status, page, _ = _http(gw, "GET", status_path)
    assert status == 200 and b"pending" in page and b"Your request was filed" in page

    # The policy owner sees it in the queue (admin token only) and approves a two-hour override.
    assert _api(gw, "GET", "/api/v1/exemptions?status=pending", token=None)[0] == 401
    status, body = _api(gw, "GET", "/api/v1/exemptions?status=pending")
    assert status == 200 and [x["id"] for x in body["exemptions"]] == [exemption_id]
    queued = body["exemptions"][0]
    assert (queued["subject"], queued["rule_id"], queued["provider"], queued["model"], queued["team"]) == (
        "alice", "approved-models", "openai", "gpt-4o", "platform")
    assert queued["call_ts_ms"] == int(T0.timestamp() * 1000) and queued["justification"] == "customer demo on gpt-4o"
    assert queued["status_url"].endswith(f"/console/exemptions/{exemption_id}")
    assert _api(gw, "POST", f"/api/v1/exemptions/{exemption_id}/approve", {"hours": 2}, token=None)[0] == 401
    status, body = _api(gw, "POST", f"/api/v1/exemptions/{exemption_id}/approve", {"kind": "override", "hours": 2},
                        actor="carol")
    assert status == 200, body
    approved = body["exemption"]
    assert (approved["status"], approved["reviewer"], approved["decision_kind"], approved["active"]) == (
        "approved", "carol", "override", True)
    assert approved["expires"] == "2026-03-02T12:00:00.000Z"

    # The same call now passes, and says which exemption let it through.
    calls = mock.stats.total
    headers = _passes(gw)
    assert headers["x-tollhouse-decision"] == "allow" and headers["x-tollhouse-exemption"] == exemption_id
    assert mock.stats.total == calls + 1
    assert _blocked(gw, "o1")["rule_id"] == "approved-models"  # the override covers gpt-4o only
    assert _blocked(gw, user="bob")["rule_id"] == "approved-models"  # and only to alice
    _, page, _ = _http(gw, "GET", status_path)
    assert b"approved" in page and b"carol" in page and b"2026-03-02T12:00:00.000Z" in page
    metrics = gw.get("/metrics", token=None)[1].decode()
    assert 'tollhouse_exemption_passes_total{rule="approved-models"} 1.0' in metrics  # not the blocked o1 call

    # Two hours later it has expired on its own.
    clock.now = T0.timestamp() + 2 * 3600 + 1
    assert _blocked(gw)["rule_id"] == "approved-models"
    _, body = _api(gw, "GET", f"/api/v1/exemptions/{exemption_id}", token=None)
    assert body["exemption"]["active"] is False and body["exemption"]["status"] == "approved"
    _, page, _ = _http(gw, "GET", status_path)
    assert b"expired at" in page

    # Deciding again: 409; an unknown id: 404.
    status, body = _api(gw, "POST", f"/api/v1/exemptions/{exemption_id}/approve", {})
    assert status == 409 and body["error"]["code"] == "already_decided" and "already approved by carol" in \
        body["error"]["message"]
    assert _api(gw, "POST", "/api/v1/exemptions/ex-nope/deny", {"reason": "x"})[0] == 404

    requested = _audit(gw, "exemption.requested")
    assert len(requested) == 1 and requested[0]["actor"] == "alice"
    assert {k: requested[0]["data"][k] for k in ("id", "subject", "rule_id", "provider", "model",
                                                  "justification")} == {
        "id": exemption_id, "subject": "alice", "rule_id": "approved-models", "provider": "openai",
        "model": "gpt-4o", "justification": "customer demo on gpt-4o"}
    (entry,) = _audit(gw, "exemption.approved")
    assert entry["actor"] == "carol" and entry["data"]["reviewer"] == "carol" and entry["data"]["kind"] == "override"
    assert entry["data"]["hours"] == 2 and entry["data"]["expires"] == "2026-03-02T12:00:00.000Z"
    assert entry["data"]["justification"] == "customer demo on gpt-4o"
    gw.stop()
    verified = _verify(tmp_path / "data")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_deny_path(enforcing: Gateway, tmp_path: Path) -> None:
    gw = enforcing
    _blocked(gw)
    status, body = _api(gw, "POST", "/api/v1/exemptions", {
        "subject": "alice", "rule": "approved-models", "justification": "I like it", "model": "gpt-4o",
        "provider": "openai", "ts": "2026-03-02T09:59:00Z"}, token=None)
    assert status == 201 and body["status"] == "pending"
    exemption_id, status_url = body["id"], body["status_url"]
    assert body["exemption"]["call_ts_ms"] == int(T0.timestamp() * 1000) - 60_000
    status, err = _api(gw, "POST", f"/api/v1/exemptions/{exemption_id}/deny", {})
    assert status == 400 and err["error"]["field"] == "reason"
    status, body = _api(gw, "POST", f"/api/v1/exemptions/{exemption_id}/deny",
                        {"reason": "use gpt-4o-mini; it is on the list"}, actor="dave")
    assert status == 200 and body["exemption"]["status"] == "denied" and body["exemption"]["reviewer"] == "dave"
    _, page, _ = _http(gw, "GET", urlsplit(status_url).path)
    assert b"Denied by dave" in page and b"use gpt-4o-mini; it is on the list" in page
    assert _blocked(gw)["rule_id"] == "approved-models"
    for action, data in (("deny", {"reason": "again"}), ("approve", {"hours": 1})):
        status, body = _api(gw, "POST", f"/api/v1/exemptions/{exemption_id}/{action}", data)
        assert status == 409 and "already denied by dave" in body["error"]["message"]
    (entry,) = _audit(gw, "exemption.denied")
    assert entry["actor"] == "dave" and entry["data"] == {
        "id": exemption_id, "subject": "alice", "rule_id": "approved-models", "reviewer": "dave",
        "reason": "use gpt-4o-mini; it is on the list"}
    gw.stop()
    assert _verify(tmp_path / "data").returncode == 0


def test_requests_and_decisions_are_validated_field_by_field(enforcing: Gateway) -> None:
    gw = enforcing

    def refused(data: Any, status: int = 400) -> dict[str, Any]:
        got, body = _api(gw, "POST", "/api/v1/exemptions", data, token=None)
        assert got == status, body
        error: dict[str, Any] = body["error"]
        return error

    ok = {"subject": "alice", "rule": "approved-models", "justification": "needed"}
    assert refused({**ok, "justification": " "})["field"] == "justification"
    error = refused({**ok, "rule": "no-such-rule"})
    assert error["field"] == "rule" and "approved-models, no-o1" in error["message"]
    error = refused({**ok, "justification": "x" * 2001})
    assert error["field"] == "justification" and "at most 2000" in error["message"]
    assert refused({"rule": "approved-models", "justification": "y"})["field"] == "subject"
    assert refused({**ok, "ts": "yesterday"})["field"] == "ts"
    assert refused({**ok, "model": 5})["field"] == "model"
    error = refused({})
    assert [p["field"] for p in error["problems"]] == ["subject", "rule", "justification"]
    assert refused(b"{not json")["code"] == "malformed_json"
    assert refused(b"[1]")["code"] == "bad_request"

    exemption_id = _file(gw)
    error = refused(ok, 409)  # one pending request per subject and rule
    assert error["code"] == "already_pending" and error["id"] == exemption_id
    _file(gw, rule="no-o1")  # another rule is another request
    for data, field in (({"hours": 0}, "hours"), ({"hours": 721}, "hours"), ({"hours": "soon"}, "hours"),
                        ({"hours": "²"}, "hours"), ({"hours": True}, "hours"), ({"kind": "forever"}, "kind"),
                        ({"kind": "rule_edit"}, "rule")):
        status, body = _api(gw, "POST", f"/api/v1/exemptions/{exemption_id}/approve", data)
        assert status == 400 and body["error"]["field"] == field, (data, body)
    status, body = _api(gw, "POST", f"/api/v1/exemptions/{exemption_id}/approve",
                        {"kind": "rule_edit", "rule": {"id": "broken", "scope": "galaxy"}})
    assert status == 400 and body["error"]["field"] == "rule" and "the policy was not changed" in \
        body["error"]["message"]
    assert _api(gw, "GET", "/api/v1/policy")[1]["version"] == 1
    status, body = _api(gw, "GET", f"/api/v1/exemptions/{exemption_id}", token=None)
    assert status == 200 and body["exemption"]["status"] == "pending"  # nothing was decided
    assert _api(gw, "GET", "/api/v1/exemptions/ex-unknown", token=None)[0] == 404
    assert _api(gw, "GET", "/api/v1/exemptions?status=maybe")[0] == 400
    assert _api(gw, "GET", "/api/v1/exemptions?limit=0")[0] == 400
    assert _api(gw, "DELETE", f"/api/v1/exemptions/{exemption_id}")[0] == 405
    status, body = _api(gw, "POST", f"/api/v1/exemptions/{exemption_id}/approve")  # no body: 24 hours
    assert status == 200 and body["exemption"]["expires"] == "2026-03-03T10:00:00.000Z"

    # The console form shows what is wrong and keeps what was typed.
    status, page, _ = _form(gw, "/console/exemptions", {"subject": "bob", "rule": "approved-models",
                                                         "justification": "", "model": "<b>gpt</b>"})
    assert status == 400 and b"justification is required" in page
    assert _inputs(page).values["model"] == "<b>gpt</b>" and b"<b>gpt</b>" not in page


def test_rule_edit_approval_publishes_a_policy_version(enforcing: Gateway, tmp_path: Path) -> None:
    gw = enforcing
    _blocked(gw, user="bob")
    exemption_id = _file(gw, subject="bob", justification="gpt-4o is cleared by legal now")
    widened = {**ALLOWLIST, "condition": {**ALLOWLIST["condition"],
                                          "allowlist": [*ALLOWLIST["condition"]["allowlist"], "gpt-4o"]}}
    status, body = _api(gw, "POST", f"/api/v1/exemptions/{exemption_id}/approve",
                        {"kind": "rule_edit", "rule": widened, "note": "legal sign-off"}, actor="carol")
    assert status == 200, body
    x = body["exemption"]
    assert (x["status"], x["decision_kind"], x["reviewer"], x["expires"]) == ("approved", "rule_edit", "carol", None)
    policy = _api(gw, "GET", "/api/v1/policy")[1]
    assert policy["version"] == 2 and [r["id"] for r in policy["rules"]] == ["approved-models", "no-o1"]
    assert "gpt-4o" in policy["rules"][0]["condition"]["allowlist"]
    for user in ("bob", "alice"):  # the rule changed for everyone; no exemption is involved
        headers = _passes(gw, user=user)
        assert headers["x-tollhouse-decision"] == "allow" and "x-tollhouse-exemption" not in headers
    new_rule = {"id": "bob-o1", "scope": "individual", "subject": "bob", "severity": "INFO",
                "condition": {"type": "MODEL_DENYLIST", "models": ["o1"]}}
    second = _file(gw, subject="bob", rule="no-o1", justification="o1 evals")
    assert _api(gw, "POST", f"/api/v1/exemptions/{second}/approve", {"kind": "rule_edit", "rule": new_rule})[0] == 200
    assert [r["id"] for r in _api(gw, "GET", "/api/v1/policy")[1]["rules"]] == ["approved-models", "no-o1", "bob-o1"]

    changed = {c["data"]["version"]: c for c in _audit(gw, "policy.changed")}  # with the diff, before → after
    assert changed[2]["actor"] == "carol" and changed[2]["data"]["source"] == f"exemption:{exemption_id}"
    assert changed[2]["data"]["changed"] == ["approved-models"] and changed[3]["data"]["added"] == ["bob-o1"]
    approved = _audit(gw, "exemption.approved")[0]["data"]
    assert (approved["kind"], approved["edited_rule"], approved["policy_version"], approved["note"]) == (
        "rule_edit", "approved-models", 2, "legal sign-off")
    gw.stop()
    assert _verify(tmp_path / "data").returncode == 0


def test_console_queue_needs_the_admin_token(enforcing: Gateway, clock: FakeClock) -> None:
    gw = enforcing
    first = _file(gw, justification="<script>alert(1)</script> for the demo")
    second = _file(gw, rule="no-o1", justification="o1 reasoning evals")

    status, page, headers = _http(gw, "GET", "/console/exemptions")
    assert status == 303 and headers["location"] == "/console/login?next=/console/exemptions"
    assert first.encode() not in page
    status, page, _ = _http(gw, "GET", "/console/login?next=/console/exemptions")
    assert status == 200 and b"Sign in" in page and _inputs(page).actions == ["/console/login"]
    status, page, headers = _form(gw, "/console/login", {"token": "wrong", "name": "carol"})
    assert status == 401 and "set-cookie" not in headers
    status, _, headers = _form(gw, "/console/login", {"token": ADMIN, "name": "carol"})
    assert status == 303 and headers["location"] == "/console/exemptions"
    cookie_header = headers["set-cookie"]
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/console/"):
        assert attribute in cookie_header
    assert ADMIN not in cookie_header
    cookie = {"Cookie": cookie_header.split(";")[0]}

    status, page, _ = _http(gw, "GET", "/console/exemptions", headers=cookie)
    assert status == 200 and b"Signed in as <b>carol</b>" in page
    assert b"<script>alert(1)</script>" not in page and b"&lt;script&gt;alert(1)&lt;/script&gt;" in page
    actions = _inputs(page).actions
    assert f"/console/exemptions/{first}/approve" in actions and f"/console/exemptions/{second}/deny" in actions
    status, page, _ = _http(gw, "GET", "/console/exemptions", headers={"Authorization": f"Bearer {ADMIN}"})
    assert status == 200  # a bearer token works too

    # Decisions from the page, as the signed-in reviewer; never from another site or without the cookie.
    assert _form(gw, f"/console/exemptions/{first}/approve", {"hours": "3"})[0] == 303  # to the sign-in
    evil = {**cookie, "Origin": "http://evil.example"}
    assert _form(gw, f"/console/exemptions/{first}/approve", {"hours": "3"}, evil)[0] == 403
    name = base64.urlsafe_b64encode(b"carol").decode().rstrip("=")
    assert name in cookie["Cookie"]
    for tampered in (cookie["Cookie"].replace(name, "bWFsbG9yeQ"), cookie["Cookie"] + "0"):  # mallory; bad signature
        assert _http(gw, "GET", "/console/exemptions", headers={"Cookie": tampered})[0] == 303
    # A cookie-authenticated form needs the page's CSRF token: without it, nothing is decided.
    status, page, _ = _form(gw, f"/console/exemptions/{first}/approve", {"hours": "3"}, cookie)
    assert status == 400 and b"security token" in page
    csrf = _inputs(_http(gw, "GET", "/console/exemptions", headers=cookie)[1]).values["csrf"]
    status, _, headers = _form(gw, f"/console/exemptions/{first}/approve", {"hours": "3", "note": "ok", "csrf": csrf},
                               {**cookie, "Origin": gw.url})  # the console's own page
    assert status == 303 and headers["location"] == "/console/exemptions"
    status, page, _ = _form(gw, f"/console/exemptions/{second}/deny", {"reason": "", "csrf": csrf}, cookie)
    assert status == 400 and b"reason is required" in page
    assert _form(gw, f"/console/exemptions/{second}/deny", {"reason": "not now", "csrf": csrf}, cookie)[0] == 303
    status, page, _ = _form(gw, f"/console/exemptions/{second}/deny", {"reason": "twice", "csrf": csrf}, cookie)
    assert status == 409 and b"already denied" in page
    _, body = _api(gw, "GET", "/api/v1/exemptions")
    decided = {x["id"]: (x["status"], x["reviewer"], x["note"]) for x in body["exemptions"]}
    assert decided == {first: ("approved", "carol", "ok"), second: ("denied", "carol", "not now")}
    assert _passes(gw)["x-tollhouse-exemption"] == first
    _, page, _ = _http(gw, "GET", "/console/exemptions", headers=cookie)
    assert b"Nothing is waiting" in page

    # Sessions end: signing out (with the page's CSRF token) clears the cookie; a session lasts 12 hours.
    assert _form(gw, "/console/logout", {}, cookie)[0] == 400  # no token: not signed out
    assert _http(gw, "GET", "/console/exemptions", headers=cookie)[0] == 200
    status, _, headers = _form(gw, "/console/logout", {"csrf": _inputs(page).values["csrf"]}, cookie)
    assert status == 303 and "Max-Age=0" in headers["set-cookie"]
    clock.now = T0.timestamp() + 12 * 3600 + 1
    assert _http(gw, "GET", "/console/exemptions", headers=cookie)[0] == 303


def test_the_requesters_pages_are_console_pages_that_show_nothing_of_the_org(enforcing: Gateway) -> None:
    """The form a block's link opens, its status page and the sign-in are on the console's layout and style sheet,
    under its Content-Security-Policy (no inline style or script), every value escaped; open to anyone, so they
    show no navigation, enforcement mode or organisation."""
    gw = enforcing
    hostile = "<script>alert(1)</script>"
    status, form, headers = _http(gw, "GET", f"/console/exemptions/new?subject={quote(hostile)}&rule=approved-models")
    assert status == 200 and "script-src 'self'" in headers["content-security-policy"]
    assert b"<script>alert(1)" not in form and b'value="&lt;script&gt;alert(1)&lt;/script&gt;"' in form
    assert b"Rule <b>approved-models</b>" in form  # what blocked the call, said before the form
    exemption_id = _file(gw, justification=hostile)
    _, status_page, _ = _http(gw, "GET", f"/console/exemptions/{exemption_id}?filed=1")
    _, sign_in, _ = _http(gw, "GET", "/console/login")
    _, missing, _ = _http(gw, "GET", "/console/exemptions/nope")
    for page in (form, status_page, sign_in, missing):
        assert b'href="/console/static/console.css"' in page and b"<style" not in page and b"<script" not in page
        assert b"enforcement" not in page and b"acme" not in page and b"<nav>\n  </nav>" in page
    assert b"Your request was filed" in status_page and b'<b class="pending">pending</b>' in status_page
    assert b"&lt;script&gt;alert(1)&lt;/script&gt;" in status_page
    assert b"No exemption request has the id nope." in missing


def test_gateways_sharing_a_store_converge(mock: Mock, tmp_path: Path) -> None:
    config = {"identity": {"trust_user_header": True}, "providers": upstreams(mock.url), "enforcement": "on",
              "directory": DIRECTORY, "policy": {"rules": [ALLOWLIST]},
              "store": {"url": f"sqlite:///{tmp_path / 'shared.db'}"}, "exemptions": {"refresh_interval_s": 0.2}}
    one = Gateway(config, tmp_path / "one").start()
    two = Gateway(config, tmp_path / "two").start()
    try:
        exemption_id = _file(one)
        _blocked(two)
        assert _api(two, "POST", f"/api/v1/exemptions/{exemption_id}/approve", {"hours": 1})[0] == 200
        assert _passes(two)["x-tollhouse-exemption"] == exemption_id  # at once where it was approved
        deadline = time.time() + 5
        while True:  # within a few refreshes on the other gateway
            try:
                assert _passes(one)["x-tollhouse-exemption"] == exemption_id
                break
            except openai.PermissionDeniedError:
                assert time.time() < deadline, "the other gateway never picked the approval up"
                time.sleep(0.1)
    finally:
        one.stop()
        two.stop()


def test_a_budget_cap_can_be_overridden_and_still_counts(mock: Mock, tmp_path: Path) -> None:
    cap = budget_rule(threshold=0.2)  # two calls of $0.10
    gw = Gateway({"identity": {"trust_user_header": True}, "providers": upstreams(mock.url), "enforcement": "on",
                  "directory": {"teams": [{"id": "platform"}], "people": [{"id": "alice", "team": "platform"}]},
                  "pricing": PRICED, "policy": {"rules": [cap]}}, tmp_path / "d").start()
    client = oai(gw)

    def call() -> dict[str, str]:
        raw = client.chat.completions.with_raw_response.create(model="budget-model", max_tokens=16, messages=CHAT)
        raw.parse()
        return dict(raw.headers)

    try:
        call()
        call()
        with pytest.raises(openai.PermissionDeniedError) as exc:
            call()
        assert isinstance(exc.value.body, dict) and exc.value.body["rule_id"] == "dollar"
        exemption_id = _file(gw, rule="dollar", justification="quarter-end report")
        assert _api(gw, "POST", f"/api/v1/exemptions/{exemption_id}/approve", {"hours": 1})[0] == 200
        headers = call()
        assert headers["x-tollhouse-decision"] == "allow" and headers["x-tollhouse-exemption"] == exemption_id
        status, body, _ = gw.get("/api/v1/spend?scope=person&id=alice")
        spend = json.loads(body)
        assert status == 200 and spend["requests"] == 3  # the call let through is still counted
        assert spend["caps"][0]["used"] == pytest.approx(0.3)
    finally:
        gw.stop()


# The engine stays pure: overrides come in as data.

def _policy(*rules: dict[str, Any]) -> CompiledPolicy:
    return CompiledPolicy(parse_rules(list(rules)), version=1)


def test_engine_sets_waived_violations_apart() -> None:
    subject = Directory(DirectoryConfig.model_validate(DIRECTORY)).subject("alice", None)
    policy = _policy(ALLOWLIST, NO_O1, REDIRECT)
    call = CallFacts("openai", "api.openai.com", "o1")
    assert policy.evaluate(call, subject, T0).action == "block"
    waived = policy.evaluate(call, subject, T0, waived={"approved-models"})
    assert waived.action == "block" and waived.rule_id == "no-o1"
    assert [v.rule.id for v in waived.waived] == ["approved-models"]
    allowed = policy.evaluate(call, subject, T0, waived={"approved-models", "no-o1"})
    assert allowed.action == "allow" and allowed.rule_id is None and len(allowed.waived) == 2
    opus = CallFacts("anthropic", "api.anthropic.com", "claude-3-opus-20240229")
    assert policy.evaluate(opus, subject, T0).model == "claude-3-5-sonnet-20241022"
    kept = policy.evaluate(opus, subject, T0, waived={"no-opus", "approved-models"})
    assert kept.model == "claude-3-opus-20240229" and kept.redirect is None and kept.action == "allow"


def test_override_set_respects_expiry_scope_and_keeps_the_longest() -> None:
    def approved(xid: str, subject: str, rule: str, expires_ms: int, model: str | None = None,
                 scope_models: str | None = None) -> Exemption:
        return Exemption(xid, 0, APPROVED, subject, subject, rule, "openai" if model else None, model, None, None,
                         None, "why", "carol", 1, OVERRIDE, expires_ms, scope_models=scope_models)

    overrides = OverrideSet.of([approved("a", "alice", "r1", 100), approved("b", "alice", "r1", 300),
                                approved("c", "alice", "r2", 200), approved("d", "bob", "r1", 50),
                                approved("e", "bob", "r2", 500, "gpt-4o"),
                                approved("f", "bob", "r3", 500, "gpt-4o", scope_models="gpt-4o*,o1")])
    assert overrides.for_call("alice", "openai", "any", 150) == {"r1": "b", "r2": "c"}
    assert overrides.for_call("alice", "anthropic", None, 250) == {"r1": "b"}
    assert overrides.for_call("alice", "openai", "x", 300) == {} and overrides.for_call("carol", "openai", "x", 0) == {}
    assert overrides.for_call("bob", "openai", "gpt-4o", 100) == {"r2": "e", "r3": "f"}
    assert overrides.for_call("bob", "openai", "gpt-4o-mini", 100) == {"r3": "f"}
    assert overrides.for_call("bob", "anthropic", "gpt-4o", 100) == {}  # only the provider requested
    assert overrides.for_call("bob", "openai", "o1", 100) == {"r3": "f"}
    assert overrides.for_call("bob", "openai", None, 100) == {}
    assert overrides.size == 6
    assert OverrideSet.of(reversed([approved("a", "alice", "r1", 100)])).digest != OverrideSet().digest

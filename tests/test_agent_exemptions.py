"""Issue 16: an agent's exemptions are its control plane's. The agent's block links to the control plane's
form, the request lands in the control plane's queue, an approval reaches the agent in its bundle within a
second and covers only the model requested, and a revocation stops it there too."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

import raw_http
from conftest import Gateway, Mock, upstreams
from test_agent import DIRECTORY, Agent, _put, _until
from test_exemptions import _inputs
from test_ledger_gateway import FakeClock
from tollhouse.events.model import event_from_row
from tollhouse.events.wire import to_wire

ALLOW_MINI = {"id": "approved-models", "scope": "org", "severity": "BLOCK",
              "condition": {"type": "MODEL_ALLOWLIST", "models": ["gpt-4o-mini"]}}
CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


@pytest.fixture
def fleet(gateway_factory: Any, mock: Mock, tmp_path: Path) -> Any:
    control: Gateway = gateway_factory({"providers": upstreams(mock.url), "directory": DIRECTORY})
    status, body, _ = control.request("POST", "/api/v1/agent/tokens", {"label": "laptops"})
    assert status == 201
    _put(control, "/api/v1/policy", {"rules": [ALLOW_MINI]})
    _put(control, "/api/v1/agent-policy", {"enforcement": "on"})
    agent = Agent(control.url, json.loads(body)["token"], tmp_path / "agent", mock).start()
    try:
        yield control, agent
    finally:
        agent.stop()


def _block(agent: Agent, model: str) -> dict[str, Any]:
    with pytest.raises(openai.PermissionDeniedError) as exc:
        agent.client().chat.completions.create(model=model, messages=CHAT)
    body = exc.value.body
    assert isinstance(body, dict)
    return body


def _wire(event: dict[str, Any]) -> dict[str, Any]:
    """An event as the API shows it, as an agent sends it."""
    ts_ms = int(datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp() * 1000)
    return to_wire(event_from_row({**event, "ts_ms": ts_ms}))


def _held(agent: Agent) -> int:
    """How many approved overrides the agent judges with (set once a bundle is applied)."""
    held: int = agent.health()["agent"]["exemptions"]
    return held


def _control_api(control: Gateway, method: str, path: str, body: Any = None) -> Any:
    status, raw, _ = control.request(method, path, body, headers={"X-Tollhouse-Actor": "carol"})
    assert status == 200, raw
    return json.loads(raw)


def test_an_agents_exemption_is_filed_decided_and_revoked_at_the_control_plane(fleet: Any, mock: Mock) -> None:
    control, agent = fleet
    block = _block(agent, "gpt-4o")
    link = urlsplit(block["exemption_url"])
    assert f"{link.scheme}://{link.netloc}" == control.url and link.path == "/console/exemptions/new"
    assert f"{control.url}/console/exemptions/new?" in block["message"]

    # The agent's own exemption paths send the requester to the control plane.
    status, _, headers = raw_http.request(agent.opts.port, "GET", f"{link.path}?{link.query}")
    assert status == 307 and headers["location"] == f"{control.url}{link.path}?{link.query}"
    status, _, headers = raw_http.request(agent.opts.port, "POST", "/api/v1/exemptions", b"{}",
                                          {"Content-Type": "application/json"})
    assert status == 307 and headers["location"] == f"{control.url}/api/v1/exemptions"

    # The link opens the control plane's form, pre-filled; filing it lands in the control plane's queue.
    status, page, _ = raw_http.request(control.port, "GET", f"{link.path}?{link.query}")
    assert status == 200
    form = _inputs(page)
    assert (form.values["subject"], form.values["model"], form.values["provider"]) == ("alice", "gpt-4o", "openai")
    status, _, _ = raw_http.request(control.port, "POST", form.actions[0],
                                    urlencode({**form.values, "justification": "evaluating gpt-4o"}).encode(),
                                    {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 303
    queue = _control_api(control, "GET", "/api/v1/exemptions?status=pending")["exemptions"]
    assert [(x["subject"], x["model"]) for x in queue] == [("alice", "gpt-4o")]
    exemption_id = queue[0]["id"]
    assert agent.api("/api/v1/events")["events"][0]["decision"] == "block"

    # Approved at the control plane: in force on the agent within a second, for gpt-4o only.
    assert _held(agent) == 0
    approved_at = time.monotonic()
    _control_api(control, "POST", f"/api/v1/exemptions/{exemption_id}/approve", {"hours": 8})
    _until(lambda: _held(agent) == 1, 2.0)
    raw = agent.client().chat.completions.with_raw_response.create(model="gpt-4o", messages=CHAT)
    raw.parse()
    took = time.monotonic() - approved_at
    assert took < 1.0, f"the approval took {took:.3f}s to reach the agent"
    assert raw.headers["x-tollhouse-exemption"] == exemption_id
    assert _block(agent, "gpt-4.5-preview")["rule_id"] == "approved-models"
    events = agent.api("/api/v1/events")["events"]
    passed = next(e for e in events if e["requested_model"] == "gpt-4o" and e["decision"] == "allow")
    assert passed["exemption_id"] == exemption_id
    used = [e for e in agent.api("/api/v1/audit")["entries"] if e["kind"] == "exemption.used"]
    assert [u["data"]["id"] for u in used] == [exemption_id]
    # The event reaches the control plane with the exemption that let it through.
    _until(lambda: any(e["id"] == passed["id"] for e in control.events()), 10.0)
    assert next(e for e in control.events() if e["id"] == passed["id"])["exemption_id"] == exemption_id
    status, raw_audit, _ = control.get("/api/v1/audit?limit=1000")
    assert status == 200
    uses = [e["data"] for e in json.loads(raw_audit)["entries"] if e["kind"] == "exemption.used"]
    assert [(u["id"], u["event_id"]) for u in uses] == [(exemption_id, passed["id"])]
    assert uses[0]["via"].startswith("agent:")
    status, raw_resent, _ = control.request("POST", "/api/v1/agent/events", {"events": [_wire(passed)]})
    assert status == 200 and json.loads(raw_resent)["duplicates"] == 1
    _, raw_audit, _ = control.get("/api/v1/audit?limit=1000")
    assert sum(e["kind"] == "exemption.used" for e in json.loads(raw_audit)["entries"]) == 1  # not twice

    # Revoked at the control plane: stopped on the agent.
    _control_api(control, "POST", f"/api/v1/exemptions/{exemption_id}/revoke", {"reason": "done"})
    _until(lambda: _held(agent) == 0, 2.0)
    assert _block(agent, "gpt-4o")["rule_id"] == "approved-models"


def test_a_cached_bundle_brings_the_control_planes_exemptions_back_offline(fleet: Any, mock: Mock,
                                                                          tmp_path: Path) -> None:
    control, agent = fleet
    _block(agent, "gpt-4o")
    status, body, _ = control.request("POST", "/api/v1/exemptions", {
        "subject": "alice", "rule": "approved-models", "provider": "openai", "model": "gpt-4o",
        "justification": "evals"}, token=None)
    assert status == 201
    exemption_id = json.loads(body)["id"]
    _control_api(control, "POST", f"/api/v1/exemptions/{exemption_id}/approve", {"hours": 8})
    _until(lambda: _held(agent) == 1, 2.0)
    assert agent.status_of("gpt-4o") == 200
    token = agent.opts.token
    agent.stop()
    control.stop()  # the control plane is gone; the agent restarts from its cached bundle
    again = Agent(control.url, token, tmp_path / "agent", mock).start()
    try:
        assert again.health()["control_plane"]["state"] != "connected"
        assert again.status_of("gpt-4o") == 200 and again.status_of("gpt-4.5-preview") == 403
    finally:
        again.stop()


def test_an_expiry_noted_at_the_control_plane_reaches_the_agent(gateway_factory: Any, mock: Mock,
                                                                tmp_path: Path) -> None:
    fake = FakeClock(datetime.now(UTC))  # the control plane's clock; the agent keeps the real one
    control = Gateway({"providers": upstreams(mock.url), "directory": DIRECTORY,
                       "exemptions": {"refresh_interval_s": 0.05}}, tmp_path / "control", clock=fake).start()
    try:
        status, body, _ = control.request("POST", "/api/v1/agent/tokens", {"label": "laptops"})
        assert status == 201
        _put(control, "/api/v1/policy", {"rules": [ALLOW_MINI]})
        _put(control, "/api/v1/agent-policy", {"enforcement": "on"})
        agent = Agent(control.url, json.loads(body)["token"], tmp_path / "agent", mock).start()
        try:
            status, body, _ = control.request("POST", "/api/v1/exemptions", {
                "subject": "alice", "rule": "approved-models", "provider": "openai", "model": "gpt-4o",
                "justification": "evals"}, token=None)
            exemption_id = json.loads(body)["id"]
            _control_api(control, "POST", f"/api/v1/exemptions/{exemption_id}/approve", {"hours": 1})
            _until(lambda: _held(agent) == 1, 2.0)
            assert agent.status_of("gpt-4o") == 200
            fake.now += 3600  # an hour later at the control plane: the override has expired there
            _until(lambda: _held(agent) == 0, 2.0)
            assert agent.status_of("gpt-4o") == 403
            status, raw, _ = control.get("/api/v1/audit?limit=1000")
            assert status == 200
            expired = [e["data"]["id"] for e in json.loads(raw)["entries"] if e["kind"] == "exemption.expired"]
            assert expired == [exemption_id]
        finally:
            agent.stop()
    finally:
        control.stop()

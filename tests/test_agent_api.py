"""The control plane's side of agents: enrollment tokens, the long-polled bundle, idempotent telemetry."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from conftest import Gateway
from test_policy_versions import DENY_4O

EVENT = {"id": "agent-1-0001", "ts_ms": 1_795_000_000_000, "subject": "alice", "team": "platform",
         "provider": "openai", "model": "gpt-4o-mini", "requested_model": "gpt-4o-mini", "status": 200,
         "input_tokens": 12, "output_tokens": 5, "cost_nusd": 4_800, "decision": "allow", "latency_ms": 321.5}


def _json(gw: Gateway, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any, dict[str, str]]:
    status, raw, headers = gw.request(method, path, body, **kw)
    return status, json.loads(raw) if raw else None, headers


def _token(gw: Gateway, label: str = "laptops") -> str:
    status, body, _ = _json(gw, "POST", "/api/v1/agent/tokens", {"label": label})
    assert status == 201 and body["token"].startswith("the-") and body["label"] == label
    token: str = body["token"]
    return token


def test_enrollment_tokens_admit_agents_until_revoked(gateway: Gateway) -> None:
    token = _token(gateway)
    status, body, _ = _json(gateway, "GET", "/api/v1/agent/bundle", token=token,
                            headers={"X-Tollhouse-Agent-Id": "mbp-alice", "X-Tollhouse-Hostname": "alice-mbp",
                                     "X-Tollhouse-Agent-Version": "v0.1.0"})
    assert status == 200 and body["policy"] == {"version": 0, "rules": [], "timezone": "UTC"}
    assert body["agent_policy"]["update_policy"] == "notify-only" and body["directory"]["org"] == "acme"
    agents = _json(gateway, "GET", "/api/v1/agents")[1]["agents"]
    assert [(a["agent_id"], a["hostname"], a["version"]) for a in agents] == [("mbp-alice", "alice-mbp", "v0.1.0")]
    tokens = _json(gateway, "GET", "/api/v1/agent/tokens")[1]["tokens"]
    assert len(tokens) == 1 and token not in json.dumps(tokens)  # only the prefix is ever shown again
    # the token is for agents only: it cannot read or change the control plane
    assert gateway.request("GET", "/api/v1/policy", token=token)[0] == 401
    assert gateway.request("GET", "/api/v1/agent/bundle", token="the-made-up")[0] == 401
    assert gateway.request("GET", "/api/v1/agent/bundle", token=None)[0] == 401
    assert _json(gateway, "DELETE", f"/api/v1/agent/tokens/{tokens[0]['prefix']}")[0] == 200
    status, body, _ = _json(gateway, "GET", "/api/v1/agent/bundle", token=token)
    assert status == 401 and "revoked" in body["error"]["message"]
    assert _json(gateway, "DELETE", f"/api/v1/agent/tokens/{tokens[0]['prefix']}")[0] == 404
    _, audit, _ = _json(gateway, "GET", "/api/v1/audit")
    kinds = [e["kind"] for e in audit["entries"]]
    assert "agent.token_created" in kinds and "agent.token_revoked" in kinds and token not in json.dumps(audit)


def test_a_long_poll_returns_the_moment_the_policy_changes(gateway: Gateway) -> None:
    token = _token(gateway)
    _, first, headers = _json(gateway, "GET", "/api/v1/agent/bundle", token=token)
    etag = headers["etag"]
    assert first["etag"] == etag
    started = time.monotonic()
    status, _, _ = _json(gateway, "GET", "/api/v1/agent/bundle?wait=1", token=token, headers={"If-None-Match": etag})
    assert status == 304 and time.monotonic() - started >= 0.9  # held, nothing changed
    result: dict[str, Any] = {}

    def poll() -> None:
        result["answer"] = _json(gateway, "GET", "/api/v1/agent/bundle?wait=30", token=token,
                                 headers={"If-None-Match": etag})
        result["at"] = time.monotonic()

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.5)
    edited = time.monotonic()
    assert _json(gateway, "PUT", "/api/v1/policy", {"rules": [DENY_4O]})[0] == 200
    poller.join(10)
    status, bundle, headers = result["answer"]
    assert status == 200 and bundle["policy"]["version"] == 1 and bundle["policy"]["rules"] == [DENY_4O]
    assert headers["etag"] != etag and result["at"] - edited < 1.0  # pushed, not polled for later

    # an agent-policy edit wakes pollers too, and the agent gets the proxy credentials it needs
    proxy = "http://svc:s3cret@proxy.acme.internal:3128"
    assert _json(gateway, "PUT", "/api/v1/agent-policy", {"upstream_proxy": proxy})[0] == 200
    status, bundle, _ = _json(gateway, "GET", "/api/v1/agent/bundle?wait=5", token=token,
                              headers={"If-None-Match": headers["etag"]})
    assert status == 200 and bundle["agent_policy"]["upstream_proxy"] == proxy


def test_telemetry_is_stored_once_even_when_a_batch_is_retried(gateway: Gateway) -> None:
    token = _token(gateway)
    batch = [EVENT, dict(EVENT, id="agent-1-0002", decision="block", rule_id="no-4o", status=403,
                         input_tokens=0, output_tokens=0, cost_nusd=0), dict(EVENT, id="agent-1-0003")]
    assert _json(gateway, "POST", "/api/v1/agent/events", {"events": batch}, token=token)[1] == {
        "received": 3, "stored": 3, "duplicates": 0}
    assert _json(gateway, "POST", "/api/v1/agent/events", {"events": batch}, token=token)[1] == {
        "received": 3, "stored": 0, "duplicates": 3}
    events = gateway.events()
    assert sorted(e["id"] for e in events) == ["agent-1-0001", "agent-1-0002", "agent-1-0003"]
    first = next(e for e in events if e["id"] == "agent-1-0001")
    assert first["cost_usd"] == 0.0000048 and first["subject"] == "alice" and first["latency_ms"] == 321.5
    _, metrics, _ = gateway.get("/metrics", token=None)
    assert b'tollhouse_agent_events_total{result="duplicate"} 3.0' in metrics


def test_a_bad_batch_is_refused_whole_and_says_where(gateway: Gateway) -> None:
    token = _token(gateway)
    bad = [dict(EVENT, id="ok-1"), dict(EVENT, id="bad-1", status="200", surprise=True)]
    status, body, _ = _json(gateway, "POST", "/api/v1/agent/events", {"events": bad}, token=token)
    assert status == 400 and body["error"]["code"] == "invalid_events"
    assert "events[1].status" in body["error"]["message"]
    assert any("events[1].surprise" in p for p in body["error"]["problems"])
    assert gateway.events() == []  # nothing half-stored
    assert gateway.request("POST", "/api/v1/agent/events", b"[{", token=token)[0] == 400
    status, body, _ = _json(gateway, "POST", "/api/v1/agent/events", [EVENT], token=token)
    assert status == 400 and "events" in body["error"]["message"]
    assert gateway.request("POST", "/api/v1/agent/events", {"events": [EVENT]}, token=None)[0] == 401

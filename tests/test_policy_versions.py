"""Policy and agent policy as versioned data over /api/v1: validate, version, history, diff, rollback."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from conftest import Gateway, Mock, upstreams
from test_gateway_sdks import oai
from test_policy_gateway import ALLOWLIST, DIRECTORY

DENY_4O = {"id": "no-4o", "scope": "team", "team": "platform", "severity": "BLOCK",
           "condition": {"type": "MODEL_DENYLIST", "models": ["gpt-4o"]}}


def _config(mock: Mock, **extra: Any) -> dict[str, Any]:
    return {"identity": {"trust_user_header": True}, "providers": upstreams(mock.url), "enforcement": "on",
            "directory": DIRECTORY, **extra}


def _json(gw: Gateway, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
    status, raw, _ = gw.request(method, path, body, **kw)
    return status, json.loads(raw)


def _allowed(gw: Gateway, model: str, user: str = "alice") -> bool:
    try:
        oai(gw, user).chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    except openai.PermissionDeniedError:
        return False
    return True


def test_put_validates_everything_then_versions_and_applies_at_once(mock: Mock, gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory(_config(mock))
    assert _json(gw, "GET", "/api/v1/policy") == (200, {"version": 0, "rules": [], "source": "config",
                                                          "authoritative": "api"})
    bad = [DENY_4O, {"id": "typo", "scope": "team", "team": "platform", "condition": {"type": "MODEL_DENYLIST"}},
           {"id": "r3", "condition": {"type": "budget", "threshold": "lots"}}]
    status, body = _json(gw, "PUT", "/api/v1/policy", {"rules": bad})
    assert status == 400 and body["error"]["code"] == "invalid_policy"
    problems = "\n".join(body["error"]["problems"])
    assert "typo" in problems and "condition.models" in problems and "r3" in problems and "threshold" in problems
    status, body = _json(gw, "PUT", "/api/v1/policy", [dict(DENY_4O, team="nope")])  # a bare list works too
    assert status == 400 and "nope" in body["error"]["problems"][0] and "no-4o" in body["error"]["problems"][0]
    assert _json(gw, "GET", "/api/v1/policy")[1]["version"] == 0  # nothing changed
    assert _allowed(gw, "gpt-4o")

    status, body = _json(gw, "PUT", "/api/v1/policy", {"rules": [DENY_4O], "note": "no 4o for platform"},
                         headers={"X-Tollhouse-Actor": "carol@acme"})
    assert status == 200 and body["version"] == 1 and body["actor"] == "carol@acme" and body["source"] == "api"
    assert not _allowed(gw, "gpt-4o") and _allowed(gw, "gpt-4o", user="rita")  # rita is not in platform
    assert _json(gw, "GET", "/api/v1/policy")[1]["rules"] == [DENY_4O]
    status, body = _json(gw, "PUT", "/api/v1/policy", {"rules": [], "base_version": 0})
    assert status == 409 and "base_version 0" in body["error"]["message"]
    status, raw, _ = gw.request("PUT", "/api/v1/policy", b"{not json")
    assert status == 400 and b"not valid JSON" in raw
    assert gw.request("PUT", "/api/v1/policy", {"rules": []}, token=None)[0] == 401
    assert gw.request("PUT", "/api/v1/policy", {"rules": []}, token="wrong")[0] == 401


def test_history_diff_and_rollback(mock: Mock, gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory(_config(mock, policy={"rules": [ALLOWLIST]}))  # version 1, from the config
    relaxed = dict(ALLOWLIST, action={"type": "alert"})
    assert _json(gw, "PUT", "/api/v1/policy", {"rules": [relaxed, DENY_4O]})[1]["version"] == 2
    status, body = _json(gw, "GET", "/api/v1/policy/versions")
    assert status == 200 and [(v["version"], v["source"], v["rules"]) for v in body["versions"]] == [
        (2, "api", 2), (1, "config", 1)]
    status, diff = _json(gw, "GET", "/api/v1/policy/diff?from=1&to=2")
    assert status == 200 and diff["added"] == ["no-4o"] and diff["changed"] == ["approved-models"]
    assert {"op": "changed", "path": "rules[approved-models].action.type", "id": "approved-models",
            "before": "hard_stop", "after": "alert"} in diff["changes"]
    assert _allowed(gw, "o1")  # approved-models only alerts now

    status, body = _json(gw, "POST", "/api/v1/policy/rollback", {"version": 1})
    assert status == 200 and body["version"] == 3 and body["source"] == "rollback:1" and body["rules"] == [ALLOWLIST]
    assert not _allowed(gw, "o1")
    assert _json(gw, "GET", "/api/v1/policy/versions/2")[1]["rules"] == [relaxed, DENY_4O]
    assert _json(gw, "GET", "/api/v1/policy/versions/9")[0] == 404
    assert _json(gw, "GET", "/api/v1/policy/versions/82500470057508806806437101568")[0] == 404  # not a 500
    assert _json(gw, "GET", "/api/v1/policy/versions/%C2%B2")[0] == 404  # a superscript two is no number
    assert _json(gw, "POST", "/api/v1/policy/rollback", {"version": 42})[0] == 404
    assert _json(gw, "GET", "/api/v1/policy/diff?to=2")[0] == 400
    _, audit = _json(gw, "GET", "/api/v1/audit")
    changed = [e for e in audit["entries"] if e["kind"] == "policy.changed"]
    assert [e["data"]["version"] for e in changed] == [1, 2, 3]
    assert changed[1]["actor"] == "admin" and changed[1]["data"]["added"] == ["no-4o"]


def test_an_api_edit_survives_a_restart_and_a_changed_config_is_a_new_version(mock: Mock, tmp_path: Path) -> None:
    data = tmp_path / "data"
    gw = Gateway(_config(mock, policy={"rules": [ALLOWLIST]}), data).start()
    _json(gw, "PUT", "/api/v1/policy", {"rules": [DENY_4O]})
    gw.stop()
    gw = Gateway(_config(mock, policy={"rules": [ALLOWLIST]}), data).start()  # same config: keep the edit
    try:
        assert _json(gw, "GET", "/api/v1/policy")[1] == {
            **_json(gw, "GET", "/api/v1/policy/versions/2")[1], "version": 2}
        assert not _allowed(gw, "gpt-4o") and _allowed(gw, "o1")
    finally:
        gw.stop()
    gw = Gateway(_config(mock, policy={"rules": [ALLOWLIST, DENY_4O]}), data).start()  # the config changed
    try:
        body = _json(gw, "GET", "/api/v1/policy")[1]
        assert body["version"] == 3 and body["source"] == "config" and len(body["rules"]) == 2
    finally:
        gw.stop()


def test_gateways_sharing_a_store_pick_up_an_edit_within_seconds(mock: Mock, gateway_factory: Any,
                                                                  tmp_path: Path) -> None:
    cfg = _config(mock, store={"url": f"sqlite:///{tmp_path / 'shared.db'}"})
    a: Gateway = gateway_factory(cfg, tmp_path / "a")
    b: Gateway = gateway_factory(cfg, tmp_path / "b")
    assert _allowed(b, "gpt-4o")
    assert _json(a, "PUT", "/api/v1/policy", {"rules": [DENY_4O]})[0] == 200
    deadline = time.monotonic() + 5
    while _json(b, "GET", "/api/v1/policy")[1]["version"] != 1:
        assert time.monotonic() < deadline, "gateway b never saw version 1"
        time.sleep(0.1)
    assert not _allowed(b, "gpt-4o")


@pytest.mark.parametrize(("field", "value", "shown"), [
    ("maintenance_window", "Sun 2am-4am", "Sun 02:00-04:00"),
    ("pinned_version", "1.2", "v"),
    ("upstream_proxy", "socks5://proxy:1080", "http"),
    ("update_policy", "sometimes", "auto"),
    ("enforcement", "maybe", "on"),
])
def test_agent_policy_refuses_each_bad_setting_by_name_with_an_example(gateway: Gateway, field: str, value: str,
                                                                       shown: str) -> None:
    status, body = _json(gateway, "PUT", "/api/v1/agent-policy", {field: value})
    assert status == 400 and body["error"]["code"] == "invalid_agent_policy"
    problem = body["error"]["problems"][0]
    assert problem.startswith(field) and shown in problem
    assert _json(gateway, "GET", "/api/v1/agent-policy")[1]["version"] == 0


def test_agent_policy_versions_history_diff_and_no_password_shown(gateway: Gateway) -> None:
    default = _json(gateway, "GET", "/api/v1/agent-policy")[1]
    assert default["update_policy"] == "notify-only" and default["enforcement"] == "off"
    proxy = "http://svc:s3cret@proxy.acme.internal:3128"
    status, body = _json(gateway, "PUT", "/api/v1/agent-policy", {
        "update_policy": "auto", "maintenance_window": "any 23:00-02:00", "pinned_version": "v1.4.2",
        "upstream_proxy": proxy, "enforcement": "on"})
    assert status == 200 and body["version"] == 1 and body["maintenance_window"] == "Any 23:00-02:00"
    assert "s3cret" not in json.dumps(body)
    assert _json(gateway, "PUT", "/api/v1/agent-policy", {"update_policy": "manual", "upstream_proxy": proxy,
                                                          "enforcement": "on"})[1]["version"] == 2
    versions = _json(gateway, "GET", "/api/v1/agent-policy/versions")[1]["versions"]
    assert [v["version"] for v in versions] == [2, 1]
    diff = _json(gateway, "GET", "/api/v1/agent-policy/diff?from=1&to=2")[1]
    assert {(c["path"], c.get("before"), c.get("after")) for c in diff["changes"]} == {
        ("update_policy", "auto", "manual"), ("maintenance_window", "Any 23:00-02:00", ""),
        ("pinned_version", "v1.4.2", "")}
    _, raw, _ = gateway.get("/api/v1/audit")
    assert b"agent_policy.changed" in raw and b"s3cret" not in raw and b"proxy.acme.internal" in raw

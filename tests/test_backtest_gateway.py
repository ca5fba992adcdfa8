"""The backtest as a policy owner runs it: POST /api/v1/policy/backtest on a gateway that has served calls, and
`tollhouse policy backtest` on the same store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from conftest import Gateway, Mock, upstreams
from test_gateway_sdks import oai
from test_policy_gateway import DIRECTORY

DENY_4O = {"id": "no-4o", "scope": "org", "condition": {"type": "MODEL_DENYLIST", "models": ["gpt-4o"]},
           "action": {"type": "hard_stop"}}
SHADOW_MINI = {"id": "try-no-mini", "scope": "org", "mode": "shadow",
               "condition": {"type": "MODEL_DENYLIST", "models": ["gpt-4o-mini"]}, "action": {"type": "hard_stop"}}
WARN_BOB = {"id": "bob-warned", "scope": "individual", "subject": "bob", "severity": "WARN",
            "condition": {"type": "MODEL_DENYLIST", "models": ["gpt-4o-mini"]}}


def _served(mock: Mock, gateway_factory: Any) -> Gateway:
    """A gateway in observe mode with no rules that has served five calls: alice 3 x mini and 1 x 4o, bob 1 x mini."""
    gw: Gateway = gateway_factory({"identity": {"trust_user_header": True}, "providers": upstreams(mock.url),
                                   "directory": DIRECTORY})
    for user, model in (("alice", "gpt-4o-mini"), ("alice", "gpt-4o-mini"), ("alice", "gpt-4o"),
                        ("alice", "gpt-4o-mini"), ("bob", "gpt-4o-mini")):
        oai(gw, user).chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    return gw


def test_the_api_replays_served_calls_and_shows_shadow_rules_beside_the_rules_in_force(
        mock: Mock, gateway_factory: Any) -> None:
    gw = _served(mock, gateway_factory)
    status, body, _ = gw.request("POST", "/api/v1/policy/backtest", {"rules": [DENY_4O, SHADOW_MINI, WARN_BOB],
                                                                      "days": 1})
    assert status == 200, body
    r = json.loads(body)
    assert r["calls"] == 5 and r["judged"] == 5 and r["days"] == 1
    assert r["changed"] == 2 and r["changes"] == {"allow->block": 1, "allow->warn": 1}
    assert r["outcomes"] == {"allow": 3, "warn": 1, "redirect": 0, "block": 1}
    assert r["in_force_outcomes"] == {"allow": 5, "warn": 0, "redirect": 0, "block": 0}
    # bob's own deny list (a more specific level of the same kind) supersedes the org's shadow one for his call
    assert r["shadow"] == {"rules": ["try-no-mini"], "would": {"block": 3}}
    rules = {row["id"]: row for row in r["rules"]}
    assert rules["no-4o"]["would_block"] == 1 and rules["no-4o"]["subjects"] == ["alice"]
    assert rules["no-4o"]["teams"] == ["platform"] and rules["no-4o"]["cost_usd_blocked"] > 0
    assert rules["no-4o"]["first"] == rules["no-4o"]["last"] is not None
    assert rules["try-no-mini"]["mode"] == "shadow" and rules["try-no-mini"]["would_block"] == 3
    assert rules["try-no-mini"]["subjects"] == ["alice"]
    assert rules["bob-warned"]["would_warn"] == 1 and rules["bob-warned"]["subjects"] == ["bob"]


def test_the_api_refuses_bad_rules_and_bad_days_and_needs_the_admin_token(mock: Mock, gateway_factory: Any) -> None:
    gw = _served(mock, gateway_factory)
    status, body, _ = gw.request("POST", "/api/v1/policy/backtest",
                                 {"rules": [{"id": "x", "scope": "org", "condition": {"type": "modle"}}]})
    err = json.loads(body)["error"]
    assert status == 400 and err["code"] == "invalid_rules" and "nothing was replayed" in err["message"]
    assert any("rule x: condition.type" in p for p in err["problems"])
    status, body, _ = gw.request("POST", "/api/v1/policy/backtest", {"rules": [], "days": 0})
    assert status == 400 and "days must be a whole number of days from 1 to 366" in json.loads(body)["error"]["message"]
    status, _, _ = gw.request("POST", "/api/v1/policy/backtest", {"rules": []}, token=None)
    assert status == 401


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tollhouse", *args], capture_output=True, text=True, timeout=120)


def test_the_command_replays_the_same_store_as_text_and_json(mock: Mock, gateway_factory: Any, tmp_path: Path) -> None:
    gw = _served(mock, gateway_factory)
    gw.stop()  # every call stored
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"providers": upstreams(mock.url), "directory": DIRECTORY}))
    rules = tmp_path / "proposed.yaml"
    rules.write_text(yaml.safe_dump({"rules": [DENY_4O, SHADOW_MINI]}))
    common = ("--config", str(cfg), "--data-dir", str(gw.data_dir))
    out = _cli("policy", "backtest", str(rules), "--json", *common)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["calls"] == 5 and r["changed"] == 1 and r["days"] == 14
    text = _cli("policy", "backtest", str(rules), "--days", "3", *common)
    assert text.returncode == 0, text.stderr
    assert "5 calls (5 judged" in text.stdout and "1 call(s) decided differently (allow->block 1)" in text.stdout
    assert "shadow rules (try-no-mini) would change: block 4" in text.stdout
    assert any(line.startswith("no-4o") and " 1 " in line for line in text.stdout.splitlines())

    before = _cli("policy", "backtest", str(rules), "--json", "--until", "2001-01-01T00:00:00", *common)
    assert before.returncode == 0 and json.loads(before.stdout)["calls"] == 0
    assert json.loads(before.stdout)["to"] == "2001-01-01T00:00:00.000Z"

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump([{"id": "y", "scope": "org", "condition": {"type": "budget"}}]))
    failed = _cli("policy", "backtest", str(bad), *common)
    assert failed.returncode == 1 and "rule y: condition.threshold" in failed.stderr
    assert "nothing was replayed" in failed.stderr and "Traceback" not in failed.stderr
    missing = _cli("policy", "backtest", str(rules), "--config", str(cfg), "--data-dir", str(tmp_path / "none"))
    assert missing.returncode == 1 and "no store at" in missing.stderr and "Traceback" not in missing.stderr

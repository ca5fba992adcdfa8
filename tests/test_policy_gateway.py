"""The policy applied at request time, through the gateway, as SDK users see it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import yaml

from conftest import Gateway, Mock, upstreams
from test_gateway_sdks import _post, claude, oai

DIRECTORY = {
    "org": "acme",
    "teams": [{"id": "engineering"}, {"id": "platform", "parent": "engineering", "cost_centre": "CC-100"},
              {"id": "research"}],
    "projects": [{"id": "checkout", "team": "platform", "cost_centre": "CC-200"}],
    "people": [{"id": "alice", "team": "platform", "projects": ["checkout"]}, {"id": "bob", "team": "platform"},
               {"id": "rita", "team": "research"}],
}
ALLOWLIST = {"id": "approved-models", "scope": "org",
             "condition": {"type": "model", "operator": "not_in",
                           "allowlist": ["gpt-4o-mini", "claude-3-5-sonnet-20241022", "claude-3-haiku-20240307",
                                         "gemini-2.0-flash"]},
             "action": {"type": "hard_stop", "message": "See infosec/approved-models.md"}, "enabled": True}
REDIRECT = {"id": "no-opus", "scope": "org",
            "condition": {"type": "model", "operator": "in", "models": ["claude-3-opus-20240229"]},
            "action": {"type": "redirect", "model": "claude-3-5-sonnet-20241022", "message": "opus is costly"}}


def _gateway(factory: Any, mock: Mock, rules: list[dict[str, Any]], **extra: Any) -> Gateway:
    gw: Gateway = factory({"identity": {"trust_user_header": True}, "providers": upstreams(mock.url),
                           "directory": DIRECTORY, "policy": {"rules": rules}, **extra})
    return gw


def test_blocked_call_is_an_sdk_permission_error_that_tells_the_whole_story(
        mock: Mock, gateway_factory: Any) -> None:
    gw = _gateway(gateway_factory, mock, [ALLOWLIST], enforcement="on",
                  exemption_instructions="Ask #ai-policy on Slack.")
    with pytest.raises(openai.PermissionDeniedError) as exc:
        oai(gw).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    err = exc.value
    assert err.status_code == 403
    assert err.response.headers["x-tollhouse-decision"] == "block"
    assert err.response.headers["x-tollhouse-rule"] == "approved-models"
    body = err.body
    assert isinstance(body, dict)
    assert body["type"] == "policy_violation" and body["code"] == "MODEL_ALLOWLIST" and body["param"] is None
    assert body["rule_type"] == "MODEL_ALLOWLIST"
    assert body["rule_id"] == "approved-models" and body["model"] == "gpt-4o" and body["provider"] == "openai"
    assert body["policy_url"].endswith("/console/policy") and "/console/exemptions/new?" in body["exemption_url"]
    message = body["message"]
    for piece in ("approved-models", "gpt-4o", "not on the approved list", "infosec/approved-models.md",
                  body["policy_url"], "Ask #ai-policy on Slack.", body["exemption_url"]):
        assert piece in message
    assert mock.stats.total == 0  # it never reached the provider
    ev = gw.events()[0]
    assert (ev["decision"], ev["rule_id"], ev["status"]) == ("block", "approved-models", 403)
    assert ev["input_tokens"] == ev["output_tokens"] == 0 and ev["cost_usd"] is None


def test_block_shapes_for_anthropic_gemini_and_streams(mock: Mock, gateway_factory: Any) -> None:
    gw = _gateway(gateway_factory, mock, [ALLOWLIST], enforcement="on")
    with pytest.raises(anthropic.PermissionDeniedError) as aexc:
        claude(gw).messages.create(model="claude-3-opus-20240229", max_tokens=5,
                                   messages=[{"role": "user", "content": "x"}])
    abody = aexc.value.body
    assert isinstance(abody, dict) and abody["type"] == "error"
    assert abody["error"]["type"] == "permission_error" and abody["error"]["rule_id"] == "approved-models"
    with pytest.raises(openai.PermissionDeniedError):  # a stream request is refused the same way
        oai(gw).chat.completions.create(model="o1", messages=[{"role": "user", "content": "x"}], stream=True)
    status, body = _post(gw.url + "/gemini/v1beta/models/gemini-1.5-pro:streamGenerateContent?alt=sse",
                         {"contents": [{"parts": [{"text": "x"}]}]}, {"X-Tollhouse-User": "alice"})
    err = json.loads(body)["error"]
    assert status == 403 and err["code"] == 403 and err["status"] == "PERMISSION_DENIED"
    assert err["rule_id"] == "approved-models" and "gemini-1.5-pro" in err["message"]
    assert mock.stats.total == 0


def test_redirect_substitutes_the_model_and_judges_the_substitute(mock: Mock, gateway_factory: Any) -> None:
    gw = _gateway(gateway_factory, mock, [REDIRECT, ALLOWLIST], enforcement="on")
    raw = claude(gw).messages.with_raw_response.create(
        model="claude-3-opus-20240229", max_tokens=4, messages=[{"role": "user", "content": "x"}])
    msg = raw.parse()
    assert msg.model == "claude-3-5-sonnet-20241022"
    assert mock.stats.last_body["model"] == "claude-3-5-sonnet-20241022"
    assert raw.headers["x-tollhouse-decision"] == "redirect"
    assert raw.headers["x-tollhouse-redirected-from"] == "claude-3-opus-20240229"
    ev = gw.events()[0]
    assert ev["decision"] == "redirect" and ev["rule_id"] == "no-opus"
    assert ev["requested_model"] == "claude-3-opus-20240229" and ev["model"] == "claude-3-5-sonnet-20241022"
    # Gemini carries the model in the path: the upstream path changes.
    rules = [{"id": "flash-only", "scope": "org", "condition": {"type": "MODEL_DENYLIST",
                                                                "models": ["gemini-1.5-pro"]},
              "action": {"type": "redirect", "model": "gemini-2.0-flash"}}]
    gw2 = _gateway(gateway_factory, mock, rules, enforcement="on")
    status, _ = _post(gw2.url + "/gemini/v1beta/models/gemini-1.5-pro:generateContent",
                      {"contents": [{"parts": [{"text": "x"}]}]}, {"X-Tollhouse-User": "alice"})
    assert status == 200 and mock.stats.last_path == "/v1beta/models/gemini-2.0-flash:generateContent"


def test_soft_cap_and_warn_forward_with_a_warning(mock: Mock, gateway_factory: Any) -> None:
    rules = [{"id": "prefer-mini", "scope": "org", "condition": {"type": "MODEL_DENYLIST", "models": ["gpt-4o"]},
              "action": {"type": "soft_cap", "message": "use gpt-4o-mini"}},
             {"id": "info-only", "scope": "org", "severity": "INFO",
              "condition": {"type": "MODEL_DENYLIST", "models": ["gpt-4o-mini"]}}]
    gw = _gateway(gateway_factory, mock, rules, enforcement="on")
    raw = oai(gw).chat.completions.with_raw_response.create(model="gpt-4o",
                                                            messages=[{"role": "user", "content": "x"}])
    assert raw.headers["x-tollhouse-decision"] == "warn"
    assert raw.headers["x-tollhouse-warning"].startswith("prefer-mini:")
    raw2 = oai(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini",
                                                             messages=[{"role": "user", "content": "x"}])
    assert raw2.headers["x-tollhouse-decision"] == "allow" and "x-tollhouse-warning" not in raw2.headers
    events = {e["requested_model"]: e for e in gw.events()}
    assert events["gpt-4o"]["decision"] == "warn" and events["gpt-4o"]["rule_id"] == "prefer-mini"
    assert events["gpt-4o"]["output_tokens"] > 0  # it was forwarded
    assert events["gpt-4o-mini"]["decision"] == "allow" and events["gpt-4o-mini"]["rule_id"] == "info-only"
    _, metrics, _ = gw.get("/metrics", token=None)
    assert b'tollhouse_policy_violations_total{enforced="true",rule="prefer-mini",severity="soft_cap"} 1.0' \
        in metrics


def test_observe_mode_records_what_would_have_happened(mock: Mock, gateway_factory: Any) -> None:
    gw = _gateway(gateway_factory, mock, [REDIRECT, ALLOWLIST])  # enforcement off (default)
    resp = oai(gw).chat.completions.with_raw_response.create(model="gpt-4o",
                                                             messages=[{"role": "user", "content": "x"}])
    assert resp.headers["x-tollhouse-decision"] == "allow" and "x-tollhouse-rule" not in resp.headers
    claude(gw).messages.create(model="claude-3-opus-20240229", max_tokens=3,
                               messages=[{"role": "user", "content": "x"}])
    assert mock.stats.last_body["model"] == "claude-3-opus-20240229"  # no redirect in observe mode
    events = {e["requested_model"]: e for e in gw.events()}
    assert events["gpt-4o"]["decision"] == "allow" and events["gpt-4o"]["would"] == "block"
    assert events["gpt-4o"]["rule_id"] == "approved-models" and events["gpt-4o"]["output_tokens"] > 0
    opus = events["claude-3-opus-20240229"]
    assert opus["would"] == "redirect" and opus["model"] == "claude-3-opus-20240229"


def test_phased_rollout_enforces_for_one_team(mock: Mock, gateway_factory: Any) -> None:
    gw = _gateway(gateway_factory, mock, [ALLOWLIST], policy={"rules": [ALLOWLIST], "enforce_teams": ["platform"]})
    with pytest.raises(openai.PermissionDeniedError):
        oai(gw, user="bob").chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    oai(gw, user="rita").chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    events = {e["subject"]: e for e in gw.events()}
    assert events["bob"]["decision"] == "block"
    assert events["rita"]["decision"] == "allow" and events["rita"]["would"] == "block"


def test_cost_centre_required_accepts_the_project_header(mock: Mock, gateway_factory: Any) -> None:
    rule = {"id": "r9", "scope": "org", "condition": {"type": "COST_CENTRE_REQUIRED"}, "severity": "BLOCK"}
    gw = _gateway(gateway_factory, mock, [rule], enforcement="on")
    with pytest.raises(openai.PermissionDeniedError) as exc:
        oai(gw, user="rita").chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert "X-Tollhouse-Project" in str(exc.value)
    oai(gw, user="rita").chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}],
                                                 extra_headers={"X-Tollhouse-Project": "checkout"})
    oai(gw, user="alice").chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert [e["decision"] for e in gw.events()] == ["allow", "allow", "block"]


@pytest.mark.parametrize("capture_mode", ["enterprise", "telemetry"])
def test_dlp_runs_in_every_capture_mode(mock: Mock, gateway_factory: Any, capture_mode: str) -> None:
    rule = {"id": "no-keys", "scope": "org", "severity": "BLOCK",
            "condition": {"type": "CONTENT_DLP", "detectors": ["aws_access_key"]}}
    secret = "deploy with AKIAABCDEFGHIJKLMNOP please"
    gw = _gateway(gateway_factory, mock, [rule], enforcement="on", capture_mode=capture_mode)
    with pytest.raises(openai.PermissionDeniedError) as exc:
        oai(gw).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": secret}])
    assert "data-loss-prevention" in str(exc.value) and "AKIA" not in str(exc.value)
    clean = oai(gw).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "deploy it"}])
    assert clean.choices and mock.stats.total == 1


def test_unparseable_body_is_refused_when_enforcing(mock: Mock, gateway_factory: Any) -> None:
    gw = _gateway(gateway_factory, mock, [ALLOWLIST], enforcement="on")
    req = urllib.request.Request(gw.url + "/openai/v1/chat/completions", data=b"{oops", method="POST",
                                 headers={"Content-Type": "application/json", "X-Tollhouse-User": "alice"})
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=10)
    assert exc.value.code == 400 and b"JSON" in exc.value.read()
    assert mock.stats.total == 0
    event = gw.events()[0]
    assert event["status"] == 400 and event["decision"] == "block" and event["subject"] == "alice"
    assert "could not read this request body as a JSON object" in event["error"]


def test_rules_file_hot_reloads_and_a_bad_edit_keeps_the_last_good_policy(
        mock: Mock, gateway_factory: Any, tmp_path: Path) -> None:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump([ALLOWLIST]))
    gw: Gateway = gateway_factory({"identity": {"trust_user_header": True}, "providers": upstreams(mock.url),
                                   "enforcement": "on", "directory": DIRECTORY,
                                   "policy": {"rules_file": str(rules_file)}})
    with pytest.raises(openai.PermissionDeniedError):
        oai(gw).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    relaxed = dict(ALLOWLIST, condition={"type": "model", "operator": "not_in", "allowlist": ["gpt-4o"]})
    rules_file.write_text(yaml.safe_dump([relaxed]))
    _wait(lambda: json.loads(gw.get("/healthz")[1])["policy"]["version"] == 2)
    oai(gw).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    rules_file.write_text(yaml.safe_dump([{"id": "broken", "condition": {"type": "model", "operator": "nope"}}]))
    _wait(lambda: json.loads(gw.get("/healthz")[1])["policy"]["error"] is not None)
    health = json.loads(gw.get("/healthz")[1])["policy"]
    assert health["version"] == 2 and "rule broken: condition.operator" in health["error"]
    oai(gw).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])  # still v2


def _wait(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tollhouse", *args], capture_output=True, text=True, timeout=60)


def test_policy_check_command(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"rules": [ALLOWLIST, REDIRECT]}))
    ok = _cli("policy", "check", str(good))
    assert ok.returncode == 0 and "OK, 2 rules" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump([
        {"id": "a", "scope": "org", "condition": {"type": "model", "operator": "in"}},
        {"id": "b", "scope": "team", "team": "nope", "condition": {"type": "budget", "threshold": -5}},
        {"id": "c", "scope": "galaxy", "condition": {"type": "COST_CENTRE_REQUIRED"}},
    ]))
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"directory": DIRECTORY}))
    result = _cli("policy", "check", str(bad), "--config", str(cfg))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "rule a: condition.models" in result.stderr
    assert "rule b: condition.threshold" in result.stderr
    assert "rule c: scope" in result.stderr


def test_policy_explain_command(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    bob_rule = {"id": "bob-extra", "scope": "individual", "subject": "bob",
                "condition": {"type": "MODEL_ALLOWLIST", "models": ["gpt-4o", "o1"]}, "severity": "BLOCK"}
    cfg.write_text(yaml.safe_dump({"directory": DIRECTORY, "enforcement": "on",
                                   "policy": {"rules": [ALLOWLIST, REDIRECT, bob_rule]}}))
    bob = _cli("policy", "explain", "--config", str(cfg), "--user", "bob", "--model", "gpt-4o")
    assert bob.returncode == 0, bob.stderr
    assert "superseded approved-models [org]" in bob.stdout and "bob-extra [individual bob]" in bob.stdout
    assert "decision: ALLOW" in bob.stdout
    alice = _cli("policy", "explain", "--config", str(cfg), "--user", "alice", "--model", "gpt-4o")
    assert "decision: BLOCK by rule approved-models" in alice.stdout
    opus = _cli("policy", "explain", "--config", str(cfg), "--user", "alice", "--model", "claude-3-opus-20240229",
                "--provider", "anthropic")
    assert "redirect  no-opus [org]" in opus.stdout and "decision: REDIRECT" in opus.stdout


def test_invalid_rules_in_config_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"policy": {"rules": [{"id": "x", "condition": {"type": "modle"}}]}}))
    result = _cli("serve", "--config", str(cfg), "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2 and "rule x: condition.type" in result.stderr


def test_a_shadow_rule_is_recorded_while_enforcing_and_never_applied(mock: Mock, gateway_factory: Any) -> None:
    shadow = {"id": "try-deny-mini", "scope": "org", "mode": "shadow",
              "condition": {"type": "MODEL_DENYLIST", "models": ["gpt-4o-mini"]}, "action": {"type": "hard_stop"}}
    gw = _gateway(gateway_factory, mock, [shadow], enforcement="on")
    raw = oai(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini",
                                                            messages=[{"role": "user", "content": "x"}])
    assert raw.http_response.status_code == 200 and raw.headers["x-tollhouse-decision"] == "allow"
    assert "x-tollhouse-rule" not in raw.headers  # nothing was applied
    assert mock.stats.total == 1
    event = gw.events()[0]
    assert event["decision"] == "allow" and event["would"] == "block" and event["rule_id"] == "try-deny-mini"

"""Claude Code (from npm, as in the tools tests) with HTTPS_PROXY and NODE_EXTRA_CA_CERTS and NO base URL: its calls
to api.anthropic.com are intercepted by the forward proxy and governed as on the base-URL path (issue 21)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import real_tools
from conftest import Gateway, Mock
from forward_helpers import proxy_config, proxy_info, proxy_url

pytestmark = pytest.mark.slow

REFUSED = "claude-opus-4-1-20250805"
ALLOWED = "claude-3-5-haiku-20241022"


def _claude_via_proxy(gw: Gateway, home: Path, prompt: str, model: str) -> real_tools.Run:
    proxy = proxy_url(gw)
    env = real_tools._env(home, {
        "HTTPS_PROXY": proxy, "https_proxy": proxy, "HTTP_PROXY": "", "http_proxy": "",
        "NODE_EXTRA_CA_CERTS": proxy_info(gw)["ca"], "ANTHROPIC_API_KEY": "sk-ant-tools-test",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1", "CLAUDE_CODE_DISABLE_LEGACY_MODEL_REMAP": "1"})
    assert "ANTHROPIC_BASE_URL" not in env
    return real_tools._run([str(real_tools.tool_path("claude")), "-p", prompt, "--model", model], env, home)


def test_claude_code_without_a_base_url_is_governed_through_the_proxy(mock: Mock, gateway_factory: Any,
                                                                     tmp_path: Path) -> None:
    rules = [{"id": "approved-models", "scope": "org", "enabled": True,
              "condition": {"type": "model", "operator": "in", "models": [REFUSED]},
              "action": {"type": "hard_stop", "message": "Use an approved model, see infosec/approved-models.md"}}]
    gw: Gateway = gateway_factory({**proxy_config(mock), "enforcement": "on", "policy_url": "https://policy.example/ai",
                                   "policy": {"rules": rules}})
    ok = _claude_via_proxy(gw, tmp_path / "ok", "Say hello", ALLOWED)
    assert ok.code == 0, ok.output
    allowed = [e for e in gw.events() if e["provider"] == "anthropic" and e["decision"] == "allow"]
    assert allowed and allowed[0]["subject"] == "alice" and allowed[0]["output_tokens"] > 0, gw.events()
    assert allowed[0]["cost_usd"] > 0
    blocked = _claude_via_proxy(gw, tmp_path / "blocked", "Say hello", REFUSED)
    assert "approved-models" in blocked.output and "Use an approved model" in blocked.output, blocked.output
    events = [e for e in gw.events() if e["decision"] == "block"]
    assert events and all(e["model"] == REFUSED and not e["cost_usd"] for e in events)
    status, body, _ = gw.get("/api/v1/hosts?managed=true")
    assert status == 200 and b'"api.anthropic.com"' in body

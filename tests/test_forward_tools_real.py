"""The real coding agents (from npm, as in the tools tests) with HTTPS_PROXY and the forward proxy's CA and NO base
URL: their calls to api.anthropic.com / api.openai.com / generativelanguage.googleapis.com are intercepted and
governed as on the base-URL path (issue 21). Claude Code and Gemini CLI (Node) take NODE_EXTRA_CA_CERTS; Codex
(Rust) takes SSL_CERT_FILE, the merged bundle."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import real_tools
from conftest import Gateway, Mock
from forward_helpers import proxy_config, proxy_info, proxy_url

pytestmark = pytest.mark.slow


def _env(gw: Gateway, home: Path, extra: dict[str, str]) -> dict[str, str]:
    proxy = proxy_url(gw)
    info = proxy_info(gw)
    env = real_tools._env(home, {"HTTPS_PROXY": proxy, "https_proxy": proxy, "HTTP_PROXY": "", "http_proxy": "",
                                 "NODE_EXTRA_CA_CERTS": info["ca"], "SSL_CERT_FILE": info["ca_bundle"], **extra})
    assert not any(k.endswith("BASE_URL") for k in env)
    return env


def claude(gw: Gateway, home: Path, model: str) -> real_tools.Run:
    env = _env(gw, home, {"ANTHROPIC_API_KEY": "sk-ant-tools-test", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                          "DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
                          "CLAUDE_CODE_DISABLE_LEGACY_MODEL_REMAP": "1"})
    return real_tools._run([str(real_tools.tool_path("claude")), "-p", "Say hello", "--model", model], env, home)


def codex(gw: Gateway, home: Path, model: str) -> real_tools.Run:
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_text(f'model = "{model}"\n')  # the built-in openai provider: api.openai.com
    env = _env(gw, home, {"CODEX_HOME": str(codex_home), "OPENAI_API_KEY": "sk-tools-test"})
    return real_tools._run([str(real_tools.tool_path("codex")), "exec", "--skip-git-repo-check", "-C", str(home),
                            "Say hello"], env, home)


def gemini(gw: Gateway, home: Path, model: str) -> real_tools.Run:
    settings = home / ".gemini" / "settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps({"security": {"auth": {"selectedType": "gemini-api-key"}},
                                    "general": {"disableAutoUpdate": True},
                                    "privacy": {"usageStatisticsEnabled": False}}))
    env = _env(gw, home, {"GEMINI_API_KEY": "gemini-tools-test", "GEMINI_CLI_TRUST_WORKSPACE": "true"})
    return real_tools._run([str(real_tools.tool_path("gemini")), "-p", "Say hello", "-m", model], env, home)


Driver = Callable[[Gateway, Path, str], real_tools.Run]
TOOLS: list[tuple[Driver, str, str, str, str]] = [
    (claude, "anthropic", "api.anthropic.com", "claude-3-5-haiku-20241022", "claude-opus-4-1-20250805"),
    (codex, "openai", "api.openai.com", "gpt-4o-mini", "gpt-4o"),
    (gemini, "gemini", "generativelanguage.googleapis.com", "gemini-2.5-flash", "gemini-2.5-pro"),
]


@pytest.mark.parametrize(("drive", "provider", "host", "allowed", "refused"), TOOLS, ids=["claude", "codex", "gemini"])
def test_a_tool_without_a_base_url_is_governed_through_the_proxy(
        mock: Mock, gateway_factory: Any, tmp_path: Path, drive: Driver, provider: str, host: str, allowed: str,
        refused: str) -> None:
    rules = [{"id": "approved-models", "scope": "org", "enabled": True,
              "condition": {"type": "model", "operator": "in", "models": [refused]},
              "action": {"type": "hard_stop", "message": "Use an approved model, see infosec/approved-models.md"}}]
    gw: Gateway = gateway_factory({**proxy_config(mock), "enforcement": "on", "policy_url": "https://policy.example/ai",
                                   "policy": {"rules": rules}})
    ok = drive(gw, tmp_path / "ok", allowed)
    assert ok.code == 0, ok.output
    metered = [e for e in gw.events() if e["provider"] == provider and e["output_tokens"]]
    assert metered and metered[0]["subject"] == "alice" and metered[0]["cost_usd"] > 0, gw.events()
    assert metered[0]["decision"] == "allow"
    blocked = drive(gw, tmp_path / "blocked", refused)
    assert "approved-models" in blocked.output and "Use an approved model" in blocked.output, blocked.output
    websockets = [e for e in gw.events() if e["status"] == 426]
    events = [e for e in gw.events() if e["decision"] == "block" and e not in websockets]
    assert events and all(e["model"] == refused and not e["cost_usd"] for e in events)
    # Codex opens a Responses WebSocket first: one attempt per run, answered 426, and it switches to HTTPS at once
    assert len(websockets) == (2 if drive is codex else 0), websockets
    status, body, _ = gw.get("/api/v1/hosts?managed=true")
    assert status == 200 and f'"{host}"'.encode() in body

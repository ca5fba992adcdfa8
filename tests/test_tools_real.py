"""The real coding agents through the gateway: what an engineer sees when policy acts (issue 17).

Claude Code (`claude -p`), Codex CLI (`codex exec`) and Gemini CLI (`gemini -p`), installed by scripts/test,
talk to the gateway in front of `tollhouse mock-provider`; the gateway's events count the calls that reached it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import real_tools
from conftest import Gateway, Mock, upstreams
from real_tools import Run

pytestmark = pytest.mark.slow

Driver = Callable[[str, Path, str, str], Run]
# (tool, driver, provider, a model the rules allow, a model they refuse)
TOOLS: list[tuple[str, Driver, str, str, str]] = [
    ("claude", real_tools.claude, "anthropic", "claude-3-5-haiku-20241022", "claude-opus-4-1-20250805"),
    ("codex", real_tools.codex, "openai", "gpt-4o-mini", "gpt-4o"),
    ("gemini", real_tools.gemini, "gemini", "gemini-2.5-flash", "gemini-2.5-pro"),
]
IDS = [t[0] for t in TOOLS]


def _config(mock: Mock, allowed: str, refused: str, rules: list[dict[str, Any]] | None = None,
            **policy: Any) -> dict[str, Any]:
    return {
        "enforcement": "on",
        "policy_url": "https://policy.example/ai",
        "providers": upstreams(mock.url, api_key="sk-real-provider-key"),
        "identity": {"default_user": "alice"},
        "directory": {"org": "acme", "teams": [{"id": "platform"}], "people": [{"id": "alice", "team": "platform"}]},
        "policy": {"rules": rules if rules is not None else [
            {"id": "approved-models", "scope": "org",
             "condition": {"type": "model", "operator": "in", "models": [refused]},
             "action": {"type": "hard_stop", "message": "Use an approved model, see infosec/approved-models.md"},
             "enabled": True}], **policy},
    }


def _assert_reads_as_block(run: Run, refused: str) -> None:
    out = run.output
    assert "approved-models" in out, out
    assert refused in out, out
    assert "Use an approved model" in out, out
    assert "https://policy.example/ai" in out, out
    assert "exemptions/new?" in out, out
    lowered = out.lower()
    assert "authenticat" not in lowered, out
    assert '{"error"' not in out and '"type": "error"' not in out and '"type":"error"' not in out, out
    assert "[object Object]" not in out, out


@pytest.mark.parametrize(("tool", "drive", "provider", "allowed", "refused"), TOOLS, ids=IDS)
def test_allowed_prompt_answers(tool: str, drive: Driver, provider: str, allowed: str, refused: str,
                                mock: Mock, gateway_factory: Any, tmp_path: Path) -> None:
    gw: Gateway = gateway_factory(_config(mock, allowed, refused))
    run = drive(gw.url, tmp_path / "home", "Say hello", allowed)
    assert run.code == 0, run.output
    assert "lorem ipsum" in run.output, run.output  # the mock's answer, shown
    events = gw.events()
    assert len(events) == 1, events  # one prompt, one call
    assert events[0]["provider"] == provider and events[0]["decision"] == "allow", events
    assert events[0]["model"] == allowed and events[0]["output_tokens"] > 0, events


@pytest.mark.parametrize(("tool", "drive", "provider", "allowed", "refused"), TOOLS, ids=IDS)
def test_blocked_prompt_shows_the_reason_once(tool: str, drive: Driver, provider: str, allowed: str, refused: str,
                                               mock: Mock, gateway_factory: Any, tmp_path: Path) -> None:
    gw: Gateway = gateway_factory(_config(mock, allowed, refused))
    run = drive(gw.url, tmp_path / "home", "Say hello", refused)
    _assert_reads_as_block(run, refused)
    events = gw.events()
    assert len(events) == 1, events  # one prompt, one call: nothing retried
    assert events[0]["decision"] == "block" and events[0]["rule_id"] == "approved-models", events
    assert mock.stats.total == 0  # never reached the provider


@pytest.mark.parametrize(("tool", "drive", "provider", "allowed", "refused"), TOOLS, ids=IDS)
def test_soft_cap_notice_shows_after_the_answer(tool: str, drive: Driver, provider: str, allowed: str,
                                                refused: str, mock: Mock, gateway_factory: Any,
                                                tmp_path: Path) -> None:
    rules = [{"id": "team-budget-soft", "scope": "org",
              "condition": {"type": "model", "operator": "in", "models": [allowed]},
              "action": {"type": "soft_cap", "message": "Team budget at 85% this month"}, "enabled": True}]
    gw: Gateway = gateway_factory(_config(mock, allowed, refused, rules))
    run = drive(gw.url, tmp_path / "home", "Say hello", allowed)
    assert run.code == 0, run.output
    out = run.output
    assert "lorem ipsum" in out, out  # the model's real answer ...
    assert "Tollhouse warning (rule team-budget-soft)" in out and "Team budget at 85% this month" in out, out
    assert out.index("lorem ipsum") < out.index("Tollhouse warning"), out  # ... then the notice
    events = [e for e in gw.events() if e["model"] == allowed]
    assert events and all(e["decision"] == "warn" for e in events), events


@pytest.mark.parametrize(("tool", "drive", "provider", "allowed", "refused"), TOOLS, ids=IDS)
def test_error_style_is_still_shown_once(tool: str, drive: Driver, provider: str, allowed: str, refused: str,
                                         mock: Mock, gateway_factory: Any, tmp_path: Path) -> None:
    """policy.per_subject can ask for errors; what each tool then does with a 403 is measured here: the reason
    reaches the output, and no tool calls more than its own retry policy allows (Codex: 6 calls)."""
    gw: Gateway = gateway_factory(_config(mock, allowed, refused, None,
                                          per_subject={"alice": {"block_style": "error"}}))
    run = drive(gw.url, tmp_path / "home", "Say hello", refused)
    assert "approved-models" in run.output, run.output
    calls = len(gw.events())
    assert calls == {"claude": 1, "codex": 6, "gemini": 1}[tool], (calls, run.output)
    assert all(e["decision"] == "block" for e in gw.events())


@pytest.mark.parametrize(("tool", "drive", "provider", "allowed", "refused"), TOOLS, ids=IDS)
def test_rate_window_block_says_when_it_frees_up(tool: str, drive: Driver, provider: str, allowed: str,
                                                 refused: str, mock: Mock, gateway_factory: Any,
                                                 tmp_path: Path) -> None:
    rules = [{"id": "hourly-tokens", "scope": "individual",
              "condition": {"type": "usage", "metric": "tokens_per_hour", "threshold": 1, "window": "1h"},
              "action": {"type": "hard_stop", "message": "Hourly token budget"}, "enabled": True}]
    gw: Gateway = gateway_factory(_config(mock, allowed, refused, rules))
    run = drive(gw.url, tmp_path / "home", "Say hello", allowed)
    assert "hourly-tokens" in run.output and "frees up in about" in run.output, run.output
    assert "authenticat" not in run.output.lower() and "Reconnecting" not in run.output, run.output
    events = gw.events()
    assert len(events) == 1 and events[0]["decision"] == "block", events  # a 429 would have been retried

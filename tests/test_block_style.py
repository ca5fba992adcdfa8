"""policy.block_style and policy.soft_cap_notice through the gateway, read by the official SDKs: programs keep their
exceptions; interactive tools (recognised by User-Agent) get the block as an answer in the provider's shape."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import anthropic
import openai
import pytest

from conftest import Gateway, Mock, upstreams

CLAUDE_CODE = "claude-cli/2.1.197 (external, sdk-cli)"
CODEX = "codex_exec/0.171.0 (Debian 12.0.0; x86_64) xterm (codex_exec; 0.171.0)"
GEMINI_CLI = "GeminiCLI/0.61.0/gemini-2.5-pro (linux; x64)"

DENY = {"id": "no-big-models", "scope": "org",
        "condition": {"type": "model", "operator": "in",
                      "models": ["gpt-4o", "claude-opus-4-1-20250805", "gemini-2.5-pro"]},
        "action": {"type": "hard_stop", "message": "Use a small model"}, "enabled": True}
SOFT = {"id": "soft", "scope": "org", "condition": {"type": "model", "operator": "in",
                                                    "models": ["gpt-4o-mini", "claude-3-5-haiku-20241022"]},
        "action": {"type": "soft_cap", "message": "Budget at 85%"}, "enabled": True}
HOURLY = {"id": "hourly", "scope": "individual",
          "condition": {"type": "usage", "metric": "tokens_per_hour", "threshold": 1, "window": "1h"},
          "action": {"type": "hard_stop"}, "enabled": True}


def _gateway(factory: Any, mock: Mock, rules: list[dict[str, Any]], **policy: Any) -> Gateway:
    gw: Gateway = factory({
        "enforcement": "on", "policy_url": "https://policy.example/ai",
        "providers": upstreams(mock.url, api_key="sk-real"),
        "identity": {"trust_user_header": True},
        "directory": {"people": [{"id": "alice"}], "services": [{"id": "ci-bot"}]},
        "policy": {"rules": rules, **policy},
    })
    return gw


def _oai(gw: Gateway, agent: str | None = None, user: str = "alice") -> openai.OpenAI:
    headers = {"X-Tollhouse-User": user, **({"User-Agent": agent} if agent else {})}
    return openai.OpenAI(base_url=gw.url + "/openai/v1", api_key="sk-client", max_retries=0,
                         default_headers=headers)


def _claude(gw: Gateway, agent: str | None = None, user: str = "alice") -> anthropic.Anthropic:
    headers = {"X-Tollhouse-User": user, **({"User-Agent": agent} if agent else {})}
    return anthropic.Anthropic(base_url=gw.url + "/anthropic", api_key="sk-ant", max_retries=0,
                               default_headers=headers)


def _assert_block_text(text: str, model: str) -> None:
    assert "no-big-models" in text and model in text and "Use a small model" in text, text
    assert "Policy: https://policy.example/ai" in text and "exemptions/new?" in text, text


def test_sdks_keep_their_exceptions_under_auto(mock: Mock, gateway_factory: Any) -> None:
    gw = _gateway(gateway_factory, mock, [DENY])
    with pytest.raises(openai.PermissionDeniedError) as oerr:
        _oai(gw).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert "no-big-models" in str(oerr.value)
    with pytest.raises(anthropic.PermissionDeniedError):
        _claude(gw).messages.create(model="claude-opus-4-1-20250805", max_tokens=10,
                                    messages=[{"role": "user", "content": "hi"}])
    assert mock.stats.total == 0


def test_sdks_get_rate_limit_errors_under_auto_and_do_not_retry(mock: Mock, gateway_factory: Any) -> None:
    gw = _gateway(gateway_factory, mock, [HOURLY])
    retrying = openai.OpenAI(base_url=gw.url + "/openai/v1", api_key="k", max_retries=3,
                             default_headers={"X-Tollhouse-User": "alice"})
    with pytest.raises(openai.RateLimitError) as err:
        retrying.chat.completions.create(model="gpt-4o-mini", max_tokens=10,
                                         messages=[{"role": "user", "content": "hi"}])
    assert err.value.response.headers["x-should-retry"] == "false"
    ant = anthropic.Anthropic(base_url=gw.url + "/anthropic", api_key="k", max_retries=3,
                              default_headers={"X-Tollhouse-User": "alice"})
    with pytest.raises(anthropic.RateLimitError):
        ant.messages.create(model="claude-3-5-haiku-20241022", max_tokens=10,
                            messages=[{"role": "user", "content": "hi"}])
    assert len(gw.events()) == 2  # x-should-retry: false: one call each, not four


def test_claude_code_gets_the_block_as_a_message(mock: Mock, gateway_factory: Any) -> None:
    gw = _gateway(gateway_factory, mock, [DENY])
    client = _claude(gw, CLAUDE_CODE)
    raw = client.messages.with_raw_response.create(model="claude-opus-4-1-20250805", max_tokens=10,
                                                   messages=[{"role": "user", "content": "hi"}])
    assert raw.status_code == 200 and raw.headers["x-tollhouse-decision"] == "block"
    msg = raw.parse()
    assert msg.model == "claude-opus-4-1-20250805" and msg.usage.output_tokens == 0
    _assert_block_text(msg.content[0].text, "claude-opus-4-1-20250805")  # type: ignore[union-attr]
    with client.messages.stream(model="claude-opus-4-1-20250805", max_tokens=10,
                                messages=[{"role": "user", "content": "hi"}]) as stream:
        text = stream.get_final_text()
    _assert_block_text(text, "claude-opus-4-1-20250805")
    events = gw.events()
    assert [e["decision"] for e in events] == ["block", "block"] and mock.stats.total == 0
    assert all(e["rule_id"] == "no-big-models" and e["cost_usd"] in (0, None) for e in events), events


def test_codex_gets_the_block_as_a_message_in_every_openai_shape(mock: Mock, gateway_factory: Any) -> None:
    gw = _gateway(gateway_factory, mock, [DENY])
    client = _oai(gw, CODEX)
    msgs: Any = [{"role": "user", "content": "hi"}]
    chat = client.chat.completions.create(model="gpt-4o", messages=msgs)
    _assert_block_text(chat.choices[0].message.content or "", "gpt-4o")
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="gpt-4o", messages=msgs, stream=True) if c.choices]
    _assert_block_text("".join(parts), "gpt-4o")
    resp = client.responses.create(model="gpt-4o", input="hi")
    _assert_block_text(resp.output_text, "gpt-4o")
    with client.responses.stream(model="gpt-4o", input="hi") as stream:
        final = stream.get_final_response()
    _assert_block_text(final.output_text, "gpt-4o")
    legacy = client.completions.create(model="gpt-4o", prompt="hi")
    _assert_block_text(legacy.choices[0].text, "gpt-4o")
    assert len(gw.events()) == 5 and mock.stats.total == 0


def _gemini(gw: Gateway, path: str, agent: str) -> tuple[int, bytes, dict[str, str]]:
    body = json.dumps({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}).encode()
    req = urllib.request.Request(gw.url + "/gemini/v1beta/models/" + path, data=body, method="POST",
                                 headers={"User-Agent": agent, "X-Tollhouse-User": "alice",
                                          "x-goog-api-key": "g", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, resp.read(), {k.lower(): v for k, v in resp.headers.items()}


def test_gemini_cli_gets_the_block_as_a_message(mock: Mock, gateway_factory: Any) -> None:
    gw = _gateway(gateway_factory, mock, [DENY])
    status, body, headers = _gemini(gw, "gemini-2.5-pro:generateContent", GEMINI_CLI)
    assert status == 200 and headers["x-tollhouse-decision"] == "block"
    obj = json.loads(body)
    assert obj["usageMetadata"]["totalTokenCount"] == 0 and obj["candidates"][0]["finishReason"] == "STOP"
    _assert_block_text(obj["candidates"][0]["content"]["parts"][0]["text"], "gemini-2.5-pro")
    status, body, headers = _gemini(gw, "gemini-2.5-pro:streamGenerateContent?alt=sse", GEMINI_CLI)
    assert headers["content-type"].startswith("text/event-stream") and body.startswith(b"data: ")
    chunk = json.loads(body.split(b"data: ", 1)[1])
    _assert_block_text(chunk["candidates"][0]["content"]["parts"][0]["text"], "gemini-2.5-pro")
    status, body, _ = _gemini(gw, "gemini-2.5-pro:streamGenerateContent", GEMINI_CLI)
    _assert_block_text(json.loads(body)[0]["candidates"][0]["content"]["parts"][0]["text"], "gemini-2.5-pro")


def test_per_subject_and_header_choose_the_style(mock: Mock, gateway_factory: Any) -> None:
    gw = _gateway(gateway_factory, mock, [DENY], per_subject={"ci-bot": {"block_style": "error"}})
    with pytest.raises(anthropic.PermissionDeniedError):  # a service that asked for errors, whatever its agent
        _claude(gw, CLAUDE_CODE, user="ci-bot").messages.create(
            model="claude-opus-4-1-20250805", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    asked = openai.OpenAI(base_url=gw.url + "/openai/v1", api_key="k", max_retries=0,
                          default_headers={"X-Tollhouse-User": "alice", "X-Tollhouse-Block-Style": "message"})
    chat = asked.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    _assert_block_text(chat.choices[0].message.content or "", "gpt-4o")


def test_policy_wide_message_style_and_header_notice(mock: Mock, gateway_factory: Any) -> None:
    gw = _gateway(gateway_factory, mock, [DENY, SOFT], block_style="message", soft_cap_notice="header")
    chat = _oai(gw).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    _assert_block_text(chat.choices[0].message.content or "", "gpt-4o")
    raw = _oai(gw, CODEX).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert "soft: " in raw.headers["x-tollhouse-warning"]
    assert "Tollhouse warning" not in (raw.parse().choices[0].message.content or "")


def test_soft_cap_notice_is_appended_for_tools_only(mock: Mock, gateway_factory: Any) -> None:
    gw = _gateway(gateway_factory, mock, [SOFT])
    msgs: Any = [{"role": "user", "content": "hi"}]
    plain = _oai(gw).chat.completions.create(model="gpt-4o-mini", messages=msgs)
    assert "Tollhouse warning" not in (plain.choices[0].message.content or "")  # a program's text is untouched
    tool = _oai(gw, CODEX)
    whole = tool.chat.completions.create(model="gpt-4o-mini", messages=msgs).choices[0].message.content or ""
    assert whole.endswith("Budget at 85%. Policy: https://policy.example/ai") and len(whole) > 80, whole
    streamed = "".join(c.choices[0].delta.content or "" for c in tool.chat.completions.create(
        model="gpt-4o-mini", messages=msgs, stream=True, stream_options={"include_usage": True}) if c.choices)
    assert "Tollhouse warning (rule soft)" in streamed and streamed.index("Tollhouse") > 10, streamed
    with _claude(gw, CLAUDE_CODE).messages.stream(model="claude-3-5-haiku-20241022", max_tokens=50,
                                                 messages=msgs) as stream:
        final = stream.get_final_message()
    assert len(final.content) == 1 and "Tollhouse warning (rule soft)" in final.content[0].text  # type: ignore[union-attr]
    assert final.usage.output_tokens > 0
    events = gw.events()
    assert all(e["decision"] == "warn" and e["output_tokens"] > 0 for e in events), events


def test_a_redirect_names_the_model_that_answered(mock: Mock, gateway_factory: Any) -> None:
    rule = {"id": "cheaper", "scope": "org", "condition": {"type": "model", "operator": "in", "models": ["gpt-4o"]},
            "action": {"type": "redirect", "model": "gpt-4o-mini"}, "enabled": True}
    opus = {"id": "cheaper-claude", "scope": "org",
            "condition": {"type": "model", "operator": "in", "models": ["claude-opus-4-1-20250805"]},
            "action": {"type": "redirect", "model": "claude-3-5-haiku-20241022"}, "enabled": True}
    gw = _gateway(gateway_factory, mock, [rule, opus])
    with _claude(gw, CLAUDE_CODE).messages.stream(model="claude-opus-4-1-20250805", max_tokens=20,
                                                 messages=[{"role": "user", "content": "hi"}]) as stream:
        assert stream.get_final_message().model == "claude-3-5-haiku-20241022"
    for agent in (None, CODEX):
        chat = _oai(gw, agent).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert chat.model == "gpt-4o-mini"
        with _oai(gw, agent).responses.stream(model="gpt-4o", input="hi") as stream:
            assert stream.get_final_response().model == "gpt-4o-mini"

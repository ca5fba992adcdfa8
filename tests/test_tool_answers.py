"""Tables for the pure pieces of issue 17: which caller is a tool, which style wins, the message answers and the
soft-cap notice in each provider's shape (streams cut at every byte give the same result)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tollhouse.config import ConfigError, PolicyConfig, parse_settings
from tollhouse.gateway.answer_style import block_style, interactive_tool, soft_cap_notice
from tollhouse.providers.answers import Stamp, can_answer, message_answer
from tollhouse.providers.base import Endpoint
from tollhouse.providers.family import Family
from tollhouse.providers.notice import NoticeStream, append_to_body
from tollhouse.providers.sse import SseParser
from tollhouse.providers.text import StreamText, response_text


@pytest.mark.parametrize(("agent", "title", "tool"), [
    ("claude-cli/2.1.197 (external, sdk-cli)", None, "Claude Code"),
    ("claude-cli/2.1.197 (external, cli)", None, "Claude Code"),
    ("codex_exec/0.171.0 (Debian 12.0.0; x86_64) xterm (codex_exec; 0.171.0)", None, "Codex CLI"),
    ("codex_cli_rs/0.171.0 (Mac OS 15.1.0; arm64) iTerm.app/3.5", None, "Codex CLI"),
    ("GeminiCLI-tui/0.61.0/gemini-3.1-pro-preview (linux; x64; terminal)", None, "Gemini CLI"),
    ("GeminiCLI/0.61.0/gemini-2.5-pro (darwin; arm64)", None, "Gemini CLI"),
    ("OpenAI/Python 1.99.0", "Cline", "Cline"),
    ("OpenAI/JS 5.0.0", "Aider", "Aider"),
    ("OpenAI/Python 1.99.0", None, None),
    ("Anthropic/Python 0.60.0", None, None),
    ("curl/8.5.0", None, None),
    ("google-genai-sdk/1.20.0 gl-python/3.11", None, None),
    (None, None, None),
])
def test_interactive_tools_are_recognised(agent: str | None, title: str | None, tool: str | None) -> None:
    assert interactive_tool(agent, title) == tool


@pytest.mark.parametrize(("title", "referer", "tool"), [
    (None, "https://cline.bot", "Cline"),
    (None, "https://aider.chat/", "Aider"),
    (None, "https://docs.continue.dev/x", "Continue"),
    (None, "https://blazed.io/", None),  # a name inside another site's name is not the tool
    (None, "not a url", None),
    (None, "http://[::1", None),
    ("My Zed Fork", None, None),
    (" Aider ", None, "Aider"),
])
def test_tools_named_by_title_or_site(title: str | None, referer: str | None, tool: str | None) -> None:
    assert interactive_tool("OpenAI/Python 1.99.0", title, referer) == tool


@pytest.mark.parametrize(("policy", "subject", "asked", "tool", "style"), [
    ({}, "alice", None, "Claude Code", "message"),
    ({}, "alice", None, None, "error"),
    ({"block_style": "error"}, "alice", None, "Claude Code", "error"),
    ({"block_style": "message"}, "alice", None, None, "message"),
    ({"per_subject": {"ci": {"block_style": "error"}}}, "ci", None, "Codex CLI", "error"),
    ({"per_subject": {"ci": {"block_style": "error"}}}, "alice", None, "Codex CLI", "message"),
    ({"per_subject": {"ci": {"soft_cap_notice": "header"}}}, "ci", None, "Codex CLI", "message"),
    ({"block_style": "error"}, "alice", "message", None, "message"),
    ({"block_style": "message"}, "alice", "auto", None, "error"),
    ({}, "alice", "nonsense", "Claude Code", "message"),
])
def test_block_style_precedence(policy: dict[str, Any], subject: str, asked: str | None, tool: str | None,
                                style: str) -> None:
    assert block_style(PolicyConfig.model_validate(policy), subject, asked, tool) == style


def test_soft_cap_notice_precedence() -> None:
    assert soft_cap_notice(PolicyConfig(), "a", None, "Claude Code") == "message"
    assert soft_cap_notice(PolicyConfig(), "a", None, None) == "header"
    header = PolicyConfig.model_validate({"soft_cap_notice": "header"})
    assert soft_cap_notice(header, "a", None, "Claude Code") == "header"
    per = PolicyConfig.model_validate({"per_subject": {"a": {"soft_cap_notice": "message"}}})
    assert soft_cap_notice(per, "a", None, None) == "message"
    assert soft_cap_notice(per, "a", "header", None) == "header"


SHAPES = [
    (Family.openai, Endpoint.chat), (Family.openai, Endpoint.completions), (Family.openai, Endpoint.responses),
    (Family.anthropic, Endpoint.messages), (Family.gemini, Endpoint.generate),
    (Family.gemini, Endpoint.stream_generate),
]
STAMP = Stamp("abc", 1_800_000_000)


def _stream_text(family: Family, endpoint: Endpoint, body: bytes) -> str:
    text = StreamText(family, endpoint)
    text.feed(body)
    return text.text()


@pytest.mark.parametrize(("family", "endpoint"), SHAPES)
def test_message_answers_carry_the_text_in_each_shape(family: Family, endpoint: Endpoint) -> None:
    assert can_answer(family, endpoint)
    whole = message_answer(family, endpoint, "m-1", "Blocked: why.\nPolicy: x", False, STAMP)
    if endpoint is not Endpoint.stream_generate:
        assert whole.content_type == "application/json"
        assert response_text(family, endpoint, orjson.loads(whole.body)) == "Blocked: why.\nPolicy: x"
        assert b'"m-1"' in whole.body  # the model field names the model
    streamed = message_answer(family, endpoint, "m-1", "Blocked: why.", True, STAMP)
    assert streamed.content_type.startswith("text/event-stream")
    assert _stream_text(family, endpoint, streamed.body) == "Blocked: why."
    events = SseParser().feed(streamed.body)
    assert events and all(e.data for e in events)


def test_no_message_for_endpoints_without_text() -> None:
    assert not can_answer(Family.openai, Endpoint.embeddings)
    assert not can_answer(Family.openai, Endpoint.messages)
    assert not can_answer(Family.anthropic, Endpoint.count_tokens)


NOTICE = "\n\n---\nTollhouse warning (rule r): cap."


def _sse(*objs: tuple[str | None, Any]) -> bytes:
    out = b""
    for event, obj in objs:
        out += (f"event: {event}\n".encode() if event else b"") + b"data: " + \
            (obj if isinstance(obj, bytes) else orjson.dumps(obj)) + b"\n\n"
    return out


UPSTREAM_STREAMS: list[tuple[Family, Endpoint, bytes]] = [
    (Family.openai, Endpoint.chat, _sse(
        (None, {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": "Hello"}}]}),
        (None, {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        (None, b"[DONE]"))),
    (Family.openai, Endpoint.responses, _sse(
        ("response.output_text.delta", {"type": "response.output_text.delta", "item_id": "i", "output_index": 0,
                                        "content_index": 0, "delta": "Hello", "sequence_number": 3}),
        ("response.output_text.done", {"type": "response.output_text.done", "item_id": "i", "output_index": 0,
                                       "content_index": 0, "text": "Hello", "sequence_number": 4}),
        ("response.content_part.done", {"type": "response.content_part.done", "item_id": "i", "output_index": 0,
                                        "content_index": 0, "part": {"type": "output_text", "text": "Hello"},
                                        "sequence_number": 5}),
        ("response.output_item.done", {"type": "response.output_item.done", "output_index": 0, "sequence_number": 6,
                                       "item": {"id": "i", "type": "message", "content": [
                                           {"type": "output_text", "text": "Hello"}]}}),
        ("response.completed", {"type": "response.completed", "sequence_number": 7, "response": {
            "output": [{"id": "i", "type": "message", "content": [{"type": "output_text", "text": "Hello"}]}]}}))),
    (Family.anthropic, Endpoint.messages, _sse(
        ("message_start", {"type": "message_start", "message": {"content": []}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "Hello"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("ping", {"type": "ping"}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}),
        ("message_stop", {"type": "message_stop"}))),
    (Family.gemini, Endpoint.stream_generate, _sse(
        (None, {"candidates": [{"content": {"parts": [{"text": "Hel"}]}}]}),
        (None, {"candidates": [{"content": {"parts": [{"text": "lo"}]}, "finishReason": "STOP"}]}))),
]


@pytest.mark.parametrize(("family", "endpoint", "upstream"), UPSTREAM_STREAMS)
@pytest.mark.parametrize("piece", [1, 7, 10_000])
def test_notice_joins_the_end_of_a_stream(family: Family, endpoint: Endpoint, upstream: bytes, piece: int) -> None:
    notice = NoticeStream(family, endpoint, NOTICE)
    out = b"".join(notice.feed(upstream[i:i + piece]) for i in range(0, len(upstream), piece)) + notice.finish()
    assert _stream_text(family, endpoint, out) == "Hello" + NOTICE
    assert out.count(b"Tollhouse warning") >= 1
    if family is Family.openai and endpoint is Endpoint.responses:  # the done events say the whole text
        completed = SseParser().feed(out)[-1]
        assert orjson.loads(completed.data)["response"]["output"][0]["content"][0]["text"] == "Hello" + NOTICE
        seqs = [orjson.loads(e.data)["sequence_number"] for e in SseParser().feed(out)]
        assert seqs == sorted(set(seqs))


def test_a_gemini_array_stream_passes_at_once() -> None:
    notice = NoticeStream(Family.gemini, Endpoint.stream_generate, NOTICE)
    first = b'[{"candidates": [{"content": {"parts": [{"text": "Hel"}]}}]}'
    assert notice.feed(first) == first  # not held back waiting for an event that never comes
    assert notice.feed(b',\r\n{"candidates": []}]') == b',\r\n{"candidates": []}]'


def test_a_stream_that_never_ends_its_answer_is_unchanged() -> None:
    cut = _sse(("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}),
               ("content_block_stop", {"type": "content_block_stop", "index": 0}))
    notice = NoticeStream(Family.anthropic, Endpoint.messages, NOTICE)
    assert notice.feed(cut) + notice.finish() == cut


@pytest.mark.parametrize(("family", "endpoint", "body"), [
    (Family.openai, Endpoint.chat, {"choices": [{"message": {"role": "assistant", "content": "Hello"}}]}),
    (Family.openai, Endpoint.completions, {"choices": [{"text": "Hello"}]}),
    (Family.openai, Endpoint.responses, {"output": [{"type": "message", "content": [
        {"type": "output_text", "text": "Hello"}]}]}),
    (Family.anthropic, Endpoint.messages, {"content": [{"type": "text", "text": "Hello"}]}),
    (Family.gemini, Endpoint.generate, {"candidates": [{"content": {"parts": [{"text": "Hello"}]}}]}),
])
def test_notice_joins_a_whole_answer(family: Family, endpoint: Endpoint, body: dict[str, Any]) -> None:
    out = append_to_body(family, endpoint, orjson.dumps(body), NOTICE)
    assert response_text(family, endpoint, orjson.loads(out)) == "Hello" + NOTICE
    assert append_to_body(family, endpoint, b"not json", NOTICE) == b"not json"


def test_per_subject_names_a_person_or_service_of_the_directory() -> None:
    with pytest.raises(ConfigError, match=r"policy.per_subject: 'bobby' is not a person or service"):
        parse_settings({"directory": {"people": [{"id": "bob"}]},
                        "policy": {"per_subject": {"bobby": {"block_style": "error"}}}}, "(test)")
    with pytest.raises(ConfigError, match="block_style"):
        parse_settings({"policy": {"block_style": "popup"}}, "(test)")
    ok = parse_settings({"directory": {"services": [{"id": "ci"}]},
                         "policy": {"block_style": "message", "per_subject": {"ci": {"block_style": "error"}}}}, "(t)")
    assert ok.policy.per_subject["ci"].block_style == "error"

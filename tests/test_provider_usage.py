"""Provider protocol layers: request facts, usage from whole responses, and stream meters.

Stream meters are fed realistic SSE streams cut at arbitrary points: whatever the chunking, the
usage found is the provider's final report and (for OpenAI with hide_usage) the client receives
exactly the stream it would have received had it not been asked for usage on its behalf.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from test_sse import split
from tollhouse.providers.anthropic import AnthropicProtocol
from tollhouse.providers.base import Endpoint, RequestFacts, StreamMeter
from tollhouse.providers.classify import metered_endpoint
from tollhouse.providers.family import Family
from tollhouse.providers.gemini import GeminiProtocol
from tollhouse.providers.openai import OpenAIProtocol
from tollhouse.providers.usage import Usage

OPENAI = OpenAIProtocol()
ANTHROPIC = AnthropicProtocol()
GEMINI = GeminiProtocol()

_cuts = st.lists(st.integers(min_value=0), max_size=15)


def run(meter: StreamMeter, chunks: list[bytes]) -> bytes:
    out = b"".join(meter.feed(c) for c in chunks)
    return out + meter.finish()


def sse(*events: Any, sep: bytes = b"\n\n") -> bytes:
    """`data:` events from JSON objects (or raw bytes), optionally with an `event:` line."""
    out = []
    for ev in events:
        name, obj = ev if isinstance(ev, tuple) else (None, ev)
        data = obj if isinstance(obj, bytes) else orjson.dumps(obj)
        line_end = sep[: len(sep) // 2]
        out.append((b"event: " + name.encode() + line_end if name else b"") + b"data: " + data + sep)
    return b"".join(out)


# --------------------------------------------------------------------------------------------
# Usage from whole (non-stream) responses


def test_openai_chat_completion_usage() -> None:
    body = {
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion",
        "created": 1741569952,
        "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!", "refusal": None,
                                            "annotations": []}, "logprobs": None, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": 1219, "completion_tokens": 42, "total_tokens": 1261,
            "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        },
        "service_tier": "default",
        "system_fingerprint": "fp_fc9f1d7035",
    }
    usage, model = OPENAI.usage(Endpoint.chat, body)
    assert usage == Usage(input_tokens=1219, output_tokens=42, cache_read_tokens=1024)
    assert model == "gpt-4o-2024-08-06"


def test_openai_responses_usage() -> None:
    body = {
        "id": "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b",
        "object": "response",
        "created_at": 1741476542,
        "status": "completed",
        "model": "o4-mini-2025-04-16",
        "output": [{"type": "reasoning", "id": "rs_1", "summary": []},
                   {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": "Hi.", "annotations": []}]}],
        "usage": {"input_tokens": 2000, "input_tokens_details": {"cached_tokens": 1536},
                  "output_tokens": 300, "output_tokens_details": {"reasoning_tokens": 256},
                  "total_tokens": 2300},
    }
    usage, model = OPENAI.usage(Endpoint.responses, body)
    # Reasoning tokens are part of output_tokens already.
    assert usage == Usage(input_tokens=2000, output_tokens=300, cache_read_tokens=1536)
    assert model == "o4-mini-2025-04-16"


def test_openai_embeddings_usage() -> None:
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.0023064255, -0.009327292, 0.015797347]}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    }
    usage, model = OPENAI.usage(Endpoint.embeddings, body)
    assert usage == Usage(input_tokens=8, output_tokens=0)
    assert model == "text-embedding-3-small"


def test_openai_legacy_completions_usage() -> None:
    body = {
        "id": "cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7",
        "object": "text_completion",
        "created": 1589478378,
        "model": "gpt-3.5-turbo-instruct",
        "system_fingerprint": "fp_44709d6fcb",
        "choices": [{"text": "\n\nThis is indeed a test", "index": 0, "logprobs": None, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    }
    usage, model = OPENAI.usage(Endpoint.completions, body)
    assert usage == Usage(input_tokens=5, output_tokens=7)
    assert model == "gpt-3.5-turbo-instruct"


@pytest.mark.parametrize("body", [[], "oops", {"error": {"message": "bad"}}, {"usage": "n/a"}])
def test_openai_no_usage(body: Any) -> None:
    assert OPENAI.usage(Endpoint.chat, body)[0] is None


def test_openai_nonsense_counts_are_zero() -> None:
    usage, _ = OPENAI.usage(Endpoint.chat, {"usage": {"prompt_tokens": -3, "completion_tokens": True}})
    assert usage == Usage()


def test_anthropic_message_usage_includes_cached_input() -> None:
    body = {
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-5-sonnet-20241022",
        "content": [{"type": "text", "text": "Hi! My name is Claude."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 25, "cache_creation_input_tokens": 1200, "cache_read_input_tokens": 3000,
                  "output_tokens": 12, "service_tier": "standard"},
    }
    usage, model = ANTHROPIC.usage(Endpoint.messages, body)
    # Anthropic's input_tokens (25) excludes cached tokens; ours is everything read as input.
    assert usage == Usage(input_tokens=25 + 1200 + 3000, output_tokens=12, cache_read_tokens=3000,
                          cache_write_tokens=1200)
    assert model == "claude-3-5-sonnet-20241022"


def test_anthropic_message_without_cache_fields() -> None:
    body = {"type": "message", "model": "claude-3-5-haiku-20241022",
            "usage": {"input_tokens": 10, "output_tokens": 4}}
    assert ANTHROPIC.usage(Endpoint.messages, body)[0] == Usage(input_tokens=10, output_tokens=4)


def test_gemini_usage_counts_thoughts_as_output() -> None:
    body = {
        "candidates": [{"content": {"parts": [{"text": "The answer is 4."}], "role": "model"},
                        "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 1100, "candidatesTokenCount": 7, "totalTokenCount": 1612,
                          "cachedContentTokenCount": 1024, "thoughtsTokenCount": 505,
                          "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1100}]},
        "modelVersion": "gemini-2.5-pro",
        "responseId": "FQ5PaKqGBsWOz7IP4tH7sA8",
    }
    usage, model = GEMINI.usage(Endpoint.generate, body)
    assert usage == Usage(input_tokens=1100, output_tokens=7 + 505, cache_read_tokens=1024)
    assert model == "gemini-2.5-pro"


# --------------------------------------------------------------------------------------------
# Stream meters


def _chat_chunk(i: int, delta: dict[str, Any], finish: str | None, include_usage: bool) -> bytes:
    # Hand-built like OpenAI's compact JSON; "usage":null is the last key when include_usage is on.
    obj = {"id": "chatcmpl-AbC123", "object": "chat.completion.chunk", "created": 1741570000 + i,
           "model": "gpt-4o-mini-2024-07-18", "service_tier": "default", "system_fingerprint": "fp_06737a9306",
           "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    raw = orjson.dumps(obj)
    return raw[:-1] + b',"usage":null}' if include_usage else raw


def chat_stream(pieces: list[str], include_usage: bool, usage: dict[str, Any]) -> bytes:
    datas = [_chat_chunk(0, {"role": "assistant", "content": "", "refusal": None}, None, include_usage)]
    datas += [_chat_chunk(i + 1, {"content": p}, None, include_usage) for i, p in enumerate(pieces)]
    datas.append(_chat_chunk(len(pieces) + 1, {}, "stop", include_usage))
    if include_usage:
        datas.append(orjson.dumps({"id": "chatcmpl-AbC123", "object": "chat.completion.chunk",
                                   "created": 1741570099, "model": "gpt-4o-mini-2024-07-18",
                                   "service_tier": "default", "system_fingerprint": "fp_06737a9306",
                                   "choices": [], "usage": usage}))
    datas.append(b"[DONE]")
    return b"".join(b"data: " + d + b"\n\n" for d in datas)


CHAT_USAGE = {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
              "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}

_pieces = st.lists(st.text(max_size=8), min_size=0, max_size=6)


@settings(max_examples=150, deadline=None)
@given(_pieces, _cuts)
def test_openai_hide_usage_gives_client_the_stream_without_include_usage(pieces: list[str], cuts: list[int]) -> None:
    upstream = chat_stream(pieces, include_usage=True, usage=CHAT_USAGE)
    client_would_get = chat_stream(pieces, include_usage=False, usage=CHAT_USAGE)
    meter = OPENAI.stream_meter(Endpoint.chat, hide_usage=True)
    assert run(meter, split(upstream, cuts)) == client_would_get
    assert meter.usage == Usage(input_tokens=19, output_tokens=10)
    assert meter.model == "gpt-4o-mini-2024-07-18"


@settings(max_examples=100, deadline=None)
@given(_pieces, _cuts)
def test_openai_client_asked_for_usage_sees_everything(pieces: list[str], cuts: list[int]) -> None:
    upstream = chat_stream(pieces, include_usage=True, usage=CHAT_USAGE)
    meter = OPENAI.stream_meter(Endpoint.chat, hide_usage=False)
    chunks = split(upstream, cuts)
    assert [meter.feed(c) for c in chunks] == chunks  # passed through as they come
    assert meter.finish() == b""
    assert meter.usage == Usage(input_tokens=19, output_tokens=10)
    assert meter.model == "gpt-4o-mini-2024-07-18"


def test_openai_hide_usage_stream_cut_short_still_forwards_tail() -> None:
    upstream = chat_stream(["Hel", "lo"], include_usage=True, usage=CHAT_USAGE)
    cut = upstream[: upstream.index(b"[DONE]") - 20]  # ends inside the usage chunk
    meter = OPENAI.stream_meter(Endpoint.chat, hide_usage=True)
    out = run(meter, [cut])
    assert meter.usage is None
    assert b'"usage":null' not in out.split(b"\n\n")[0]
    assert out.endswith(cut[cut.rindex(b"\n\n") + 2:])  # the incomplete event is not lost


def test_openai_hide_usage_azure_stream_keeps_prompt_filter_chunk() -> None:
    """Azure starts with a choices-less chunk of content-filter results: it is not the usage chunk."""
    filter_chunk = sse({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {
                            "hate": {"filtered": False, "severity": "safe"}}}]})
    upstream = filter_chunk + chat_stream(["Hi"], include_usage=True, usage=CHAT_USAGE)
    meter = OPENAI.stream_meter(Endpoint.chat, hide_usage=True)
    assert run(meter, split(upstream, [3, 200, 777])) == filter_chunk + chat_stream(
        ["Hi"], include_usage=False, usage=CHAT_USAGE)
    assert meter.usage == Usage(input_tokens=19, output_tokens=10)
    assert meter.model == "gpt-4o-mini-2024-07-18"


def test_openai_legacy_completions_stream_usage() -> None:
    def chunk(text: str, finish: str | None) -> dict[str, Any]:
        return {"id": "cmpl-1", "object": "text_completion", "created": 1741570000,
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
                "model": "gpt-3.5-turbo-instruct", "usage": None}

    upstream = sse(chunk("Hello", None), chunk(" world", "length"),
                   {"id": "cmpl-1", "object": "text_completion", "created": 1741570000, "choices": [],
                    "model": "gpt-3.5-turbo-instruct",
                    "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}}, b"[DONE]")
    meter = OPENAI.stream_meter(Endpoint.completions, hide_usage=True)
    out = run(meter, [upstream])
    assert meter.usage == Usage(input_tokens=4, output_tokens=2)
    assert b"prompt_tokens" not in out and b'"usage"' not in out
    assert out.endswith(b"data: [DONE]\n\n")


def responses_stream() -> bytes:
    resp = {"id": "resp_1", "object": "response", "created_at": 1741290958, "status": "in_progress",
            "model": "gpt-4.1-2025-04-14", "output": [], "usage": None}
    done = {**resp, "status": "completed",
            "output": [{"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
                        "content": [{"type": "output_text", "text": "Hi there!", "annotations": []}]}],
            "usage": {"input_tokens": 37, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 11,
                      "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 48}}
    return sse(
        ("response.created", {"type": "response.created", "sequence_number": 0, "response": resp}),
        ("response.in_progress", {"type": "response.in_progress", "sequence_number": 1, "response": resp}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "sequence_number": 2,
                                        "item_id": "msg_1", "output_index": 0, "content_index": 0,
                                        "delta": "Hi"}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "sequence_number": 3,
                                        "item_id": "msg_1", "output_index": 0, "content_index": 0,
                                        "delta": " there!"}),
        ("response.completed", {"type": "response.completed", "sequence_number": 4, "response": done}),
    )


@settings(max_examples=100, deadline=None)
@given(_cuts)
def test_openai_responses_stream_usage(cuts: list[int]) -> None:
    upstream = responses_stream()
    meter = OPENAI.stream_meter(Endpoint.responses, hide_usage=False)
    assert run(meter, split(upstream, cuts)) == upstream
    assert meter.usage == Usage(input_tokens=37, output_tokens=11)
    assert meter.model == "gpt-4.1-2025-04-14"


def anthropic_stream(full_final_usage: bool) -> bytes:
    start_usage = {"input_tokens": 25, "cache_creation_input_tokens": 1200, "cache_read_input_tokens": 3000,
                   "output_tokens": 1}
    final_usage: dict[str, Any] = {"output_tokens": 15}
    if full_final_usage:  # newer API versions repeat the input counts in message_delta
        final_usage = {"input_tokens": 25, "cache_creation_input_tokens": 1200, "cache_read_input_tokens": 3000,
                       "output_tokens": 15}
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}
    return sse(
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "type": "message", "role": "assistant",
            "content": [], "model": "claude-3-5-sonnet-20241022", "stop_reason": None, "stop_sequence": None,
            "usage": start_usage}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("ping", b'{"type": "ping"}'),
        ("content_block_delta", delta),
        ("content_block_delta", {**delta, "delta": {"type": "text_delta", "text": "!"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": final_usage}),
        ("message_stop", {"type": "message_stop"}),
    )


@settings(max_examples=100, deadline=None)
@given(st.booleans(), _cuts)
def test_anthropic_stream_usage(full_final_usage: bool, cuts: list[int]) -> None:
    upstream = anthropic_stream(full_final_usage)
    meter = ANTHROPIC.stream_meter(Endpoint.messages, hide_usage=True)  # never hides: always reported
    assert run(meter, split(upstream, cuts)) == upstream
    assert meter.usage == Usage(input_tokens=25 + 1200 + 3000, output_tokens=15, cache_read_tokens=3000,
                                cache_write_tokens=1200)
    assert meter.model == "claude-3-5-sonnet-20241022"
    assert meter.delta_events == 2


def _gemini_chunk(text: str, out_tokens: int, thoughts: int, final: bool) -> dict[str, Any]:
    cand: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    if final:
        cand["finishReason"] = "STOP"
    meta: dict[str, Any] = {"promptTokenCount": 9, "candidatesTokenCount": out_tokens,
                            "totalTokenCount": 9 + out_tokens + thoughts,
                            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 9}]}
    if thoughts:
        meta["thoughtsTokenCount"] = thoughts
    return {"candidates": [cand], "usageMetadata": meta, "modelVersion": "gemini-2.5-flash",
            "responseId": "mQ5PaLzLJ9rWz7IPq7_XmQU"}


GEMINI_CHUNKS = [_gemini_chunk("The", 1, 120, False), _gemini_chunk(" sky is", 4, 120, False),
                 _gemini_chunk(" blue.", 6, 120, True)]
GEMINI_USAGE = Usage(input_tokens=9, output_tokens=6 + 120)


@settings(max_examples=100, deadline=None)
@given(_cuts)
def test_gemini_sse_stream_usage(cuts: list[int]) -> None:
    upstream = sse(*GEMINI_CHUNKS, sep=b"\r\n\r\n")  # Gemini's alt=sse uses CRLF
    meter = GEMINI.stream_meter(Endpoint.stream_generate, hide_usage=False)
    assert run(meter, split(upstream, cuts)) == upstream
    assert meter.usage == GEMINI_USAGE
    assert meter.model == "gemini-2.5-flash"
    assert meter.delta_events == 3


def gemini_array_stream() -> bytes:
    # Without alt=sse: one pretty-printed JSON array sent piece by piece.
    return b"[" + b"\n,\r\n".join(orjson.dumps(c, option=orjson.OPT_INDENT_2) for c in GEMINI_CHUNKS) + b"]"


@settings(max_examples=100, deadline=None)
@given(_cuts)
def test_gemini_array_stream_usage(cuts: list[int]) -> None:
    upstream = gemini_array_stream()
    meter = GEMINI.stream_meter(Endpoint.stream_generate, hide_usage=False)
    assert run(meter, split(upstream, cuts)) == upstream
    assert meter.usage == GEMINI_USAGE
    assert meter.model == "gemini-2.5-flash"


def test_gemini_array_stream_delta_count_does_not_depend_on_chunking() -> None:
    """delta_events is the output estimate for a stream that breaks off; a TCP split must not change it."""
    upstream = gemini_array_stream()
    cut = upstream.index(b'"candidates"') + 5  # a read boundary inside the key: '"cand' | 'idates"'
    meter = GEMINI.stream_meter(Endpoint.stream_generate, hide_usage=False)
    meter.feed(upstream[:cut])
    meter.feed(upstream[cut:])
    assert meter.delta_events == 3


def test_gemini_whole_array_body_usage() -> None:
    usage, model = GEMINI.usage(Endpoint.stream_generate, GEMINI_CHUNKS)
    assert usage == GEMINI_USAGE
    assert model == "gemini-2.5-flash"


# --------------------------------------------------------------------------------------------
# prepare(): asking for stream usage on the client's behalf


def test_prepare_asks_for_usage_on_streaming_chat() -> None:
    body: dict[str, Any] = {"model": "gpt-4o", "stream": True, "messages": []}
    assert OPENAI.prepare(Endpoint.chat, body) is True
    assert body["stream_options"] == {"include_usage": True}


def test_prepare_asks_for_usage_on_streaming_legacy_completions() -> None:
    body: dict[str, Any] = {"model": "gpt-3.5-turbo-instruct", "stream": True, "prompt": "x"}
    assert OPENAI.prepare(Endpoint.completions, body) is True
    assert body["stream_options"] == {"include_usage": True}


def test_prepare_keeps_other_stream_options() -> None:
    body: dict[str, Any] = {"stream": True, "stream_options": {"include_obfuscation": False}}
    assert OPENAI.prepare(Endpoint.chat, body) is True
    assert body["stream_options"] == {"include_obfuscation": False, "include_usage": True}


def test_prepare_leaves_body_alone_when_usage_already_asked() -> None:
    body: dict[str, Any] = {"stream": True, "stream_options": {"include_usage": True}}
    assert OPENAI.prepare(Endpoint.chat, body) is False
    assert body == {"stream": True, "stream_options": {"include_usage": True}}


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        (Endpoint.chat, {"model": "gpt-4o", "messages": []}),
        (Endpoint.chat, {"model": "gpt-4o", "stream": False}),
        (Endpoint.chat, {"model": "gpt-4o", "stream": "true"}),
        (Endpoint.responses, {"model": "gpt-4o", "stream": True}),
        (Endpoint.embeddings, {"model": "text-embedding-3-small", "stream": True}),
    ],
)
def test_prepare_does_nothing_elsewhere(endpoint: Endpoint, body: dict[str, Any]) -> None:
    before = dict(body)
    assert OPENAI.prepare(endpoint, body) is False
    assert body == before


def test_prepare_other_families_never_change_body() -> None:
    body: dict[str, Any] = {"model": "claude-3-5-sonnet-20241022", "stream": True}
    assert ANTHROPIC.prepare(Endpoint.messages, body) is False
    assert GEMINI.prepare(Endpoint.stream_generate, body) is False
    assert body == {"model": "claude-3-5-sonnet-20241022", "stream": True}


# --------------------------------------------------------------------------------------------
# facts(): what the gateway knows before forwarding


def _metered(family: Family, path: str) -> Endpoint:
    return metered_endpoint(family, "POST", path)


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/v1/chat/completions", {"model": "gpt-4o", "stream": True, "max_tokens": 100},
         RequestFacts("gpt-4o", True, 100)),
        ("/v1/chat/completions", {"model": "o3", "max_completion_tokens": 5000, "max_tokens": 100},
         RequestFacts("o3", False, 5000)),
        ("/v1/chat/completions", {"model": "gpt-4o", "max_tokens": -1}, RequestFacts("gpt-4o", False, None)),
        ("/v1/chat/completions", {"model": "gpt-4o", "max_tokens": True}, RequestFacts("gpt-4o", False, None)),
        ("/v1/responses", {"model": "gpt-4.1", "stream": True, "max_output_tokens": 800, "max_tokens": 5},
         RequestFacts("gpt-4.1", True, 800)),
        ("/v1/embeddings", {"model": "text-embedding-3-small", "stream": True},
         RequestFacts("text-embedding-3-small", False, None)),
        ("/openai/deployments/prod-gpt4o/chat/completions", {"messages": [], "max_tokens": 64},
         RequestFacts("prod-gpt4o", False, 64)),
        ("/openai/deployments/prod-gpt4o/chat/completions", {"model": "gpt-4o"},
         RequestFacts("gpt-4o", False, None)),
    ],
)
def test_openai_facts(path: str, body: dict[str, Any], expected: RequestFacts) -> None:
    assert OPENAI.facts(_metered(Family.openai, path), path, {}, body) == expected


def test_openai_classify() -> None:
    assert _metered(Family.openai, "/v1/chat/completions") is Endpoint.chat
    assert _metered(Family.openai, "/v1/completions") is Endpoint.completions
    assert _metered(Family.openai, "/v1/embeddings") is Endpoint.embeddings
    assert _metered(Family.openai, "/v1/responses") is Endpoint.responses
    assert _metered(Family.openai, "/v1/models") is Endpoint.passthrough


def test_anthropic_facts() -> None:
    body = {"model": "claude-3-5-sonnet-20241022", "max_tokens": 1024, "stream": True, "messages": []}
    assert ANTHROPIC.facts(Endpoint.messages, "/v1/messages", {}, body) == RequestFacts(
        "claude-3-5-sonnet-20241022", True, 1024)
    assert _metered(Family.anthropic, "/v1/messages") is Endpoint.messages
    assert _metered(Family.anthropic, "/v1/messages/count_tokens") is Endpoint.passthrough


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/v1beta/models/gemini-2.5-pro:generateContent",
         {"contents": [], "generationConfig": {"maxOutputTokens": 2048, "temperature": 0.2}},
         RequestFacts("gemini-2.5-pro", False, 2048)),
        ("/v1beta/models/gemini-2.5-flash:streamGenerateContent", {"contents": []},
         RequestFacts("gemini-2.5-flash", True, None)),
    ],
)
def test_gemini_facts(path: str, body: dict[str, Any], expected: RequestFacts) -> None:
    endpoint = _metered(Family.gemini, path)
    assert endpoint in (Endpoint.generate, Endpoint.stream_generate)
    assert GEMINI.facts(endpoint, path, {"alt": "sse"}, body) == expected


# --------------------------------------------------------------------------------------------
# client_key(): where each family carries the caller's key


def test_openai_client_key() -> None:
    assert OPENAI.client_key(CIMultiDict({"Authorization": "Bearer sk-abc"}), {}) == "sk-abc"
    assert OPENAI.client_key(CIMultiDict({"authorization": "bearer  sk-abc "}), {}) == "sk-abc"
    assert OPENAI.client_key(CIMultiDict({"api-key": "azure-key"}), {}) == "azure-key"  # Azure style
    assert OPENAI.client_key(CIMultiDict({"Authorization": "Basic dXNlcjpwdw=="}), {}) is None
    assert OPENAI.client_key(CIMultiDict(), {"key": "not-for-openai"}) is None
    assert OPENAI.client_key(CIMultiDict({"Authorization": "Bearer "}), {}) is None


def test_openai_empty_api_key_header_is_no_key() -> None:
    """Like the other families, an empty key header means no key (the caller is anonymous, not a key hash)."""
    assert OPENAI.client_key(CIMultiDict({"api-key": ""}), {}) is None
    assert ANTHROPIC.client_key(CIMultiDict({"x-api-key": ""}), {}) is None
    assert GEMINI.client_key(CIMultiDict({"x-goog-api-key": ""}), {}) is None


def test_anthropic_client_key() -> None:
    assert ANTHROPIC.client_key(CIMultiDict({"x-api-key": "sk-ant-1"}), {}) == "sk-ant-1"
    assert ANTHROPIC.client_key(CIMultiDict({"X-Api-Key": "sk-ant-1", "Authorization": "Bearer other"}),
                                {}) == "sk-ant-1"
    assert ANTHROPIC.client_key(CIMultiDict({"Authorization": "Bearer sk-ant-oauth"}), {}) == "sk-ant-oauth"
    assert ANTHROPIC.client_key(CIMultiDict(), {}) is None


def test_gemini_client_key() -> None:
    assert GEMINI.client_key(CIMultiDict({"x-goog-api-key": "AIza-h"}), {"key": "AIza-q"}) == "AIza-h"
    assert GEMINI.client_key(CIMultiDict(), {"key": "AIza-q"}) == "AIza-q"
    assert GEMINI.client_key(CIMultiDict(), {"key": ""}) is None
    assert GEMINI.client_key(CIMultiDict(), {}) is None

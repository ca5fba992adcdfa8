"""The mock provider, driven over a real socket by the real openai / anthropic SDKs."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from tollhouse.mock.provider import (
    FAULT_HEADER,
    LATENCY_HEADER,
    MOCK_STATS,
    OUTPUT_TOKENS_HEADER,
    MockSettings,
    MockStats,
    build_mock_app,
    count_tokens,
)
from tollhouse.mock.serve_thread import ThreadedServer

OUTPUT_TOKENS = 6
PROMPT = "say hello to the mock"  # 5 tokens


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    with ThreadedServer(lambda: build_mock_app(MockSettings(output_tokens=OUTPUT_TOKENS))) as srv:
        yield srv


@pytest.fixture
def stats(server: ThreadedServer) -> MockStats:
    return server.app[MOCK_STATS]


@pytest.fixture
def oai(server: ThreadedServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0, timeout=5) as client:
        yield client


@pytest.fixture
def ant(server: ThreadedServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=server.url, api_key="sk-ant-test", max_retries=0, timeout=5) as client:
        yield client


def _post(
    url: str, body: bytes | dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _sse_data(raw: bytes) -> list[str]:
    return [line[len("data: ") :] for line in raw.decode().split("\n") if line.startswith("data: ")]


# --------------------------------------------------------------------------- accounting


def test_count_tokens() -> None:
    assert count_tokens("") == 0
    assert count_tokens("   ") == 1
    assert count_tokens("one") == 1
    assert count_tokens(" two  words\n") == 2


# --------------------------------------------------------------------------- OpenAI


def test_chat_non_stream(oai: openai.OpenAI, stats: MockStats) -> None:
    completion = oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": PROMPT}]},
        ],
    )
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    assert completion.id.startswith("chatcmpl-")
    text = completion.choices[0].message.content
    assert text is not None and count_tokens(text) == OUTPUT_TOKENS
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 2 + 5
    assert completion.usage.completion_tokens == OUTPUT_TOKENS
    assert completion.usage.total_tokens == 7 + OUTPUT_TOKENS
    assert stats.last_headers["authorization"] == "Bearer sk-test"
    assert stats.last_body["model"] == "gpt-4o-mini"
    assert stats.by_path["/v1/chat/completions"] >= 1


def test_chat_ids_unique_and_max_tokens(oai: openai.OpenAI) -> None:
    first = oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], max_tokens=2)
    second = oai.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}], max_completion_tokens=3
    )
    assert first.id != second.id
    assert first.usage is not None and first.usage.completion_tokens == 2
    assert first.choices[0].finish_reason == "length"
    assert second.usage is not None and second.usage.completion_tokens == 3


def test_chat_stream_without_usage(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": PROMPT}], stream=True
        )
    )
    assert all(chunk.usage is None for chunk in chunks)
    assert all(chunk.choices for chunk in chunks)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert count_tokens(text) == OUTPUT_TOKENS
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len({chunk.id for chunk in chunks}) == 1


def test_chat_stream_with_usage(oai: openai.OpenAI, stats: MockStats) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    *content_chunks, usage_chunk = chunks
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.prompt_tokens == 5
    assert usage_chunk.usage.completion_tokens == OUTPUT_TOKENS
    assert all(chunk.usage is None and chunk.choices for chunk in content_chunks)
    assert stats.last_body["stream_options"] == {"include_usage": True}


def test_chat_stream_wire_format(server: ThreadedServer) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": PROMPT}], "stream": True}
    status, headers, raw = _post(server.url + "/v1/chat/completions", body)
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    plain = _sse_data(raw)
    assert plain[-1] == "[DONE]"
    assert all('"usage"' not in data for data in plain)
    assert len(plain) == OUTPUT_TOKENS + 3  # role chunk, one per word, finish chunk, [DONE]

    status, _, raw = _post(
        server.url + "/v1/chat/completions", {**body, "stream_options": {"include_usage": True}}
    )
    with_usage = _sse_data(raw)
    assert with_usage[-1] == "[DONE]"
    assert all('"usage":null' in data for data in with_usage[:-2])
    final = json.loads(with_usage[-2])
    assert final["choices"] == [] and final["usage"]["completion_tokens"] == OUTPUT_TOKENS
    assert list(final)[:4] == ["id", "object", "created", "model"]
    assert b": " not in raw.replace(b"data: ", b"")  # compact JSON


def test_legacy_completions(oai: openai.OpenAI) -> None:
    completion = oai.completions.create(model="gpt-3.5-turbo-instruct", prompt=PROMPT, max_tokens=4)
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, 4)
    assert count_tokens(completion.choices[0].text) == 4

    chunks = list(
        oai.completions.create(
            model="gpt-3.5-turbo-instruct",
            prompt=["a b", "c"],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 3
    assert "".join(c.choices[0].text for c in chunks[:-1]).count(" ") == OUTPUT_TOKENS - 1


def test_embeddings(oai: openai.OpenAI, stats: MockStats) -> None:
    single = oai.embeddings.create(model="text-embedding-3-small", input=PROMPT)
    assert stats.last_body["encoding_format"] == "base64"  # the SDK's default; it decodes the vectors
    assert len(single.data) == 1 and len(single.data[0].embedding) == 8
    assert single.usage.prompt_tokens == single.usage.total_tokens == 5

    batch = oai.embeddings.create(
        model="text-embedding-3-small", input=["one two", PROMPT], encoding_format="float", dimensions=4
    )
    assert [d.index for d in batch.data] == [0, 1]
    assert all(len(d.embedding) == 4 for d in batch.data)
    assert batch.usage.prompt_tokens == 7
    again = oai.embeddings.create(model="x", input="one two", encoding_format="float", dimensions=4)
    assert again.data[0].embedding == batch.data[0].embedding  # deterministic


def test_responses_non_stream(oai: openai.OpenAI) -> None:
    response = oai.responses.create(model="gpt-4.1-mini", input=PROMPT, instructions="be nice")
    assert response.status == "completed"
    assert count_tokens(response.output_text) == OUTPUT_TOKENS
    assert response.usage is not None
    assert response.usage.input_tokens == 7
    assert response.usage.output_tokens == OUTPUT_TOKENS
    assert response.usage.total_tokens == 7 + OUTPUT_TOKENS
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.usage.output_tokens_details.reasoning_tokens == 0


def test_responses_stream(oai: openai.OpenAI) -> None:
    events = list(
        oai.responses.create(model="gpt-4.1-mini", input=[{"role": "user", "content": PROMPT}], stream=True)
    )
    types = [event.type for event in events]
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"
    assert types.count("response.output_text.delta") == OUTPUT_TOKENS
    assert [event.sequence_number for event in events] == list(range(len(events)))
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.usage is not None
    assert completed.response.usage.input_tokens == 5
    assert completed.response.usage.output_tokens == OUTPUT_TOKENS

    with oai.responses.stream(model="gpt-4.1-mini", input=PROMPT) as stream:
        final = stream.get_final_response()
    assert count_tokens(final.output_text) == OUTPUT_TOKENS
    assert final.usage is not None and final.usage.output_tokens == OUTPUT_TOKENS


def test_models_list(oai: openai.OpenAI) -> None:
    ids = [model.id for model in oai.models.list()]
    assert "gpt-4o-mini" in ids


def test_azure_deployment_route(server: ThreadedServer, stats: MockStats) -> None:
    client = openai.AzureOpenAI(
        azure_endpoint=server.url, api_key="azure-key", api_version="2024-10-21", max_retries=0
    )
    with client:
        completion = client.chat.completions.create(
            model="my-deploy", messages=[{"role": "user", "content": "hi"}]
        )
    assert completion.model == "my-deploy"
    assert stats.last_path is not None
    assert stats.last_path.startswith("/openai/deployments/my-deploy/chat/completions?api-version=")
    assert stats.last_headers["api-key"] == "azure-key"


def test_output_tokens_header_and_latency(oai: openai.OpenAI) -> None:
    started = time.monotonic()
    completion = oai.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "x"}],
        extra_headers={OUTPUT_TOKENS_HEADER: "3", LATENCY_HEADER: "120"},
    )
    assert time.monotonic() - started >= 0.12
    assert completion.usage is not None and completion.usage.completion_tokens == 3


# --------------------------------------------------------------------------- Anthropic


def test_anthropic_non_stream(ant: anthropic.Anthropic, stats: MockStats) -> None:
    message = ant.messages.create(
        model="claude-mock-1",
        max_tokens=100,
        system="you are a mock",
        messages=[{"role": "user", "content": PROMPT}],
    )
    assert message.id.startswith("msg_")
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 4 + 5
    assert message.usage.output_tokens == OUTPUT_TOKENS
    block = message.content[0]
    assert block.type == "text" and count_tokens(block.text) == OUTPUT_TOKENS
    # anthropic>=2 sends the key as a bearer token; older SDKs used x-api-key
    sent_key = stats.last_headers.get("x-api-key") or stats.last_headers["authorization"].removeprefix(
        "Bearer "
    )
    assert sent_key == "sk-ant-test"
    assert stats.by_path["/v1/messages"] >= 1


def test_anthropic_stream(ant: anthropic.Anthropic) -> None:
    raw_events = list(
        ant.messages.create(
            model="claude-mock-1",
            max_tokens=3,
            messages=[{"role": "user", "content": [{"type": "text", "text": PROMPT}]}],
            stream=True,
        )
    )
    types: list[str] = [event.type for event in raw_events]
    assert [t for t in types if t != "ping"] == [  # the SDK may or may not surface ping events
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = raw_events[0]
    assert start.type == "message_start"
    assert (start.message.usage.input_tokens, start.message.usage.output_tokens) == (5, 1)

    with ant.messages.stream(
        model="claude-mock-1", max_tokens=100, messages=[{"role": "user", "content": PROMPT}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert count_tokens(text) == OUTPUT_TOKENS
    assert final.usage.input_tokens == 5
    assert final.usage.output_tokens == OUTPUT_TOKENS
    assert final.stop_reason == "end_turn"


def test_anthropic_stream_wire_format(server: ThreadedServer) -> None:
    body = {"model": "c", "max_tokens": 2, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    status, _, raw = _post(server.url + "/v1/messages", body)
    assert status == 200
    blocks = raw.decode().split("\n\n")
    assert blocks[-1] == ""
    names = [block.split("\n")[0] for block in blocks[:-1]]
    assert names[0] == "event: message_start" and names[-1] == "event: message_stop"
    delta = json.loads(blocks[-3].split("\n")[1][len("data: ") :])
    assert delta == {
        "type": "message_delta",
        "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
        "usage": {"output_tokens": 2},
    }


# --------------------------------------------------------------------------- Gemini


def test_gemini_generate_content(server: ThreadedServer, stats: MockStats) -> None:
    body = {
        "systemInstruction": {"parts": [{"text": "be terse"}]},
        "contents": [{"role": "user", "parts": [{"text": PROMPT}]}],
        "generationConfig": {"maxOutputTokens": 4},
    }
    status, _, raw = _post(
        server.url + "/v1beta/models/gemini-2.0-flash:generateContent", body, {"x-goog-api-key": "g-key"}
    )
    assert status == 200
    reply = json.loads(raw)
    assert reply["usageMetadata"] == {"promptTokenCount": 7, "candidatesTokenCount": 4, "totalTokenCount": 11}
    assert reply["modelVersion"] == "gemini-2.0-flash"
    candidate = reply["candidates"][0]
    assert candidate["finishReason"] == "MAX_TOKENS"
    assert count_tokens(candidate["content"]["parts"][0]["text"]) == 4
    assert stats.last_headers["x-goog-api-key"] == "g-key"
    assert stats.by_path["/v1beta/models/{model}:generateContent"] >= 1


def test_gemini_stream_sse_and_json_array(server: ThreadedServer) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]}
    url = server.url + "/v1beta/models/gemini-2.5-pro:streamGenerateContent"
    status, headers, raw = _post(url + "?alt=sse", body)
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    chunks = [json.loads(data) for data in _sse_data(raw)]
    assert len(chunks) == OUTPUT_TOKENS
    assert [c["usageMetadata"]["candidatesTokenCount"] for c in chunks] == list(range(1, OUTPUT_TOKENS + 1))
    assert chunks[-1]["usageMetadata"]["totalTokenCount"] == 5 + OUTPUT_TOKENS
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert "finishReason" not in chunks[0]["candidates"][0]

    status, headers, raw = _post(url, body)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    array = json.loads(raw)
    assert isinstance(array, list) and len(array) == OUTPUT_TOKENS
    assert array[-1]["usageMetadata"]["candidatesTokenCount"] == OUTPUT_TOKENS


# --------------------------------------------------------------------------- faults and errors


def test_fault_429_rate_limit(oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    with pytest.raises(openai.RateLimitError) as openai_err:
        oai.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], extra_headers={FAULT_HEADER: "429"}
        )
    assert openai_err.value.response.headers["retry-after"] == "1"
    assert openai_err.value.code == "rate_limit_exceeded"

    with pytest.raises(anthropic.RateLimitError) as anthropic_err:
        ant.messages.create(
            model="c",
            max_tokens=5,
            messages=[{"role": "user", "content": "x"}],
            extra_headers={FAULT_HEADER: "429"},
        )
    body = anthropic_err.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error" and set(body["error"]) == {"type", "message"}


def test_fault_500_and_400_shapes(server: ThreadedServer) -> None:
    body = {"contents": [{"parts": [{"text": "x"}]}]}
    status, _, raw = _post(server.url + "/v1beta/models/g:generateContent", body, {FAULT_HEADER: "500"})
    assert status == 500 and json.loads(raw)["error"]["status"] == "INTERNAL"
    status, _, raw = _post(server.url + "/v1/messages", {"x": 1}, {FAULT_HEADER: "400"})
    assert status == 400 and json.loads(raw)["error"]["type"] == "invalid_request_error"


def test_malformed_request_json_is_400(server: ThreadedServer, oai: openai.OpenAI) -> None:
    for path, family_key in [
        ("/v1/chat/completions", "error"),
        ("/v1/messages", "type"),
        ("/v1beta/models/g:generateContent", "error"),
    ]:
        status, _, raw = _post(server.url + path, b'{"model": "m", ')
        assert status == 400, path
        error = json.loads(raw)
        assert family_key in error
        assert "JSON" in json.dumps(error)

    with pytest.raises(openai.BadRequestError, match="messages"):
        oai.chat.completions.create(model="m", messages=[], extra_body={"messages": None})


def test_fault_malformed_response(oai: openai.OpenAI) -> None:
    # the openai SDK lets the json.JSONDecodeError of a 200 "application/json" body escape unwrapped
    with pytest.raises(ValueError):
        oai.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], extra_headers={FAULT_HEADER: "malformed"}
        )


def test_fault_disconnect(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.APIConnectionError):
        oai.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], extra_headers={FAULT_HEADER: "disconnect"}
        )


def test_fault_cut_stream(oai: openai.OpenAI) -> None:
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        stream = oai.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "x"}],
            stream=True,
            extra_headers={FAULT_HEADER: "cut-stream"},
        )
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert len(received) == 3


def test_fault_stall_stream(server: ThreadedServer) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=0.3)
    body = {"model": "c", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "x"}]}
    connection.request("POST", "/v1/messages", json.dumps(body), {FAULT_HEADER: "stall-stream"})
    response = connection.getresponse()
    assert response.status == 200
    received = b""
    with pytest.raises(TimeoutError):
        while True:
            piece = response.read1(65536)
            assert piece, "stream ended instead of stalling"
            received += piece
    connection.close()
    assert received.count(b"event: ") == 3


def test_error_rate_only_hits_metered_routes() -> None:
    factory = lambda: build_mock_app(MockSettings(error_rate=1.0))  # noqa: E731
    with ThreadedServer(factory) as srv:
        status, _, raw = _post(srv.url + "/v1/messages", {"model": "c", "messages": []})
        assert status == 500 and json.loads(raw)["error"]["type"] == "api_error"
        with urllib.request.urlopen(srv.url + "/v1/models", timeout=5) as response:
            assert response.status == 200
        assert srv.app[MOCK_STATS].by_path == {"/v1/messages": 1, "/v1/models": 1}

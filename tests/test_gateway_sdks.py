"""The official SDKs, unchanged apart from the base URL, through the gateway to the mock provider."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import anthropic
import openai

from conftest import Gateway, Mock


def oai(gw: Gateway, user: str = "alice", **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/openai/v1", api_key="sk-client", max_retries=0,
                         default_headers={"X-Tollhouse-User": user}, **kw)


def claude(gw: Gateway, user: str = "alice") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url + "/anthropic", api_key="sk-ant-client", max_retries=0,
                               default_headers={"X-Tollhouse-User": user})


def only_event(gw: Gateway) -> dict[str, Any]:
    events = gw.events()
    assert len(events) == 1, events
    return events[0]


def test_openai_chat_non_stream_is_metered_and_attributed(gateway: Gateway) -> None:
    resp = oai(gateway).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "say hello to the gateway"}], max_tokens=7)
    assert resp.usage is not None and resp.usage.completion_tokens == 7
    ev = only_event(gateway)
    assert ev["subject"] == "alice" and ev["team"] == "platform" and ev["project"] == "checkout"
    assert ev["provider"] == "openai" and ev["model"] == resp.model and ev["requested_model"] == "gpt-4o-mini"
    assert ev["stream"] is False and ev["status"] == 200 and ev["decision"] == "allow"
    assert ev["input_tokens"] == resp.usage.prompt_tokens and ev["output_tokens"] == 7
    # gpt-4o-mini: $0.15 / $0.60 per million tokens
    expected = (resp.usage.prompt_tokens * 0.15 + 7 * 0.60) / 1e6
    assert abs(ev["cost_usd"] - expected) < 1e-12
    assert ev["rule_id"] is None


def test_openai_stream_usage_is_asked_for_but_not_shown(gateway: Gateway, mock: Mock) -> None:
    stream = oai(gateway).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "count to five please"}], max_tokens=5,
        stream=True)
    chunks = list(stream)
    # The client did not ask for usage: no usage chunk, no usage field.
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks).split().__len__() == 5
    # ... but the upstream was asked, so the call is metered exactly.
    assert mock.stats.last_body is not None
    assert mock.stats.last_body["stream_options"] == {"include_usage": True}
    ev = only_event(gateway)
    assert ev["stream"] is True and ev["output_tokens"] == 5 and ev["input_tokens"] == 4
    assert ev["usage_source"] == "response" and ev["cost_usd"] > 0


def test_openai_stream_client_asking_for_usage_gets_it(gateway: Gateway) -> None:
    stream = oai(gateway).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0].choices == []
    ev = only_event(gateway)
    assert ev["output_tokens"] == usage_chunks[0].usage.completion_tokens == 3


def test_responses_api_stream_and_embeddings(gateway: Gateway) -> None:
    client = oai(gateway)
    with client.responses.stream(model="gpt-4o-mini", input="write one line", max_output_tokens=60) as s:
        final = s.get_final_response()
    assert final.usage is not None
    emb = client.embeddings.create(model="text-embedding-3-small", input=["one two three", "four"])
    events = {e["endpoint"]: e for e in gateway.events()}
    assert events["responses"]["output_tokens"] == final.usage.output_tokens == 16
    assert events["responses"]["input_tokens"] == final.usage.input_tokens
    assert events["responses"]["stream"] is True
    assert events["embeddings"]["input_tokens"] == emb.usage.prompt_tokens == 4
    assert events["embeddings"]["output_tokens"] == 0 and events["embeddings"]["cost_usd"] is not None


def test_legacy_completions(gateway: Gateway) -> None:
    resp = oai(gateway).completions.create(model="gpt-3.5-turbo-instruct", prompt="once upon", max_tokens=4)
    ev = only_event(gateway)
    assert ev["endpoint"] == "completions" and resp.usage is not None
    assert ev["output_tokens"] == resp.usage.completion_tokens == 4


def test_anthropic_messages_non_stream_and_stream(gateway: Gateway) -> None:
    client = claude(gateway, user="bob")
    msg = client.messages.create(model="claude-3-5-sonnet-20241022", max_tokens=9,
                                 messages=[{"role": "user", "content": "hello claude"}])
    with client.messages.stream(model="claude-3-5-haiku-20241022", max_tokens=4,
                                messages=[{"role": "user", "content": "stream me three words"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text
    events = sorted(gateway.events(), key=lambda e: e["stream"])
    plain, streamed = events
    assert plain["subject"] == "bob" and plain["team"] == "platform" and plain["project"] is None
    assert (plain["input_tokens"], plain["output_tokens"]) == (msg.usage.input_tokens, msg.usage.output_tokens)
    assert streamed["stream"] is True and streamed["usage_source"] == "response"
    assert (streamed["input_tokens"], streamed["output_tokens"]) == (
        final.usage.input_tokens, final.usage.output_tokens)
    # claude-3-5-sonnet: $3 / $15 per million tokens
    assert abs(plain["cost_usd"] - (msg.usage.input_tokens * 3 + msg.usage.output_tokens * 15) / 1e6) < 1e-12


def _post(url: str, body: dict[str, Any] | bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """POST JSON (or raw bytes, as sent) and return the status and body, errors included."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_gemini_generate_and_both_stream_forms(gateway: Gateway) -> None:
    body = {"contents": [{"parts": [{"text": "tell me about gateways"}]}],
            "generationConfig": {"maxOutputTokens": 5}}
    hdr = {"X-Tollhouse-User": "alice", "x-goog-api-key": "g-client"}
    base = gateway.url + "/gemini/v1beta/models/gemini-2.0-flash"
    status, data = _post(base + ":generateContent", body, hdr)
    assert status == 200
    usage = json.loads(data)["usageMetadata"]
    status, sse = _post(base + ":streamGenerateContent?alt=sse", body, hdr)
    assert status == 200 and sse.startswith(b"data: ")
    status, arr = _post(base + ":streamGenerateContent", body, hdr)
    assert status == 200 and isinstance(json.loads(arr), list)
    events = gateway.events()
    assert len(events) == 3
    for ev in events:
        assert ev["provider"] == "gemini" and ev["model"] == "gemini-2.0-flash"
        assert (ev["input_tokens"], ev["output_tokens"]) == (usage["promptTokenCount"],
                                                             usage["candidatesTokenCount"])
        assert ev["cost_usd"] is not None and ev["usage_source"] == "response"
    assert sorted(e["stream"] for e in events) == [False, True, True]


def test_unmetered_routes_pass_through_and_are_recorded(gateway: Gateway) -> None:
    models = oai(gateway).models.list()
    assert len(models.data) > 0
    ev = only_event(gateway)
    assert ev["endpoint"] == "passthrough" and ev["metered"] is False and ev["status"] == 200
    assert ev["input_tokens"] == 0 and ev["cost_usd"] is None and ev["path"] == "/v1/models"


def test_unknown_model_costs_null_and_is_counted(gateway: Gateway) -> None:
    oai(gateway).chat.completions.create(model="acme-private-llm-7b", messages=[{"role": "user", "content": "x"}])
    ev = only_event(gateway)
    assert ev["cost_usd"] is None and ev["output_tokens"] > 0
    _, metrics, _ = gateway.get("/metrics", token=None)
    assert b'tollhouse_unpriced_calls_total{model="acme-private-llm-7b",provider="openai"} 1.0' in metrics

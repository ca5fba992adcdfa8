"""Capture mode: telemetry keeps what was said on the machine; enterprise captures the prompt and response
text of every metered call (streams assembled from their deltas), stores it with the event and ships it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from conftest import Gateway, Mock, upstreams
from shipping import call, cp_ids, enroll
from test_gateway_sdks import _post, claude, oai
from tollhouse.agent.shipper import Shipper
from tollhouse.config import CaptureMode
from tollhouse.events import spool
from tollhouse.events.journal import Journal, leftover_events
from tollhouse.events.model import MAX_CAPTURE_CHARS, Capture, capture
from tollhouse.events.store import open_store
from tollhouse.events.wire import BatchError, from_wire, to_wire
from tollhouse.events.writer import StoreRunner
from tollhouse.providers.base import Endpoint
from tollhouse.providers.family import Family
from tollhouse.providers.text import StreamText, response_text

SECRET = "the launch code is pineapple-42"


def _data_plane(gateway_factory: Any, mock: Mock, mode: str, data_dir: Path) -> Gateway:
    gw: Gateway = gateway_factory({"capture_mode": mode, "identity": {"trust_user_header": True},
                                   "providers": upstreams(mock.url)}, data_dir)
    return gw


def _calls(gw: Gateway) -> dict[str, str]:
    """One non-stream and two streamed calls; what each client got, by endpoint."""
    client = oai(gw)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": SECRET}]
    plain = client.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=6)
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=9,
                                            stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    with claude(gw).messages.stream(model="claude-3-5-sonnet-20241022", max_tokens=7,
                                    messages=[{"role": "user", "content": SECRET}]) as s:
        anthropic_text = "".join(s.text_stream)
    return {"plain": plain.choices[0].message.content or "", "openai_stream": streamed,
            "anthropic_stream": anthropic_text}


def _by_kind(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for e in events:
        out["anthropic_stream" if e["provider"] == "anthropic" else "openai_stream" if e["stream"] else "plain"] = e
    return out


def _ship(data_dir: Path, cp: Gateway) -> list[spool.Spooled]:
    """Ship a stopped data plane's store to the control plane, as the agent does; returns what was spooled."""
    async def main() -> list[spool.Spooled]:
        runner = StoreRunner(open_store("", data_dir))
        try:
            spooled = await runner.run(lambda s: spool.read(s, 0, 100))
            shipper = Shipper(runner, cp.url, enroll(cp))
            assert await shipper.ship_once() == len(spooled)
            await shipper.stop()
            return spooled
        finally:
            runner.close()

    return asyncio.run(main())


def _cp_event(cp: Gateway, event_id: str) -> dict[str, Any]:
    status, body, _ = cp.get(f"/api/v1/events/{event_id}")
    assert status == 200, body
    event: dict[str, Any] = json.loads(body)["event"]
    return event


def test_enterprise_mode_captures_prompts_and_responses_and_ships_them(
        gateway_factory: Any, mock: Mock, tmp_path: Path) -> None:
    gw = _data_plane(gateway_factory, mock, "enterprise", tmp_path / "agent")
    answers = _calls(gw)
    assert all(answers.values())
    local = _by_kind(json.loads(gw.get("/api/v1/events?include=content")[1])["events"])
    for kind, text in answers.items():
        assert SECRET in local[kind]["prompt"] and local[kind]["response"] == text, kind
    assert "be brief" in local["plain"]["prompt"]  # every message's text, the system prompt too
    gw.stop()

    cp: Gateway = gateway_factory({})
    _ship(tmp_path / "agent", cp)
    for kind, text in answers.items():
        event = _cp_event(cp, local[kind]["id"])
        assert (event["prompt"], event["response"]) == (local[kind]["prompt"], text), kind
    # the content is for admins only
    assert cp.get(f"/api/v1/events/{local['plain']['id']}", token=None)[0] == 401
    assert cp.get(f"/api/v1/events/{local['plain']['id']}", token=enroll(cp))[0] == 401
    assert cp.get("/api/v1/events/no-such-event")[0] == 404
    assert cp.get("/api/v1/events?include=everything")[0] == 400


def test_telemetry_mode_keeps_what_was_said_on_the_machine(gateway_factory: Any, mock: Mock, tmp_path: Path) -> None:
    gw = _data_plane(gateway_factory, mock, "telemetry", tmp_path / "agent")
    _calls(gw)
    _, body, _ = gw.get("/api/v1/events?include=content")
    local = json.loads(body)["events"]
    assert len(local) == 3 and all(e["prompt"] is None and e["response"] is None for e in local)
    gw.stop()

    cp: Gateway = gateway_factory({})
    spooled = _ship(tmp_path / "agent", cp)
    assert all(s.capture is None and "prompt" not in to_wire(s.event, s.capture) for s in spooled)
    assert len(cp_ids(cp)) == 3
    _, everything, _ = cp.get("/api/v1/events?include=content")
    assert b"pineapple" not in everything and b"lorem" not in everything
    assert _cp_event(cp, local[0]["id"])["prompt"] is None


def test_the_capture_mode_is_read_per_call(gateway_factory: Any, mock: Mock, tmp_path: Path) -> None:
    """A switch applies from the next call, without a restart (the settings are looked at per call)."""
    gw = _data_plane(gateway_factory, mock, "telemetry", tmp_path / "agent")
    client = oai(gw)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "before"}])
    assert gw.state is not None
    live = gw.state.live_settings  # what the agent does when its agent policy changes:
    live.publish(dataclasses.replace(live.current, capture_mode=CaptureMode.enterprise))
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "after"}])
    after, before = json.loads(gw.get("/api/v1/events?include=content")[1])["events"]
    assert before["prompt"] is None and after["prompt"] == "after" and after["response"]


def test_a_killed_process_keeps_its_captures_in_the_journal(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append(call(1), Capture("what is 2+2", "4"))
    journal.append(call(2))
    [(_, events, captures)] = list(leftover_events(tmp_path))
    assert [e.id for e in events] == [call(1).id, call(2).id]
    assert captures == {call(1).id: Capture("what is 2+2", "4")}


def test_captured_text_is_bounded_on_the_machine_and_on_the_wire() -> None:
    big = "x" * (MAX_CAPTURE_CHARS + 10)
    assert capture(big, None) == Capture("x" * MAX_CAPTURE_CHARS, None)
    ok = to_wire(call(1), Capture("hi", None))
    assert ok["prompt"] == "hi" and "response" not in ok
    batch = from_wire([ok, to_wire(call(2))])
    assert [e.id for e in batch.events] == [call(1).id, call(2).id]
    assert batch.captures == {call(1).id: Capture("hi", None)}
    with pytest.raises(BatchError) as err:
        from_wire([ok, {**to_wire(call(3)), "response": big}, {**to_wire(call(4)), "status": 1}])
    assert err.value.indices == [1, 2] and "events[1].response" in err.value.problems[0]


def _sse(*events: tuple[str, Any]) -> bytes:
    return b"".join((f"event: {name}\n" if name else "").encode() + b"data: " + json.dumps(data).encode() + b"\n\n"
                    for name, data in events)


@pytest.mark.parametrize(("family", "endpoint", "stream", "expected"), [
    (Family.openai, Endpoint.chat,
     _sse(("", {"choices": [{"delta": {"role": "assistant"}}]}), ("", {"choices": [{"delta": {"content": "Hel"}}]}),
          ("", {"choices": [{"delta": {"content": "lo"}}]}), ("", {"choices": [], "usage": {}})) + b"data: [DONE]\n\n",
     "Hello"),
    (Family.openai, Endpoint.completions, _sse(("", {"choices": [{"text": "a"}]}), ("", {"choices": [{"text": "b"}]})),
     "ab"),
    (Family.openai, Endpoint.responses,
     _sse(("response.output_text.delta", {"type": "response.output_text.delta", "delta": "to"}),
          ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "ken"}),
          ("response.completed", {"type": "response.completed", "response": {}})), "token"),
    (Family.anthropic, Endpoint.messages,
     _sse(("message_start", {"type": "message_start", "message": {}}),
          ("content_block_delta", {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hi "}}),
          ("content_block_delta", {"type": "content_block_delta",
                                   "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
          ("content_block_delta", {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "there"}})),
     "Hi there"),
    (Family.gemini, Endpoint.stream_generate,
     _sse(("", {"candidates": [{"content": {"parts": [{"text": "Ge"}]}}]}),
          ("", {"candidates": [{"content": {"parts": [{"text": "mini"}]}}]})), "Gemini"),
    (Family.gemini, Endpoint.stream_generate,
     json.dumps([{"candidates": [{"content": {"parts": [{"text": "arr"}]}}]},
                 {"candidates": [{"content": {"parts": [{"text": "ay"}]}}]}]).encode(), "array"),
])
def test_a_streams_text_is_assembled_from_its_deltas_across_any_chunking(
        family: Family, endpoint: Endpoint, stream: bytes, expected: str) -> None:
    for size in (1, 7, len(stream)):
        text = StreamText(family, endpoint)
        for i in range(0, len(stream), size):
            text.feed(stream[i:i + size])
        assert text.text() == expected, size


@pytest.mark.parametrize(("family", "endpoint", "body", "expected"), [
    (Family.openai, Endpoint.chat, {"choices": [{"message": {"content": "plain"}}]}, "plain"),
    (Family.openai, Endpoint.chat, {"choices": [{"message": {"content": [{"type": "text", "text": "parts"}]}}]},
     "parts"),
    (Family.openai, Endpoint.chat, {"choices": [{"message": {"content": None, "tool_calls": [{}]}}]}, ""),
    (Family.openai, Endpoint.responses,
     {"output": [{"type": "reasoning"}, {"type": "message", "content": [{"type": "output_text", "text": "out"}]}]},
     "out"),
    (Family.openai, Endpoint.embeddings, {"data": [{"embedding": [0.1]}]}, ""),
    (Family.anthropic, Endpoint.messages, {"content": [{"type": "text", "text": "A"}, {"type": "tool_use"}]}, "A"),
    (Family.gemini, Endpoint.generate, {"candidates": [{"content": {"parts": [{"text": "G"}]}}]}, "G"),
])
def test_a_whole_responses_text(family: Family, endpoint: Endpoint, body: Any, expected: str) -> None:
    assert response_text(family, endpoint, body) == expected


def test_gemini_calls_are_captured_too(gateway_factory: Any, mock: Mock, tmp_path: Path) -> None:
    gw = _data_plane(gateway_factory, mock, "enterprise", tmp_path / "agent")
    body = {"contents": [{"parts": [{"text": SECRET}]}], "generationConfig": {"maxOutputTokens": 4}}
    hdr = {"X-Tollhouse-User": "alice", "x-goog-api-key": "g-client"}
    base = gw.url + "/gemini/v1beta/models/gemini-2.0-flash"
    status, data = _post(base + ":generateContent", body, hdr)
    assert status == 200
    answer = response_text(Family.gemini, Endpoint.generate, json.loads(data))
    assert _post(base + ":streamGenerateContent?alt=sse", body, hdr)[0] == 200
    events = json.loads(gw.get("/api/v1/events?include=content")[1])["events"]
    assert [e["prompt"] for e in events] == [SECRET, SECRET]
    assert all(e["response"] and len(e["response"].split()) == 4 for e in events)
    assert events[1]["response"] == answer

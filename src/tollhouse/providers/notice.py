"""A gateway notice appended to the provider's real answer (a protocol layer: no I/O).

`policy.soft_cap_notice: message`: the soft cap's warning is added to the assistant's text, in a whole response
body (`append_to_body`) or as one more text delta of a stream, placed before the stream's end so every client
reads it as part of the answer (`NoticeStream`).
"""

from __future__ import annotations

from typing import Any

import orjson

from tollhouse.providers.answers import (
    anthropic_text_block_events,
    responses_item_events,
    responses_message_item,
    sse_event,
)
from tollhouse.providers.base import Endpoint
from tollhouse.providers.family import Family
from tollhouse.providers.sse import SseEvent, SseParser


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _append_to(obj: dict[str, Any], family: Family, endpoint: Endpoint, notice: str) -> bool:
    if family is Family.anthropic:
        content = obj.get("content")
        if not isinstance(content, list):
            return False
        content.append({"type": "text", "text": notice})
        return True
    if family is Family.gemini:
        for cand in _dicts(obj.get("candidates"))[:1]:
            body = cand.setdefault("content", {"role": "model", "parts": []})
            if isinstance(body, dict) and isinstance(body.setdefault("parts", []), list):
                body["parts"].append({"text": notice})
                return True
        return False
    if endpoint is Endpoint.responses:
        output = obj.get("output")
        if not isinstance(output, list):
            return False
        output.append(responses_message_item("msg_tollhouse_notice", notice))
        return True
    appended = False
    for choice in _dicts(obj.get("choices")):
        message = choice.get("message")
        if isinstance(message, dict) and (message.get("content") is None or isinstance(message["content"], str)):
            message["content"] = (message.get("content") or "") + notice
            appended = True
        elif isinstance(choice.get("text"), str):
            choice["text"] += notice
            appended = True
    return appended


def append_to_body(family: Family, endpoint: Endpoint, body: bytes, notice: str) -> bytes:
    """The whole response body with `notice` added to its assistant text (unchanged if it has none)."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if isinstance(obj, list):  # a Gemini stream read whole: the last chunk takes it
        items = _dicts(obj)
        return orjson.dumps(obj) if items and _append_to(items[-1], family, endpoint, notice) else body
    if isinstance(obj, dict) and _append_to(obj, family, endpoint, notice):
        return orjson.dumps(obj)
    return body


class NoticeStream:
    """Passes a stream's bytes through, adding `notice` once to the answer's text just before the stream ends:
    - OpenAI chat / completions: a content chunk before the chunk that carries finish_reason (else before [DONE]);
    - Responses API: one more text delta of the last message (its done events and response.completed carry the
      longer text), or a message item of its own before response.completed when the answer has no message;
    - Anthropic: one more text delta of the last text block before message_delta, or a text block of its own;
    - Gemini (alt=sse): one more text part in the chunk that carries finishReason.
    The few events that may end the answer are held until the next one says whether they do. A stream without
    that point (an error, a cut) is passed on unchanged."""

    __slots__ = ("_done", "_endpoint", "_family", "_held", "_last_index", "_notice", "_parser", "_text_blocks")

    def __init__(self, family: Family, endpoint: Endpoint, notice: str) -> None:
        self._family = family
        self._endpoint = endpoint
        self._notice = notice
        self._parser = SseParser()
        self._done = False
        self._held: list[SseEvent] = []
        self._last_index = -1  # Anthropic: the highest content block index; Responses: output index
        self._text_blocks: set[int] = set()  # Anthropic: content blocks of type text

    def feed(self, chunk: bytes) -> bytes:
        if self._done:
            return chunk
        if self._family is Family.gemini and not self._parser.pending and not self._held \
                and chunk.lstrip()[:1] == b"[":
            self._done = True  # Gemini without alt=sse: one JSON array, not events; the header tells the warning
            return chunk
        out: list[bytes] = []
        events = self._parser.feed(chunk)
        for i, ev in enumerate(events):
            out.extend(self._step(ev))
            if self._done:
                out.extend(e.raw for e in events[i + 1:])
                out.append(self._parser.pending)
                self._parser = SseParser()
                break
        return b"".join(out)

    def finish(self) -> bytes:
        if self._done:
            return b""
        held = b"".join(e.raw for e in self._held)
        self._held = []
        return held + self._parser.pending

    def _flush(self) -> list[bytes]:
        held = [e.raw for e in self._held]
        self._held = []
        return held

    def _step(self, ev: SseEvent) -> list[bytes]:
        if not ev.data:
            return [*self._flush(), ev.raw] if not self._held else self._hold(ev)
        if self._family is Family.anthropic:
            return self._anthropic(ev)
        if ev.data == b"[DONE]":
            if self._endpoint is Endpoint.responses:
                return [*self._flush(), ev.raw]
            self._done = True
            return [self._openai_chunk({}), ev.raw]
        obj = _object(ev.data)
        if obj is None:
            return [*self._flush(), ev.raw]
        if self._endpoint is Endpoint.responses and self._family is Family.openai:
            return self._responses(ev, ev.event or str(obj.get("type") or ""), obj)
        if self._family is Family.gemini:
            cands = _dicts(obj.get("candidates"))
            finished = [c for c in cands if c.get("finishReason")]
            if not finished:
                return [ev.raw]
            self._done = True
            if not _append_to({"candidates": finished[:1]}, Family.gemini, self._endpoint, self._notice):
                return [ev.raw]
            return [sse_event(obj)]
        if any(c.get("finish_reason") for c in _dicts(obj.get("choices"))):
            self._done = True
            return [self._openai_chunk(obj), ev.raw]
        return [ev.raw]

    def _hold(self, ev: SseEvent) -> list[bytes]:
        self._held.append(ev)
        return []

    def _openai_chunk(self, like: dict[str, Any]) -> bytes:
        chunk: dict[str, Any] = {k: like[k] for k in ("id", "object", "created", "model") if k in like}
        if self._endpoint is Endpoint.completions:
            chunk["choices"] = [{"index": 0, "text": self._notice, "logprobs": None, "finish_reason": None}]
        else:
            chunk["choices"] = [{"index": 0, "delta": {"content": self._notice}, "logprobs": None,
                                 "finish_reason": None}]
        return sse_event(chunk)

    def _responses(self, ev: SseEvent, event: str, obj: dict[str, Any]) -> list[bytes]:
        index = obj.get("output_index")
        if isinstance(index, int):
            self._last_index = max(self._last_index, index)
        if event == "response.output_text.done":
            return [*self._flush(), *self._hold(ev)]
        if self._held and event in ("response.content_part.done", "response.output_item.done"):
            return self._hold(ev)
        if event != "response.completed":
            return [*self._flush(), ev.raw]
        self._done = True
        if self._held:
            return self._responses_extend(obj)
        seq = obj.get("sequence_number")
        first = seq if isinstance(seq, int) else 0
        events = list(responses_item_events("msg_tollhouse_notice", self._last_index + 1, self._notice, first))
        response = obj.get("response")
        if isinstance(response, dict) and isinstance(response.get("output"), list):
            response["output"].append(responses_message_item("msg_tollhouse_notice", self._notice))
        obj["sequence_number"] = first + len(events)
        return [*(sse_event(fields, name) for name, fields in events), sse_event(obj, "response.completed")]

    def _responses_extend(self, completed: dict[str, Any]) -> list[bytes]:
        """The last message's text grows by the notice: one more delta, and the done events say so."""
        held = [(e.event, _object(e.data) or {}) for e in self._held]
        self._held = []
        done = held[0][1]
        item_id = done.get("item_id")
        delta = {k: done[k] for k in ("item_id", "output_index", "content_index") if k in done}
        seq = done.get("sequence_number")
        out = [sse_event({"type": "response.output_text.delta", "sequence_number": seq, **delta,
                          "delta": self._notice}, "response.output_text.delta")]
        for name, obj in [*held, ("response.completed", completed)]:
            if isinstance(obj.get("sequence_number"), int):
                obj["sequence_number"] += 1
            if isinstance(obj.get("text"), str):
                obj["text"] += self._notice
            part = obj.get("part")
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                part["text"] += self._notice
            item = obj.get("item")
            items = [item] if isinstance(item, dict) else []
            response = obj.get("response")
            if isinstance(response, dict):
                items += _dicts(response.get("output"))
            for it in items:
                texts = [c for c in _dicts(it.get("content")) if isinstance(c.get("text"), str)]
                if it.get("id") == item_id and texts:
                    texts[-1]["text"] += self._notice
            out.append(sse_event(obj, name or str(obj.get("type") or "")))
        return out

    def _anthropic(self, ev: SseEvent) -> list[bytes]:
        if self._held:
            if ev.event == "ping":
                return self._hold(ev)
            if ev.event == "message_delta":
                stop = _object(self._held[0].data) or {}
                index = stop.get("index")
                self._done = True
                added = sse_event({"type": "content_block_delta", "index": index,
                                   "delta": {"type": "text_delta", "text": self._notice}}, "content_block_delta")
                return [added, *self._flush(), ev.raw]
            flushed = self._flush()
            return [*flushed, *self._anthropic(ev)]
        if ev.event == "content_block_start":
            obj = _object(ev.data) or {}
            index = obj.get("index")
            block = obj.get("content_block")
            if isinstance(index, int):
                self._last_index = max(self._last_index, index)
                if isinstance(block, dict) and block.get("type") == "text":
                    self._text_blocks.add(index)
            return [ev.raw]
        if ev.event == "content_block_stop":
            index = (_object(ev.data) or {}).get("index")
            return self._hold(ev) if index in self._text_blocks else [ev.raw]
        if ev.event == "message_delta":
            self._done = True
            return [anthropic_text_block_events(self._last_index + 1, self._notice), ev.raw]
        return [ev.raw]


def _object(data: bytes) -> dict[str, Any] | None:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None

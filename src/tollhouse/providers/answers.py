"""A gateway-written assistant answer in each provider's own shape (a protocol layer: no I/O, no clock).

Used to answer a blocked call with `policy.block_style: message`: a normal, successful response whose assistant
text is the block message, with zero usage, streamed when a stream was asked for, so that chat tools and coding
agents show it where they show any answer (and have nothing to retry).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import orjson

from tollhouse.providers.base import Endpoint
from tollhouse.providers.family import Family

SSE = "text/event-stream; charset=utf-8"
JSON = "application/json"

# The endpoints whose answer is assistant text: the only ones a message can stand in for.
TEXT_ENDPOINTS = frozenset({Endpoint.chat, Endpoint.completions, Endpoint.responses, Endpoint.messages,
                            Endpoint.generate, Endpoint.stream_generate})


class Answer(NamedTuple):
    body: bytes
    content_type: str


class Stamp(NamedTuple):
    """What an answer is labelled with: an id suffix and the creation time (passed in: this layer has no clock)."""

    id: str
    created: int


def can_answer(family: Family, endpoint: Endpoint) -> bool:
    """Whether a message answer exists for this endpoint (chat-like endpoints of the three families)."""
    if family is Family.anthropic:
        return endpoint is Endpoint.messages
    if family is Family.gemini:
        return endpoint in (Endpoint.generate, Endpoint.stream_generate)
    return endpoint in (Endpoint.chat, Endpoint.completions, Endpoint.responses)


def message_answer(family: Family, endpoint: Endpoint, model: str | None, text: str, stream: bool, stamp: Stamp,
                   sse: bool = True) -> Answer:
    """The answer `text` from `model`, as the provider would have sent it. `sse`: Gemini's stream was asked
    for with alt=sse (otherwise it is one JSON array)."""
    name = model or "unknown"
    if family is Family.anthropic:
        return _anthropic(name, text, stream, stamp)
    if family is Family.gemini:
        return _gemini(name, text, stream or endpoint is Endpoint.stream_generate, stamp, sse)
    if endpoint is Endpoint.responses:
        return _responses(name, text, stream, stamp)
    if endpoint is Endpoint.completions:
        return _completions(name, text, stream, stamp)
    return _chat(name, text, stream, stamp)


def sse_event(obj: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(obj) + b"\n\n"


def _chat(model: str, text: str, stream: bool, stamp: Stamp) -> Answer:
    base = {"id": f"chatcmpl-tollhouse-{stamp.id}", "created": stamp.created, "model": model,
            "system_fingerprint": None}
    if not stream:
        return Answer(orjson.dumps({
            **base, "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}), JSON)
    chunk = {**base, "object": "chat.completion.chunk"}
    return Answer(b"".join((
        sse_event({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text},
                                         "logprobs": None, "finish_reason": None}]}),
        sse_event({**chunk, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]}),
        b"data: [DONE]\n\n")), SSE)


def _completions(model: str, text: str, stream: bool, stamp: Stamp) -> Answer:
    base = {"id": f"cmpl-tollhouse-{stamp.id}", "object": "text_completion", "created": stamp.created,
            "model": model}
    if not stream:
        return Answer(orjson.dumps({
            **base, "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}), JSON)
    return Answer(b"".join((
        sse_event({**base, "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": None}]}),
        sse_event({**base, "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}]}),
        b"data: [DONE]\n\n")), SSE)


def responses_message_item(item_id: str, text: str) -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def responses_item_events(item_id: str, index: int, text: str, first_seq: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """The events that stream one assistant message item of the Responses API, numbered from first_seq."""
    part = {"type": "output_text", "text": "", "annotations": []}
    done = responses_message_item(item_id, text)
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.output_item.added", {"output_index": index, "item": {**done, "status": "in_progress",
                                                                        "content": []}}),
        ("response.content_part.added", {"item_id": item_id, "output_index": index, "content_index": 0,
                                         "part": part}),
        ("response.output_text.delta", {"item_id": item_id, "output_index": index, "content_index": 0,
                                        "delta": text}),
        ("response.output_text.done", {"item_id": item_id, "output_index": index, "content_index": 0,
                                       "text": text}),
        ("response.content_part.done", {"item_id": item_id, "output_index": index, "content_index": 0,
                                        "part": {**part, "text": text}}),
        ("response.output_item.done", {"output_index": index, "item": done}),
    ]
    for seq, (name, fields) in enumerate(events, first_seq):
        yield name, {"type": name, "sequence_number": seq, **fields}


def _responses(model: str, text: str, stream: bool, stamp: Stamp) -> Answer:
    item_id = f"msg_tollhouse_{stamp.id}"
    final = {"id": f"resp_tollhouse_{stamp.id}", "object": "response", "created_at": stamp.created,
             "status": "completed", "error": None, "incomplete_details": None, "model": model,
             "output": [responses_message_item(item_id, text)], "parallel_tool_calls": True, "tools": [],
             "usage": {"input_tokens": 0, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 0,
                       "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 0}}
    if not stream:
        return Answer(orjson.dumps(final), JSON)
    started = {**final, "status": "in_progress", "output": [], "usage": None}
    parts = [sse_event({"type": "response.created", "sequence_number": 0, "response": started},
                       "response.created"),
             sse_event({"type": "response.in_progress", "sequence_number": 1, "response": started},
                       "response.in_progress")]
    parts += [sse_event(fields, name) for name, fields in responses_item_events(item_id, 0, text, 2)]
    parts.append(sse_event({"type": "response.completed", "sequence_number": 8, "response": final},
                           "response.completed"))
    return Answer(b"".join(parts), SSE)


def anthropic_text_block_events(index: int, text: str) -> bytes:
    """A text content block of a Messages stream: start, one delta, stop."""
    return b"".join((
        sse_event({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
                  "content_block_start"),
        sse_event({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}},
                  "content_block_delta"),
        sse_event({"type": "content_block_stop", "index": index}, "content_block_stop")))


def _anthropic(model: str, text: str, stream: bool, stamp: Stamp) -> Answer:
    usage = {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    message = {"id": f"msg_tollhouse_{stamp.id}", "type": "message", "role": "assistant", "model": model,
               "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
               "usage": usage}
    if not stream:
        return Answer(orjson.dumps(message), JSON)
    return Answer(b"".join((
        sse_event({"type": "message_start", "message": {**message, "content": [], "stop_reason": None}},
                  "message_start"),
        anthropic_text_block_events(0, text),
        sse_event({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                   "usage": {"output_tokens": 0}}, "message_delta"),
        sse_event({"type": "message_stop"}, "message_stop"))), SSE)


def gemini_text_chunk(text: str, model: str | None, response_id: str | None, finish: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
    if finish:
        candidate["finishReason"] = "STOP"
    out: dict[str, Any] = {"candidates": [candidate]}
    if model:
        out["modelVersion"] = model
    if response_id:
        out["responseId"] = response_id
    return out


def _gemini(model: str, text: str, stream: bool, stamp: Stamp, sse: bool) -> Answer:
    obj = gemini_text_chunk(text, model, f"tollhouse-{stamp.id}", True)
    obj["usageMetadata"] = {"promptTokenCount": 0, "candidatesTokenCount": 0, "totalTokenCount": 0}
    if not stream:
        return Answer(orjson.dumps(obj), JSON)
    if sse:
        return Answer(sse_event(obj), SSE)
    return Answer(orjson.dumps([obj]), JSON)

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
    gemini_text_chunk,
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
    """Passes a stream's bytes through, adding `notice` once as a text delta just before the stream ends:
    OpenAI chat / completions before the chunk that carries finish_reason (else before [DONE]); the Responses
    API as a message item before response.completed; Anthropic as a text block before message_delta; Gemini
    (alt=sse) before the chunk with finishReason. A stream without that point (an error) is left as it is."""

    __slots__ = ("_done", "_endpoint", "_family", "_last_index", "_notice", "_parser")

    def __init__(self, family: Family, endpoint: Endpoint, notice: str) -> None:
        self._family = family
        self._endpoint = endpoint
        self._notice = notice
        self._parser = SseParser()
        self._done = False
        self._last_index = -1  # Anthropic: the highest content block index; Responses: output index

    def feed(self, chunk: bytes) -> bytes:
        if self._done:
            return chunk
        out: list[bytes] = []
        events = self._parser.feed(chunk)
        for i, ev in enumerate(events):
            extra, replaced = self._before(ev)
            if extra:
                out.append(extra)
                self._done = True
                out.append(ev.raw if replaced is None else replaced)
                out.extend(e.raw for e in events[i + 1:])
                out.append(self._parser.pending)
                self._parser = SseParser()
                return b"".join(out)
            out.append(ev.raw)
        return b"".join(out)

    def finish(self) -> bytes:
        return b"" if self._done else self._parser.pending

    def _before(self, ev: SseEvent) -> tuple[bytes, bytes | None]:
        """What goes before `ev` (the notice if `ev` ends the answer, else nothing), and what replaces `ev`
        (None: it is sent as it came)."""
        data = ev.data
        if not data:
            return b"", None
        if self._family is Family.anthropic:
            return self._anthropic(ev), None
        if data == b"[DONE]":
            return (self._openai_chunk({}) if self._endpoint is not Endpoint.responses else b""), None
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return b"", None
        if not isinstance(obj, dict):
            return b"", None
        if self._family is Family.gemini:
            if any(c.get("finishReason") for c in _dicts(obj.get("candidates"))):
                model, rid = obj.get("modelVersion"), obj.get("responseId")
                return sse_event(gemini_text_chunk(self._notice, model if isinstance(model, str) else None,
                                                   rid if isinstance(rid, str) else None, False)), None
            return b"", None
        if self._endpoint is Endpoint.responses:
            return self._responses(ev.event or str(obj.get("type") or ""), obj)
        if any(c.get("finish_reason") for c in _dicts(obj.get("choices"))):
            return self._openai_chunk(obj), None
        return b"", None

    def _openai_chunk(self, like: dict[str, Any]) -> bytes:
        chunk: dict[str, Any] = {k: like[k] for k in ("id", "object", "created", "model") if k in like}
        if self._endpoint is Endpoint.completions:
            chunk["choices"] = [{"index": 0, "text": self._notice, "logprobs": None, "finish_reason": None}]
        else:
            chunk["choices"] = [{"index": 0, "delta": {"content": self._notice}, "logprobs": None,
                                 "finish_reason": None}]
        return sse_event(chunk)

    def _responses(self, event: str, obj: dict[str, Any]) -> tuple[bytes, bytes | None]:
        """The notice as one more message item before response.completed, which is re-sent with the item in its
        output and its sequence number moved past the item's events."""
        index = obj.get("output_index")
        if isinstance(index, int):
            self._last_index = max(self._last_index, index)
        if event != "response.completed":
            return b"", None
        seq = obj.get("sequence_number")
        first = seq if isinstance(seq, int) else 0
        events = list(responses_item_events("msg_tollhouse_notice", self._last_index + 1, self._notice, first))
        response = obj.get("response")
        if isinstance(response, dict) and isinstance(response.get("output"), list):
            response["output"].append(responses_message_item("msg_tollhouse_notice", self._notice))
        obj["sequence_number"] = first + len(events)
        return b"".join(sse_event(fields, name) for name, fields in events), sse_event(obj, "response.completed")

    def _anthropic(self, ev: SseEvent) -> bytes:
        if ev.event == "content_block_start":
            try:
                obj = orjson.loads(ev.data)
            except orjson.JSONDecodeError:
                return b""
            index = obj.get("index") if isinstance(obj, dict) else None
            if isinstance(index, int):
                self._last_index = max(self._last_index, index)
            return b""
        if ev.event == "message_delta":
            return anthropic_text_block_events(self._last_index + 1, self._notice)
        return b""


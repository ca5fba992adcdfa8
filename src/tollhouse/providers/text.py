"""The text a model answered, for enterprise capture mode: from a whole response body, or assembled from a
stream's deltas (a protocol layer: no I/O). Only generated text: tool calls, images and embeddings are not
text and are left out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson

from tollhouse.events.model import MAX_CAPTURE_CHARS
from tollhouse.providers.base import Endpoint
from tollhouse.providers.family import Family
from tollhouse.providers.sse import SseParser


def _items(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, list):
        yield from (v for v in value if isinstance(v, dict))


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _content_text(content: Any) -> str:
    """A message's content: a string, or a list of parts with text."""
    if isinstance(content, str):
        return content
    return "".join(_str(p.get("text")) for p in _items(content))


def _openai_body(endpoint: Endpoint, body: dict[str, Any]) -> str:
    if endpoint is Endpoint.responses:
        return "".join(_str(part.get("text")) for item in _items(body.get("output"))
                       for part in _items(item.get("content")) if part.get("type") == "output_text")
    out = []
    for choice in _items(body.get("choices")):
        message = choice.get("message")
        out.append(_content_text(message.get("content")) if isinstance(message, dict) else _str(choice.get("text")))
    return "".join(out)


def _openai_delta(endpoint: Endpoint, event: str, obj: dict[str, Any]) -> str:
    if endpoint is Endpoint.responses:
        return _str(obj.get("delta")) if (event or obj.get("type")) == "response.output_text.delta" else ""
    out = []
    for choice in _items(obj.get("choices")):
        delta = choice.get("delta")
        out.append(_content_text(delta.get("content")) if isinstance(delta, dict) else _str(choice.get("text")))
    return "".join(out)


def _anthropic_body(endpoint: Endpoint, body: dict[str, Any]) -> str:
    return "".join(_str(block.get("text")) for block in _items(body.get("content")) if block.get("type") == "text")


def _anthropic_delta(endpoint: Endpoint, event: str, obj: dict[str, Any]) -> str:
    delta = obj.get("delta")
    if obj.get("type") != "content_block_delta" or not isinstance(delta, dict) or delta.get("type") != "text_delta":
        return ""
    return _str(delta.get("text"))


def _gemini_body(endpoint: Endpoint, body: dict[str, Any]) -> str:
    return "".join(_str(part.get("text")) for cand in _items(body.get("candidates"))
                   if isinstance(cand.get("content"), dict) for part in _items(cand["content"].get("parts")))


def _gemini_delta(endpoint: Endpoint, event: str, obj: dict[str, Any]) -> str:
    return _gemini_body(endpoint, obj)  # each streamed chunk is a response of its own


_BODY: dict[Family, Callable[[Endpoint, dict[str, Any]], str]] = {
    Family.openai: _openai_body, Family.anthropic: _anthropic_body, Family.gemini: _gemini_body}
_DELTA: dict[Family, Callable[[Endpoint, str, dict[str, Any]], str]] = {
    Family.openai: _openai_delta, Family.anthropic: _anthropic_delta, Family.gemini: _gemini_delta}


def response_text(family: Family, endpoint: Endpoint, body: Any) -> str:
    """The generated text of a whole (parsed) response body; a Gemini stream read whole is a list of them."""
    if isinstance(body, list):
        return "".join(response_text(family, endpoint, item) for item in body)
    if not isinstance(body, dict):
        return ""
    return _BODY[family](endpoint, body)[:MAX_CAPTURE_CHARS]


class StreamText:
    """Assembles a streamed response's text from its SSE deltas (or, for Gemini without alt=sse, from the
    streamed JSON array read whole at the end). Keeps at most MAX_CAPTURE_CHARS of text."""

    __slots__ = ("_array", "_endpoint", "_family", "_mode", "_parser", "_parts", "_size")

    def __init__(self, family: Family, endpoint: Endpoint) -> None:
        self._family = family
        self._endpoint = endpoint
        self._parser = SseParser()
        self._parts: list[str] = []
        self._size = 0
        self._array: list[bytes] = []
        self._mode = ""

    def feed(self, chunk: bytes) -> None:
        if self._size >= MAX_CAPTURE_CHARS:
            return
        if not self._mode:
            head = chunk.lstrip()
            if not head:
                return
            self._mode = "array" if head[:1] == b"[" else "sse"
        if self._mode == "array":
            self._array.append(chunk)
            self._size += len(chunk) // 4  # bounds what is kept: about four bytes of JSON per character
            return
        for ev in self._parser.feed(chunk):
            if not ev.data or ev.data == b"[DONE]":
                continue
            try:
                obj = orjson.loads(ev.data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict) and (text := _DELTA[self._family](self._endpoint, ev.event, obj)):
                self._parts.append(text)
                self._size += len(text)

    def text(self) -> str:
        if self._mode == "array":
            try:
                return response_text(self._family, self._endpoint, orjson.loads(b"".join(self._array)))
            except orjson.JSONDecodeError:
                return ""
        return "".join(self._parts)[:MAX_CAPTURE_CHARS]

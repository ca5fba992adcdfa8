"""Anthropic Messages wire protocol."""

from __future__ import annotations

from typing import Any

import orjson

from tollhouse.providers import lenient
from tollhouse.providers.base import Endpoint, RequestFacts, bearer
from tollhouse.providers.sse import SseParser
from tollhouse.providers.usage import Usage, as_int


class AnthropicProtocol:
    def facts(self, endpoint: Endpoint, path: str, query: dict[str, str], body: dict[str, Any]) -> RequestFacts:
        if endpoint is Endpoint.message_batches:
            return _batch_facts(body)
        model = body.get("model")
        limit_key = "max_tokens_to_sample" if endpoint is Endpoint.complete else "max_tokens"
        return RequestFacts(
            model=model if isinstance(model, str) and model else None,
            stream=body.get("stream") is True,
            max_output_tokens=lenient.first_count(body, limit_key),
        )

    def prepare(self, endpoint: Endpoint, body: dict[str, Any]) -> bool:
        return False  # Anthropic streams always report usage.

    def usage(self, endpoint: Endpoint, body: Any) -> tuple[Usage | None, str | None]:
        if not isinstance(body, dict):
            return None, None
        model = body.get("model")
        return usage_from(body.get("usage")), model if isinstance(model, str) else None

    def stream_meter(self, endpoint: Endpoint, hide_usage: bool) -> AnthropicStreamMeter:
        return AnthropicStreamMeter()

    def client_key(self, headers: Any, query: dict[str, str]) -> str | None:
        key = headers.get("x-api-key")
        return key if isinstance(key, str) and key else bearer(headers)

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"x-api-key": key}

    def auth_header_names(self) -> tuple[str, ...]:
        return ("x-api-key", "Authorization")

    def error_body(self, status: int, message: str, code: str, extra: dict[str, Any]) -> dict[str, Any]:
        err: dict[str, Any] = {"type": extra.pop("type", _error_type(status)), "message": message, "code": code}
        err.update(extra)
        return {"type": "error", "error": err}


def _batch_facts(body: dict[str, Any]) -> RequestFacts:
    """A message batch: every request's model; worst case = choices (the request count) x max_output_tokens
    (the largest request's limit, None if any request's is unreadable) at the priciest of batch_models."""
    requests = body.get("requests")
    models: dict[str, None] = {}
    limits: list[int | None] = []
    for item in requests if isinstance(requests, list) else ():
        params = item.get("params") if isinstance(item, dict) else None
        if not isinstance(params, dict):
            limits.append(None)
            continue
        model = params.get("model")
        if isinstance(model, str) and model:
            models[model] = None
        limits.append(lenient.first_count(params, "max_tokens"))
    known = [n for n in limits if n is not None]
    return RequestFacts(model=None, stream=False,
                        max_output_tokens=max(known) if known and len(known) == len(limits) else None,
                        choices=max(len(limits), 1), batch_models=tuple(models))


def _error_type(status: int) -> str:
    return {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        529: "overloaded_error",
    }.get(status, "api_error")


def usage_from(raw: Any, base: Usage | None = None) -> Usage | None:
    """Anthropic's input_tokens exclude cached tokens; ours include them."""
    if not isinstance(raw, dict):
        return base
    b = base or Usage()
    read = as_int(raw["cache_read_input_tokens"]) if "cache_read_input_tokens" in raw else b.cache_read_tokens
    write = (as_int(raw["cache_creation_input_tokens"]) if "cache_creation_input_tokens" in raw
             else b.cache_write_tokens)
    fresh = as_int(raw["input_tokens"]) if "input_tokens" in raw else b.input_tokens - b.cache_read_tokens - \
        b.cache_write_tokens
    out = as_int(raw["output_tokens"]) if "output_tokens" in raw else b.output_tokens
    return Usage(input_tokens=fresh + read + write, output_tokens=out, cache_read_tokens=read,
                 cache_write_tokens=write)


class AnthropicStreamMeter:
    """`message_start` carries input usage; `message_delta` carries cumulative output usage."""

    __slots__ = ("_parser", "delta_events", "model", "usage")

    def __init__(self) -> None:
        self._parser = SseParser()
        self.usage: Usage | None = None
        self.model: str | None = None
        self.delta_events = 0

    def feed(self, chunk: bytes) -> bytes:
        for ev in self._parser.feed(chunk):
            if ev.event == "content_block_delta":
                self.delta_events += 1
            elif ev.event in ("message_start", "message_delta"):
                self._read(ev.event, ev.data)
        return chunk

    def finish(self) -> bytes:
        return b""

    def _read(self, event: str, data: bytes) -> None:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(obj, dict):
            return
        if event == "message_start":
            msg = obj.get("message")
            if isinstance(msg, dict):
                if isinstance(msg.get("model"), str):
                    self.model = msg["model"]
                self.usage = usage_from(msg.get("usage"), self.usage)
        else:
            self.usage = usage_from(obj.get("usage"), self.usage)

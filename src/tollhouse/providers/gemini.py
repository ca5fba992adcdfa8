"""Gemini (Generative Language API) wire protocol."""

from __future__ import annotations

from typing import Any

import orjson

from tollhouse.providers import lenient
from tollhouse.providers.base import Endpoint, RequestFacts
from tollhouse.providers.sse import SseParser
from tollhouse.providers.usage import Usage, as_int

_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

# Without alt=sse the stream is one JSON array sent in pieces; keep at most this much to read usage.
_MAX_ARRAY_BYTES = 8 * 1024 * 1024


class GeminiProtocol:
    def facts(self, endpoint: Endpoint, path: str, query: dict[str, str], body: dict[str, Any]) -> RequestFacts:
        """Proto3 JSON: every field may come in lowerCamelCase or as its proto name (snake_case)."""
        last = path.rsplit("/", 1)[-1]
        name = last.rpartition(":")[0] if ":" in last else None
        if endpoint is Endpoint.cached_contents:
            model = body.get("model")
            name = model.removeprefix("models/") if isinstance(model, str) else None
        if endpoint is Endpoint.batch_generate:
            return _batch_facts(name, body)
        if endpoint is Endpoint.predict:  # Imagen, Veo: sampleCount images or videos
            return RequestFacts(model=name or None, stream=False, max_output_tokens=None,
                                choices=lenient.choices(_field(body, "parameters"), "sampleCount", "sample_count"))
        config = _field(body, "generationConfig")
        return RequestFacts(
            model=name or None, stream=endpoint is Endpoint.stream_generate,
            max_output_tokens=lenient.first_count(config, "maxOutputTokens", "max_output_tokens"),
            choices=lenient.choices(config, "candidateCount", "candidate_count"))

    def prepare(self, endpoint: Endpoint, body: dict[str, Any]) -> bool:
        return False

    def usage(self, endpoint: Endpoint, body: Any) -> tuple[Usage | None, str | None]:
        if isinstance(body, list):  # a non-SSE stream, read whole
            usage: Usage | None = None
            model: str | None = None
            for item in body:
                u, m = self.usage(Endpoint.generate, item)
                usage = u or usage
                model = m or model
            return usage, model
        if not isinstance(body, dict):
            return None, None
        model = body.get("modelVersion")
        return usage_from(body.get("usageMetadata")), model if isinstance(model, str) else None

    def stream_meter(self, endpoint: Endpoint, hide_usage: bool) -> GeminiStreamMeter:
        return GeminiStreamMeter(self)

    def client_key(self, headers: Any, query: dict[str, str]) -> str | None:
        key = headers.get("x-goog-api-key")
        if isinstance(key, str) and key:
            return key
        return query.get("key") or None

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"x-goog-api-key": key}

    def auth_header_names(self) -> tuple[str, ...]:
        return ("x-goog-api-key", "Authorization")

    def error_body(self, status: int, message: str, code: str, extra: dict[str, Any]) -> dict[str, Any]:
        extra.pop("type", None)
        err: dict[str, Any] = {"code": status, "message": message, "status": _STATUS.get(status, "INTERNAL"),
                               "reason": code}
        err.update(extra)
        return {"error": err}


def _field(obj: dict[str, Any], camel: str) -> dict[str, Any]:
    """A sub-object by its JSON name or its proto (snake_case) name; {} if absent or not an object."""
    found = obj.get(camel)
    if found is None:
        found = obj.get("".join(f"_{c.lower()}" if c.isupper() else c for c in camel))
    return found if isinstance(found, dict) else {}


def _batch_facts(model: str | None, body: dict[str, Any]) -> RequestFacts:
    """batchGenerateContent with inline requests: choices = requests x candidates, max_output_tokens = the
    largest request's limit (None if any is unreadable or unset). A batch from a file names no count."""
    requests = _field(_field(_field(body, "batch"), "inputConfig"), "requests").get("requests")
    if not isinstance(requests, list) or not requests:
        return RequestFacts(model=model or None, stream=False, max_output_tokens=None)
    limits: list[int | None] = []
    candidates = 1
    for item in requests:
        request = _field(item, "request") if isinstance(item, dict) else {}
        config = _field(request, "generationConfig")
        limits.append(lenient.first_count(config, "maxOutputTokens", "max_output_tokens"))
        candidates = max(candidates, lenient.choices(config, "candidateCount", "candidate_count"))
    known = [n for n in limits if n is not None]
    return RequestFacts(model=model or None, stream=False,
                        max_output_tokens=max(known) if len(known) == len(limits) else None,
                        choices=len(requests) * candidates)


def usage_from(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    return Usage(
        input_tokens=as_int(raw.get("promptTokenCount")),
        output_tokens=as_int(raw.get("candidatesTokenCount")) + as_int(raw.get("thoughtsTokenCount")),
        cache_read_tokens=as_int(raw.get("cachedContentTokenCount")),
    )


class GeminiStreamMeter:
    """SSE (alt=sse): each chunk carries cumulative usageMetadata. Otherwise a streamed JSON array."""

    __slots__ = ("_array", "_kept", "_mode", "_parser", "_proto", "_tail", "delta_events", "model", "usage")

    def __init__(self, proto: GeminiProtocol) -> None:
        self._proto = proto
        self._parser = SseParser()
        self._array: list[bytes] = []
        self._kept = 0
        self._tail = b""
        self._mode = ""
        self.usage: Usage | None = None
        self.model: str | None = None
        self.delta_events = 0

    def feed(self, chunk: bytes) -> bytes:
        if not self._mode:
            head = chunk.lstrip()
            if not head:
                return chunk
            self._mode = "array" if head[:1] == b"[" else "sse"
        if self._mode == "array":
            # Count array items as they complete (a key split across chunks must not be missed):
            # keep a short tail of the previous chunk to search across the boundary.
            joined = self._tail + chunk
            self.delta_events += joined.count(b'"candidates"') - self._tail.count(b'"candidates"')
            self._tail = joined[-16:]
            if self._kept < _MAX_ARRAY_BYTES:
                self._array.append(chunk)
                self._kept += len(chunk)
            return chunk
        for ev in self._parser.feed(chunk):
            if not ev.data:
                continue
            self.delta_events += 1
            if b"usageMetadata" not in ev.data and self.model is not None:
                continue
            try:
                obj = orjson.loads(ev.data)
            except orjson.JSONDecodeError:
                continue
            usage, model = self._proto.usage(Endpoint.generate, obj)
            self.usage = usage or self.usage
            self.model = model or self.model
        return chunk

    def finish(self) -> bytes:
        if self._mode == "array" and self._array:
            try:
                obj = orjson.loads(b"".join(self._array))
            except orjson.JSONDecodeError:
                return b""
            usage, model = self._proto.usage(Endpoint.stream_generate, obj)
            self.usage = usage or self.usage
            self.model = model or self.model
        return b""

"""OpenAI wire protocol (and every OpenAI-compatible provider: Azure, Mistral, Groq, vLLM, ...)."""

from __future__ import annotations

from typing import Any

import orjson

from tollhouse.providers import lenient
from tollhouse.providers.base import Endpoint, RequestFacts, bearer
from tollhouse.providers.sse import SseParser
from tollhouse.providers.usage import Usage, as_int

_USAGE_NULL = b',"usage":null'

# Where each endpoint takes its output limit (chat: the newer name and the deprecated one; a server may
# honour either, so the larger counts).
_MAX_OUTPUT_KEYS: dict[Endpoint, tuple[str, ...]] = {
    Endpoint.chat: ("max_completion_tokens", "max_tokens"),
    Endpoint.completions: ("max_tokens",),
    Endpoint.responses: ("max_output_tokens",),
    Endpoint.assistants_run: ("max_completion_tokens",),
}
# How many completions one call generates: legacy completions generate best_of and return n.
_CHOICE_KEYS: dict[Endpoint, tuple[str, ...]] = {
    Endpoint.chat: ("n",),
    Endpoint.completions: ("n", "best_of"),
    Endpoint.images: ("n",),
}
_NO_STREAM = frozenset({Endpoint.embeddings, Endpoint.batches, Endpoint.fine_tuning})
# Requests that name no model of their own (a batch's models are in its input file).
_NO_MODEL = frozenset({Endpoint.batches, Endpoint.containers, Endpoint.evals})
_IMAGES, _RESPONSES = Endpoint.images, Endpoint.responses  # module globals: cheaper than enum member reads


class OpenAIProtocol:
    def facts(self, endpoint: Endpoint, path: str, query: dict[str, str], body: dict[str, Any]) -> RequestFacts:
        """Read from the JSON body, or from the fields of a multipart form given as a dict of strings."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            model = _azure_deployment(path)
        if endpoint is _IMAGES and model is None and "generations" in path:
            model = "dall-e-2"  # what the API uses when none is named
        max_out = lenient.first_count(body, *_MAX_OUTPUT_KEYS.get(endpoint, ()))
        stream = body.get("stream") is True and endpoint not in _NO_STREAM
        size = body.get("size")
        return RequestFacts(  # positional (a keyword call costs twice as much; this runs for every call)
            None if endpoint in _NO_MODEL else model,  # model
            stream,
            max_out,  # max_output_tokens
            lenient.choices(body, *_CHOICE_KEYS.get(endpoint, ())),  # choices
            endpoint is _RESPONSES and lenient.flag(body.get("background")),  # background
            size if isinstance(size, str) and endpoint in (Endpoint.images, Endpoint.videos) else None,  # size
        )

    def prepare(self, endpoint: Endpoint, body: dict[str, Any]) -> bool:
        """Streams of chat and legacy completions report usage only if asked: ask."""
        if endpoint not in (Endpoint.chat, Endpoint.completions) or body.get("stream") is not True:
            return False
        opts = body.get("stream_options")
        if isinstance(opts, dict) and opts.get("include_usage") is True:
            return False
        new_opts = dict(opts) if isinstance(opts, dict) else {}
        new_opts["include_usage"] = True
        body["stream_options"] = new_opts
        return True

    def usage(self, endpoint: Endpoint, body: Any) -> tuple[Usage | None, str | None]:
        if not isinstance(body, dict):
            return None, None
        model = body.get("model")
        return _usage(body.get("usage"), endpoint), model if isinstance(model, str) else None

    def stream_meter(self, endpoint: Endpoint, hide_usage: bool) -> OpenAIStreamMeter:
        return OpenAIStreamMeter(endpoint, hide_usage)

    def client_key(self, headers: Any, query: dict[str, str]) -> str | None:
        return bearer(headers) or headers.get("api-key") or None

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def auth_header_names(self) -> tuple[str, ...]:
        return ("Authorization", "api-key")

    def error_body(self, status: int, message: str, code: str, extra: dict[str, Any]) -> dict[str, Any]:
        err: dict[str, Any] = {"message": message, "type": extra.pop("type", "tollhouse_error"),
                               "param": None, "code": code}
        err.update(extra)
        return {"error": err}


def _azure_deployment(path: str) -> str | None:
    parts = path.split("/")
    if "deployments" in parts:
        i = parts.index("deployments")
        if i + 1 < len(parts) and parts[i + 1]:
            return parts[i + 1]
    return None


def _usage(raw: Any, endpoint: Endpoint) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    if endpoint is _RESPONSES:
        details = raw.get("input_tokens_details")
        cached = as_int(details.get("cached_tokens")) if isinstance(details, dict) else 0
        return Usage(input_tokens=as_int(raw.get("input_tokens")), output_tokens=as_int(raw.get("output_tokens")),
                     cache_read_tokens=cached)
    details = raw.get("prompt_tokens_details")
    cached = as_int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return Usage(as_int(raw.get("prompt_tokens")), as_int(raw.get("completion_tokens")), cached)  # positional: cheaper


class OpenAIStreamMeter:
    """Chat/completions: usage arrives in a last chunk with no choices (only if asked).
    Responses: usage arrives in `response.completed`."""

    __slots__ = ("_endpoint", "_hide", "_parser", "delta_events", "model", "usage")

    def __init__(self, endpoint: Endpoint, hide_usage: bool) -> None:
        self._endpoint = endpoint
        self._hide = hide_usage
        self._parser = SseParser()
        self.usage: Usage | None = None
        self.model: str | None = None
        self.delta_events = 0

    def feed(self, chunk: bytes) -> bytes:
        events = self._parser.feed(chunk)
        if not self._hide:
            for ev in events:
                self._observe(ev.event, ev.data)
            return chunk
        out: list[bytes] = []
        for ev in events:
            if self._observe(ev.event, ev.data):
                continue  # the usage chunk we asked for on the client's behalf
            out.append(ev.raw.replace(_USAGE_NULL, b"") if _USAGE_NULL in ev.raw else ev.raw)
        return b"".join(out)

    def finish(self) -> bytes:
        return self._parser.pending if self._hide else b""

    def _observe(self, event: str, data: bytes) -> bool:
        """Read one event; True if it is a usage-only chunk."""
        if not data or data == b"[DONE]":
            return False
        if self._endpoint is Endpoint.responses:
            if event == "response.output_text.delta":
                self.delta_events += 1
                return False
            if event in ("response.completed", "response.incomplete", "response.failed") or (
                not event and b'"response.completed"' in data
            ):
                try:
                    obj = orjson.loads(data)
                except orjson.JSONDecodeError:
                    return False
                resp = obj.get("response") if isinstance(obj, dict) else None
                if isinstance(resp, dict):
                    self.usage = _usage(resp.get("usage"), self._endpoint) or self.usage
                    if isinstance(resp.get("model"), str):
                        self.model = resp["model"]
            return False
        self.delta_events += 1
        if b'"usage"' not in data or (_USAGE_NULL in data and b'"choices":[]' not in data):
            if self.model is None:
                self._read_model(data)
            return False
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(obj, dict):
            return False
        if isinstance(obj.get("model"), str):
            self.model = obj["model"]
        found = _usage(obj.get("usage"), self._endpoint)
        if found is None:
            return False
        self.usage = found
        choices = obj.get("choices")
        return isinstance(choices, list) and not choices

    def _read_model(self, data: bytes) -> None:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if isinstance(obj, dict) and isinstance(obj.get("model"), str):
            self.model = obj["model"]

"""A local fake of the OpenAI, Anthropic and Gemini HTTP APIs.

One aiohttp application serves all three API families from the same origin, so a
gateway under test can point every upstream at it:

* OpenAI: ``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
  ``/v1/responses`` (``"background": true`` answers ``status: "queued"`` with ``usage: null``, as
  OpenAI does), ``GET /v1/models`` and the Azure-style
  ``POST /openai/deployments/{deployment}/{chat/completions,completions,embeddings}``.
* Anthropic: ``POST /v1/messages``.
* Gemini: ``POST /v1beta/models/{model}:generateContent`` and
  ``:streamGenerateContent`` (SSE with ``?alt=sse``, else a streamed JSON array);
  the same under ``/v1/models/...``.

Token accounting is deterministic (see :func:`count_tokens`): the reply is made of
``N`` "lorem ipsum" words, one word per stream chunk, and reports ``N`` output
tokens, where ``N`` is the smallest of the request's max-tokens field, the
``X-Mock-Output-Tokens`` header (or :attr:`MockSettings.output_tokens`).

Per-request control headers:

``X-Mock-Fault``
    ``400``/``429``/``500`` (any 4xx/5xx status): a provider-shaped error of the
    endpoint's family (429 carries ``retry-after: 1``); ``disconnect``: close the
    connection without a response; ``stall-stream``: send the first 3 stream
    chunks, then nothing until the client goes away; ``cut-stream``: send 3 stream
    chunks, then close the connection mid-body; ``malformed``: a 200 whose body is
    ``not json``. On a non-streaming request ``stall-stream`` withholds the whole
    response and ``cut-stream`` behaves like ``disconnect``.
``X-Mock-Latency-Ms``
    Overrides :attr:`MockSettings.latency_ms` (delay before the response headers).
``X-Mock-Output-Tokens``
    Overrides :attr:`MockSettings.output_tokens` (still capped by max-tokens).

``app[MOCK_STATS]`` counts requests per route and keeps the last request's
method, path, headers and JSON body, so tests can check what the upstream saw.
Nothing else is recorded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import orjson
from aiohttp import web
from multidict import CIMultiDict

__all__ = [
    "FAULT_HEADER",
    "LATENCY_HEADER",
    "MOCK_STATS",
    "OUTPUT_TOKENS_HEADER",
    "MockSettings",
    "MockStats",
    "build_mock_app",
    "count_tokens",
    "run_mock_provider",
]

log = logging.getLogger(__name__)

Family = Literal["openai", "anthropic", "gemini"]
Json = dict[str, Any]

FAULT_HEADER = "X-Mock-Fault"
LATENCY_HEADER = "X-Mock-Latency-Ms"
OUTPUT_TOKENS_HEADER = "X-Mock-Output-Tokens"

_STREAM_FAULT_AFTER = 3  # stream chunks sent before a stall-stream / cut-stream fault
_CLIENT_POLL_S = 0.05
_FINGERPRINT = "fp_mock"
_EMBEDDING_DIMENSIONS = 8
_SSE_HEADERS: Mapping[str, str] = MappingProxyType(
    {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
)
_LOREM = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore"
_WORDS = tuple(_LOREM.split())
_MODELS = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1-mini",
    "o3-mini",
    "text-embedding-3-small",
    "gpt-3.5-turbo-instruct",
)
_STREAM_FAULTS = frozenset({"stall-stream", "cut-stream"})
_NAMED_FAULTS = frozenset({"disconnect", "malformed"}) | _STREAM_FAULTS

_OPENAI_ERROR_TYPES: Mapping[int, str] = MappingProxyType(
    {
        400: "invalid_request_error",
        401: "invalid_request_error",
        403: "permission_error",
        404: "invalid_request_error",
        429: "requests",
    }
)
_ANTHROPIC_ERROR_TYPES: Mapping[int, str] = MappingProxyType(
    {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        529: "overloaded_error",
    }
)
_GEMINI_STATUSES: Mapping[int, str] = MappingProxyType(
    {
        400: "INVALID_ARGUMENT",
        401: "UNAUTHENTICATED",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        409: "ABORTED",
        429: "RESOURCE_EXHAUSTED",
        499: "CANCELLED",
        500: "INTERNAL",
        501: "NOT_IMPLEMENTED",
        503: "UNAVAILABLE",
        504: "DEADLINE_EXCEEDED",
    }
)


# --------------------------------------------------------------------------- settings & stats


@dataclass(frozen=True)
class MockSettings:
    """Behaviour of the mock provider; per-request headers can override some fields."""

    latency_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    output_tokens: int = 16
    error_rate: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.latency_ms < 0 or self.chunk_delay_ms < 0:
            raise ValueError("latency_ms and chunk_delay_ms must be >= 0")
        if self.output_tokens < 0:
            raise ValueError("output_tokens must be >= 0")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be between 0 and 1")


@dataclass
class MockStats:
    """Bounded record of traffic: a counter per route template plus the last request."""

    total: int = 0
    by_path: dict[str, int] = field(default_factory=dict)
    last_method: str | None = None
    last_path: str | None = None
    last_headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    last_body: Any = None

    def record(self, route: str, request: web.Request) -> None:
        self.total += 1
        self.by_path[route] = self.by_path.get(route, 0) + 1
        self.last_method = request.method
        self.last_path = request.path_qs
        self.last_headers = CIMultiDict(request.headers)
        self.last_body = None

    def reset(self) -> None:
        self.total = 0
        self.by_path.clear()
        self.last_method = None
        self.last_path = None
        self.last_headers = CIMultiDict()
        self.last_body = None


MOCK_STATS: web.AppKey[MockStats] = web.AppKey("tollhouse_mock_stats", MockStats)
_SETTINGS: web.AppKey[MockSettings] = web.AppKey("tollhouse_mock_settings", MockSettings)
_RNG: web.AppKey[random.Random] = web.AppKey("tollhouse_mock_rng", random.Random)
_CLOSING: web.AppKey[asyncio.Event] = web.AppKey("tollhouse_mock_closing", asyncio.Event)


# --------------------------------------------------------------------------- token accounting


def count_tokens(text: str) -> int:
    """Deterministic stand-in tokenizer: whitespace-separated words, at least 1 for non-empty text."""
    if not text:
        return 0
    return max(1, len(text.split()))


def _reply_words(n: int) -> list[str]:
    return [_WORDS[i % len(_WORDS)] for i in range(n)]


def _pieces(words: list[str]) -> list[str]:
    """Stream pieces whose concatenation is ``" ".join(words)``: one word per piece."""
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


def _tokens_of_prompt(value: Any) -> int:
    """Tokens of an OpenAI ``prompt``/``input`` value: str, list of str, token ids or lists of ids."""
    if isinstance(value, str):
        return count_tokens(value)
    if isinstance(value, list):
        if all(isinstance(item, int) for item in value):
            return len(value)
        return sum(_tokens_of_prompt(item) for item in value)
    return 0


def _content_texts(content: Any) -> Iterator[str]:
    """Texts in a message ``content``: a string, or a list of parts with ``text`` (or nested content)."""
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                yield part
            elif isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    yield part["text"]
                if "content" in part:  # Anthropic tool_result blocks
                    yield from _content_texts(part["content"])


def _sum_tokens(texts: Iterable[str]) -> int:
    return sum(count_tokens(text) for text in texts)


# --------------------------------------------------------------------------- request plumbing


class _BadRequest(Exception):
    """Raised by body readers; answered as a 400 in the endpoint's family shape."""


def _require_list(body: Json, key: str) -> list[Any]:
    value = body.get(key)
    if value is None:
        raise _BadRequest(f"Missing required parameter: '{key}'.")
    if not isinstance(value, list):
        raise _BadRequest(f"Invalid type for '{key}': expected an array.")
    return value


def _require_model(body: Json) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("Missing required parameter: 'model'.")
    return model


def _int_field(container: Any, *keys: str) -> int | None:
    if not isinstance(container, dict):
        return None
    for key in keys:
        value = container.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _BadRequest(f"Invalid '{key}': expected a non-negative integer.")
        return value
    return None


def _parse_body(raw: bytes) -> tuple[Json, str | None]:
    if not raw.strip():
        return {}, "Request body is empty; expected a JSON object."
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return {}, f"Could not parse the JSON body of your request: {exc}."
    if not isinstance(body, dict):
        return {}, "Request body must be a JSON object."
    return body, None


def _parse_fault(value: str | None) -> int | str | None:
    if value is None or not value.strip():
        return None
    fault = value.strip().lower()
    if fault in _NAMED_FAULTS:
        return fault
    if fault.isdigit() and 400 <= int(fault) <= 599:
        return int(fault)
    raise _BadRequest(f"Unknown {FAULT_HEADER} value {value!r}.")


def _header_number(request: web.Request, name: str) -> float | None:
    value = request.headers.get(name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        raise _BadRequest(f"Invalid {name} header: {value!r}.") from None
    if number < 0:
        raise _BadRequest(f"Invalid {name} header: {value!r}.")
    return number


@dataclass(frozen=True)
class _Call:
    """One metered request, after faults and parsing were handled."""

    request: web.Request
    family: Family
    body: Json
    settings: MockSettings
    fault: int | str | None
    default_output_tokens: int
    created: int

    @property
    def chunk_delay_s(self) -> float:
        return self.settings.chunk_delay_ms / 1000.0

    def output(self, limit: int | None) -> tuple[list[str], bool]:
        """The reply words and whether the request's own token limit cut them short."""
        n = self.default_output_tokens if limit is None else min(limit, self.default_output_tokens)
        return _reply_words(n), limit is not None and limit < self.default_output_tokens


def _new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex}"


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def _json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=_dumps(obj), status=status, content_type="application/json", headers=headers)


def _error_body(family: Family, status: int, message: str) -> Json:
    if family == "anthropic":
        kind = _ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    if family == "gemini":
        grpc_status = _GEMINI_STATUSES.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
        return {"error": {"code": status, "message": message, "status": grpc_status}}
    kind = _OPENAI_ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    code = {429: "rate_limit_exceeded", 401: "invalid_api_key"}.get(status)
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _default_error_message(status: int) -> str:
    if status == 429:
        return "Rate limit reached (mock provider). Please try again in 1s."
    if status >= 500:
        return "The server had an error while processing your request (mock provider)."
    return f"Mock provider fault: HTTP {status}."


def _error(family: Family, status: int, message: str | None = None) -> web.Response:
    headers = {"x-request-id": _new_id("req_")}
    if status == 429:
        headers["retry-after"] = "1"
    body = _error_body(family, status, message or _default_error_message(status))
    return _json_response(body, status=status, headers=headers)


def _drop_connection(request: web.Request) -> web.StreamResponse:
    """Close the client connection; aiohttp then fails to write the returned response and ignores it."""
    transport = request.transport
    if transport is not None:
        transport.close()
    return web.Response()


async def _wait_until_client_gone(request: web.Request) -> None:
    closing = request.app[_CLOSING]
    while not closing.is_set():
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(closing.wait(), _CLIENT_POLL_S)


async def _respond(call: _Call, obj: Json) -> web.StreamResponse:
    """A non-streaming 200 answer, honouring stream faults as 'withhold' / 'drop'."""
    if call.fault == "stall-stream":
        await _wait_until_client_gone(call.request)
        return _drop_connection(call.request)
    if call.fault == "cut-stream":
        return _drop_connection(call.request)
    return _json_response(obj, headers={"x-request-id": _new_id("req_")})


async def _stream(
    call: _Call, frames: Iterable[bytes], content_type: str | None = None
) -> web.StreamResponse:
    """Write ``frames`` as a streamed body, with chunk delays and stream faults."""
    headers = dict(_SSE_HEADERS)
    if content_type is not None:
        headers["Content-Type"] = content_type
    headers["x-request-id"] = _new_id("req_")
    response = web.StreamResponse(headers=headers)
    request = call.request
    try:
        await response.prepare(request)
        for index, frame in enumerate(frames):
            if index == _STREAM_FAULT_AFTER and call.fault in _STREAM_FAULTS:
                if call.fault == "stall-stream":
                    await _wait_until_client_gone(request)
                _drop_connection(request)
                return response  # aiohttp's final write_eof() hits the closed transport and gives up
            if index and call.chunk_delay_s > 0:
                await asyncio.sleep(call.chunk_delay_s)
            await response.write(frame)
        await response.write_eof()
    except ConnectionError:
        log.debug("mock provider: client went away mid-stream")
    return response


def _sse(obj: Any, event: str | None = None) -> bytes:
    data = b"data: " + _dumps(obj) + b"\n\n"
    return data if event is None else b"event: " + event.encode() + b"\n" + data


Endpoint = Callable[[_Call], Awaitable[web.StreamResponse]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _endpoint(family: Family, endpoint: Endpoint, *, metered: bool = True, has_body: bool = True) -> Handler:
    """Wrap an endpoint with the shared steps: latency, faults, body parsing and the error rate."""

    async def handle(request: web.Request) -> web.StreamResponse:
        app = request.app
        settings = app[_SETTINGS]
        body: Json = {}
        problem: str | None = None
        if has_body:
            body, problem = _parse_body(await request.read())
            if problem is None:
                app[MOCK_STATS].last_body = body
        try:
            fault = _parse_fault(request.headers.get(FAULT_HEADER))
            latency_ms = _header_number(request, LATENCY_HEADER)
            output_override = _header_number(request, OUTPUT_TOKENS_HEADER)
        except _BadRequest as exc:
            return _error(family, 400, str(exc))
        latency_s = (settings.latency_ms if latency_ms is None else latency_ms) / 1000.0
        if latency_s > 0:
            await asyncio.sleep(latency_s)
        if fault == "disconnect":
            return _drop_connection(request)
        if fault == "malformed":
            return web.Response(body=b"not json", content_type="application/json")
        if isinstance(fault, int):
            return _error(family, fault)
        if problem is not None:
            return _error(family, 400, problem)
        if metered and settings.error_rate > 0 and app[_RNG].random() < settings.error_rate:
            return _error(family, 500)
        output_tokens = settings.output_tokens if output_override is None else int(output_override)
        call = _Call(request, family, body, settings, fault, output_tokens, int(time.time()))
        try:
            return await endpoint(call)
        except _BadRequest as exc:
            return _error(family, 400, str(exc))

    return handle


# --------------------------------------------------------------------------- OpenAI


def _openai_model(call: _Call) -> str:
    deployment = call.request.match_info.get("deployment")
    return deployment if deployment is not None else _require_model(call.body)


def _include_usage(body: Json) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _openai_usage(prompt_tokens: int, completion_tokens: int) -> Json:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _chat_input_tokens(body: Json) -> int:
    messages = _require_list(body, "messages")
    return _sum_tokens(
        text for m in messages if isinstance(m, dict) for text in _content_texts(m.get("content"))
    )


async def _chat_completions(call: _Call) -> web.StreamResponse:
    body = call.body
    model = _openai_model(call)
    prompt_tokens = _chat_input_tokens(body)
    words, truncated = call.output(_int_field(body, "max_completion_tokens", "max_tokens"))
    finish = "length" if truncated else "stop"
    usage = _openai_usage(prompt_tokens, len(words))
    head = {"id": _new_id("chatcmpl-"), "object": "chat.completion", "created": call.created, "model": model}
    if body.get("stream") is True:
        return await _stream(call, _chat_frames(head, words, finish, usage, _include_usage(body)))
    message: Json = {"role": "assistant", "content": " ".join(words), "refusal": None, "annotations": []}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    return await _respond(
        call, {**head, "choices": [choice], "usage": usage, "system_fingerprint": _FINGERPRINT}
    )


def _chat_frames(
    head: Json, words: list[str], finish: str, usage: Json, include_usage: bool
) -> Iterator[bytes]:
    base = {**head, "object": "chat.completion.chunk", "system_fingerprint": _FINGERPRINT}

    def chunk(delta: Json, finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        obj = {**base, "choices": [choice]}
        if include_usage:
            obj["usage"] = None
        return _sse(obj)

    yield chunk({"role": "assistant", "content": "", "refusal": None})
    for piece in _pieces(words):
        yield chunk({"content": piece})
    yield chunk({}, finish)
    if include_usage:
        yield _sse({**base, "choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"


async def _completions(call: _Call) -> web.StreamResponse:
    body = call.body
    model = _openai_model(call)
    if "prompt" not in body:
        raise _BadRequest("Missing required parameter: 'prompt'.")
    prompt_tokens = _tokens_of_prompt(body["prompt"])
    words, truncated = call.output(_int_field(body, "max_tokens"))
    finish = "length" if truncated else "stop"
    usage = _openai_usage(prompt_tokens, len(words))
    del usage["prompt_tokens_details"], usage["completion_tokens_details"]
    head = {"id": _new_id("cmpl-"), "object": "text_completion", "created": call.created, "model": model}
    if body.get("stream") is True:
        return await _stream(call, _completion_frames(head, words, finish, usage, _include_usage(body)))
    choice = {"text": " ".join(words), "index": 0, "logprobs": None, "finish_reason": finish}
    return await _respond(
        call, {**head, "choices": [choice], "usage": usage, "system_fingerprint": _FINGERPRINT}
    )


def _completion_frames(
    head: Json, words: list[str], finish: str, usage: Json, include_usage: bool
) -> Iterator[bytes]:
    def chunk(text: str, finish_reason: str | None = None) -> bytes:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}
        obj = {**head, "choices": [choice], "system_fingerprint": _FINGERPRINT}
        if include_usage:
            obj["usage"] = None
        return _sse(obj)

    for piece in _pieces(words):
        yield chunk(piece)
    yield chunk("", finish)
    if include_usage:
        yield _sse({**head, "choices": [], "system_fingerprint": _FINGERPRINT, "usage": usage})
    yield b"data: [DONE]\n\n"


def _embedding_vector(item: Any, dimensions: int) -> list[float]:
    rng = random.Random(orjson.dumps(item))
    return [round(rng.uniform(-1.0, 1.0), 6) for _ in range(dimensions)]


async def _embeddings(call: _Call) -> web.StreamResponse:
    body = call.body
    model = _openai_model(call)
    if "input" not in body:
        raise _BadRequest("Missing required parameter: 'input'.")
    raw_input = body["input"]
    if isinstance(raw_input, str) or (
        isinstance(raw_input, list) and raw_input and all(isinstance(i, int) for i in raw_input)
    ):
        items: list[Any] = [raw_input]
    elif isinstance(raw_input, list) and raw_input:
        items = raw_input
    else:
        raise _BadRequest("Invalid 'input': expected a non-empty string or array.")
    dimensions = _int_field(body, "dimensions") or _EMBEDDING_DIMENSIONS
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(items):
        vector = _embedding_vector(item, dimensions)
        embedding: Any = (
            base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode() if as_base64 else vector
        )
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = _tokens_of_prompt(raw_input)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return await _respond(call, {"object": "list", "data": data, "model": model, "usage": usage})


def _responses_input_tokens(body: Json) -> int:
    if "input" not in body:
        raise _BadRequest("Missing required parameter: 'input'.")
    texts: list[str] = []
    if isinstance(body.get("instructions"), str):
        texts.append(body["instructions"])
    raw_input = body["input"]
    if isinstance(raw_input, str):
        texts.append(raw_input)
    elif isinstance(raw_input, list):
        for item in raw_input:
            if isinstance(item, dict):
                texts.extend(_content_texts(item.get("content")))
                if isinstance(item.get("output"), str):  # function_call_output items
                    texts.append(item["output"])
            elif isinstance(item, str):
                texts.append(item)
    else:
        raise _BadRequest("Invalid 'input': expected a string or an array of input items.")
    return _sum_tokens(texts)


def _responses_usage(input_tokens: int, output_tokens: int) -> Json:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def _response_object(
    call: _Call,
    resp_id: str,
    model: str,
    status: str,
    output: list[Json],
    usage: Json | None,
) -> Json:
    body = call.body
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    return {
        "id": resp_id,
        "object": "response",
        "created_at": call.created,
        "status": status,
        "error": None,
        "incomplete_details": incomplete,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": body.get("metadata") or {},
    }


def _output_message(msg_id: str, text: str, status: str) -> Json:
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
    return {"id": msg_id, "type": "message", "status": status, "content": [part], "role": "assistant"}


async def _responses(call: _Call) -> web.StreamResponse:
    model = _require_model(call.body)
    input_tokens = _responses_input_tokens(call.body)
    words, truncated = call.output(_int_field(call.body, "max_output_tokens"))
    status = "incomplete" if truncated else "completed"
    usage = _responses_usage(input_tokens, len(words))
    resp_id, msg_id = _new_id("resp_"), _new_id("msg_")
    if call.body.get("background") is True and call.body.get("stream") is not True:
        # Like OpenAI: queued at once, no output and no usage yet (known only when the response is polled).
        return await _respond(call, _response_object(call, resp_id, model, "queued", [], None))
    if call.body.get("stream") is True:
        return await _stream(call, _responses_frames(call, resp_id, msg_id, model, words, status, usage))
    output = [_output_message(msg_id, " ".join(words), status)]
    return await _respond(call, _response_object(call, resp_id, model, status, output, usage))


def _responses_frames(
    call: _Call, resp_id: str, msg_id: str, model: str, words: list[str], status: str, usage: Json
) -> Iterator[bytes]:
    sequence = 0

    def event(name: str, **fields: Any) -> bytes:
        nonlocal sequence
        frame = _sse({"type": name, "sequence_number": sequence, **fields}, event=name)
        sequence += 1
        return frame

    where = {"item_id": msg_id, "output_index": 0, "content_index": 0}
    in_progress = _response_object(call, resp_id, model, "in_progress", [], None)
    yield event("response.created", response=in_progress)
    yield event("response.in_progress", response=in_progress)
    item = {"id": msg_id, "type": "message", "status": "in_progress", "content": [], "role": "assistant"}
    yield event("response.output_item.added", output_index=0, item=item)
    empty_part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
    yield event("response.content_part.added", **where, part=empty_part)
    for piece in _pieces(words):
        yield event("response.output_text.delta", **where, delta=piece, logprobs=[])
    text = " ".join(words)
    yield event("response.output_text.done", **where, text=text, logprobs=[])
    yield event("response.content_part.done", **where, part={**empty_part, "text": text})
    message = _output_message(msg_id, text, status)
    yield event("response.output_item.done", output_index=0, item=message)
    final = _response_object(call, resp_id, model, status, [message], usage)
    yield event(f"response.{status}", response=final)


async def _list_models(call: _Call) -> web.StreamResponse:
    data = [
        {"id": model, "object": "model", "created": 1700000000, "owned_by": "tollhouse-mock"}
        for model in _MODELS
    ]
    return await _respond(call, {"object": "list", "data": data})


# --------------------------------------------------------------------------- Anthropic


def _anthropic_input_tokens(body: Json) -> int:
    messages = _require_list(body, "messages")
    texts = list(_content_texts(body.get("system")))
    texts.extend(text for m in messages if isinstance(m, dict) for text in _content_texts(m.get("content")))
    return _sum_tokens(texts)


async def _messages(call: _Call) -> web.StreamResponse:
    body = call.body
    model = _require_model(body)
    input_tokens = _anthropic_input_tokens(body)
    words, truncated = call.output(_int_field(body, "max_tokens"))
    stop_reason = "max_tokens" if truncated else "end_turn"
    msg_id = _new_id("msg_")
    if body.get("stream") is True:
        return await _stream(call, _messages_frames(msg_id, model, input_tokens, words, stop_reason))
    message = {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": " ".join(words)}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": len(words)},
    }
    return await _respond(call, message)


def _messages_frames(
    msg_id: str, model: str, input_tokens: int, words: list[str], stop_reason: str
) -> Iterator[bytes]:
    def event(name: str, **fields: Any) -> bytes:
        return _sse({"type": name, **fields}, event=name)

    message: Json = {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1},
    }
    yield event("message_start", message=message)
    yield event("content_block_start", index=0, content_block={"type": "text", "text": ""})
    yield event("ping")
    for piece in _pieces(words):
        yield event("content_block_delta", index=0, delta={"type": "text_delta", "text": piece})
    yield event("content_block_stop", index=0)
    delta = {"stop_reason": stop_reason, "stop_sequence": None}
    yield event("message_delta", delta=delta, usage={"output_tokens": len(words)})
    yield event("message_stop")


# --------------------------------------------------------------------------- Gemini


def _gemini_input_tokens(body: Json) -> int:
    contents = _require_list(body, "contents")
    texts: list[str] = []
    system = body.get("systemInstruction", body.get("system_instruction"))
    if isinstance(system, dict):
        texts.extend(_content_texts(system.get("parts")))
    for content in contents:
        if isinstance(content, dict):
            texts.extend(_content_texts(content.get("parts")))
    return _sum_tokens(texts)


def _gemini_limit(body: Json) -> int | None:
    config = body.get("generationConfig", body.get("generation_config"))
    return _int_field(config, "maxOutputTokens", "max_output_tokens")


def _gemini_chunk(
    text: str, finish: str | None, prompt_tokens: int, output_tokens: int, model: str, response_id: str
) -> Json:
    candidate: Json = {"content": {"parts": [{"text": text}], "role": "model"}}
    if finish is not None:
        candidate["finishReason"] = finish
    candidate["index"] = 0
    usage = {
        "promptTokenCount": prompt_tokens,
        "candidatesTokenCount": output_tokens,
        "totalTokenCount": prompt_tokens + output_tokens,
    }
    return {
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": model,
        "responseId": response_id,
    }


def _gemini_chunks(call: _Call) -> tuple[list[Json], Json]:
    """(stream chunks with cumulative usage, the equivalent non-stream response)."""
    model = call.request.match_info["model"]
    prompt_tokens = _gemini_input_tokens(call.body)
    words, truncated = call.output(_gemini_limit(call.body))
    finish = "MAX_TOKENS" if truncated else "STOP"
    response_id = uuid.uuid4().hex
    pieces = _pieces(words) or [""]
    chunks = [
        _gemini_chunk(
            piece,
            finish if i == len(pieces) - 1 else None,
            prompt_tokens,
            min(i + 1, len(words)),
            model,
            response_id,
        )
        for i, piece in enumerate(pieces)
    ]
    whole = _gemini_chunk(" ".join(words), finish, prompt_tokens, len(words), model, response_id)
    return chunks, whole


async def _generate_content(call: _Call) -> web.StreamResponse:
    _chunks, whole = _gemini_chunks(call)
    return await _respond(call, whole)


async def _stream_generate_content(call: _Call) -> web.StreamResponse:
    chunks, _whole = _gemini_chunks(call)
    if call.request.query.get("alt") == "sse":
        return await _stream(call, (_sse(chunk) for chunk in chunks))
    frames = (
        (b"[" if i == 0 else b",\r\n") + _dumps(chunk) + (b"]" if i == len(chunks) - 1 else b"")
        for i, chunk in enumerate(chunks)
    )
    return await _stream(call, frames, content_type="application/json; charset=UTF-8")


# --------------------------------------------------------------------------- application


def _route_key(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "<unmatched>"


@web.middleware
async def _record_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request.app[MOCK_STATS].record(_route_key(request), request)
    return await handler(request)


async def _on_shutdown(app: web.Application) -> None:
    app[_CLOSING].set()


def build_mock_app(settings: MockSettings) -> web.Application:
    """The mock provider application, serving all three API families from the root."""
    app = web.Application(middlewares=[_record_middleware])
    app[_SETTINGS] = settings
    app[_RNG] = random.Random(settings.seed)
    app[MOCK_STATS] = MockStats()
    app[_CLOSING] = asyncio.Event()
    app.on_shutdown.append(_on_shutdown)

    openai_routes: list[tuple[str, Endpoint]] = [
        ("chat/completions", _chat_completions),
        ("completions", _completions),
        ("embeddings", _embeddings),
    ]
    for suffix, endpoint in openai_routes:
        handler = _endpoint("openai", endpoint)
        app.router.add_post(f"/v1/{suffix}", handler)
        app.router.add_post(f"/openai/deployments/{{deployment}}/{suffix}", handler)
    app.router.add_post("/v1/responses", _endpoint("openai", _responses))
    app.router.add_get("/v1/models", _endpoint("openai", _list_models, metered=False, has_body=False))

    app.router.add_post("/v1/messages", _endpoint("anthropic", _messages))

    for version in ("v1beta", "v1"):
        app.router.add_post(
            f"/{version}/models/{{model:[^/:]+}}:generateContent", _endpoint("gemini", _generate_content)
        )
        app.router.add_post(
            f"/{version}/models/{{model:[^/:]+}}:streamGenerateContent",
            _endpoint("gemini", _stream_generate_content),
        )
    return app


async def run_mock_provider(
    host: str = "127.0.0.1", port: int = 8099, settings: MockSettings | None = None
) -> None:
    """Serve the mock provider until cancelled."""
    app = build_mock_app(settings if settings is not None else MockSettings())
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        log.info("mock provider listening on http://%s:%d", host, port)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()

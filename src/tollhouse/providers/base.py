"""What every provider family implements: a pure protocol layer (no I/O, no clock)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, NamedTuple, Protocol

from tollhouse.providers.usage import Usage


class Endpoint(StrEnum):
    # metered: model, usage and cost read from the call itself
    chat = "chat"
    completions = "completions"
    embeddings = "embeddings"
    responses = "responses"
    messages = "messages"
    generate = "generate"
    stream_generate = "stream_generate"
    # governed: can make the provider spend (see providers/classify.py)
    images = "images"
    audio_speech = "audio_speech"
    audio_transcription = "audio_transcription"
    batches = "batches"
    fine_tuning = "fine_tuning"
    realtime = "realtime"
    assistants_run = "assistants_run"
    videos = "videos"
    evals = "evals"
    containers = "containers"
    message_batches = "message_batches"
    complete = "complete"  # Anthropic's legacy text completions
    batch_generate = "batch_generate"
    cached_contents = "cached_contents"
    predict = "predict"
    embed_content = "embed_content"
    batch_embed = "batch_embed"
    answer = "answer"  # Gemini generateAnswer
    # free
    count_tokens = "count_tokens"
    moderations = "moderations"
    # free routes without a meaning of their own (lists, retrieves, deletes, cancels) and unknown ones
    passthrough = "passthrough"


class RequestFacts(NamedTuple):
    """What the gateway needs to know about a request, read from its path and JSON body. (A tuple: one is built
    per call, and a frozen dataclass's __init__ costs a setattr per field.)"""

    model: str | None
    stream: bool
    # The most output tokens the call allows itself; None when it sets none (or none readable): the model's
    # maximum is the worst case then (PriceBook.max_output_tokens, pricing.worst_output_tokens).
    max_output_tokens: int | None
    choices: int = 1  # completions generated (n, best_of, candidateCount; a batch's request count)
    background: bool = False  # Responses API background mode: usage becomes known only when polled
    size: str | None = None  # images and videos: the size asked for
    batch_models: tuple[str, ...] = ()  # the models a batch's inline requests name (model is then None)


class StreamMeter(Protocol):
    """Watches a streamed response: reads usage, and may filter what the client gets."""

    usage: Usage | None
    model: str | None
    delta_events: int

    def feed(self, chunk: bytes) -> bytes:
        """Bytes of the upstream stream in, bytes to hand the client out (usually the same)."""
        ...

    def finish(self) -> bytes:
        """The stream ended: return any held bytes for the client."""
        ...


class ProviderProtocol(Protocol):
    def facts(self, endpoint: Endpoint, path: str, query: dict[str, str], body: dict[str, Any]) -> RequestFacts:
        ...

    def prepare(self, endpoint: Endpoint, body: dict[str, Any]) -> bool:
        """Adjust the upstream body in place (e.g. ask for stream usage); True if it changed."""
        ...

    def usage(self, endpoint: Endpoint, body: Any) -> tuple[Usage | None, str | None]:
        """Usage and the model the provider reports, from a whole (non-stream) response body."""
        ...

    def stream_meter(self, endpoint: Endpoint, hide_usage: bool) -> StreamMeter: ...

    def client_key(self, headers: Any, query: dict[str, str]) -> str | None:
        """The API key the client sent, wherever this family carries it."""
        ...

    def auth_headers(self, key: str) -> dict[str, str]:
        """Headers that carry a real provider key upstream."""
        ...

    def auth_header_names(self) -> tuple[str, ...]: ...

    def error_body(self, status: int, message: str, code: str, extra: dict[str, Any]) -> dict[str, Any]: ...


def bearer(headers: Any) -> str | None:
    auth = headers.get("Authorization")
    if isinstance(auth, str) and auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return None


_TEXT_KEYS = frozenset({"content", "text", "input", "prompt", "system", "instructions", "contents", "messages",
                        "parts"})


def prompt_text(body: dict[str, Any], limit: int = 1_000_000) -> str:
    """All prompt text in a request body, any family (for content rules), joined by newlines."""
    out: list[str] = []
    size = 0
    stack: list[Any] = [v for k, v in body.items() if k in _TEXT_KEYS]
    while stack and size < limit:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            size += len(item)
        elif isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, dict):
            stack.extend(v for k, v in item.items() if k in _TEXT_KEYS)
    return "\n".join(out)

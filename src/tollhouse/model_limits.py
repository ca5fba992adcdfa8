"""The most output tokens each model can generate in one call: the worst case of a call that sets no limit.

genai-prices (the price table) carries context windows but no output limits, so the well-known models'
limits ship here, from the providers' model pages. A name matches its longest listed prefix that ends at a
'-', '@' or ':' boundary (dated and `-latest` variants share their family's limit); unlisted models give
None, and the caller falls back to `ledger.default_max_output_tokens`. `pricing.overrides[].max_output_tokens`
wins over this table (PriceBook.max_output_tokens).
"""

from __future__ import annotations

from types import MappingProxyType

MAX_OUTPUT_TOKENS = MappingProxyType({
    # OpenAI
    "gpt-3.5-turbo": 4096,
    "gpt-4": 8192,
    "gpt-4-32k": 32768,
    "gpt-4-turbo": 4096,
    "gpt-4o": 16384,
    "gpt-4o-2024-05-13": 4096,
    "gpt-4o-mini": 16384,
    "chatgpt-4o-latest": 16384,
    "gpt-4.1": 32768,
    "gpt-4.1-mini": 32768,
    "gpt-4.1-nano": 32768,
    "gpt-4.5-preview": 16384,
    "gpt-5": 128000,
    "gpt-5-mini": 128000,
    "gpt-5-nano": 128000,
    "gpt-5-chat-latest": 16384,
    "o1": 100000,
    "o1-pro": 100000,
    "o1-mini": 65536,
    "o1-preview": 32768,
    "o3": 100000,
    "o3-pro": 100000,
    "o3-mini": 100000,
    "o4-mini": 100000,
    "codex-mini-latest": 100000,
    # Anthropic (every Messages call must set max_tokens; these bound batches and legacy calls)
    "claude-3-haiku": 4096,
    "claude-3-sonnet": 4096,
    "claude-3-opus": 4096,
    "claude-3-5-haiku": 8192,
    "claude-3-5-sonnet": 8192,
    "claude-3-7-sonnet": 64000,
    "claude-sonnet-4": 64000,
    "claude-sonnet-4-5": 64000,
    "claude-opus-4": 32000,
    "claude-opus-4-1": 32000,
    "claude-opus-4-5": 64000,
    "claude-haiku-4-5": 64000,
    # Gemini
    "gemini-pro": 2048,
    "gemini-1.0-pro": 2048,
    "gemini-1.5-pro": 8192,
    "gemini-1.5-flash": 8192,
    "gemini-2.0-flash": 8192,
    "gemini-2.0-flash-lite": 8192,
    "gemini-2.5-pro": 65536,
    "gemini-2.5-flash": 65536,
    "gemini-2.5-flash-lite": 65536,
    "gemini-2.5-flash-image": 32768,
    "gemini-3-pro-preview": 65536,
})
_BOUNDARY = "-@:"


def base_model(model: str) -> str:
    """The model name without the wrappers the same model travels in: `models/` (Gemini), `vendor/`
    (OpenRouter style), `ft:BASE:org::id` (OpenAI fine-tunes); lower-case."""
    name = model.strip().lower()
    if name.startswith("ft:"):
        name = name[3:].split(":", 1)[0]
    return name.rsplit("/", 1)[-1]


def known_max_output(model: str) -> int | None:
    """The most output tokens `model` generates in one call, from the shipped table; None if unlisted."""
    name = base_model(model)
    best: str | None = None
    for prefix in MAX_OUTPUT_TOKENS:
        if name.startswith(prefix) and (len(name) == len(prefix) or name[len(prefix)] in _BOUNDARY) and (
                best is None or len(prefix) > len(best)):
            best = prefix
    return MAX_OUTPUT_TOKENS[best] if best is not None else None


def worst_output_tokens(requested: int | None, model_max: int | None, default: int) -> int:
    """The most output tokens one completion of a call can bill: its own limit, never above the model's
    maximum; the model's maximum when it sets none; `default` (ledger.default_max_output_tokens) only when
    neither is known."""
    if model_max is None:
        return requested if requested is not None else default
    return model_max if requested is None else min(requested, model_max)

"""PriceBook: costs in whole nano-dollars, equal to genai-prices' own calculation; overrides win."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import pytest
from genai_prices import Usage as PriceUsage
from genai_prices import calc_price

from tollhouse.config import parse_settings
from tollhouse.pricing import PriceBook, nusd_to_usd
from tollhouse.providers.usage import Usage

BOOK = PriceBook(())


def reference_nusd(provider: str, model: str, u: Usage) -> int:
    """genai-prices' total for the same usage (its input_tokens also include cached ones), in nano-USD."""
    price = calc_price(PriceUsage(input_tokens=u.input_tokens, output_tokens=u.output_tokens,
                                  cache_read_tokens=u.cache_read_tokens, cache_write_tokens=u.cache_write_tokens),
                       model, provider_id=provider)
    return int((Decimal(price.total_price) * 1_000_000_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))


@pytest.mark.parametrize(("provider", "model", "usage"), [
    ("openai", "gpt-4o", Usage(input_tokens=1000, output_tokens=500)),
    ("openai", "gpt-4o", Usage(input_tokens=1219, output_tokens=42, cache_read_tokens=1024)),
    ("openai", "gpt-4o", Usage(input_tokens=1, output_tokens=0)),
    ("anthropic", "claude-3-5-sonnet-20241022",
     Usage(input_tokens=25 + 1200 + 3000, output_tokens=15, cache_read_tokens=3000, cache_write_tokens=1200)),
    ("anthropic", "claude-3-5-sonnet-20241022", Usage(input_tokens=7, output_tokens=3)),
    ("google", "gemini-2.5-pro", Usage(input_tokens=1100, output_tokens=512, cache_read_tokens=1024)),
    # Above 200k prompt tokens every token is priced at the higher tier.
    ("google", "gemini-2.5-pro", Usage(input_tokens=300_000, output_tokens=500)),
    ("google", "gemini-2.5-pro", Usage(input_tokens=250_000, output_tokens=2000, cache_read_tokens=100_000)),
])
def test_cost_equals_genai_prices(provider: str, model: str, usage: Usage) -> None:
    assert BOOK.cost_nusd(provider, model, usage) == reference_nusd(provider, model, usage)


@pytest.mark.parametrize(("provider", "model", "inp", "out"), [
    ("openai", "gpt-4o", 1000, 500), ("openai", "gpt-4o-mini", 7, 4096),
    ("anthropic", "claude-3-5-sonnet-20241022", 25, 15),
    ("google", "gemini-2.5-pro", 300_000, 500),  # tiered: the slow path, same answer
])
def test_the_budget_checks_fast_worst_case_price_is_the_same_price(provider: str, model: str, inp: int,
                                                                    out: int) -> None:
    assert BOOK.token_cost_nusd(provider, model, inp, out) == reference_nusd(provider, model, Usage(inp, out))
    assert BOOK.token_cost_nusd(provider, "no-such-model", inp, out) is None


def test_known_values() -> None:
    # gpt-4o: $2.50 in, $10 out, $1.25 cached in, per million tokens.
    assert BOOK.cost_nusd("openai", "gpt-4o", Usage(input_tokens=1000, output_tokens=500)) == 7_500_000
    assert BOOK.cost_nusd("openai", "gpt-4o", Usage(input_tokens=1000, cache_read_tokens=1000)) == 1_250_000
    # Claude 3.5 Sonnet: $3 in, $15 out, $0.30 cache read, $3.75 cache write.
    u = Usage(input_tokens=4225, output_tokens=15, cache_read_tokens=3000, cache_write_tokens=1200)
    assert BOOK.cost_nusd("anthropic", "claude-3-5-sonnet-20241022", u) == 25 * 3000 + 15 * 15000 + 3000 * 300 \
        + 1200 * 3750


def test_gemini_tier_changes_the_rate() -> None:
    below = BOOK.cost_nusd("google", "gemini-2.5-pro", Usage(input_tokens=200_000))
    above = BOOK.cost_nusd("google", "gemini-2.5-pro", Usage(input_tokens=200_001))
    assert below == 250_000_000  # 200k x $1.25/M
    assert above == 500_002_500  # 200,001 x $2.50/M: the whole prompt at the higher rate


def test_config_override_wins() -> None:
    settings = parse_settings({"pricing": {"overrides": [
        {"provider": "openai", "model": "gpt-4o", "input_mtok": "1", "output_mtok": "2"},
        {"provider": "groq", "model": "llama-3.3-70b-versatile", "input_mtok": 0.59, "output_mtok": 0.79,
         "cache_read_mtok": 0.1},
    ]}}, "t")
    book = PriceBook(settings.pricing.overrides)
    u = Usage(input_tokens=1000, output_tokens=500, cache_read_tokens=400)
    # Cache reads without an override rate cost the input rate.
    assert book.cost_nusd("openai", "gpt-4o", u) == 1000 * 1000 + 500 * 2000
    assert book.cost_nusd("groq", "llama-3.3-70b-versatile", u) == 600 * 590 + 500 * 790 + 400 * 100
    # Other models keep the table's price.
    assert book.cost_nusd("anthropic", "claude-3-5-sonnet-20241022", Usage(input_tokens=7, output_tokens=3)) == \
        reference_nusd("anthropic", "claude-3-5-sonnet-20241022", Usage(input_tokens=7, output_tokens=3))


@pytest.mark.parametrize(("provider", "model"), [
    ("openai", "no-such-model-xyz"),
    ("no-such-provider", "gpt-4o"),
    ("groq", "llama-3.3-70b-versatile-unknown"),
])
def test_unknown_model_has_no_price(provider: str, model: str) -> None:
    assert BOOK.cost_nusd(provider, model, Usage(input_tokens=10, output_tokens=10)) is None
    assert BOOK.known(provider, model) is False


def test_zero_usage_costs_zero() -> None:
    assert BOOK.cost_nusd("openai", "gpt-4o", Usage()) == 0
    assert BOOK.known("openai", "gpt-4o") is True


def test_nusd_to_usd() -> None:
    assert nusd_to_usd(7_500_000) == 0.0075
    assert nusd_to_usd(None) is None

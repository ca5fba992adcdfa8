"""Prices from the genai-prices table (bundled, offline) with per-model overrides from config.

Costs are exact: Decimal arithmetic, then whole nano-dollars (1e-9 USD) for storage and sums.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from genai_prices import Usage as PriceUsage
from genai_prices import data_snapshot

from tollhouse.config import PriceOverride
from tollhouse.model_limits import known_max_output
from tollhouse.providers.usage import Usage

NANO = Decimal(1_000_000_000)
_MTOK = Decimal(1_000_000)
# cache_write_1h_mtok: one-hour cache writes are not told apart in usage; they are priced as writes.
_LINEAR_KEYS = {"input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok", "cache_write_1h_mtok"}


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per million tokens, for prices that do not depend on volume."""

    input_mtok: Decimal
    output_mtok: Decimal
    cache_read_mtok: Decimal | None
    cache_write_mtok: Decimal | None

    def nano_rates(self) -> tuple[int, int, int, int] | None:
        """Nano-dollars per token as integers, when the prices allow exact integer arithmetic."""
        rates = [self.input_mtok, self.output_mtok,
                 self.cache_read_mtok if self.cache_read_mtok is not None else self.input_mtok,
                 self.cache_write_mtok if self.cache_write_mtok is not None else self.input_mtok]
        scaled = [r * 1000 for r in rates]  # $/MTok * 1e9 nano / 1e6 tokens
        if any(x != x.to_integral_value() for x in scaled):
            return None
        i, o, cr, cw = (int(x) for x in scaled)
        return i, o, cr, cw

    def cost(self, u: Usage) -> Decimal:
        fresh = u.input_tokens - u.cache_read_tokens - u.cache_write_tokens
        total = Decimal(max(fresh, 0)) * self.input_mtok + Decimal(u.output_tokens) * self.output_mtok
        total += Decimal(u.cache_read_tokens) * (self.cache_read_mtok if self.cache_read_mtok is not None
                                                 else self.input_mtok)
        total += Decimal(u.cache_write_tokens) * (self.cache_write_mtok if self.cache_write_mtok is not None
                                                  else self.input_mtok)
        return total / _MTOK


class _Priced:
    """A genai-prices model entry whose price needs the library's own calculation (tiers etc.)."""

    __slots__ = ("_info",)

    def __init__(self, info: Any) -> None:
        self._info = info

    def cost(self, u: Usage) -> Decimal:
        usage = PriceUsage(input_tokens=u.input_tokens, output_tokens=u.output_tokens,
                           cache_read_tokens=u.cache_read_tokens, cache_write_tokens=u.cache_write_tokens)
        price = self._info.get_prices(datetime.now(UTC)).calc_price(usage)
        return Decimal(price["total_price"])


class PriceBook:
    def __init__(self, overrides: tuple[PriceOverride, ...]) -> None:
        self._snapshot = data_snapshot.get_snapshot()
        self._overrides = {
            (o.provider, o.model): Rates(o.input_mtok, o.output_mtok, o.cache_read_mtok, o.cache_write_mtok)
            for o in overrides if o.input_mtok is not None and o.output_mtok is not None
        }
        self._max_output: dict[tuple[str, str], int | None] = {
            (o.provider, o.model): o.max_output_tokens for o in overrides if o.max_output_tokens is not None}
        self._limits_cache: dict[tuple[str, str], int | None] = {}
        # (provider, model) → (price entry, integer nano-dollars per token when the price is flat, else ())
        self._cache: dict[tuple[str, str], tuple[Rates | _Priced | None, tuple[int, ...]]] = {}
        self._cache_day = int(time.time() // 86400)

    def _lookup(self, provider: str, model: str) -> tuple[Rates | _Priced | None, tuple[int, ...]]:
        day = int(time.time() // 86400)
        if day != self._cache_day:
            # Dated price changes in the table take effect without a restart.
            self._cache.clear()
            self._cache_day = day
        hit = self._cache.get((provider, model))
        if hit is not None:
            return hit
        found: Rates | _Priced | None = self._overrides.get((provider, model))
        if found is None:
            try:
                _, info = self._snapshot.find_provider_model(model, None, provider, None)
            except LookupError:
                info = None
            if info is not None:
                found = _linear(info) or _Priced(info)
        priced = (found, (found.nano_rates() or ()) if isinstance(found, Rates) else ())
        if len(self._cache) < 50_000:
            self._cache[(provider, model)] = priced
        return priced

    def max_output_tokens(self, price_provider: str, model: str) -> int | None:
        """The most output tokens `model` generates in one call: `pricing.overrides[].max_output_tokens`, else
        the shipped table (model_limits); None for a model nobody knows (then ledger.default_max_output_tokens
        applies: see model_limits.worst_output_tokens)."""
        key = (price_provider, model)
        found = self._max_output.get(key)
        if found is not None:
            return found
        if key in self._limits_cache:
            return self._limits_cache[key]
        found = known_max_output(model)
        if len(self._limits_cache) < 50_000:
            self._limits_cache[key] = found
        return found

    def known(self, price_provider: str, model: str) -> bool:
        return self._lookup(price_provider, model)[0] is not None

    def token_cost_nusd(self, price_provider: str, model: str, input_tokens: int, output_tokens: int) -> int | None:
        """Cost of plain input and output tokens (no cache), the budget check's worst case, without building a
        Usage: the common flat-rate case is two multiplications."""
        entry, nano = self._lookup(price_provider, model)
        if nano:
            return input_tokens * nano[0] + output_tokens * nano[1]
        if entry is None:
            return None
        return self.cost_nusd(price_provider, model, Usage(input_tokens, output_tokens))

    def cost_nusd(self, price_provider: str, model: str, usage: Usage) -> int | None:
        """Cost in whole nano-dollars, or None when the model has no known price."""
        entry, nano = self._lookup(price_provider, model)
        if nano:
            u = usage
            fresh = max(u.input_tokens - u.cache_read_tokens - u.cache_write_tokens, 0)
            return (fresh * nano[0] + u.output_tokens * nano[1] + u.cache_read_tokens * nano[2]
                    + u.cache_write_tokens * nano[3])
        if entry is None:
            return None
        return int((entry.cost(usage) * NANO).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _linear(info: Any) -> Rates | None:
    # Standard prices as of now (price variants such as priority tiers need a context we do not pass).
    prices = info.get_prices(datetime.now(UTC))
    # Per-request prices (web searches, ...) are not metered here; token prices must be flat.
    token_values = {k: v for k, v in prices.__dict__.items() if v is not None and k.endswith("_mtok")}
    if not token_values.keys() <= _LINEAR_KEYS or not all(isinstance(v, Decimal) for v in token_values.values()):
        return None
    if "input_mtok" not in token_values:
        return None
    return Rates(
        input_mtok=token_values["input_mtok"],
        output_mtok=token_values.get("output_mtok", Decimal(0)),
        cache_read_mtok=token_values.get("cache_read_mtok"),
        cache_write_mtok=token_values.get("cache_write_mtok"),
    )


def nusd_to_usd(nusd: int | None) -> float | None:
    return None if nusd is None else float(Decimal(nusd) / NANO)

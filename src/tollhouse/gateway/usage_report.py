"""The spend report as CSV: plain (a row per period and group) or in FOCUS 1.x columns (FinOps Open Cost and
Usage Specification) for FinOps tools: a row per day, provider (the service) and model (the SKU)."""

from __future__ import annotations

import csv
import functools
import io
import json
from datetime import UTC, datetime

from tollhouse.gateway.usage_params import Range
from tollhouse.gateway.usage_series import Key, Totals, bucketer

_MEASURE_COLUMNS = ("calls", "blocked", "would_block", "errors", "input_tokens", "output_tokens", "cost_usd")
_PROVIDER_NAMES = {"openai": "OpenAI", "anthropic": "Anthropic", "gemini": "Google", "azure": "Microsoft",
                   "bedrock": "Amazon Web Services", "vertex": "Google", "mistral": "Mistral AI", "cohere": "Cohere"}
# FOCUS custom columns (x_ prefix) for the dimensions a row is grouped by
_FOCUS_DIMENSION = {"team": "x_Team", "project": "x_Project", "cost_centre": "x_CostCentre", "person": "x_Person"}
FOCUS_COLUMNS = (
    "BillingAccountId", "BillingAccountName", "BillingCurrency", "BillingPeriodStart", "BillingPeriodEnd",
    "ChargePeriodStart", "ChargePeriodEnd", "ChargeCategory", "ChargeClass", "ChargeFrequency", "ChargeDescription",
    "BilledCost", "EffectiveCost", "ListCost", "ContractedCost", "ConsumedQuantity", "ConsumedUnit",
    "PricingQuantity", "PricingUnit", "ProviderName", "PublisherName", "InvoiceIssuerName", "ServiceName",
    "ServiceCategory", "ResourceId", "ResourceName", "ResourceType", "SkuId", "SubAccountId", "SubAccountName",
    "Tags", "x_Calls", "x_BlockedCalls", "x_InputTokens", "x_OutputTokens",
)


def money(nusd: int) -> str:
    """Nano-USD as an exact decimal string of dollars (9 places): no float rounding in a finance report."""
    sign = "-" if nusd < 0 else ""
    whole, frac = divmod(abs(nusd), 1_000_000_000)
    return f"{sign}{whole}.{frac:09d}"


@functools.lru_cache(maxsize=4096)
def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ordered(grouped: dict[Key, dict[tuple[int, int], Totals]]) -> list[tuple[tuple[int, int], Key, Totals]]:
    flat = [(span, key, t) for key, buckets in grouped.items() for span, t in buckets.items()]
    flat.sort(key=lambda r: (r[0][0], -r[2].cost_nusd, -r[2].calls, tuple(str(k) for k in r[1])))
    return flat


def plain_csv(dims: list[str], grouped: dict[Key, dict[tuple[int, int], Totals]], rng: Range) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["period_start", "period_end", *dims, *_MEASURE_COLUMNS])
    iso = functools.cache(rng.iso)  # the rows share a few period bounds
    for (start, end), key, t in _ordered(grouped):
        writer.writerow([iso(start), iso(end), *("" if k is None else k for k in key), t.calls, t.blocked,
                         t.would_block, t.errors, t.input_tokens, t.output_tokens, money(t.cost_nusd)])
    return out.getvalue()


def focus_csv(dims: list[str], grouped: dict[Key, dict[tuple[int, int], Totals]], rng: Range, org: str) -> str:
    """`dims` includes provider and model; one row per day and key."""
    extra = [d for d in dims if d in _FOCUS_DIMENSION]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([*FOCUS_COLUMNS, *(_FOCUS_DIMENSION[d] for d in extra)])
    month = bucketer("month", "hour", rng.tz, rng.billing_day, rng.since_ms, rng.until_ms)
    for (start, end), key, t in _ordered(grouped):
        values = dict(zip(dims, key, strict=True))
        provider = values["provider"] or "unknown"
        model = values["model"] or "unknown"
        vendor = _PROVIDER_NAMES.get(provider, provider)
        billing_start, billing_end = month(start)
        tags = {d: values[d] for d in extra if values[d] is not None}
        tokens = t.input_tokens + t.output_tokens
        cost = money(t.cost_nusd)
        writer.writerow([
            org, org, "USD", _utc(billing_start), _utc(billing_end), _utc(start), _utc(end), "Usage", "",
            "Usage-Based", f"{model} via {provider}: {t.calls} calls, {t.input_tokens} input and {t.output_tokens} "
            "output tokens (metered by Tollhouse)", cost, cost, cost, cost, tokens, "Tokens", tokens, "Tokens", vendor,
            vendor, vendor, f"{vendor} API ({provider})", "AI and Machine Learning", f"{provider}/{model}", model,
            "Model", model, values.get("project") or "", values.get("project") or "",
            json.dumps(tags, sort_keys=True) if tags else "", t.calls, t.blocked, t.input_tokens, t.output_tokens,
            *("" if values[d] is None else values[d] for d in extra)])
    return out.getvalue()


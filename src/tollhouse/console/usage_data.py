"""Usage read for the console's pages from the hourly/daily rollups (the same reads as /api/v1/usage): totals
and series by a dimension over a range, and the JSON a chart (static/charts.js) draws."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from tollhouse.gateway import usage_params as params
from tollhouse.gateway.state import GatewayState
from tollhouse.gateway.usage_api import rows, source_of
from tollhouse.gateway.usage_series import Key, Totals, bucketer, by_bucket
from tollhouse.ledger.types import NANO_PER_USD
from tollhouse.ledger.windows import month_start, next_month_start

OTHERS = "(others)"
NONE_LABEL = "(none)"


@dataclass(frozen=True)
class Series:
    """Usage grouped by one dimension (or none) into buckets of `interval` over a range."""

    interval: str
    starts: list[int]  # bucket starts, Unix ms, every bucket of the range (empty ones too)
    groups: dict[Key, dict[int, Totals]]  # key -> bucket start -> totals
    totals: dict[Key, Totals]
    grand: Totals
    rest: dict[int, Totals] | None = None  # bucket start -> the totals of the keys `groups` leaves out (top_series)

    def ranked(self, measure: str = "cost_nusd") -> list[tuple[Key, Totals]]:
        """Keys, biggest first by `measure` (then calls, then name)."""
        return sorted(self.totals.items(), key=lambda kv: (-getattr(kv[1], measure), -kv[1].calls, str(kv[0])))


def bucket_starts(interval: str, rng: params.Range) -> list[int]:
    """Every bucket start of the range: hours, or local days (DST-aware)."""
    if interval == "hour":
        first = rng.since_ms // 3_600_000 * 3_600_000
        return list(range(first, rng.until_ms, 3_600_000))
    out: list[int] = []
    day = datetime.fromtimestamp(rng.since_ms / 1000, rng.tz).date()
    while True:
        start = params.local_ms(datetime(day.year, day.month, day.day, tzinfo=rng.tz))
        if start >= rng.until_ms:
            return out
        out.append(start)
        day += timedelta(days=1)


async def series(state: GatewayState, dims: list[str], interval: str, rng: params.Range,
                 filters: params.Filters) -> Series:
    """Usage by the public dimensions `dims` (zero or one usually) per `interval` (day | hour) over `rng`."""
    columns = [params.DIMENSIONS[d] for d in dims]
    source = source_of(interval)
    found = await rows(state, source, columns, rng, filters)
    grouped = by_bucket(found, columns, bucketer(interval, source, rng.tz, rng.billing_day, rng.since_ms,
                                                 rng.until_ms))
    groups: dict[Key, dict[int, Totals]] = {}
    totals: dict[Key, Totals] = {}
    grand = Totals()
    for key, buckets in grouped.items():
        per: dict[int, Totals] = {}
        total = Totals()
        for (start, _), t in buckets.items():
            per[start] = t
            total.merge(t)
        groups[key], totals[key] = per, total
        grand.merge(total)
    return Series(interval, bucket_starts(interval, rng), groups, totals, grand)


def _minus(a: Totals, b: Totals) -> Totals:
    out = Totals()
    for name in Totals.__slots__:
        setattr(out, name, getattr(a, name) - getattr(b, name))
    return out


async def top_series(state: GatewayState, dims: list[str], interval: str, rng: params.Range,
                     filters: params.Filters, top: int) -> Series:
    """What `series` gives for one dimension, but with the buckets of the `top` biggest keys only (by cost) and the
    rest's as `rest`: each key's totals are summed in the store and only the top keys' buckets read, so a quarter
    by person reads a row per person, not one per person and day."""
    if len(dims) != 1:
        return await series(state, dims, interval, rng, filters)
    column = params.DIMENSIONS[dims[0]]
    source = source_of(interval)
    totals: dict[Key, Totals] = {}
    grand = Totals()
    for row in await rows(state, source, [column], rng, filters, by_period=False):
        t = totals[(row[column],)] = Totals()
        t.add(row)
        grand.merge(t)
    if len(totals) <= top:
        return await series(state, dims, interval, rng, filters)
    data = Series(interval, [], {}, totals, grand)
    shown = tuple(k[0] or "" for k, _ in data.ranked()[:top])
    picked = await series(state, dims, interval, rng, params.Filters({**filters.columns, column: shown}))
    everything = await series(state, [], interval, rng, filters)
    rest: dict[int, Totals] = {}
    for start, t in everything.groups.get((), {}).items():
        left = t
        for buckets in picked.groups.values():
            if start in buckets:
                left = _minus(left, buckets[start])
        rest[start] = left
    return Series(interval, picked.starts, picked.groups, totals, grand, rest)


def label(key: Key) -> str:
    return " / ".join(NONE_LABEL if k is None else k for k in key) or "all"


def chart(data: Series, measure: str = "cost_nusd", top: int = 8, stacked: bool = True,
          now_ms: int | None = None) -> dict[str, Any]:
    """The JSON static/charts.js draws: the `top` biggest keys, the rest summed as (others); cost in dollars.
    Buckets starting after `now_ms` have no value (the chart stops at now). A top_series is drawn by cost with
    at most its `top`."""
    scale = 1e9 if measure == "cost_nusd" else 1
    ranked = [key for key, _ in data.ranked(measure)]
    shown, rest = ranked[:top], ranked[top:]
    out: list[dict[str, Any]] = []

    def values(buckets: list[dict[int, Totals]]) -> list[float | None]:
        return [None if now_ms is not None and s > now_ms else
                round(sum(getattr(b.get(s, Totals()), measure) for b in buckets) / scale, 9)
                for s in data.starts]

    for key in shown:
        out.append({"label": label(key), "values": values([data.groups.get(key, {})])})
    if rest:
        others = [data.rest] if data.rest is not None else [data.groups[k] for k in rest]
        out.append({"label": OTHERS, "values": values(others)})
    return {"x": [s // 1000 for s in data.starts], "series": out, "stacked": stacked,
            "unit": "usd" if measure == "cost_nusd" else "count", "step": data.interval}


def month_range(state: GatewayState, now_ms: int, months_back: int = 0) -> params.Range:
    """The billing month `months_back` before the one `now_ms` is in (ledger.billing_day, ledger.timezone)."""
    tz, billing_day = params.org_zone(state)
    start = month_start(datetime.fromtimestamp(now_ms / 1000, tz), billing_day, tz)
    for _ in range(months_back):
        start = month_start(start - timedelta(days=1), billing_day, tz)
    return params.Range(int(start.timestamp() * 1000), int(next_month_start(start).timestamp() * 1000), tz,
                        billing_day)


def usd(nusd: int) -> Decimal:
    """Nano-dollars as dollars, exactly (for the `usd` filter)."""
    return Decimal(nusd) / NANO_PER_USD

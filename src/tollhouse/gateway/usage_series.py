"""Rollup rows (hours or local days) into buckets of the organisation's calendar (hour, local day, billing
month, the whole range) and into series by key. Pure: the rows and the zone are passed in."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from tollhouse.ledger.windows import month_start, next_month_start

Key = tuple[str | None, ...]


def bucketer(interval: str, source: str, tz: ZoneInfo, billing_day: int, since_ms: int, until_ms: int
             ) -> Callable[[int], tuple[int, int]]:
    """A rollup period -> the [start, end) (Unix ms) of the bucket it falls in. `source`: what the periods are:
    `hour` (an hour's start) or `day` (a local date as its midnight UTC: rollup.py). `interval`: `hour`, `day` (a
    local day), `month` (the billing month) or `total` (one bucket: [since_ms, until_ms))."""
    memo: dict[int, tuple[int, int]] = {}

    def local(period: int) -> datetime:
        if source == "hour":
            return datetime.fromtimestamp(period / 1000, tz)
        d = datetime.fromtimestamp(period / 1000, UTC)
        return datetime(d.year, d.month, d.day, tzinfo=tz)

    def day(period: int) -> tuple[int, int]:
        at = local(period)
        start = datetime(at.year, at.month, at.day, tzinfo=tz)
        nxt = start.date() + timedelta(days=1)
        return int(start.timestamp() * 1000), int(datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz).timestamp() * 1000)

    def month(period: int) -> tuple[int, int]:
        start = month_start(local(period), billing_day, tz)
        return int(start.timestamp() * 1000), int(next_month_start(start).timestamp() * 1000)

    compute: Callable[[int], tuple[int, int]] = {
        "hour": lambda h: (h, h + 3_600_000), "day": day, "month": month, "total": lambda h: (since_ms, until_ms),
    }[interval]

    def bucket(period: int) -> tuple[int, int]:
        found = memo.get(period)
        if found is None:
            found = memo[period] = compute(period)
        return found

    return bucket


class Totals:
    """Sums of the rollup measures (cost in nano-USD)."""

    __slots__ = ("blocked", "calls", "cost_nusd", "errors", "input_tokens", "output_tokens", "would_block")

    def __init__(self) -> None:
        self.calls = self.errors = self.blocked = self.would_block = 0
        self.input_tokens = self.output_tokens = self.cost_nusd = 0

    def add(self, row: dict[str, Any]) -> None:
        self.calls += row["calls"]
        self.errors += row["errors"]
        self.blocked += row["blocked"]
        self.would_block += row["would_block"]
        self.input_tokens += row["input_tokens"]
        self.output_tokens += row["output_tokens"]
        self.cost_nusd += row["cost_nusd"]

    def merge(self, other: Totals) -> None:
        for name in Totals.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def by_bucket(rows: Iterable[dict[str, Any]], columns: Sequence[str], bucket: Callable[[int], tuple[int, int]]
              ) -> dict[Key, dict[tuple[int, int], Totals]]:
    """key (the `columns` values) -> bucket -> totals."""
    out: dict[Key, dict[tuple[int, int], Totals]] = {}
    for row in rows:
        key = tuple([row[c] for c in columns])
        buckets = out.get(key)
        if buckets is None:
            buckets = out[key] = {}
        span = bucket(row["period_ms"])
        totals = buckets.get(span)
        if totals is None:
            totals = buckets[span] = Totals()
        totals.add(row)
    return out


def usd(nusd: int) -> float:
    """Nano-USD as dollars (a float: JSON); exact to the nano-dollar up to 9 million dollars."""
    return round(nusd / 1e9, 9)


def measures_json(t: Totals) -> dict[str, Any]:
    return {"calls": t.calls, "input_tokens": t.input_tokens, "output_tokens": t.output_tokens,
            "cost_usd": usd(t.cost_nusd), "blocked": t.blocked, "would_block": t.would_block, "errors": t.errors}

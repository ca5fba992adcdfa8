"""Hourly rollup rows into buckets of the organisation's calendar (hour, local day, billing month, the whole
range) and into series by key. Pure: the rows and the zone are passed in."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from tollhouse.events.rollup import MEASURES
from tollhouse.ledger.windows import month_start, next_month_start

Key = tuple[str | None, ...]


def bucketer(interval: str, tz: ZoneInfo, billing_day: int, since_ms: int, until_ms: int
             ) -> Callable[[int], tuple[int, int]]:
    """hour start (ms) -> the [start, end) of the bucket it falls in: `hour`, `day` (the local date the hour starts
    on), `month` (the billing month) or `total` (one bucket: [since_ms, until_ms))."""
    memo: dict[int, tuple[int, int]] = {}

    def day(hour_ms: int) -> tuple[int, int]:
        local = datetime.fromtimestamp(hour_ms / 1000, tz)
        start = datetime(local.year, local.month, local.day, tzinfo=tz)
        end = datetime.combine(start.date() + timedelta(days=1), start.timetz())
        return int(start.timestamp() * 1000), int(end.timestamp() * 1000)

    def month(hour_ms: int) -> tuple[int, int]:
        start = month_start(datetime.fromtimestamp(hour_ms / 1000, tz), billing_day, tz)
        return int(start.timestamp() * 1000), int(next_month_start(start).timestamp() * 1000)

    compute: Callable[[int], tuple[int, int]] = {
        "hour": lambda h: (h, h + 3_600_000), "day": day, "month": month, "total": lambda h: (since_ms, until_ms),
    }[interval]

    def bucket(hour_ms: int) -> tuple[int, int]:
        found = memo.get(hour_ms)
        if found is None:
            found = memo[hour_ms] = compute(hour_ms)
        return found

    return bucket


@dataclass
class Totals:
    """Sums of the rollup measures (cost in nano-USD)."""

    values: list[int] = field(default_factory=lambda: [0] * len(MEASURES))

    def add(self, row: dict[str, Any]) -> None:
        for i, m in enumerate(MEASURES):
            self.values[i] += row[m]

    def __getattr__(self, name: str) -> int:
        try:
            return self.values[MEASURES.index(name)]
        except ValueError:
            raise AttributeError(name) from None


def by_bucket(rows: Iterable[dict[str, Any]], columns: Sequence[str], bucket: Callable[[int], tuple[int, int]]
              ) -> dict[Key, dict[tuple[int, int], Totals]]:
    """key (the `columns` values) -> bucket -> totals."""
    out: dict[Key, dict[tuple[int, int], Totals]] = {}
    for row in rows:
        key = tuple(row[c] for c in columns)
        buckets = out.setdefault(key, {})
        span = bucket(row["hour_ms"])
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

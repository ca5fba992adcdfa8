"""One budget counter of a backtest (pure): what the embedded ledger's `Counter` counts (ledger/local.py), for calls
that come in time order with no reservations, so it only ever moves forward.

A month's counter holds the billing month of the latest call (from `ledger.billing_day` at midnight in
`ledger.timezone`, ledger/windows.py) and starts again at the next; a rolling window keeps the ledger's buckets
(1/600 of the window, at least a second) and lets a bucket go once it has wholly left the window, exactly as the
ledger does. Usage is kept per provider and summed over all of them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from zoneinfo import ZoneInfo

from tollhouse.ledger.windows import bucket_ms, window_bounds_ms
from tollhouse.policy.rules import Window

_INDEX = {"spend": 0, "input_tokens": 1, "output_tokens": 2, "requests": 3}
TOKENS = 4  # the place `index_of` gives "tokens": input plus output


def index_of(metric: str) -> int:
    """A metric's place in a usage vector (spend, input tokens, output tokens, requests), or TOKENS."""
    return _INDEX.get(metric, TOKENS)


def _into(row: list[int], vec: Sequence[int], sign: int = 1) -> None:
    s, i, o, r = vec
    row[0] += sign * s
    row[1] += sign * i
    row[2] += sign * o
    row[3] += sign * r


class Running:
    __slots__ = ("_bucket", "_buckets", "_day", "_end", "_span", "_start", "_tz", "_window", "all", "by_provider",
                 "monthly")

    def __init__(self, window: Window, billing_day: int, tz: ZoneInfo) -> None:
        self._window = window
        self.monthly = window.monthly
        self._span = window.seconds * 1000
        self._bucket = 0 if window.monthly else bucket_ms(window)
        self._day, self._tz = billing_day, tz
        self._start = self._end = 0  # the billing month counted: [start, end)
        self.by_provider: dict[str, list[int]] = {}
        self.all = [0, 0, 0, 0]
        self._buckets: deque[tuple[int, dict[str, list[int]]]] = deque()  # rolling: oldest first

    def advance(self, now_ms: int) -> None:
        """Move to `now_ms` (never earlier than a time already given): a new month starts empty, a rolling window
        lets go of the buckets that left it."""
        if self.monthly:
            if now_ms >= self._end:
                self._start, self._end = window_bounds_ms(self._window, now_ms, self._day, self._tz)
                self.by_provider = {}
                self.all = [0, 0, 0, 0]
            return
        floor = now_ms - self._span
        buckets = self._buckets
        while buckets and buckets[0][0] + self._bucket <= floor:
            _, table = buckets.popleft()
            for provider, vec in table.items():
                _into(self.by_provider[provider], vec, -1)
                _into(self.all, vec, -1)

    def used(self, metric: str, providers: frozenset[str] | None, now_ms: int) -> int:
        """What the counter holds at `now_ms`, in counter units, over `providers` (None: all of them)."""
        return self.used_at(index_of(metric), providers, now_ms)

    def used_at(self, index: int, providers: frozenset[str] | None, now_ms: int) -> int:
        """`used` with the metric given by its place in a usage vector (TOKENS: input plus output)."""
        if self.monthly:
            if now_ms >= self._end:
                self.advance(now_ms)
        elif self._buckets and self._buckets[0][0] + self._bucket <= now_ms - self._span:
            self.advance(now_ms)
        if providers is None:
            vec = self.all
            return vec[index] if index != TOKENS else vec[1] + vec[2]
        total = 0
        if index == TOKENS:
            for provider, vec in self.by_provider.items():
                if provider in providers:
                    total += vec[1] + vec[2]
        else:
            for provider, vec in self.by_provider.items():
                if provider in providers:
                    total += vec[index]
        return total

    def add(self, ts_ms: int, provider: str, vec: Sequence[int]) -> None:
        """Count a call (or a row of history) at `ts_ms`, inside the month or window the counter is at."""
        s, i, o, r = vec
        row = self.by_provider.get(provider)
        if row is None:
            row = self.by_provider[provider] = [0, 0, 0, 0]
        row[0] += s
        row[1] += i
        row[2] += o
        row[3] += r
        row = self.all
        row[0] += s
        row[1] += i
        row[2] += o
        row[3] += r
        if self.monthly:
            return
        start = ts_ms - ts_ms % self._bucket
        buckets = self._buckets
        if buckets and buckets[-1][0] == start:
            table = buckets[-1][1]
        elif not buckets or buckets[-1][0] < start:
            table = {}
            buckets.append((start, table))
        else:  # history read in bucket order never gets here; kept in order all the same
            found = next((t for s, t in buckets if s == start), None)
            if found is None:
                found = {}
                self._buckets = deque(sorted([*buckets, (start, found)], key=lambda b: b[0]))
            table = found
        cell = table.get(provider)
        if cell is None:
            table[provider] = [s, i, o, r]
        else:
            cell[0] += s
            cell[1] += i
            cell[2] += o
            cell[3] += r

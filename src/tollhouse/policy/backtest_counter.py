"""One budget counter of a backtest (pure): what the embedded ledger's `Counter` counts (ledger/local.py), for calls
that come in time order with no reservations, so it only ever moves forward.

A month's counter holds the billing month of the latest call (from `ledger.billing_day` at midnight in
`ledger.timezone`, ledger/windows.py) and starts again at the next; a rolling window keeps the ledger's buckets
(1/600 of the window, at least a second) and lets a bucket go once it has wholly left the window, exactly as the
ledger does.

A counter keeps only the sums it can be asked for: one *slot* per read (a metric over a set of providers, or over
all of them) that the policy's caps on its window make, fixed when the counter is made. A call adds to the slots
whose providers take it (`program`: which slot gets which part of the call's usage), so reading a cap is one list
read, and the replay's hot loop can read and add the slots' lists directly.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from zoneinfo import ZoneInfo

from tollhouse.ledger.windows import bucket_ms, window_bounds_ms
from tollhouse.policy.rules import Window

_INDEX = {"spend": 0, "input_tokens": 1, "output_tokens": 2, "requests": 3}
TOKENS = 4  # the place `index_of` gives "tokens": input plus output
NOTHING = 5  # the place of a zero in `amounts`: what a call adds to a cap that does not count its provider
Read = tuple[int, frozenset[str] | None]  # (a metric's place in `amounts`, the providers counted; None: all)
Program = tuple[tuple[int, int], ...]  # (slot, place in `amounts`) for every slot a call of one provider adds to
FOREVER = 1 << 62


def index_of(metric: str) -> int:
    """A metric's place in a usage vector (spend, input tokens, output tokens, requests), or TOKENS."""
    return _INDEX.get(metric, TOKENS)


def amounts(spend: int, input_tokens: int, output_tokens: int, requests: int) -> tuple[int, int, int, int, int, int]:
    """A call's usage by place: spend, input, output, requests, tokens (input plus output), and a zero (NOTHING)."""
    return spend, input_tokens, output_tokens, requests, input_tokens + output_tokens, 0


class Running:
    __slots__ = ("_bucket", "_buckets", "_day", "_most", "_programs", "_span", "_start", "_tz", "_window", "end",
                 "expiry", "monthly", "reads", "slots")

    def __init__(self, window: Window, billing_day: int, tz: ZoneInfo, reads: Sequence[Read]) -> None:
        self._window = window
        self.monthly = window.monthly
        self._span = window.seconds * 1000
        self._bucket = 0 if window.monthly else bucket_ms(window)
        self._day, self._tz = billing_day, tz
        self._start = self.end = 0  # the billing month counted: [start, end)
        # Rolling: when the oldest bucket leaves the window. Until advance() lets it go the slots hold more than the
        # window does (never less: usage is never negative); bucket_add lets go of what has left once the buckets
        # are twice as many as a window holds, so memory stays bounded however long nothing reads the counter.
        self.expiry = FOREVER
        self._most = 0 if window.monthly else 2 * (self._span // self._bucket + 2)
        self.reads = tuple(reads)
        self.slots = [0] * len(self.reads)  # the window's sum per read; changed in place, never replaced
        self._programs: dict[str, Program] = {}
        self._buckets: deque[tuple[int, list[int]]] = deque()  # rolling: (start, what it added per slot), oldest first

    def slot(self, read: Read) -> int:
        """The slot of a read (a ValueError when the counter was not made to answer it)."""
        try:
            return self.reads.index(read)
        except ValueError:
            raise ValueError(f"counter over {self._window.label} keeps {self.reads}, not {read}") from None

    def program(self, provider: str) -> Program:
        """The slots a call to `provider` adds to, and the part of its usage each gets."""
        found = self._programs.get(provider)
        if found is None:
            found = self._programs[provider] = tuple((j, index) for j, (index, providers) in enumerate(self.reads)
                                                     if providers is None or provider in providers)
        return found

    def advance(self, now_ms: int) -> None:
        """Move to `now_ms` (never earlier than a time already given): a new month starts empty, a rolling window
        lets go of the buckets that left it."""
        slots = self.slots
        if self.monthly:
            if now_ms >= self.end:
                self._start, self.end = window_bounds_ms(self._window, now_ms, self._day, self._tz)
                slots[:] = [0] * len(slots)
            return
        floor = now_ms - self._span
        buckets = self._buckets
        while buckets and buckets[0][0] + self._bucket <= floor:
            _, gone = buckets.popleft()
            for j, v in enumerate(gone):
                slots[j] -= v
        self.expiry = buckets[0][0] + self._bucket + self._span if buckets else FOREVER

    def used(self, metric: str, providers: frozenset[str] | None, now_ms: int) -> int:
        """What the counter holds at `now_ms`, in counter units, over `providers` (None: all of them)."""
        if now_ms >= (self.end if self.monthly else self.expiry):
            self.advance(now_ms)
        return self.slots[self.slot((index_of(metric), providers))]

    def add(self, ts_ms: int, provider: str, vec: Sequence[int]) -> None:
        """Count a call (or a row of history: spend, input, output, requests) at `ts_ms`, inside the month or window
        the counter is at."""
        self.add_program(ts_ms, self.program(provider), amounts(*vec))

    def add_program(self, ts_ms: int, program: Program, usage: Sequence[int]) -> None:
        """`add` with the slots given by `program` and the usage by place (`amounts`)."""
        slots = self.slots
        for j, k in program:
            slots[j] += usage[k]
        if not self.monthly:
            self.bucket_add(ts_ms, program, usage)

    def bucket_add(self, ts_ms: int, program: Program, usage: Sequence[int]) -> None:
        """A rolling window's part of `add_program`: the call kept in its bucket, to leave the window with it."""
        start = ts_ms - ts_ms % self._bucket
        buckets = self._buckets
        if buckets and buckets[-1][0] == start:
            cell = buckets[-1][1]
        elif not buckets or buckets[-1][0] < start:
            cell = [0] * len(self.slots)
            buckets.append((start, cell))
            if len(buckets) == 1:
                self.expiry = start + self._bucket + self._span
            elif len(buckets) > self._most:
                self.advance(ts_ms)
        else:  # history read in bucket order never gets here; kept in order all the same
            found = next((c for s, c in buckets if s == start), None)
            if found is None:
                found = [0] * len(self.slots)
                self._buckets = deque(sorted([*buckets, (start, found)], key=lambda b: b[0]))
                self.expiry = self._buckets[0][0] + self._bucket + self._span
            cell = found
        for j, k in program:
            cell[j] += usage[k]

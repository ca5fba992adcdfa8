"""The embedded ledger: in-process counters, loaded from the store on first use, never drifting.

Every cap counts one (scope, id, window) counter. A counter holds settled usage (by month, or in
rolling buckets) per provider, plus what in-flight calls have reserved. Check-and-reserve over all
of a call's counters happens in one synchronous step on the event loop, so concurrent calls cannot
both take the last dollar.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from tollhouse.ledger.stored import StoredUsage
from tollhouse.ledger.types import NANO_PER_USD as NANO_PER_USD
from tollhouse.ledger.types import CapUsage, Ceilings, check_ceilings, metric_of
from tollhouse.ledger.types import Charge as Charge
from tollhouse.ledger.types import ReserveResult as ReserveResult
from tollhouse.ledger.windows import BillingMonths, bucket_ms, month_seconds_left, window_bounds_ms
from tollhouse.policy.engine import Cap
from tollhouse.policy.rules import Window

log = logging.getLogger("tollhouse.ledger")

_METRIC_INDEX = {"spend": 0, "input_tokens": 1, "output_tokens": 2, "requests": 3}

# A monthly counter keeps one sum per billing month, so its history is read in 15-minute sums (every UTC offset in
# use is a multiple of 15 minutes, so none straddles a month's start): a busy org's month is a few thousand rows to
# add, not one per second.
MONTH_LOAD_BUCKET_MS = 15 * 60_000


CounterId = tuple[str, str, str]  # (scope kind, id, window label)


# A loader returns settled history: (bucket start ms, provider, spend, input, output, requests) rows.
HistoryRow = tuple[int, str, int, int, int, int]
Loader = Callable[[str, str, int, int], Awaitable[list[HistoryRow]]]


# The additions below are unrolled, one function each: they run several times per call.

def _add(into: dict[str, list[int]], provider: str, vec: Sequence[int]) -> None:
    """Add `vec` to `provider`'s row of `into`."""
    s, i, o, r = vec
    row = into.get(provider)
    if row is None:
        into[provider] = [s, i, o, r]
        return
    row[0] += s
    row[1] += i
    row[2] += o
    row[3] += r


def _add_both(into: dict[str, list[int]], provider: str, total: list[int], vec: Sequence[int]) -> None:
    """Add `vec` to `provider`'s row of `into` and to `total` (the same table summed over providers)."""
    s, i, o, r = vec
    row = into.get(provider)
    if row is None:
        into[provider] = [s, i, o, r]
    else:
        row[0] += s
        row[1] += i
        row[2] += o
        row[3] += r
    total[0] += s
    total[1] += i
    total[2] += o
    total[3] += r


def _negated(vec: Sequence[int]) -> tuple[int, int, int, int]:
    s, i, o, r = vec
    return (-s, -i, -o, -r)


def _sum(table: dict[str, list[int]], metric: str, providers: frozenset[str] | None) -> int:
    """One metric summed over the providers a cap counts (all of them when `providers` is None)."""
    if not table:
        return 0
    index = _METRIC_INDEX.get(metric)
    total = 0
    if providers is None:
        if index is not None:
            for vec in table.values():
                total += vec[index]
        else:  # tokens
            for vec in table.values():
                total += vec[1] + vec[2]
        return total
    for provider, vec in table.items():
        if provider in providers:
            total += vec[index] if index is not None else vec[1] + vec[2]
    return total


class _NotLoaded(Exception):
    """A counter the ledger has not read from the store yet (reserve loads it, then tries again)."""


class Counter:
    """Usage of one scope over one window, per provider: settled history plus in-flight reservations.

    Rolling windows keep a running total of the buckets in the window (subtracted as buckets expire),
    so reading a counter costs the same whatever the number of buckets. Totals over every provider are
    kept beside the per-provider ones, so a cap that counts all providers reads one vector."""

    def __init__(self, window: Window, billing_day: int, tz: ZoneInfo) -> None:
        self.window = window
        self._billing_day = billing_day
        self._tz = tz
        self._window_ms = window.seconds * 1000
        self.bucket_ms = bucket_ms(window) if not window.monthly else 0
        self.months: dict[int, dict[str, list[int]]] = {}
        self._months = BillingMonths(billing_day, tz)
        self.buckets: deque[tuple[int, dict[str, list[int]]]] = deque()
        self.totals: dict[str, list[int]] = {}  # rolling: the sum of `buckets`
        self.reserved: dict[str, list[int]] = {}
        self.month_all: dict[int, list[int]] = {}  # `months`, summed over providers
        self.totals_all = [0, 0, 0, 0]
        self.reserved_all = [0, 0, 0, 0]
        self.loaded = False

    def _month(self, ts_ms: int) -> int:
        return self._months.of(ts_ms)[2]

    def _expire(self, now_ms: int) -> None:
        floor = now_ms - self._window_ms
        buckets = self.buckets
        while buckets and buckets[0][0] + self.bucket_ms <= floor:
            _, table = buckets.popleft()
            for provider, vec in table.items():
                _add_both(self.totals, provider, self.totals_all, _negated(vec))

    def settled(self, metric: str, providers: frozenset[str] | None, now_ms: int) -> int:
        if self.window.monthly:
            mid = self._month(now_ms)
            if providers is None:
                vec = self.month_all.get(mid)
                return metric_of(vec, metric) if vec else 0
            table = self.months.get(mid)
            return _sum(table, metric, providers) if table else 0
        buckets = self.buckets
        if buckets and buckets[0][0] + self.bucket_ms <= now_ms - self._window_ms:
            self._expire(now_ms)
        if providers is None:
            return metric_of(self.totals_all, metric)
        return _sum(self.totals, metric, providers)

    def used(self, metric: str, providers: frozenset[str] | None, now_ms: int) -> int:
        if providers is None:
            return self.settled(metric, None, now_ms) + metric_of(self.reserved_all, metric)
        reserved = self.reserved
        return self.settled(metric, providers, now_ms) + (_sum(reserved, metric, providers) if reserved else 0)

    def reserve(self, provider: str, vec: Sequence[int]) -> None:
        """Hold an in-flight call's worst case (release it with the negated vector)."""
        _add_both(self.reserved, provider, self.reserved_all, vec)

    def add_settled(self, ts_ms: int, provider: str, vec: Sequence[int]) -> None:
        if self.window.monthly:
            mid = self._month(ts_ms)
            table = self.months.get(mid)
            if table is None:  # a new billing month: drop months before the previous one
                for old in [m for m in self.months if m < mid - 1]:
                    del self.months[old]
                    self.month_all.pop(old, None)
                table = self.months[mid] = {}
                self.month_all[mid] = [0, 0, 0, 0]
            _add_both(table, provider, self.month_all[mid], vec)
            return
        start = ts_ms - ts_ms % self.bucket_ms
        _add_both(self.totals, provider, self.totals_all, vec)
        for b_start, existing in reversed(self.buckets):  # newest first: almost always the last one
            if b_start == start:
                _add(existing, provider, vec)
                return
            if b_start < start:
                break
        fresh: dict[str, list[int]] = {}
        _add(fresh, provider, vec)
        if not self.buckets or self.buckets[-1][0] < start:
            self.buckets.append((start, fresh))
        else:  # a late settle of an older call: keep the buckets in time order
            self.buckets = deque(sorted([*self.buckets, (start, fresh)], key=lambda b: b[0]))

    def retry_after_s(self, metric: str, providers: frozenset[str] | None, need: int, limit: int,
                      now_ms: int) -> int:
        """Seconds until enough of the window has expired for `need` more to fit under `limit`."""
        if self.window.monthly:
            return month_seconds_left(now_ms, self._billing_day, self._tz)
        used = self.used(metric, providers, now_ms)
        for start, table in self.buckets:
            used -= _sum(table, metric, providers)
            if used + need <= limit:
                free_at = start + self.bucket_ms + self._window_ms
                return max(1, (free_at - now_ms + 999) // 1000)
        return max(1, self.window.seconds)


@dataclass(slots=True)
class Reservation:
    rid: int
    counters: list[Counter]
    provider: str
    vector: tuple[int, int, int, int]
    ts_ms: int
    expires_ms: int
    held: bool = True  # its worst case still counts (until settled or expired)
    settled: bool = False  # its actual usage has been counted


class LocalLedger:
    def __init__(self, loader: Loader, billing_day: int, tz: ZoneInfo, reservation_ttl_s: float) -> None:
        self._loader = loader
        self._billing_day = billing_day
        self._tz = tz
        self._ttl_ms = int(reservation_ttl_s * 1000)
        self._counters: dict[CounterId, Counter] = {}
        self._loading: dict[CounterId, asyncio.Future[None]] = {}
        self._reload: set[CounterId] = set()  # counters being read while stored usage arrived: read again
        self._reservations: dict[int, Reservation] = {}
        self._next_id = 0

    def counter(self, cid: CounterId, window: Window) -> Counter:
        found = self._counters.get(cid)
        if found is None:
            found = self._counters[cid] = Counter(window, self._billing_day, self._tz)
        return found

    async def ensure_loaded(self, caps: Sequence[Cap], now_ms: int) -> None:
        """Load settled history for counters used for the first time (one store query each)."""
        counters = self._counters
        for cap in caps:
            cid = cap.key
            counter = counters.get(cid)
            if counter is not None and counter.loaded:
                continue
            counter = self.counter(cid, cap.window)
            pending = self._loading.get(cid)
            if pending is not None:
                await pending
                continue
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._loading[cid] = fut
            try:
                start, _ = window_bounds_ms(cap.window, now_ms, self._billing_day, self._tz)
                self._reload.discard(cid)
                step = counter.bucket_ms or MONTH_LOAD_BUCKET_MS
                rows = await self._loader(cap.counter[0], cap.counter[1], start, step)
                while cid in self._reload:  # usage was stored during the read: it may or may not be in `rows`
                    self._reload.discard(cid)
                    rows = await self._loader(cap.counter[0], cap.counter[1], start, step)
                for ts, provider, spend, inp, outp, reqs in rows:
                    counter.add_settled(ts, provider, (spend, inp, outp, reqs))
                counter.loaded = True
                fut.set_result(None)
            except BaseException as exc:
                fut.set_exception(exc)
                fut.exception()  # raised to this caller below; other waiters get it too (no "never retrieved")
                raise
            finally:
                del self._loading[cid]

    async def reserve(self, caps: Sequence[Cap], charge: Charge, now_ms: int, ceilings: Ceilings) -> ReserveResult:
        try:
            return self.reserve_now(caps, charge, now_ms, ceilings)
        except _NotLoaded:
            await self.ensure_loaded(caps, now_ms)  # first use: read the store's history
            return self.reserve_now(caps, charge, now_ms, ceilings)

    def try_reserve(self, caps: Sequence[Cap], charge: Charge, now_ms: int, ceilings: Ceilings
                    ) -> ReserveResult | None:
        """`reserve` without awaiting, when every counter is already loaded (the usual case); else None."""
        try:
            return self.reserve_now(caps, charge, now_ms, ceilings)
        except _NotLoaded:
            return None

    async def warm(self, caps: Sequence[Cap], now_ms: int) -> None:
        await self.ensure_loaded(caps, now_ms)

    async def cap_used(self, cap: Cap, now_ms: int) -> int:
        await self.ensure_loaded([cap], now_ms)
        return self._counters[cap.key].used(cap.metric, cap.providers, now_ms)

    async def close(self) -> None:
        return None

    def reserve_now(self, caps: Sequence[Cap], charge: Charge, now_ms: int, ceilings: Ceilings) -> ReserveResult:
        """Read every cap's counter and, unless a ceiling would be exceeded, reserve the charge on all of them,
        atomically (no await). Raises _NotLoaded (before changing anything) when a counter has not been read
        from the store yet."""
        if len(ceilings) != len(caps):
            check_ceilings(caps, ceilings)  # raises
        usage: list[CapUsage] = []
        over: list[int] = []
        counters: list[Counter] = []  # each once: caps may share a counter
        vec = charge.vector()
        provider = charge.provider
        table = self._counters
        for n, cap in enumerate(caps):
            counter = table.get(cap.key)
            if counter is None or not counter.loaded:
                raise _NotLoaded
            if counter not in counters:
                counters.append(counter)
            limit = cap.units
            providers = cap.providers
            used = counter.used(cap.metric, providers, now_ms)
            need = metric_of(vec, cap.metric) if providers is None or provider in providers else 0
            after = used + need
            retry = counter.retry_after_s(cap.metric, providers, need, limit, now_ms) if after > limit else 0
            usage.append(CapUsage(cap, used, need, limit, retry))
            ceiling = ceilings[n]
            if ceiling is not None and after > ceiling:
                over.append(n)
        if over:
            return ReserveResult(usage, None, tuple(over))
        for counter in counters:
            counter.reserve(provider, vec)
        self._next_id += 1
        res = Reservation(self._next_id, counters, provider, vec, now_ms, now_ms + self._ttl_ms)
        self._reservations[res.rid] = res
        return ReserveResult(usage, res)

    def settle(self, res: object, actual: Charge) -> None:
        """Release the reservation's hold (unless it expired already) and count what the call really used, at
        the call's start time. Once per reservation: settling it again changes nothing."""
        assert isinstance(res, Reservation)
        if res.settled:
            return
        res.settled = True
        if res.held:
            self._release(res)
        vec = actual.vector()
        if any(vec):
            for counter in res.counters:
                counter.add_settled(res.ts_ms, actual.provider, vec)

    def count_stored(self, usage: Sequence[StoredUsage], windows: Sequence[Window]) -> None:
        """Count calls stored by someone else (an agent's shipped events) in the counters already read from the
        store; a counter read later finds them in the store, and one being read now is read again."""
        del windows  # every counter this ledger holds is found by its scope
        if not usage:
            return
        by_scope: dict[tuple[str, str], list[Counter]] = {}
        for cid, counter in self._counters.items():
            by_scope.setdefault((cid[0], cid[1]), []).append(counter)
        loading: dict[tuple[str, str], list[CounterId]] = {}
        for cid in self._loading:
            loading.setdefault((cid[0], cid[1]), []).append(cid)
        for ts_ms, scopes, charge in usage:
            vec = charge.vector()
            for scope in scopes:
                for counter in by_scope.get(scope, ()):
                    if counter.loaded:
                        counter.add_settled(ts_ms, charge.provider, vec)
                self._reload.update(loading.get(scope, ()))

    def _release(self, res: Reservation) -> None:
        res.held = False
        self._reservations.pop(res.rid, None)
        negated = _negated(res.vector)
        for counter in res.counters:
            counter.reserve(res.provider, negated)

    def expire(self, now_ms: int) -> int:
        """Release the hold of reservations older than the reservation TTL (a crash, or a very long call), so
        nothing leaks. A call that settles later still counts what it used."""
        stale = [res for res in self._reservations.values() if res.expires_ms <= now_ms]
        for res in stale:
            log.warning("releasing the hold of a call unsettled after the reservation TTL (call started %d); "
                        "its usage is still counted if it settles", res.ts_ms)
            self._release(res)
        return len(stale)

    @property
    def open_reservations(self) -> int:
        return len(self._reservations)

"""The Redis ledger: counters shared by every gateway, checked and reserved by one Lua script.

A counter missing from Redis (never loaded, expired, flushed) is rebuilt from the store before it is
used, never from a local value. Redis unreachable raises StoreError: the gateway then fails closed
(or open, where a rule or the config says so).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from zoneinfo import ZoneInfo

import redis as syncredis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from tollhouse.events.store import StoreError
from tollhouse.ledger.local import Loader
from tollhouse.ledger.redis_lua import LOAD, RESERVE, SETTLE
from tollhouse.ledger.stored import StoredUsage
from tollhouse.ledger.types import CapUsage, Ceilings, Charge, ReserveResult, check_ceilings
from tollhouse.ledger.windows import BillingMonths, bucket_ms, month_seconds_left, window_bounds_ms
from tollhouse.policy.engine import Cap
from tollhouse.policy.rules import Window

log = logging.getLogger("tollhouse.ledger")

_DAY_MS = 86_400_000


@dataclass(slots=True)
class RedisReservation:
    member: str
    keys: tuple[str, ...]
    windows: tuple[tuple[int, int], ...]  # (window ms or 0 for monthly, bucket ms) per key
    ts_ms: int
    ttls: tuple[int, ...]
    settled: bool = False  # its settle has been sent (a reservation is settled once)


def rebuild_all_counters(url: str, prefix: str = "tollhouse") -> int:
    """Mark every budget counter in Redis for rebuilding from the store before its next use (in-flight
    reservations are kept). For a start after an unclean stop whose in-flight calls were recorded at their
    worst case in the store: their reservations in Redis expire, their spend must still count. Returns how
    many counters were marked. Raises redis.RedisError when Redis cannot be reached."""
    client = syncredis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)
    marked = 0
    try:
        pipe = client.pipeline(transaction=False)
        for key in client.scan_iter(match=f"{prefix}:{{ledger}}:*:t", count=1000):
            pipe.hdel(key, "L")
            marked += 1
        pipe.execute()
    finally:
        client.close()
    return marked


class RedisLedger:
    def __init__(self, url: str, loader: Loader, billing_day: int, tz: ZoneInfo, reservation_ttl_s: float,
                 prefix: str = "tollhouse", on_settle_error: Callable[[str], None] = lambda error: None) -> None:
        self._redis = aioredis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._reserve = self._redis.register_script(RESERVE)
        self._settle = self._redis.register_script(SETTLE)
        self._load = self._redis.register_script(LOAD)
        self._loader = loader
        self._billing_day = billing_day
        self._tz = tz
        self._ttl_ms = int(reservation_ttl_s * 1000)
        self._prefix = prefix
        self._next = 0
        self._pending: set[asyncio.Task[None]] = set()
        self._settles: list[tuple[RedisReservation, Charge]] = []  # queued for the next round trip
        self._reserves: list[tuple[list[str], list[str | int], asyncio.Future[list[object]]]] = []  # likewise
        self._flush_scheduled = False
        # Counters a settle could not reach: rebuilt from the store (which has those calls) before next use.
        self._stale: set[str] = set()
        self._loading: dict[str, bool] = {}  # counters being read from the store: usage stored meanwhile (True)
        self._on_settle_error = on_settle_error
        self.url = url
        self._months = BillingMonths(billing_day, tz)
        self._month_of = self._months.of

    def _key(self, cap: Cap, now_ms: int) -> str:
        return self._key_at(cap.counter[0], cap.counter[1], cap.window, now_ms)

    def _key_at(self, scope: str, ident: str, window: Window, ts_ms: int) -> str:
        """One hash tag for every ledger key: a script touching several counters stays in one slot."""
        if window.monthly:
            return f"{self._prefix}:{{ledger}}:{scope}:{ident}:m{self._month_of(ts_ms)[2]}"
        return f"{self._prefix}:{{ledger}}:{scope}:{ident}:w{window.seconds}"

    def count_stored(self, usage: Sequence[StoredUsage], windows: Sequence[Window]) -> None:
        """Count calls stored by someone else (an agent's shipped events) in every counter of their scopes over
        `windows` (the windows the policy counts), with the settle script: a counter Redis holds counts them,
        one it does not hold is built from the store later, which has them. Queued like a settle."""
        for n, (ts_ms, scopes, charge) in enumerate(usage):
            keys = tuple(self._key_at(scope, ident, window, ts_ms) for scope, ident in scopes for window in windows)
            if not keys:
                continue
            spans = tuple((0, 0) if w.monthly else (w.seconds * 1000, bucket_ms(w))
                          for _ in scopes for w in windows)
            ttl = max(60_000, *(self._data_ttl_at(w, ts_ms) for w in windows))
            for key in keys:
                if key in self._loading:
                    self._loading[key] = True
            self._next += 1
            member = f"stored.{id(self):x}.{self._next}.{n}"  # never a reservation: the script just counts
            self.settle(RedisReservation(member, keys, spans, ts_ms, (ttl,)), charge)

    def _data_ttl_at(self, window: Window, now_ms: int) -> int:
        if window.monthly:
            return self._month_of(now_ms)[1] - now_ms + 7 * _DAY_MS
        return window.seconds * 1000 + 2 * bucket_ms(window)

    def _window(self, cap: Cap) -> tuple[int, int]:
        return (0, 0) if cap.window.monthly else (cap.window.seconds * 1000, bucket_ms(cap.window))

    def _data_ttl(self, cap: Cap, now_ms: int) -> int:
        return self._data_ttl_at(cap.window, now_ms)

    async def _load_counter(self, cap: Cap, now_ms: int) -> None:
        """Build the counter from the store. Usage stored by someone else while it is read (`count_stored`) may
        or may not be in what was read: then the counter is unmarked, that usage's queued count is sent (to an
        unmarked counter it adds nothing) and the counter is read again, so it is never counted twice."""
        key = self._key(cap, now_ms)
        start, _ = window_bounds_ms(cap.window, now_ms, self._billing_day, self._tz)
        window_ms, b_ms = self._window(cap)
        for _ in range(3):
            self._loading[key] = False
            try:
                rows = await self._loader(cap.counter[0], cap.counter[1], start, b_ms or 1000)
                args: list[str | int] = [self._data_ttl(cap, now_ms), window_ms]
                for ts, provider, spend, inp, outp, reqs in rows:
                    args += [ts, provider, spend, inp, outp, reqs]
                await self._load(keys=[key], args=args)
            finally:
                dirty = self._loading.pop(key, False)
            if not dirty:
                return
            await self._redis.hdel(f"{key}:t", "L")
            await self.flushed()
        raise StoreError("Redis counters could not be loaded from the store (usage kept arriving while reading)")

    async def reserve(self, caps: Sequence[Cap], charge: Charge, now_ms: int, ceilings: Ceilings) -> ReserveResult:
        check_ceilings(caps, ceilings)
        keys = [self._key(cap, now_ms) for cap in caps]
        self._next += 1
        rid = f"{id(self):x}.{self._next}"
        args: list[str | int] = [now_ms, rid, now_ms + self._ttl_ms, charge.provider,
                                 *charge.vector(), max(self._data_ttl(cap, now_ms) for cap in caps)]
        for cap, ceiling in zip(caps, ceilings, strict=True):
            window_ms, b_ms = self._window(cap)
            args += [window_ms, b_ms, cap.metric, ",".join(sorted(cap.providers)) if cap.providers else "", cap.units,
                     -1 if ceiling is None else ceiling]
        try:
            if self._stale:
                await self._invalidate_stale()
            out: list[Any] = await self._queue_reserve(keys, args)  # with every other call of this loop pass
            loads = 0
            while out[0] == b"LOAD":  # counters Redis does not hold yet: load them from the store, then again
                loads += 1
                if loads > 2:
                    raise StoreError("Redis counters could not be loaded from the store")
                await asyncio.gather(*(self._load_counter(caps[int(i) - 1], now_ms) for i in out[1:]))
                out = await self._reserve(keys=keys, args=args)
        except RedisError as exc:
            raise StoreError(f"Redis at {self.url} failed: {exc}") from None
        usage = []
        over = []
        for n, cap in enumerate(caps):
            used, need, retry_ms, beyond = (int(v) for v in out[1 + 4 * n: 5 + 4 * n])
            limit = cap.units
            retry = 0
            if used + need > limit:
                retry = (month_seconds_left(now_ms, self._billing_day, self._tz) if cap.window.monthly
                         else max(1, (retry_ms + 999) // 1000))
            usage.append(CapUsage(cap, used, need, limit, retry))
            if beyond:
                over.append(n)
        if out[0] == b"OVER":
            return ReserveResult(usage, None, tuple(over))
        distinct = list(dict.fromkeys(keys))
        member = f"{rid}|{charge.provider}|" + "|".join(str(v) for v in charge.vector())
        windows = tuple(self._window(caps[keys.index(k)]) for k in distinct)
        ttls = tuple(self._data_ttl(caps[keys.index(k)], now_ms) for k in distinct)
        return ReserveResult(usage, RedisReservation(member, tuple(distinct), windows, now_ms, ttls))

    def try_reserve(self, caps: Sequence[Cap], charge: Charge, now_ms: int, ceilings: Ceilings
                    ) -> ReserveResult | None:
        return None  # always a round trip to Redis

    def settle(self, reservation: object, actual: Charge) -> None:
        """Queue the settle: it goes to Redis with every reserve and settle queued in the same loop pass. Once
        per reservation: Redis counts the actual usage even when the hold has expired, so a second settle of
        the same reservation is not sent."""
        assert isinstance(reservation, RedisReservation)
        if reservation.settled:
            return
        reservation.settled = True
        self._settles.append((reservation, actual))
        self._schedule_flush()

    def _queue_reserve(self, keys: list[str], args: list[str | int]) -> asyncio.Future[list[object]]:
        answer: asyncio.Future[list[object]] = asyncio.get_running_loop().create_future()
        self._reserves.append((keys, args, answer))
        self._schedule_flush()
        return answer

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            task = asyncio.get_running_loop().create_task(self._flush())
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _flush(self) -> None:
        """One pipelined round trip: first the settles (they free what their calls had reserved), then the
        reserves, each script with its own result."""
        self._flush_scheduled = False
        settles, self._settles = self._settles, []
        reserves, self._reserves = self._reserves, []
        commands: list[tuple[str, list[str], list[str | int]]] = [
            (self._settle.sha, list(res.keys), self._settle_args(res, actual)) for res, actual in settles]
        commands += [(self._reserve.sha, keys, args) for keys, args, _ in reserves]
        try:
            results = await self._pipelined(commands)
        except RedisError as exc:
            results = [exc] * len(commands)
        self._settled(settles, results[:len(settles)])
        for (_, _, answer), result in zip(reserves, results[len(settles):], strict=True):
            if answer.done():
                continue  # the caller went away; an unsettled reservation expires in Redis on its own
            if isinstance(result, Exception):
                answer.set_exception(result if isinstance(result, RedisError) else RedisError(str(result)))
            else:
                answer.set_result(cast(list[object], result))

    async def _settle_now(self, res: RedisReservation, actual: Charge) -> None:
        """One settle, awaited (benchmarks time it)."""
        if res.settled:
            return
        res.settled = True
        await self._settle_batch([(res, actual)])

    def _settle_args(self, res: RedisReservation, actual: Charge) -> list[str | int]:
        args: list[str | int] = [res.member, actual.provider, *actual.vector(), res.ts_ms, max(res.ttls)]
        for window_ms, b_ms in res.windows:
            args += [window_ms, b_ms]
        return args

    async def _settle_batch(self, batch: list[tuple[RedisReservation, Charge]]) -> None:
        commands = [(self._settle.sha, list(res.keys), self._settle_args(res, actual)) for res, actual in batch]
        try:
            results = await self._pipelined(commands)
        except RedisError as exc:
            results = [exc] * len(commands)
        self._settled(batch, results)

    def _settled(self, batch: list[tuple[RedisReservation, Charge]], results: Sequence[object]) -> None:
        failed = [res for (res, _), result in zip(batch, results, strict=True) if isinstance(result, Exception)]
        if not failed:
            return
        # The reservations expire on their own. The calls' spend is in the store (recorded before the
        # settle), so their counters are rebuilt from there before they are used again: never undercounted.
        for res in failed:
            self._stale.update(res.keys)
        error = next(r for r in results if isinstance(r, Exception))
        log.error("settling %d call(s) in Redis failed (%s); their counters will be rebuilt from the store",
                  len(failed), error)
        self._on_settle_error(f"Redis at {self.url} failed: {error}")

    async def _pipelined(self, commands: list[tuple[str, list[str], list[str | int]]]) -> list[object]:
        """EVALSHA each (sha, keys, args) in one write and one read; a script Redis forgot (restart, SCRIPT
        FLUSH) is loaded again and its commands repeated. Raises RedisError when Redis cannot be reached."""
        results = await self._evalsha_all(commands)
        if any(isinstance(r, NoScriptError) for r in results):
            await self._redis.script_load(SETTLE)
            await self._redis.script_load(RESERVE)
            again = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            for i, result in zip(again, await self._evalsha_all([commands[i] for i in again]), strict=True):
                results[i] = result
        return results

    async def _evalsha_all(self, commands: list[tuple[str, list[str], list[str | int]]]) -> list[object]:
        pipe = self._redis.pipeline(transaction=False)
        for sha, keys, args in commands:
            pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))

    async def _invalidate_stale(self) -> None:
        """Mark counters whose settle was lost for reloading (in-flight reservations are kept)."""
        stale = list(self._stale)
        pipe = self._redis.pipeline(transaction=False)
        for key in stale:
            pipe.hdel(f"{key}:t", "L")
        await pipe.execute()
        self._stale.difference_update(stale)
        log.warning("rebuilding %d budget counter(s) from the store after a lost settle", len(stale))

    async def warm(self, caps: Sequence[Cap], now_ms: int) -> None:
        return None  # counters live in Redis, loaded by whichever gateway uses them first

    async def cap_used(self, cap: Cap, now_ms: int) -> int:
        result = await self.reserve([cap], Charge("", 0, 0, 0, 0), now_ms, [None])
        if result.reservation is not None:
            self.settle(result.reservation, Charge("", 0, 0, 0, 0))
        return result.usage[0].used

    def expire(self, now_ms: int) -> int:
        return 0  # reservations carry their expiry in Redis

    async def flushed(self) -> None:
        """Wait until every queued settle and reserve has been answered by Redis."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def close(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self._redis.aclose()

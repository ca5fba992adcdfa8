"""The Redis ledger counts what the embedded one counts: the same calls, the same clock, the same answers.

Driven directly (time is passed in), against a real redis-server, side by side with LocalLedger.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import free_port
from test_ledger_local import _caps, _hard, _no_history
from test_ledger_redis import redis_server
from tollhouse.ledger.local import LocalLedger
from tollhouse.ledger.redis import RedisLedger
from tollhouse.ledger.types import Charge, ReserveResult

UTC_ZONE = ZoneInfo("UTC")
T0 = 1_800_000_000_000
_prefixes = itertools.count()

# a rolling token window and a request window on the same counter (one key, two caps), plus a monthly budget
RULES: list[dict[str, object]] = [
    {"id": "tok", "scope": "individual", "action": {"type": "hard_stop"},
     "condition": {"type": "usage", "metric": "tokens_per_minute", "threshold": 500, "window": "1m"}},
    {"id": "req", "scope": "individual", "action": {"type": "hard_stop"},
     "condition": {"type": "usage", "metric": "requests_per_minute", "threshold": 8, "window": "1m"}},
    {"id": "usd", "scope": "individual", "action": {"type": "hard_stop"},
     "condition": {"type": "budget", "threshold": 1, "window": "monthly"}},
]


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(free_port(), Path(tmp_path_factory.mktemp("redis"))) as url:
        yield url


def _pair(url: str, ttl_s: float = 60) -> tuple[LocalLedger, RedisLedger]:
    return (LocalLedger(_no_history, 1, UTC_ZONE, reservation_ttl_s=ttl_s),
            RedisLedger(url, _no_history, 1, UTC_ZONE, reservation_ttl_s=ttl_s, prefix=f"t{next(_prefixes)}"))


Numbers = tuple[list[tuple[int, int, int, int]], tuple[int, ...], bool]


def _numbers(result: ReserveResult) -> Numbers:
    """Everything a ledger answers, as plain values: per cap (used, need, limit, retry_after_s), over, refused."""
    return ([(u.used, u.need, u.limit, u.retry_after_s) for u in result.usage], result.over,
            result.reservation is None)


async def _reserve_both(local: LocalLedger, remote: RedisLedger, charge: Charge, now: int,
                        ceilings: list[int | None]) -> tuple[ReserveResult, ReserveResult]:
    caps = _caps(RULES)
    await local.ensure_loaded(caps, now)
    local.expire(now)  # what the gateway's housekeeping does; Redis drops expired holds by their score
    return (await local.reserve(caps, charge, now, ceilings), await remote.reserve(caps, charge, now, ceilings))


async def _totals(local: LocalLedger, remote: RedisLedger, now: int) -> tuple[list[int], list[int]]:
    await remote.flushed()
    local.expire(now)
    caps = _caps(RULES)
    return ([await local.cap_used(cap, now) for cap in caps], [await remote.cap_used(cap, now) for cap in caps])


async def _both(local: LocalLedger, remote: RedisLedger, charge: Charge, now: int,
                settle: Charge | None) -> tuple[Numbers, Numbers]:
    mine, theirs = await _reserve_both(local, remote, charge, now, _hard(_caps(RULES)))
    for ledger, result in ((local, mine), (remote, theirs)):
        if result.reservation is not None and settle is not None:
            ledger.settle(result.reservation, settle)
    await remote.flushed()
    return _numbers(mine), _numbers(theirs)


ceiling_pct = st.sampled_from([None, 0, 50, 100, 150])  # percent of the cap's limit; None: just count
step = st.tuples(
    st.integers(0, 20_000),  # ms since the previous call
    st.integers(1, 200), st.integers(0, 200),  # input and output tokens of the worst case
    st.tuples(ceiling_pct, ceiling_pct, ceiling_pct),
    st.sampled_from(["settle", "settle twice", "hold", "never"]),  # what becomes of this call's reservation
    st.booleans(),  # first settle the oldest held call (its hold may have expired by now)
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(step, min_size=1, max_size=25))
def test_redis_and_embedded_ledgers_agree_call_by_call(
        shared_redis: str, steps: list[tuple[int, int, int, tuple[int | None, ...], str, bool]]) -> None:
    """Rolling windows (buckets leaving), two caps on one counter, a monthly budget; ceilings on some caps and
    none on others; reservations settled at once, settled twice, held past their TTL and settled late, or
    never settled: after every call both ledgers give the same numbers and hold the same totals."""

    async def run() -> None:
        local, remote = _pair(shared_redis, ttl_s=10)  # holds often expire before their call settles
        caps = _caps(RULES)
        held: list[tuple[object, object, Charge]] = []
        try:
            now = T0
            for gap, inp, out, pcts, fate, settle_held in steps:
                now += gap
                if settle_held and held:
                    mine_res, theirs_res, late = held.pop(0)
                    local.settle(mine_res, late)
                    remote.settle(theirs_res, late)
                ceilings = [None if pct is None else cap.units * pct // 100 for cap, pct in zip(caps, pcts,
                                                                                                strict=True)]
                charge = Charge("openai", 40_000_000, inp, out)
                actual = Charge("openai", 25_000_000, inp, out // 2)
                mine, theirs = await _reserve_both(local, remote, charge, now, ceilings)
                assert _numbers(theirs) == _numbers(mine), f"at +{now - T0} ms"
                if mine.reservation is not None and theirs.reservation is not None:
                    if fate == "hold":
                        held.append((mine.reservation, theirs.reservation, actual))
                    elif fate != "never":
                        for _ in range(2 if fate == "settle twice" else 1):
                            local.settle(mine.reservation, actual)
                            remote.settle(theirs.reservation, actual)
                mine_totals, their_totals = await _totals(local, remote, now)
                assert their_totals == mine_totals, f"totals at +{now - T0} ms"
            for mine_res, theirs_res, late in held:  # calls that outlived their reservation end at last
                local.settle(mine_res, late)
                remote.settle(theirs_res, late)
            mine_totals, their_totals = await _totals(local, remote, now)
            assert their_totals == mine_totals, "totals once every held call settled"
        finally:
            await remote.close()

    asyncio.run(run())


def test_a_call_outliving_its_reservation_is_counted_once_by_both(shared_redis: str) -> None:
    """A call longer than the reservation TTL: the hold is released at the TTL, the spend counted when it ends
    (once: a second settle changes nothing), the same in both ledgers."""
    caps = _caps(RULES)
    usd = [cap.rule.id for cap in caps].index("usd")

    async def run() -> None:
        local, remote = _pair(shared_redis, ttl_s=900)
        try:
            mine, theirs = await _reserve_both(local, remote, Charge("openai", 600_000_000, 10, 10), T0,
                                               _hard(caps))
            assert mine.reservation is not None and theirs.reservation is not None
            later = T0 + 900_000
            held = await _totals(local, remote, later - 1)
            assert held[0] == held[1] and held[0][usd] == 600_000_000  # still held just before the TTL
            released = await _totals(local, remote, later)
            assert released[0] == released[1] and released[0][usd] == 0  # hold released at the TTL
            for _ in range(2):
                local.settle(mine.reservation, Charge("openai", 450_000_000, 10, 5))
                remote.settle(theirs.reservation, Charge("openai", 450_000_000, 10, 5))
                settled = await _totals(local, remote, later + 300_000)
                assert settled[0] == settled[1] and settled[0][usd] == 450_000_000  # counted, once
        finally:
            await remote.close()

    asyncio.run(run())


def test_an_unsettled_reservation_stops_counting_after_its_ttl(shared_redis: str) -> None:
    async def run() -> None:
        local, remote = _pair(shared_redis, ttl_s=5)
        try:
            await _both(local, remote, Charge("openai", 300_000_000, 100, 100), T0, None)
            mine, theirs = await _both(local, remote, Charge("openai", 0, 0, 0), T0 + 4_000, None)
            assert theirs == mine and mine[0][2][0] == 300_000_000  # still reserved
            mine, theirs = await _both(local, remote, Charge("openai", 0, 0, 0), T0 + 5_001, None)
            assert theirs == mine and mine[0][2][0] == 0  # expired: released
        finally:
            await remote.close()

    asyncio.run(run())


def test_large_monthly_totals_stay_exact_and_a_new_month_starts_at_zero(shared_redis: str) -> None:
    """Exact to the nano-dollar up to 2**53 nano-dollars ($9.0M) per counter and window (Redis's Lua sums in
    doubles; HINCRBY itself is exact further)."""
    caps = _caps([{"id": "usd", "scope": "individual", "action": {"type": "alert"},
                   "condition": {"type": "budget", "threshold": 100_000_000, "window": "monthly"}}])

    async def run() -> None:
        remote = RedisLedger(shared_redis, _no_history, 1, UTC_ZONE, 60, prefix=f"t{next(_prefixes)}")
        try:
            for cost in (9 * 10**15 + 7, 3, 999_999_999):
                result = await remote.reserve(caps, Charge("openai", 0, 0, 0), T0, [None])
                remote.settle(result.reservation, Charge("openai", cost, 1, 1))
            await remote.flushed()
            assert await remote.cap_used(caps[0], T0) == 9 * 10**15 + 7 + 3 + 999_999_999
            next_month = T0 + 32 * 86_400_000
            assert await remote.cap_used(caps[0], next_month) == 0
        finally:
            await remote.close()

    asyncio.run(run())


def test_a_counter_marked_stale_is_rebuilt_from_the_store(shared_redis: str) -> None:
    caps = _caps([{"id": "usd", "scope": "individual", "action": {"type": "alert"},
                   "condition": {"type": "budget", "threshold": 1, "window": "monthly"}}])
    history = [(T0 - 1000, "openai", 70_000_000, 5, 5, 1)]

    async def store(scope: str, ident: str, since: int, bucket: int) -> list[tuple[int, str, int, int, int, int]]:
        return list(history)

    async def run() -> None:
        prefix = f"t{next(_prefixes)}"
        remote = RedisLedger(shared_redis, store, 1, UTC_ZONE, 60, prefix=prefix)
        try:
            assert await remote.cap_used(caps[0], T0) == 70_000_000  # loaded from the store
            history.append((T0, "openai", 5_000_000, 1, 1, 1))  # a call whose settle was lost
            client = redis.Redis.from_url(shared_redis)
            keys = [k for k in client.keys(f"{prefix}:*:t")]
            assert keys and all(client.hexists(k, "L") for k in keys)
            remote._stale.update(k.decode()[:-2] for k in keys)  # what a failed settle records
            assert await remote.cap_used(caps[0], T0) == 75_000_000  # rebuilt, the lost call included
            client.close()
        finally:
            await remote.close()

    asyncio.run(run())

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
from test_ledger_local import _caps, _no_history
from test_ledger_redis import redis_server
from tollhouse.ledger.local import Charge, LocalLedger
from tollhouse.ledger.redis import RedisLedger

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


async def _both(local: LocalLedger, remote: RedisLedger, charge: Charge, now: int,
                settle: Charge | None) -> tuple[list[tuple[int, bool]], list[tuple[int, bool]]]:
    caps = _caps(RULES)
    await local.ensure_loaded(caps, now)
    local.expire(now)
    answers = []
    for ledger in (local, remote):
        result = await ledger.reserve(caps, charge, now, enforce=True)
        answers.append([(s.used, s.exceeded) for s in result.states])
        if result.reservation is not None and settle is not None:
            ledger.settle(result.reservation, settle)
    await asyncio.sleep(0)  # the Redis settle goes out with the loop's next pass
    await asyncio.sleep(0.01)
    return answers[0], answers[1]


calls = st.lists(st.tuples(st.integers(0, 20_000), st.integers(1, 200), st.integers(0, 200), st.booleans()),
                 min_size=1, max_size=25)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calls)
def test_redis_and_embedded_ledgers_agree_call_by_call(shared_redis: str, steps: list[tuple[int, int, int, bool]]
                                                       ) -> None:
    """Rolling windows (buckets leaving), two caps on one counter, reservations that never settle and expire,
    monthly spend: after every call both ledgers report the same usage and the same verdicts."""

    async def run() -> None:
        local, remote = _pair(shared_redis, ttl_s=30)
        try:
            now = T0
            for gap, inp, out, settles in steps:
                now += gap
                charge = Charge("openai", 40_000_000, inp, out)
                actual = Charge("openai", 25_000_000, inp, out // 2) if settles else None
                mine, theirs = await _both(local, remote, charge, now, actual)
                assert theirs == mine, f"at +{now - T0} ms"
        finally:
            await remote.close()

    asyncio.run(run())


def test_an_unsettled_reservation_stops_counting_after_its_ttl(shared_redis: str) -> None:
    async def run() -> None:
        local, remote = _pair(shared_redis, ttl_s=5)
        try:
            await _both(local, remote, Charge("openai", 300_000_000, 100, 100), T0, None)
            mine, theirs = await _both(local, remote, Charge("openai", 0, 0, 0), T0 + 4_000, None)
            assert theirs == mine and mine[2][0] == 300_000_000  # still reserved
            mine, theirs = await _both(local, remote, Charge("openai", 0, 0, 0), T0 + 5_001, None)
            assert theirs == mine and mine[2][0] == 0  # expired: released
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
                result = await remote.reserve(caps, Charge("openai", 0, 0, 0), T0, enforce=False)
                remote.settle(result.reservation, Charge("openai", cost, 1, 1))
            await asyncio.sleep(0.05)
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

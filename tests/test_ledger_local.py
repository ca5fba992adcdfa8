"""The embedded ledger on its own: windows, running totals, retry-after, reservations that leak."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tollhouse.config import DirectoryConfig
from tollhouse.directory import Directory
from tollhouse.events.store import Store
from tollhouse.ledger.local import MONTH_LOAD_BUCKET_MS, Charge, Counter, HistoryRow, LocalLedger
from tollhouse.ledger.windows import month_id
from tollhouse.policy.engine import CallFacts, Cap, CompiledPolicy
from tollhouse.policy.rules import Window, parse_count_window, parse_rules
from usage_seed import event

UTC_ZONE = ZoneInfo("UTC")
MINUTE = parse_count_window("1m", Window(True))


def _ms(*args: int, tz: ZoneInfo = UTC_ZONE) -> int:
    return int(datetime(*args, tzinfo=tz).timestamp() * 1000)  # type: ignore[misc]


def test_billing_months_follow_the_billing_day_and_zone() -> None:
    ny = ZoneInfo("America/New_York")
    assert month_id(_ms(2026, 12, 1, 4, 59), 1, ny) == month_id(_ms(2026, 11, 15), 1, ny)  # still Nov 30 in NY
    assert month_id(_ms(2026, 12, 1, 5, 0), 1, ny) == month_id(_ms(2026, 12, 20), 1, ny)
    # billing day 15: Nov 14 belongs to the month that began Oct 15
    assert month_id(_ms(2026, 11, 14), 15, UTC_ZONE) == month_id(_ms(2026, 10, 20), 15, UTC_ZONE)
    assert month_id(_ms(2026, 11, 15), 15, UTC_ZONE) != month_id(_ms(2026, 11, 14), 15, UTC_ZONE)


def test_rolling_window_expires_and_says_when_it_frees() -> None:
    c = Counter(MINUTE, 1, UTC_ZONE)
    t0 = 1_000_000_000_000
    c.add_settled(t0, "openai", (0, 30, 0, 1))
    c.add_settled(t0 + 20_000, "openai", (0, 30, 0, 1))
    c.add_settled(t0 + 40_000, "anthropic", (0, 30, 0, 1))
    assert c.used("tokens", None, t0 + 45_000) == 90
    assert c.used("tokens", frozenset({"openai"}), t0 + 45_000) == 60
    # 40 more tokens fit under 100 once the first 30 leave: at t0 + 61 s (one-second buckets)
    assert c.retry_after_s("tokens", None, 40, 100, t0 + 45_000) == 16
    assert c.used("tokens", None, t0 + 61_000) == 60
    assert c.used("tokens", None, t0 + 101_000) == 0 and not c.totals.get("openai", [0, 0, 0, 0])[1]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300_000), st.integers(0, 1000)), max_size=60), st.integers(0, 400_000))
def test_running_total_equals_a_brute_force_sum(calls: list[tuple[int, int]], now_offset: int) -> None:
    """Whatever the order of settles (late ones included), the counter equals summing the window."""
    c = Counter(MINUTE, 1, UTC_ZONE)
    t0 = 1_700_000_000_000
    for offset, tokens in calls:
        c.add_settled(t0 + offset, "p", (0, tokens, 0, 1))
    now = t0 + max([o for o, _ in calls] + [0]) + now_offset % 120_000
    bucket = c.bucket_ms
    expected = sum(tok for off, tok in calls
                   if (t0 + off) - (t0 + off) % bucket + bucket > now - 60_000)
    assert c.used("tokens", None, now) == expected


def _caps(rules: list[dict[str, object]], user: str = "alice") -> tuple[Cap, ...]:
    directory = Directory(DirectoryConfig.model_validate({"teams": [{"id": "t"}], "people": [{"id": user,
                                                                                           "team": "t"}]}))
    policy = CompiledPolicy(parse_rules(rules))
    return policy.evaluate(CallFacts("openai", "api.openai.com", "m"), directory.subject(user),
                           datetime.now(UTC)).caps


async def _no_history(scope: str, ident: str, since: int, bucket: int) -> list[HistoryRow]:
    return []


def _hard(caps: Sequence[Cap]) -> list[int | None]:
    """The ceilings an enforcing gateway passes: a hard cap's limit, else none (just count)."""
    return [cap.units if cap.hard else None for cap in caps]


def test_reservations_count_until_settled_and_expire_if_never_settled() -> None:
    caps = _caps([{"id": "b", "scope": "individual", "condition": {"type": "budget", "threshold": 1},
                   "action": {"type": "hard_stop"}}])

    async def run() -> None:
        ledger = LocalLedger(_no_history, 1, UTC_ZONE, reservation_ttl_s=60)
        now = 1_800_000_000_000
        await ledger.ensure_loaded(caps, now)
        first = await ledger.reserve(caps, Charge("openai", 600_000_000, 10, 10), now, _hard(caps))
        assert first.reservation is not None and first.over == ()
        second = await ledger.reserve(caps, Charge("openai", 600_000_000, 10, 10), now, _hard(caps))
        assert second.reservation is None and second.over == (0,)  # 0.6 + 0.6 > 1
        assert second.usage[0][1:4] == (600_000_000, 600_000_000, 1_000_000_000)  # used, need, limit
        ledger.settle(first.reservation, Charge("openai", 100_000_000, 10, 2))  # it cost only $0.10
        third = await ledger.reserve(caps, Charge("openai", 600_000_000, 10, 10), now, _hard(caps))
        assert third.reservation is not None and third.usage[0].used == 100_000_000
        assert ledger.expire(now + 59_000) == 0
        assert ledger.expire(now + 61_000) == 1  # the third call never settled: released
        assert await ledger.cap_used(caps[0], now + 61_000) == 100_000_000

    asyncio.run(run())


def test_a_call_longer_than_the_reservation_ttl_still_counts_its_spend_once() -> None:
    caps = _caps([{"id": "b", "scope": "individual", "condition": {"type": "budget", "threshold": 1},
                   "action": {"type": "hard_stop"}}])

    async def run() -> None:
        ledger = LocalLedger(_no_history, 1, UTC_ZONE, reservation_ttl_s=900)
        now = 1_800_000_000_000
        long_call = await ledger.reserve(caps, Charge("openai", 500_000_000, 10, 10), now, _hard(caps))
        assert long_call.reservation is not None
        assert ledger.expire(now + 900_000) == 1  # the hold is released after the TTL ...
        assert await ledger.cap_used(caps[0], now + 900_000) == 0
        ledger.settle(long_call.reservation, Charge("openai", 300_000_000, 10, 5))  # ... the call ends at 20 min
        assert await ledger.cap_used(caps[0], now + 1_200_000) == 300_000_000  # and its spend is counted
        ledger.settle(long_call.reservation, Charge("openai", 300_000_000, 10, 5))  # a second settle: no-op
        assert await ledger.cap_used(caps[0], now + 1_200_000) == 300_000_000
        assert ledger.expire(now + 2_000_000) == 0 and ledger.open_reservations == 0

    asyncio.run(run())


def test_ceilings_decide_and_caps_without_one_are_only_counted() -> None:
    caps = _caps([{"id": "soft", "scope": "individual", "condition": {"type": "budget", "threshold": 1},
                   "action": {"type": "alert"}},
                  {"id": "tok", "scope": "individual", "action": {"type": "hard_stop"},
                   "condition": {"type": "usage", "metric": "tokens_per_minute", "threshold": 100, "window": "1m"}}])

    async def run() -> None:
        ledger = LocalLedger(_no_history, 1, UTC_ZONE, reservation_ttl_s=60)
        now = 1_800_000_000_000
        ids = [cap.rule.id for cap in caps]
        soft, tok = ids.index("soft"), ids.index("tok")
        ceilings: list[int | None] = [None, None]
        ceilings[tok] = 100
        # over the soft cap's limit, but it has no ceiling: reserved, and the numbers say how far over
        big = await ledger.reserve(caps, Charge("openai", 2_000_000_000, 30, 30), now, ceilings)
        assert big.reservation is not None and big.over == ()
        assert big.usage[soft].need == 2_000_000_000 and big.usage[soft].retry_after_s > 0  # month's end
        assert big.usage[tok].retry_after_s == 0  # 60 of 100 tokens: fits
        # 60 + 60 > 100: refused, nothing reserved; retry when the first call's bucket leaves the window
        refused = await ledger.reserve(caps, Charge("openai", 1, 30, 30), now + 10_000, ceilings)
        assert refused.reservation is None and refused.over == (tok,)
        ledger.settle(big.reservation, Charge("openai", 2_000_000_000, 30, 30))
        assert refused.usage[tok].used == 60 and refused.usage[soft].used == 2_000_000_000
        after = await ledger.reserve(caps, Charge("openai", 0, 30, 30), now + 10_000, ceilings)
        # the first call's one-second bucket [now, now + 1 s) leaves the window at now + 61 s
        assert after.reservation is None and after.usage[tok].retry_after_s == 51
        assert await ledger.cap_used(caps[tok], now + 10_000) == 60  # the refused calls reserved nothing
        with pytest.raises(ValueError, match="2 caps"):
            await ledger.reserve(caps, Charge("openai", 0, 1, 1), now, [None])

    asyncio.run(run())


def test_history_is_loaded_once_even_for_concurrent_first_calls() -> None:
    caps = _caps([{"id": "b", "scope": "individual", "condition": {"type": "budget", "threshold": 1},
                   "action": {"type": "hard_stop"}}])
    loads: list[str] = []

    async def history(scope: str, ident: str, since: int, bucket: int) -> list[HistoryRow]:
        loads.append(ident)
        await asyncio.sleep(0.01)
        return [(since + 1, "openai", 250_000_000, 5, 5, 1)]

    async def run() -> list[int]:
        ledger = LocalLedger(history, 1, UTC_ZONE, 60)
        now = 1_800_000_000_000
        await asyncio.gather(*(ledger.ensure_loaded(caps, now) for _ in range(10)))
        return [await ledger.cap_used(caps[0], now)]

    assert asyncio.run(run()) == [250_000_000]
    assert loads == ["alice"]


def test_a_monthly_counter_loads_the_month_from_the_store_in_any_zone(store: Store) -> None:
    """The month's history is read in 15-minute sums: none may fall before the billing month's start, even where
    the month starts at a quarter past the UTC hour (Kathmandu, +5:45). SQLite and PostgreSQL."""
    tz = ZoneInfo("Asia/Kathmandu")
    start = _ms(2026, 12, 1, tz=tz)  # 30 November 18:15 UTC
    calls = [event("2026-11-30T18:14:59+00:00", cost_nusd=1000),  # the month before
             event("2026-11-30T18:15:00+00:00", cost_nusd=20),
             event("2026-11-30T18:29:59+00:00", cost_nusd=300),
             event("2026-12-04T09:00:00+00:00", cost_nusd=4000),
             event("2026-12-04T09:00:01+00:00", cost_nusd=7, decision="block")]  # never settled
    store.insert_events(calls)
    assert calls[1].ts_ms == start
    caps = _caps([{"id": "org", "scope": "org", "condition": {"type": "budget", "threshold": 1, "window": "monthly"},
                   "action": {"type": "hard_stop"}}])
    asked: list[int] = []

    async def history(scope: str, ident: str, since: int, bucket: int) -> list[HistoryRow]:
        asked.append(bucket)
        return store.usage_history(scope, [ident], since, bucket)

    async def run() -> int:
        ledger = LocalLedger(history, 1, tz, 60)
        return await ledger.cap_used(caps[0], _ms(2026, 12, 5, tz=tz))

    assert asyncio.run(run()) == 4320
    assert asked == [MONTH_LOAD_BUCKET_MS]

"""The usage rollups: every stored event counted once (replays and duplicates too), filled by the migration from
the events already stored, and days kept in the organisation's local dates. On SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import logging
import sqlite3
import threading
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tollhouse.events.model import CallEvent, event_from_row
from tollhouse.events.rollup import TABLES, aggregate
from tollhouse.events.store import Store, open_store
from usage_seed import event, ms

_SUMS = "COUNT(*) AS calls, SUM(input_tokens) AS i, SUM(output_tokens) AS o, SUM(cost_nusd) AS c"


def _from_events(store: Store) -> dict[str, int]:
    row = store.db.query(f"SELECT {_SUMS} FROM events")[0]
    return {k: int(v or 0) for k, v in row.items()}


def _from_rollup(store: Store, table: str) -> dict[str, int]:
    row = store.db.query("SELECT SUM(calls) AS calls, SUM(input_tokens) AS i, SUM(output_tokens) AS o, "
                         f"SUM(cost_nusd) AS c FROM {table}")[0]
    return {k: int(v or 0) for k, v in row.items()}


def _all_match(store: Store) -> None:
    store.roll_up()  # (SQLite rolls up once a second and before its own reads; this test reads the tables)
    expected = _from_events(store)
    for table in TABLES:
        assert _from_rollup(store, table) == expected, table


def test_each_event_is_counted_once_however_often_it_is_written(store: Store) -> None:
    batch = [event("2026-12-01T10:15:00Z", cost_nusd=7), event("2026-12-01T10:45:00Z", model="gpt-4o", cost_nusd=11),
             event("2026-12-01T11:05:00Z", subject="bob", cost_nusd=None)]
    assert store.insert_events(batch) == 3
    assert store.insert_events(batch) == 0  # a replayed batch
    twice = event("2026-12-01T12:00:00Z", cost_nusd=13)
    assert store.insert_events([twice, twice, batch[0]]) == 1  # an id twice in a batch, and an old one again
    assert len(store.insert_new_events([*batch, event("2026-12-01T13:00:00Z", cost_nusd=17)])) == 1
    _all_match(store)
    assert _from_rollup(store, "usage_hourly")["calls"] == 5
    hours = store.usage_rows("hour", ["model"], ms("2026-12-01T10:00:00Z"), ms("2026-12-01T11:00:00Z"), {})
    assert sorted((r["model"], r["calls"], r["cost_nusd"]) for r in hours) == [("gpt-4o", 1, 11),
                                                                             ("gpt-4o-mini", 1, 7)]


def test_a_large_batch_with_old_ids_past_its_first_statements_is_counted_once(store: Store) -> None:
    """Old ids scattered through a large batch (ones stored before, between new ones) still leave exactly the new
    events stored and counted, and their rows in every rollup."""
    batch = [event(f"2026-12-01T{n % 24:02d}:{n % 60:02d}:00Z", subject=f"p{n}", cost_nusd=n) for n in range(700)]
    assert store.insert_events(batch[:600:2]) == 300  # every other event of the first 600
    assert [e.id for e in store.insert_new_events(batch)] == [e.id for e in batch[1:600:2] + batch[600:]]
    _all_match(store)
    assert _from_rollup(store, "usage_hourly") == {"calls": 700, "i": 70_000, "o": 35_000, "c": sum(range(700))}
    assert len(store.db.query("SELECT 1 FROM usage_hourly")) == 700  # one row per person and hour


def test_rollup_keeps_who_and_what(store: Store) -> None:
    store.insert_events([event("2026-12-01T10:00:00Z", team=None, project=None, cost_centre=None, status=429),
                         event("2026-12-01T10:10:00Z", decision="block", cost_nusd=0),
                         event("2026-12-01T10:20:00Z", would="block")])
    day = ms("2026-12-01T00:00:00Z")
    rows = store.usage_rows("day", ["team", "subject"], day, day + 86_400_000, {})
    by_team = {r["team"]: r for r in rows}
    assert by_team[None]["calls"] == 1 and by_team[None]["errors"] == 1 and by_team[None]["subject"] == "alice"
    assert by_team["platform"]["calls"] == 2
    assert by_team["platform"]["blocked"] == 1 and by_team["platform"]["would_block"] == 1
    only = store.usage_rows("day", [], day, day + 86_400_000, {"team": [""]})  # '' finds calls without a team
    assert [r["calls"] for r in only] == [1]


def test_the_migration_fills_the_rollups_from_the_stored_events(store_url: str, tmp_path: Path) -> None:
    store = open_store(store_url, tmp_path)
    store.insert_events([event(f"2026-11-{d:02d}T{h:02d}:30:00Z", subject=s, cost_nusd=d * h)
                         for d in (3, 4, 30) for h in (1, 9, 23) for s in ("alice", "bob")])
    # as a store of schema 9 was: events, no rollups
    for table in (*TABLES, "forward_hosts", "console_revocations", "console_sessions"):  # (migrations 11, 14, 15)
        store.db.execute(f"DROP TABLE {table}")
    store.db.execute("DROP INDEX events_stopped")  # (migration 12)
    store.db.execute("DROP INDEX audit_kind_ts")  # (migration 16)
    store.db.execute("DELETE FROM meta WHERE key IN ('usage_day_zone', 'usage_rolled_up_seq')")  # (10, 13)
    store.db.execute("UPDATE schema_version SET version = 9")
    store.db.close()  # (not Store.close, which would roll up into the rollups just dropped)
    reopened = open_store(store_url, tmp_path)
    try:
        assert reopened.schema_version() >= 10
        _all_match(reopened)
        assert _from_events(reopened)["calls"] == 18
    finally:
        reopened.close()


def _days(store: Store) -> dict[str, int]:
    rows = store.usage_rows("day", [], 0, ms("2030-01-01T00:00:00Z"), {})
    return {datetime.fromtimestamp(r["period_ms"] / 1000, UTC).date().isoformat(): r["calls"] for r in rows}


def test_days_are_local_dates_of_the_org_timezone(store: Store) -> None:
    # 03:00 UTC on 2 December is 22:00 on 1 December in New York
    store.insert_events([event("2026-12-02T03:00:00Z"), event("2026-12-02T15:00:00Z")])
    assert _days(store) == {"2026-12-02": 2}  # UTC until a zone is set
    store.use_day_zone("America/New_York")
    assert _days(store) == {"2026-12-01": 1, "2026-12-02": 1}  # rebuilt from the hours
    store.insert_events([event("2026-12-03T04:59:00Z"), event("2026-12-03T05:00:00Z")])  # either side of midnight
    assert _days(store) == {"2026-12-01": 1, "2026-12-02": 2, "2026-12-03": 1}
    _all_match(store)
    store.use_day_zone("UTC")
    assert _days(store) == {"2026-12-02": 2, "2026-12-03": 2}


def test_a_dst_change_day_is_one_local_day(store: Store) -> None:
    # 1 November 2026: New York falls back from EDT (-4) to EST (-5) at 06:00 UTC; the local day is 25 hours
    times = ["2026-11-01T04:30:00Z", "2026-11-01T05:30:00Z", "2026-11-01T06:30:00Z", "2026-11-02T04:30:00Z",
             "2026-11-02T05:30:00Z"]
    store.insert_events([event(t) for t in times])
    store.use_day_zone("America/New_York")
    rebuilt = _days(store)
    assert rebuilt == {"2026-11-01": 4, "2026-11-02": 1}
    # the same events written again while the zone is set: the insert path agrees with the rebuild
    events = [event_from_row(r) for r in store.db.query("SELECT * FROM events ORDER BY seq")]
    for table in TABLES:
        store.db.execute(f"DELETE FROM {table}")
    store.db.execute("DELETE FROM events")
    store.insert_events(events)
    assert _days(store) == rebuilt


def test_writers_sharing_a_store_count_each_event_once(store_url: str, tmp_path: Path) -> None:
    """Two gateways write calls of the same people and models at once, in opposite orders (their rollup updates
    touch the same rows: no deadlock), then each re-sends all of it (a retried upload racing the first: nothing
    counted twice)."""
    keys = [(s, m) for s in ("alice", "bob", "carol") for m in ("gpt-4o", "gpt-4o-mini")]
    rounds = [[event(f"2026-12-01T10:{r:02d}:00Z", subject=s, model=m, cost_nusd=r + 1) for s, m in keys]
              for r in range(40)]
    mine = [[event(f"2026-12-01T10:{r:02d}:30Z", subject=s, model=m, cost_nusd=r + 2) for s, m in reversed(keys)]
            for r in range(40)]
    stores = [open_store(store_url, tmp_path) for _ in range(2)]
    errors: list[BaseException] = []

    def deliver(store: Store, batches: list[list[CallEvent]]) -> None:
        try:
            for batch in batches:
                store.insert_events(batch)
        except BaseException as exc:
            errors.append(exc)

    def race(first: list[list[CallEvent]], second: list[list[CallEvent]]) -> None:
        threads = [threading.Thread(target=deliver, args=(stores[0], first)),
                   threading.Thread(target=deliver, args=(stores[1], second))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)

    try:
        race(rounds, mine)
        race(rounds + mine, rounds + mine)
        assert errors == []
        _all_match(stores[0])
        assert _from_events(stores[0])["calls"] == 2 * 40 * len(keys)
    finally:
        for s in stores:
            s.close()


def test_the_people_rollup_agrees_with_the_full_one(store: Store) -> None:
    store.insert_events([event(f"2026-12-0{d}T{h:02d}:10:00Z", subject=s, model=m, cost_nusd=d * h)
                         for d in (1, 2) for h in (3, 15) for s in ("alice", "bob") for m in ("a", "b")])
    store.use_day_zone("America/New_York")  # rebuilt from the hours, as a gateway does at start
    store.insert_events([event("2026-12-02T23:00:00Z", subject="bob", cost_nusd=5)])  # and kept up to date
    span = (0, ms("2030-01-01T00:00:00Z"))
    narrow = store.usage_rows("day", ["subject", "team"], *span, {})  # served by usage_daily_people
    full = store.usage_rows("day", ["subject", "team", "model"], *span, {})  # by usage_daily

    def sums(rows: list[dict[str, object]]) -> dict[tuple[object, object, object], tuple[object, object]]:
        out: dict[tuple[object, object, object], list[int]] = {}
        for r in rows:
            k = (r["period_ms"], r["subject"], r["team"])
            got = out.setdefault(k, [0, 0])
            got[0] += int(str(r["calls"]))
            got[1] += int(str(r["cost_nusd"]))
        return {k: (v[0], v[1]) for k, v in out.items()}

    assert sums(narrow) == sums(full) and len(narrow) == 6  # 30 Nov, 1 and 2 Dec in New York, two people


# Events within three days of New York's fall-back change (1 November 2026, 06:00 UTC), with missing keys,
# errors, blocks, would-blocks and unpriced calls; then written in batches, some events twice.
_DST_EDGE = ms("2026-11-01T06:00:00Z")
_an_event = st.builds(
    lambda minutes, subject, team, model, status, decision, would, cost: event(
        "2026-11-01T00:00:00Z", ts_ms=_DST_EDGE + minutes * 60_000, subject=subject, team=team, model=model,
        status=status, decision=decision, would=would, cost_nusd=cost),
    st.integers(-72 * 60, 72 * 60), st.sampled_from(["alice", "bob", ""]), st.sampled_from(["platform", None]),
    st.sampled_from(["gpt-4o", None]), st.sampled_from([200, 429, 500]), st.sampled_from(["allow", "block"]),
    st.sampled_from([None, "block"]), st.one_of(st.none(), st.integers(0, 10**12)))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(_an_event, max_size=40), cuts=st.lists(st.integers(0, 40), max_size=4),
       again=st.lists(st.integers(0, 39), max_size=5), rolls=st.sets(st.integers(0, 4)))
def test_the_databases_sums_agree_with_the_rollups_definition(store_url: str, tmp_path: Path, events: list[CallEvent],
                                                               cuts: list[int], again: list[int],
                                                               rolls: set[int]) -> None:
    """The rollups are summed by the database: SQLite a second's worth at a time (`roll_up`), PostgreSQL each batch
    as it is written (`add_new_pg`). For any events in any batches, rolled up after any
    of them (an event written twice, a batch across a DST change, keys missing), every rollup row equals the
    rollups' definition in Python (`aggregate`) over the distinct events."""
    zone = ZoneInfo("America/New_York")
    store = open_store(store_url, tmp_path)
    try:
        for table in ("events", *TABLES):  # (one store serves every example)
            store.db.execute(f"DELETE FROM {table}")
        store.use_day_zone(zone.key)
        bounds = sorted({0, len(events), *(min(c, len(events)) for c in cuts)})
        for n, (lo, hi) in enumerate(itertools.pairwise(bounds)):
            repeat = [events[i] for i in again if i < lo]  # events of earlier batches, written again
            store.insert_events([*events[lo:hi], *repeat])
            if n in rolls:  # (SQLite: an insert rolls up at most once a second: here, the first one)
                store.roll_up()
        store.roll_up()
        expected = aggregate(events, zone)
        for table, (period, key) in TABLES.items():
            columns = ", ".join((period, *key, "calls", "errors", "blocked", "would_block", "input_tokens",
                                 "output_tokens", "cost_nusd"))
            got = store.db.tuples(f"SELECT {columns} FROM {table} ORDER BY {', '.join((period, *key))}")
            assert [tuple(int(v) if isinstance(v, Decimal) else v for v in r) for r in got] == \
                [tuple(r) for r in expected[table]], table
    finally:
        store.close()


def test_sqlite_reads_count_the_events_not_yet_rolled_up_and_still_answer_when_the_store_is_locked(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """SQLite rolls up from inserts at most once per `roll_up_every_s`; a read adds what is missing first. When it
    cannot (another writer holds the store past the busy timeout), the read answers from the rollups as they are
    and the log says so, rather than failing."""
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}", tmp_path)
    try:
        store.roll_up_every_s = 3600.0
        store.insert_events([event("2026-12-01T10:15:00Z")])  # the first insert rolls up
        store.insert_events([event("2026-12-01T10:20:00Z"), event("2026-12-01T10:25:00Z")])  # not yet
        assert _from_rollup(store, "usage_hourly")["calls"] == 1
        store.db.execute("PRAGMA busy_timeout = 50")
        other = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        with caplog.at_level(logging.WARNING, logger="tollhouse.store"):
            rows = store.usage_rows("hour", [], 0, ms("2030-01-01T00:00:00Z"), {})
        assert [r["calls"] for r in rows] == [1]
        assert "usage is read without the latest events" in caplog.text and "locked" in caplog.text
        other.execute("ROLLBACK")
        other.close()
        rows = store.usage_rows("hour", [], 0, ms("2030-01-01T00:00:00Z"), {})
        assert [r["calls"] for r in rows] == [3]  # the read rolled up first
        assert _from_rollup(store, "usage_hourly")["calls"] == 3
    finally:
        store.close()

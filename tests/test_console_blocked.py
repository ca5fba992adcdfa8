"""The overview's blocked and would-be-blocked calls (console/blocked.py), read through the partial index
events_stopped (schema migration 12): the same counts and recent calls as a scan of every event, on SQLite and
PostgreSQL, and the index is what the queries use."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from tollhouse.console.blocked import _read
from tollhouse.events.model import CallEvent
from tollhouse.events.store import Store
from usage_seed import event, ms

START = ms("2026-12-01T00:00:00+00:00")
HOUR = 3_600_000
RULES = ["no-opus", "budget-ml", None]


def _calls(rng: random.Random) -> list[CallEvent]:
    """600 calls over 10 days: ~15% blocked, ~15% would-be blocked, the rest allowed; several share a millisecond
    (the newest-first order then falls back to the order stored)."""
    out = []
    for n in range(600):
        ts = START + rng.randrange(240) * HOUR + (0 if n % 7 == 0 else rng.randrange(HOUR))
        roll = rng.random()
        decision, would = ("block", None) if roll < 0.15 else ("allow", "block") if roll < 0.3 else ("allow", None)
        rule = rng.choice(RULES) if decision == "block" or would else None
        e = event("2026-12-01T00:00:00+00:00", decision=decision, would=would, rule_id=rule,
                  subject=f"p{n % 9}", status=403 if decision == "block" else 200)
        out.append(e._replace(ts_ms=ts))
    return out


def _expected(calls: list[CallEvent], since: int, until: int, limit: int) -> tuple[list[dict[str, Any]], list[str]]:
    """What a scan of every call says: counts by rule, most first; the newest `limit` ids."""
    stored = list(enumerate(calls))  # the store numbers them in insertion order (seq)
    stopped = [(seq, c) for seq, c in stored
               if since <= c.ts_ms < until and (c.decision == "block" or c.would == "block")]
    blocked = Counter(c.rule_id for _, c in stopped if c.decision == "block")
    would = Counter(c.rule_id for _, c in stopped if c.would == "block")
    rules = set(blocked) | set(would)
    by_rule = [{"rule_id": r, "blocked": blocked[r], "would_block": would[r]} for r in rules]
    by_rule.sort(key=lambda r: (-(int(r["blocked"]) + int(r["would_block"])), str(r["rule_id"])))
    recent = sorted(stopped, key=lambda sc: (sc[1].ts_ms, sc[0]), reverse=True)[:limit]
    return by_rule, [c.id for _, c in recent]


def test_blocked_counts_and_recent_match_a_scan(store: Store) -> None:
    calls = _calls(random.Random(12))
    store.insert_events(calls)
    for since, until, limit in ((START, START + 240 * HOUR, 15), (START + 50 * HOUR, START + 51 * HOUR, 5),
                                (START + 24 * HOUR, START + 200 * HOUR, 500), (START - HOUR, START, 15)):
        found = _read(store, since, until, limit)
        by_rule, recent = _expected(calls, since, until, limit)
        assert found.by_rule == by_rule, (since, until)
        assert [r["id"] for r in found.recent] == recent, (since, until)
    whole = _read(store, START, START + 240 * HOUR, 15)
    assert sum(r["blocked"] for r in whole.by_rule) > 50 and sum(r["would_block"] for r in whole.by_rule) > 50
    assert len(whole.recent) == 15


def _plan(store: Store, sql: str, args: list[Any]) -> str:
    if store.db.dialect == "sqlite":
        return " ".join(str(r["detail"]) for r in store.db.query(f"EXPLAIN QUERY PLAN {sql}", args))
    rows = store.db.tuples(f"EXPLAIN {sql}", args)
    return " ".join(str(r[0]) for r in rows)


def test_blocked_reads_use_the_partial_index(store: Store) -> None:
    store.insert_events(_calls(random.Random(7)))
    if store.db.dialect == "postgresql":
        store.db.execute("ANALYZE events")
        store.db.execute("SET enable_seqscan = off")  # a table this small is scanned whatever its indexes
    where = "ts_ms >= ? AND ts_ms < ? AND (decision = 'block' OR would = 'block')"
    counts = f"SELECT rule_id, COUNT(*) FROM events WHERE {where} GROUP BY rule_id"
    recent = f"SELECT id FROM events WHERE {where} ORDER BY ts_ms DESC, seq DESC LIMIT 15"
    for sql in (counts, recent):
        plan = _plan(store, sql, [START, START + 240 * HOUR])
        assert "events_stopped" in plan, plan
    assert "TEMP B-TREE" not in _plan(store, recent, [START, START + 240 * HOUR])  # read in order, not sorted

"""The agent's telemetry spool: the local store's events after a watermark.

Every call is already journaled and written to the local events table; what the control plane has
acknowledged is one number, the watermark (the `seq` of the last event it took), kept in the `meta`
table of the same store. It only moves after the control plane answered 200, so a crash at any point
re-sends (the control plane deduplicates by event id) and never skips.

The store's writer must be the only one (the agent's SQLite store and its one event writer): `seq`
then grows in commit order, so no event can appear below the watermark after it moved.
Functions over a Store, run on the store thread (`StoreRunner.run`).
"""

from __future__ import annotations

from typing import NamedTuple

from tollhouse.events.model import CallEvent, Capture, event_from_row
from tollhouse.events.store import EVENTS_WITH_CONTENT, Store

WATERMARK_KEY = "shipper.watermark"


class Spooled(NamedTuple):
    seq: int
    event: CallEvent
    capture: Capture | None


class Dropped(NamedTuple):
    """Events the spool bound gave up on: how many, their time span, and the new watermark."""

    events: int
    first_ts_ms: int
    last_ts_ms: int
    watermark: int


def watermark(store: Store) -> int:
    row = store.db.query("SELECT value FROM meta WHERE key = ?", (WATERMARK_KEY,))
    return int(row[0]["value"]) if row else 0


def set_watermark(store: Store, seq: int) -> None:
    store.db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = "
                     "excluded.value", (WATERMARK_KEY, str(seq)))


def head(store: Store) -> int:
    """The seq of the newest event (0: none). head - watermark is the backlog: exact on SQLite, whose
    AUTOINCREMENT leaves no gaps with one writer; an upper bound on PostgreSQL."""
    row = store.db.query("SELECT COALESCE(MAX(seq), 0) AS seq FROM events")
    return int(row[0]["seq"])


def backlog(store: Store, after: int) -> int:
    """Events not yet acknowledged."""
    row = store.db.query("SELECT COUNT(*) AS n FROM events WHERE seq > ?", (after,))
    return int(row[0]["n"])


def read(store: Store, after: int, limit: int) -> list[Spooled]:
    """The oldest `limit` events after the watermark, with their captured content."""
    rows = store.db.query(f"{EVENTS_WITH_CONTENT} WHERE events.seq > ? ORDER BY events.seq LIMIT ?",
                          (after, limit))
    return [Spooled(int(r["seq"]), event_from_row(r),
                    Capture(r["prompt"], r["response"]) if r["prompt"] is not None or r["response"] is not None
                    else None)
            for r in rows]


def drop_oldest(store: Store, after: int, keep: int) -> Dropped | None:
    """Give up on the oldest unacknowledged events so that at most `keep` remain: the watermark moves past
    them (they stay in the local store, which also feeds the agent's own budget counters). None if the
    backlog is within the bound."""
    with store.db.transaction():
        excess = backlog(store, after) - keep
        if excess <= 0:
            return None
        rows = store.db.query("SELECT MIN(ts_ms) AS first, MAX(ts_ms) AS last, MAX(seq) AS seq FROM "
                              "(SELECT seq, ts_ms FROM events WHERE seq > ? ORDER BY seq LIMIT ?) AS oldest",
                              (after, excess))
        new = int(rows[0]["seq"])
        set_watermark(store, new)
    return Dropped(excess, int(rows[0]["first"]), int(rows[0]["last"]), new)


def prune(store: Store, before_ms: int) -> int:
    """Delete events the control plane has acknowledged (at or below the watermark) that are older than
    `before_ms`, with their captured content; returns how many. Unshipped events are never pruned."""
    with store.db.transaction():
        mark = watermark(store)
        store.roll_up()  # (SQLite) the usage rollups count what is deleted
        store.db.execute("DELETE FROM event_content WHERE event_id IN (SELECT id FROM events WHERE seq <= ? AND "
                         "ts_ms < ?)", (mark, before_ms))
        rows = store.db.query("SELECT COUNT(*) AS n FROM events WHERE seq <= ? AND ts_ms < ?", (mark, before_ms))
        store.db.execute("DELETE FROM events WHERE seq <= ? AND ts_ms < ?", (mark, before_ms))
    return int(rows[0]["n"])

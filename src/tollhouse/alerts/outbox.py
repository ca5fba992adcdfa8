"""The outbox: alerts and their deliveries in the store, so none is lost (a crash, a restart, a channel down)
and none is raised twice (an alert's id is its key's hash). Functions over a Store, run on the store thread
(`StoreRunner.run`). Queries are written once for SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tollhouse.alerts.model import Alert, Delivery, Stored
from tollhouse.events.store import Store

PENDING = "pending"
DELIVERED = "delivered"

_INSERT_ALERT = ("INSERT INTO alerts (id, created_ms, kind, severity, title, body, fire_count, last_ms, closes_ms, "
                 "closed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING")
_INSERT_DELIVERY = ("INSERT INTO alert_deliveries (alert_id, channel, target, status, attempts, next_ms) "
                    "VALUES (?, ?, ?, 'pending', 0, ?) ON CONFLICT (alert_id, channel, target) DO NOTHING")


def add_alert(store: Store, alert: Alert, targets: Sequence[tuple[str, str]], now_ms: int, count: int = 1) -> bool:
    """Store the alert and one delivery per (channel, target), unless an alert with its key exists already.
    True when it was new."""
    db = store.db
    with db.transaction():
        new = db.execute(_INSERT_ALERT, (alert.id, now_ms, alert.kind, alert.severity, alert.title, alert.body(),
                                         count, now_ms, alert.closes_ms, alert.closes_ms is None)) > 0
        if new and targets:
            db.executemany(_INSERT_DELIVERY, [(alert.id, channel, target, now_ms) for channel, target in targets])
        return new


def add_fired(store: Store, alert: Alert, targets: Sequence[tuple[str, str]], now_ms: int, count: int) -> bool:
    """A windowed alert that fired `count` times: the first firing stores it (and its deliveries); later ones
    add to its count. True when it was new."""
    with store.db.transaction():
        if add_alert(store, alert, targets, now_ms, count):
            return True
        store.db.execute("UPDATE alerts SET fire_count = fire_count + ?, last_ms = ? WHERE id = ?",
                         (count, now_ms, alert.id))
        return False


def bump(store: Store, counts: Mapping[str, int], now_ms: int) -> None:
    """Firings of alerts raised already (alert id -> how many more)."""
    store.db.executemany("UPDATE alerts SET fire_count = fire_count + ?, last_ms = ? WHERE id = ?",
                         [(n, now_ms, alert_id) for alert_id, n in counts.items()])


def closing(store: Store, now_ms: int) -> list[Stored]:
    """Windowed alerts whose window is over (each returned once, to the caller that closed it)."""
    with store.db.transaction(lock="alerts"):
        rows = store.db.query("SELECT * FROM alerts WHERE closed = ? AND closes_ms <= ? ORDER BY closes_ms",
                              (False, now_ms))
        if rows:
            store.db.executemany("UPDATE alerts SET closed = ? WHERE id = ?", [(True, r["id"]) for r in rows])
        return [Stored.of(r) for r in rows]


def claim_due(store: Store, now_ms: int, lease_ms: int, limit: int = 50) -> list[Delivery]:
    """Deliveries due now, oldest first, each claimed for `lease_ms` (another process sharing the store skips
    it meanwhile; a claim a crash left behind lapses)."""
    with store.db.transaction(lock="alerts"):
        rows = store.db.query(
            "SELECT d.alert_id, d.channel, d.target, d.attempts, a.* FROM alert_deliveries d JOIN alerts a "
            "ON a.id = d.alert_id WHERE d.status = ? AND d.next_ms <= ? ORDER BY d.next_ms, a.created_ms LIMIT ?",
            (PENDING, now_ms, limit))
        if rows:
            store.db.executemany(
                "UPDATE alert_deliveries SET next_ms = ? WHERE alert_id = ? AND channel = ? AND target = ?",
                [(now_ms + lease_ms, r["alert_id"], r["channel"], r["target"]) for r in rows])
        return [Delivery(Stored.of(r), r["channel"], r["target"], int(r["attempts"])) for r in rows]


def mark_delivered(store: Store, d: Delivery, now_ms: int) -> None:
    store.db.execute("UPDATE alert_deliveries SET status = ?, attempts = attempts + 1, delivered_ms = ?, "
                     "last_error = NULL WHERE alert_id = ? AND channel = ? AND target = ?",
                     (DELIVERED, now_ms, d.alert.id, d.channel, d.target))


def mark_failed(store: Store, d: Delivery, next_ms: int, error: str) -> None:
    store.db.execute("UPDATE alert_deliveries SET attempts = attempts + 1, next_ms = ?, last_error = ? "
                     "WHERE alert_id = ? AND channel = ? AND target = ? AND status = ?",
                     (next_ms, error[:500], d.alert.id, d.channel, d.target, PENDING))


def prune(store: Store, before_ms: int) -> int:
    """Forget alerts raised before `before_ms` whose deliveries are all done (a pending one is never
    dropped); how many."""
    with store.db.transaction(lock="alerts"):
        done = [r["id"] for r in store.db.query(
            "SELECT id FROM alerts a WHERE created_ms < ? AND closed = ? AND NOT EXISTS (SELECT 1 FROM "
            "alert_deliveries d WHERE d.alert_id = a.id AND d.status = ?)", (before_ms, True, PENDING))]
        for begin in range(0, len(done), 500):
            part = done[begin:begin + 500]
            marks = ", ".join("?" for _ in part)
            store.db.execute(f"DELETE FROM alert_deliveries WHERE alert_id IN ({marks})", part)
            store.db.execute(f"DELETE FROM alerts WHERE id IN ({marks})", part)
        return len(done)


def pending_by_channel(store: Store) -> dict[str, int]:
    rows = store.db.query("SELECT channel, COUNT(*) AS n FROM alert_deliveries WHERE status = ? GROUP BY channel",
                          (PENDING,))
    return {r["channel"]: int(r["n"]) for r in rows}


def list_alerts(store: Store, limit: int, before_ms: int | None = None, kind: str | None = None
                ) -> list[dict[str, Any]]:
    """Newest first, each with its deliveries' states (for GET /api/v1/alerts)."""
    where: list[str] = ["1 = 1"]
    args: list[object] = []
    if before_ms is not None:
        where.append("created_ms < ?")
        args.append(before_ms)
    if kind is not None:
        where.append("kind = ?")
        args.append(kind)
    rows = store.db.query(f"SELECT * FROM alerts WHERE {' AND '.join(where)} ORDER BY created_ms DESC, id "
                          "LIMIT ?", [*args, limit])
    if not rows:
        return []
    ids = [r["id"] for r in rows]
    deliveries: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    marks = ", ".join("?" for _ in ids)
    for d in store.db.query(f"SELECT * FROM alert_deliveries WHERE alert_id IN ({marks}) ORDER BY channel, target",
                            ids):
        deliveries[d["alert_id"]].append(d)
    return [_shown(Stored.of(r), r, deliveries[r["id"]]) for r in rows]


def _shown(a: Stored, row: Mapping[str, Any], deliveries: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": a.id, "kind": a.kind, "severity": a.severity, "title": a.title, "text": a.text,
        "fields": dict(a.fields), "links": dict(a.links), "count": a.count, "created_ms": a.created_ms,
        "last_ms": int(row["last_ms"]),
        "state": "delivered" if deliveries and all(d["status"] == DELIVERED for d in deliveries) else
                 ("pending" if deliveries else "no_recipients"),
        "deliveries": [{"channel": d["channel"], "target": d["target"] or None, "status": d["status"],
                        "attempts": int(d["attempts"]), "last_error": d["last_error"],
                        "delivered_ms": d["delivered_ms"]} for d in deliveries],
    }


def release(store: Store, deliveries: Sequence[Delivery], next_ms: int) -> None:
    """Give back claimed deliveries unsent (their channel is failing): tried again at `next_ms`."""
    if deliveries:
        store.db.executemany(
            "UPDATE alert_deliveries SET next_ms = ? WHERE alert_id = ? AND channel = ? AND target = ? AND status = ?",
            [(next_ms, d.alert.id, d.channel, d.target, PENDING) for d in deliveries])

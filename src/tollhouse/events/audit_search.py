"""Searching the audit trail (newest first): by kind, actor, a text anywhere in the entry's data, a time range;
paged by sequence number. Plain SQL that SQLite and PostgreSQL both run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from tollhouse.audit.chain import AuditEntry
from tollhouse.events.store import Store


@dataclass(frozen=True, slots=True)
class AuditQuery:
    kind: str = ""
    actor: str = ""
    text: str = ""  # case-insensitive, anywhere in the entry's data
    since_ms: int | None = None
    until_ms: int | None = None  # exclusive
    before_seq: int | None = None  # paging: entries older than this one
    after_seq: int | None = None  # exports: entries newer than this one, oldest first


def _like(text: str) -> str:
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _where(q: AuditQuery) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    for sql, value in (("kind = ?", q.kind or None), ("actor = ?", q.actor or None),
                       ("ts_ms >= ?", q.since_ms), ("ts_ms < ?", q.until_ms), ("seq < ?", q.before_seq),
                       ("seq > ?", q.after_seq)):
        if value is not None:
            clauses.append(sql)
            args.append(value)
    if q.text:
        clauses.append("(LOWER(data) LIKE ? ESCAPE '\\' OR LOWER(actor) LIKE ? ESCAPE '\\')")
        args += [_like(q.text), _like(q.text)]
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def _entry(r: dict[str, Any]) -> AuditEntry:
    return AuditEntry(**{**r, "data": orjson.loads(r["data"])})


def search_audit(store: Store, q: AuditQuery, limit: int) -> list[AuditEntry]:
    """Newest first (oldest first when `after_seq` is given: an export reads forward)."""
    where, args = _where(q)
    order = "ASC" if q.after_seq is not None else "DESC"
    rows = store.db.query(f"SELECT seq, ts_ms, kind, actor, data, prev_hash, hash FROM audit{where} "
                          f"ORDER BY seq {order} LIMIT ?", [*args, limit])
    return [_entry(r) for r in rows]


def audit_kinds(store: Store) -> list[str]:
    return [r["kind"] for r in store.db.query("SELECT DISTINCT kind FROM audit ORDER BY kind")]


def count_kinds(store: Store, kinds: tuple[str, ...], since_ms: int) -> dict[str, int]:
    """How many entries of each of `kinds` since `since_ms` (the trail's index by kind and time: no scan)."""
    marks = ", ".join("?" for _ in kinds)
    rows = store.db.query(f"SELECT kind, COUNT(*) AS n FROM audit WHERE kind IN ({marks}) AND ts_ms >= ? "
                          "GROUP BY kind", [*kinds, since_ms])
    found = {r["kind"]: int(r["n"]) for r in rows}
    return {kind: found.get(kind, 0) for kind in kinds}


"""The embedded store: SQLite (WAL) for events and gateway keys.

All methods are synchronous and run on the store's own thread (see `StoreRunner`), so the event
loop never waits on disk.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tollhouse.audit.chain import GENESIS, AuditEntry, canonical, entry_hash
from tollhouse.events.model import COLUMNS, CallEvent

_MIGRATIONS: tuple[str, ...] = (
    # 1: events and gateway keys
    f"""
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        {", ".join(f"{c} {'TEXT UNIQUE NOT NULL' if c == 'id' else ''}" for c in COLUMNS)}
    );
    CREATE INDEX events_ts ON events (ts_ms);
    CREATE INDEX events_subject_ts ON events (subject, ts_ms);
    CREATE TABLE gateway_keys (
        key_hash TEXT PRIMARY KEY,
        prefix TEXT NOT NULL,
        subject TEXT NOT NULL,
        label TEXT,
        created_ms INTEGER NOT NULL,
        revoked_ms INTEGER
    );
    """,
    # 2: ledger counters load team and project history
    """
    CREATE INDEX events_team_ts ON events (team, ts_ms);
    CREATE INDEX events_project_ts ON events (project, ts_ms);
    """,
    # 3: the audit trail (append-only, hash-chained)
    """
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        ts_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        actor TEXT NOT NULL,
        data TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    """,
)


class StoreError(Exception):
    """The store could not be opened or used; the message says which file and why."""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_hash: str
    prefix: str
    subject: str
    label: str | None
    created_ms: int
    revoked_ms: int | None


def sqlite_path(url: str, data_dir: Path) -> Path:
    if not url:
        return data_dir / "tollhouse.db"
    return Path(url.removeprefix("sqlite:///").replace("DATA_DIR", str(data_dir)))


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._migrate()
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the store at {path}: {exc}") from None
        placeholders = ", ".join("?" for _ in COLUMNS)
        self._insert_sql = (
            f"INSERT OR IGNORE INTO events ({', '.join(COLUMNS)}) VALUES ({placeholders})"
        )

    def _migrate(self) -> None:
        self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self._db.execute("SELECT version FROM schema_version").fetchone()
        version = row[0] if row else 0
        if row is None:
            self._db.execute("INSERT INTO schema_version VALUES (0)")
        for i, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for stmt in script.split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
                self._db.execute("UPDATE schema_version SET version = ?", (i,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self._db.close()

    # events

    def insert_events(self, events: Sequence[CallEvent]) -> None:
        self._db.execute("BEGIN")
        try:
            self._db.executemany(self._insert_sql, events)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def list_events(self, limit: int, subject: str | None = None, before_seq: int | None = None
                    ) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[Any] = []
        if subject is not None:
            where.append("subject = ?")
            args.append(subject)
        if before_seq is not None:
            where.append("seq < ?")
            args.append(before_seq)
        sql = "SELECT * FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        return [dict(r) for r in self._db.execute(sql, args).fetchall()]

    def usage_history(self, scope: str, ids: Sequence[str], since_ms: int, bucket_ms: int
                      ) -> list[tuple[int, str, int, int, int, int]]:
        """Settled usage since `since_ms` in time buckets, per provider, for a ledger counter.

        scope: subject (ids = [subject]), team (ids = the team and its descendants), project, or org.
        """
        where = "ts_ms >= ?"
        args: list[Any] = [since_ms]
        column = {"subject": "subject", "team": "team", "project": "project"}.get(scope)
        if column is not None:
            where += f" AND {column} IN ({', '.join('?' for _ in ids)})"
            args += list(ids)
        sql = (f"SELECT (ts_ms / ?) * ? AS b, provider, COALESCE(SUM(cost_nusd), 0), SUM(input_tokens), "
               f"SUM(output_tokens), SUM(CASE WHEN status < 400 THEN 1 ELSE 0 END) FROM events WHERE {where} "
               "AND decision != 'block' GROUP BY b, provider ORDER BY b")
        try:
            rows = self._db.execute(sql, [bucket_ms, bucket_ms, *args]).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"reading usage history from {self.path} failed: {exc}") from None
        return [(int(r[0]), r[1], int(r[2]), int(r[3]), int(r[4]), int(r[5])) for r in rows]

    def usage_totals(self, scope: str, ids: Sequence[str], since_ms: int, until_ms: int
                     ) -> dict[str, tuple[int, int, int, int]]:
        """Settled (provider -> spend nano-USD, input tokens, output tokens, requests) in [since, until)."""
        where = "ts_ms >= ? AND ts_ms < ? AND decision != 'block'"
        args: list[Any] = [since_ms, until_ms]
        column = {"subject": "subject", "team": "team", "project": "project"}.get(scope)
        if column is not None:
            where += f" AND {column} IN ({', '.join('?' for _ in ids)})"
            args += list(ids)
        sql = ("SELECT provider, COALESCE(SUM(cost_nusd), 0), SUM(input_tokens), SUM(output_tokens), "
               f"SUM(CASE WHEN status < 400 THEN 1 ELSE 0 END) FROM events WHERE {where} GROUP BY provider")
        return {r[0]: (int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in self._db.execute(sql, args)}

    # audit trail

    def append_audit(self, ts_ms: int, kind: str, actor: str, data: dict[str, Any]) -> AuditEntry:
        """Append one entry, chained to the last one (this thread is the only writer)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            row = self._db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS)
            content = canonical(seq, ts_ms, kind, actor, data)
            digest = entry_hash(prev, content)
            self._db.execute("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (seq, ts_ms, kind, actor, orjson.dumps(data).decode(), prev, digest))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return AuditEntry(seq, ts_ms, kind, actor, data, prev, digest)

    def audit_entries(self, after_seq: int = 0, limit: int | None = None) -> list[AuditEntry]:
        sql = "SELECT seq, ts_ms, kind, actor, data, prev_hash, hash FROM audit WHERE seq > ? ORDER BY seq"
        args: list[Any] = [after_seq]
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [AuditEntry(r[0], r[1], r[2], r[3], orjson.loads(r[4]), r[5], r[6])
                for r in self._db.execute(sql, args)]

    # gateway keys

    def add_key(self, key_hash: str, prefix: str, subject: str, label: str | None) -> KeyRecord:
        now = int(time.time() * 1000)
        self._db.execute(
            "INSERT INTO gateway_keys (key_hash, prefix, subject, label, created_ms) VALUES (?, ?, ?, ?, ?)",
            (key_hash, prefix, subject, label, now),
        )
        return KeyRecord(key_hash, prefix, subject, label, now, None)

    def find_key(self, key_hash: str) -> KeyRecord | None:
        row = self._db.execute("SELECT * FROM gateway_keys WHERE key_hash = ?", (key_hash,)).fetchone()
        return KeyRecord(**dict(row)) if row else None

    def list_keys(self) -> list[KeyRecord]:
        rows = self._db.execute("SELECT * FROM gateway_keys ORDER BY created_ms").fetchall()
        return [KeyRecord(**dict(r)) for r in rows]

    def revoke_key(self, prefix: str) -> int:
        cur = self._db.execute(
            "UPDATE gateway_keys SET revoked_ms = ? WHERE prefix = ? AND revoked_ms IS NULL",
            (int(time.time() * 1000), prefix),
        )
        return cur.rowcount

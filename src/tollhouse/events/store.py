"""The embedded store: SQLite (WAL) for events, the audit trail, gateway keys and the control plane.

All methods are synchronous and run on the store's own thread (see `StoreRunner`), so the event
loop never waits on disk.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import orjson

from tollhouse.audit.chain import GENESIS, AuditEntry, canonical, entry_hash
from tollhouse.events.model import COLUMNS, CallEvent
from tollhouse.events.records import (
    APPROVED,
    DENIED,
    OVERRIDE,
    PENDING,
    AgentRecord,
    Checkpoint,
    DocumentVersion,
    EnrollmentToken,
    Exemption,
    KeyRecord,
)

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
    # 4: the control plane: versioned documents, exemptions, agents and their enrollment tokens,
    # signed audit checkpoints
    """
    CREATE TABLE documents (
        kind TEXT NOT NULL,
        version INTEGER NOT NULL,
        ts_ms INTEGER NOT NULL,
        actor TEXT NOT NULL,
        source TEXT NOT NULL,
        body TEXT NOT NULL,
        note TEXT,
        PRIMARY KEY (kind, version)
    );
    CREATE TABLE exemptions (
        id TEXT PRIMARY KEY,
        created_ms INTEGER NOT NULL,
        status TEXT NOT NULL,
        requester TEXT NOT NULL,
        subject TEXT NOT NULL,
        rule_id TEXT,
        provider TEXT,
        model TEXT,
        team TEXT,
        project TEXT,
        call_ts_ms INTEGER,
        justification TEXT NOT NULL,
        reviewer TEXT,
        decided_ms INTEGER,
        decision_kind TEXT,
        expires_ms INTEGER,
        note TEXT
    );
    CREATE INDEX exemptions_status_created ON exemptions (status, created_ms);
    CREATE TABLE enrollment_tokens (
        token_hash TEXT PRIMARY KEY,
        prefix TEXT NOT NULL,
        label TEXT,
        created_ms INTEGER NOT NULL,
        revoked_ms INTEGER
    );
    CREATE TABLE agents (
        agent_id TEXT PRIMARY KEY,
        hostname TEXT,
        version TEXT,
        token_prefix TEXT,
        first_seen_ms INTEGER NOT NULL,
        last_seen_ms INTEGER NOT NULL,
        status TEXT NOT NULL
    );
    CREATE TABLE audit_checkpoints (
        seq INTEGER PRIMARY KEY,
        ts_ms INTEGER NOT NULL,
        hash TEXT NOT NULL,
        key_id TEXT NOT NULL,
        signature TEXT NOT NULL
    );
    """,
)


class StoreError(Exception):
    """The store could not be opened or used; the message says which file and why."""


__all__ = ["KeyRecord", "SqliteStore", "StoreError", "sqlite_path"]

Credential = TypeVar("Credential", KeyRecord, EnrollmentToken)
# record type -> (table, column holding the secret's hash)
_CREDENTIAL_TABLES: dict[type[Any], tuple[str, str]] = {
    KeyRecord: ("gateway_keys", "key_hash"),
    EnrollmentToken: ("enrollment_tokens", "token_hash"),
}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _json(value: dict[str, Any]) -> str:
    return orjson.dumps(value).decode()


def _document(row: dict[str, Any]) -> DocumentVersion:
    return DocumentVersion(**{**row, "body": orjson.loads(row["body"])})


def _agent(row: dict[str, Any]) -> AgentRecord:
    return AgentRecord(**{**row, "status": orjson.loads(row["status"])})


def sqlite_path(url: str, data_dir: Path) -> Path:
    if not url:
        return data_dir / "tollhouse.db"
    return Path(url.removeprefix("sqlite:///").replace("DATA_DIR", str(data_dir)))


def _credential_queries(kind: type[Credential]) -> tuple[
        Callable[[SqliteStore, str], Credential | None],  # find(secret_hash)
        Callable[[SqliteStore], list[Credential]],  # list(), oldest first
        Callable[[SqliteStore, str], int]]:  # revoke(prefix) -> how many were active
    """The store methods of one table of hashed secrets (gateway keys, enrollment tokens)."""
    table, column = _CREDENTIAL_TABLES[kind]

    def find(store: SqliteStore, secret_hash: str) -> Credential | None:
        row = store._row(f"SELECT * FROM {table} WHERE {column} = ?", (secret_hash,))
        return kind(**row) if row else None

    def list_all(store: SqliteStore) -> list[Credential]:
        return [kind(**r) for r in store._rows(f"SELECT * FROM {table} ORDER BY created_ms")]

    def revoke(store: SqliteStore, prefix: str) -> int:
        return store._execute(f"UPDATE {table} SET revoked_ms = ? WHERE prefix = ? AND revoked_ms IS NULL",
                              (_now_ms(), prefix))

    return find, list_all, revoke


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
            f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({placeholders}) ON CONFLICT (id) DO NOTHING"
        )

    def _migrate(self) -> None:
        self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self._db.execute("SELECT version FROM schema_version").fetchone()
        version = row[0] if row else 0
        if row is None:
            self._db.execute("INSERT INTO schema_version VALUES (0)")
        for i, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            with self._transaction():
                for stmt in script.split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
                self._db.execute("UPDATE schema_version SET version = ?", (i,))

    def close(self) -> None:
        self._db.close()

    # the few primitives every query goes through

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """A write transaction, serialized against every other writer of the database."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return [dict(r) for r in self._db.execute(sql, args).fetchall()]

    def _row(self, sql: str, args: Sequence[Any] = ()) -> dict[str, Any] | None:
        rows = self._rows(sql, args)
        return rows[0] if rows else None

    def _execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""
        return self._db.execute(sql, args).rowcount

    def _insert(self, table: str, record: Any) -> None:
        """Insert a record dataclass whose field names are the table's columns."""
        names = [f.name for f in fields(record)]
        self._execute(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})",
                      [getattr(record, n) for n in names])

    # events

    def insert_events(self, events: Sequence[CallEvent]) -> int:
        """Store events; ones whose id is already stored are skipped. Returns how many were new."""
        with self._transaction():
            return self._db.executemany(self._insert_sql, events).rowcount

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
        return self._rows(sql, args)

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
        with self._transaction():
            row = self._db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS)
            content = canonical(seq, ts_ms, kind, actor, data)
            digest = entry_hash(prev, content)
            self._db.execute("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (seq, ts_ms, kind, actor, _json(data), prev, digest))
        return AuditEntry(seq, ts_ms, kind, actor, data, prev, digest)

    def audit_entries(self, after_seq: int = 0, limit: int | None = None) -> list[AuditEntry]:
        sql = "SELECT seq, ts_ms, kind, actor, data, prev_hash, hash FROM audit WHERE seq > ? ORDER BY seq"
        args: list[Any] = [after_seq]
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [AuditEntry(r[0], r[1], r[2], r[3], orjson.loads(r[4]), r[5], r[6])
                for r in self._db.execute(sql, args)]

    # signed audit checkpoints

    def add_checkpoint(self, seq: int, ts_ms: int, hash: str, key_id: str, signature: str) -> Checkpoint:
        record = Checkpoint(seq, ts_ms, hash, key_id, signature)
        self._insert("audit_checkpoints", record)
        return record

    def checkpoints(self) -> list[Checkpoint]:
        """Oldest first."""
        return [Checkpoint(**r) for r in self._rows("SELECT * FROM audit_checkpoints ORDER BY seq")]

    def last_checkpoint(self) -> Checkpoint | None:
        row = self._row("SELECT * FROM audit_checkpoints ORDER BY seq DESC LIMIT 1")
        return Checkpoint(**row) if row else None

    # credentials: gateway keys and agent enrollment tokens (secrets kept as hashes, revoked by prefix)

    def _add_credential(self, record: Credential) -> Credential:
        self._insert(_CREDENTIAL_TABLES[type(record)][0], record)
        return record

    def add_key(self, key_hash: str, prefix: str, subject: str, label: str | None) -> KeyRecord:
        return self._add_credential(KeyRecord(key_hash, prefix, subject, label, _now_ms(), None))

    def add_enrollment_token(self, token_hash: str, prefix: str, label: str | None) -> EnrollmentToken:
        return self._add_credential(EnrollmentToken(token_hash, prefix, label, _now_ms(), None))

    find_key, list_keys, revoke_key = _credential_queries(KeyRecord)
    find_enrollment_token, list_enrollment_tokens, revoke_enrollment_token = _credential_queries(EnrollmentToken)

    # versioned documents (policy, directory, agent policy)

    def add_document(self, kind: str, ts_ms: int, actor: str, source: str, body: dict[str, Any],
                     note: str | None = None) -> DocumentVersion:
        """Store a new version of `kind`: the previous latest + 1 (the first is 1), atomically."""
        with self._transaction():
            row = self._row("SELECT COALESCE(MAX(version), 0) + 1 AS v FROM documents WHERE kind = ?", (kind,))
            record = DocumentVersion(kind, int(row["v"]) if row else 1, ts_ms, actor, source, body, note)
            self._execute("INSERT INTO documents (kind, version, ts_ms, actor, source, body, note) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?)",
                          (kind, record.version, ts_ms, actor, source, _json(body), note))
        return record

    def latest_document(self, kind: str) -> DocumentVersion | None:
        history = self.document_history(kind, 1)
        return history[0] if history else None

    def document(self, kind: str, version: int) -> DocumentVersion | None:
        row = self._row("SELECT * FROM documents WHERE kind = ? AND version = ?", (kind, version))
        return _document(row) if row else None

    def document_history(self, kind: str, limit: int, before_version: int | None = None) -> list[DocumentVersion]:
        """Newest first."""
        sql = "SELECT * FROM documents WHERE kind = ?"
        args: list[Any] = [kind]
        if before_version is not None:
            sql += " AND version < ?"
            args.append(before_version)
        args.append(limit)
        return [_document(r) for r in self._rows(sql + " ORDER BY version DESC LIMIT ?", args)]

    def latest_versions(self) -> dict[str, int]:
        """kind -> its latest version (for change polling and ETags)."""
        rows = self._rows("SELECT kind, MAX(version) AS v FROM documents GROUP BY kind")
        return {r["kind"]: int(r["v"]) for r in rows}

    # exemptions

    def add_exemption(self, exemption: Exemption) -> Exemption:
        self._insert("exemptions", exemption)
        return exemption

    def exemption(self, exemption_id: str) -> Exemption | None:
        row = self._row("SELECT * FROM exemptions WHERE id = ?", (exemption_id,))
        return Exemption(**row) if row else None

    def list_exemptions(self, status: str | None, limit: int) -> list[Exemption]:
        """Newest first; all of them, or those with `status`."""
        where, args = ("WHERE status = ? ", [status]) if status is not None else ("", [])
        rows = self._rows(f"SELECT * FROM exemptions {where}ORDER BY created_ms DESC, id DESC LIMIT ?",
                          [*args, limit])
        return [Exemption(**r) for r in rows]

    def decide_exemption(self, exemption_id: str, status: str, reviewer: str, decided_ms: int,
                         decision_kind: str | None, expires_ms: int | None, note: str | None) -> Exemption | None:
        """Approve or deny a pending exemption; None when there is none with that id pending."""
        if status not in (APPROVED, DENIED):
            raise ValueError(f"an exemption is decided as {APPROVED} or {DENIED}, not {status!r}")
        with self._transaction():
            changed = self._execute(
                "UPDATE exemptions SET status = ?, reviewer = ?, decided_ms = ?, decision_kind = ?, expires_ms = ?, "
                "note = ? WHERE id = ? AND status = ?",
                (status, reviewer, decided_ms, decision_kind, expires_ms, note, exemption_id, PENDING))
            return self.exemption(exemption_id) if changed else None

    def active_overrides(self, now_ms: int) -> list[Exemption]:
        """Approved overrides that have not expired, oldest first."""
        rows = self._rows("SELECT * FROM exemptions WHERE status = ? AND decision_kind = ? AND expires_ms > ? "
                          "ORDER BY created_ms, id", (APPROVED, OVERRIDE, now_ms))
        return [Exemption(**r) for r in rows]

    # agents

    def upsert_agent(self, agent_id: str, hostname: str | None, version: str | None, token_prefix: str | None,
                     seen_ms: int, status: dict[str, Any]) -> AgentRecord:
        """Record that an agent checked in (first_seen_ms is kept from its first check-in)."""
        with self._transaction():
            self._execute(
                "INSERT INTO agents (agent_id, hostname, version, token_prefix, first_seen_ms, last_seen_ms, status) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (agent_id) DO UPDATE SET hostname = excluded.hostname, "
                "version = excluded.version, token_prefix = excluded.token_prefix, "
                "last_seen_ms = excluded.last_seen_ms, status = excluded.status",
                (agent_id, hostname, version, token_prefix, seen_ms, seen_ms, _json(status)))
            rows = self._rows("SELECT * FROM agents WHERE agent_id = ?", (agent_id,))
        return _agent(rows[0])

    def list_agents(self) -> list[AgentRecord]:
        """Most recently seen first."""
        return [_agent(r) for r in self._rows("SELECT * FROM agents ORDER BY last_seen_ms DESC, agent_id")]

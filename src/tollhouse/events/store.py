"""The store: events, the audit trail, gateway keys and the control plane, in SQLite or PostgreSQL.

`open_store(url, data_dir)` picks the database from ``store.url``. Every query is written once, over
the small `Db` interface (see `db.py` for what differs between the dialects). All methods are
synchronous and run on the store's own thread (see `StoreRunner`), so the event loop never waits on
the database.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from zoneinfo import ZoneInfo

import orjson

from tollhouse.audit.chain import GENESIS, AuditEntry, canonical, entry_hash
from tollhouse.events import rollup, usage
from tollhouse.events.db import Db, PostgresDb, SqliteDb, StoreConflict, StoreError
from tollhouse.events.model import COLUMNS, CallEvent, Capture
from tollhouse.events.records import (
    APPROVED,
    DENIED,
    OVERRIDE,
    PENDING,
    REVOKED,
    AgentRecord,
    Checkpoint,
    DocumentVersion,
    EnrollmentToken,
    Exemption,
    KeyRecord,
    PendingCounts,
)
from tollhouse.events.schema import migrations

log = logging.getLogger("tollhouse.store")

__all__ = ["KeyRecord", "SqliteStore", "Store", "StoreConflict", "StoreError", "is_postgres", "open_store",
           "sqlite_path"]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")

Credential = TypeVar("Credential", KeyRecord, EnrollmentToken)
# record type -> (table, column holding the secret's hash)
_CREDENTIAL_TABLES: dict[type[Any], tuple[str, str]] = {
    KeyRecord: ("gateway_keys", "key_hash"),
    EnrollmentToken: ("enrollment_tokens", "token_hash"),
}
EVENT_FILTER_COLUMNS = frozenset({"subject", "team", "project", "cost_centre", "provider", "model", "decision"})
_SCOPE_COLUMNS = {"subject": "subject", "team": "team", "project": "project"}  # org: every event
_INSERT_EVENT = (f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)}) "
                 "ON CONFLICT (id) DO NOTHING RETURNING id")
# SQLite: a whole batch in one statement, its rows read out of one JSON array (JSON keeps every value's type: text,
# integer, real, null). The sqlite3 module lets go of the GIL while a statement runs, and reading the array is the
# database's work: the store thread holds the GIL only for orjson's dump, and the event loop does not wait on it.
# (Rows bound as parameters cost the store less CPU, but binding holds the GIL: the loop thread then waited for it
# ten times as often and served ~10 % fewer calls at c=32.)
_INSERT_EVENTS_JSON = (f"INSERT INTO events ({', '.join(COLUMNS)}) "
                       f"SELECT {', '.join(f'value ->> {i}' for i in range(len(COLUMNS)))} FROM json_each(?) "
                       "WHERE true ON CONFLICT (id) DO NOTHING")
ROLL_UP_EVERY_S = 1.0  # SQLite: how often event inserts add the events since the last roll-up to the usage rollups
_INSERT_CAPTURE = ("INSERT INTO event_content (event_id, prompt, response) VALUES (?, ?, ?) "
                   "ON CONFLICT (event_id) DO NOTHING")
# An event row with its captured content (NULL when nothing was captured).
EVENTS_WITH_CONTENT = ("SELECT events.*, event_content.prompt, event_content.response FROM events "
                       "LEFT JOIN event_content ON event_content.event_id = events.id")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _json(value: dict[str, Any]) -> str:
    return orjson.dumps(value).decode()


def _document(row: dict[str, Any]) -> DocumentVersion:
    return DocumentVersion(**{**row, "body": orjson.loads(row["body"])})


def _agent(row: dict[str, Any]) -> AgentRecord:
    return AgentRecord(**{**row, "status": orjson.loads(row["status"])})


def _scope_filter(scope: str, ids: Sequence[str]) -> tuple[str, list[Any]]:
    """The WHERE clause (with a leading AND) that keeps one ledger scope's events."""
    column = _SCOPE_COLUMNS.get(scope)
    if column is None:
        return "", []
    return f" AND {column} IN ({', '.join('?' for _ in ids)})", list(ids)


def _inserted(events: Sequence[CallEvent], new_ids: set[str]) -> Sequence[CallEvent]:
    """The events an insert stored: those whose id it returned, the first of a batch naming an id twice."""
    if len(new_ids) == len(events):
        return events
    out = []
    for e in events:
        if e.id in new_ids:
            out.append(e)
            new_ids.discard(e.id)
    return out


def is_postgres(url: str) -> bool:
    return url.startswith(POSTGRES_SCHEMES)


def sqlite_path(url: str, data_dir: Path) -> Path:
    if not url:
        return data_dir / "tollhouse.db"
    return Path(url.removeprefix("sqlite:///").replace("DATA_DIR", str(data_dir)))


def open_store(url: str, data_dir: Path) -> Store:
    """The store `store.url` names: ``sqlite:///PATH`` (DATA_DIR is `data_dir`; empty: the default file)
    or ``postgresql://USER@HOST:PORT/DB``. Raises StoreError when it cannot be opened."""
    if is_postgres(url):
        return Store(PostgresDb(url))
    return Store(SqliteDb(sqlite_path(url, data_dir)))


def _credential_queries(kind: type[Credential]) -> tuple[
        Callable[[Store, str], Credential | None],  # find(secret_hash)
        Callable[[Store], list[Credential]],  # list(), oldest first
        Callable[[Store, str], int]]:  # revoke(prefix) -> how many were active
    """The store methods of one table of hashed secrets (gateway keys, enrollment tokens)."""
    table, column = _CREDENTIAL_TABLES[kind]

    def find(store: Store, secret_hash: str) -> Credential | None:
        row = store._row(f"SELECT * FROM {table} WHERE {column} = ?", (secret_hash,))
        return kind(**row) if row else None

    def list_all(store: Store) -> list[Credential]:
        return [kind(**r) for r in store.db.query(f"SELECT * FROM {table} ORDER BY created_ms")]

    def revoke(store: Store, prefix: str) -> int:
        return store.db.execute(f"UPDATE {table} SET revoked_ms = ? WHERE prefix = ? AND revoked_ms IS NULL",
                                (_now_ms(), prefix))

    return find, list_all, revoke


class Store:
    def __init__(self, db: Db) -> None:
        self.db = db
        try:
            self._migrate()
            if db.dialect == "sqlite":
                # Temporary storage in memory once migrated (a migration's backfill may sort every event: on disk):
                # a roll-up's sums of a second of events (rollup.roll_up) and its statements' undo copies stay out
                # of a temporary file.
                db.execute("PRAGMA temp_store = MEMORY")
            # the zone the usage day rollups are in (UTC until `use_day_zone` names the organisation's)
            row = self._row("SELECT value FROM meta WHERE key = ?", (rollup.DAY_ZONE_KEY,))
            self.day_zone = ZoneInfo(row["value"] if row else "UTC")
            self._roll_up_due = 0.0  # (monotonic) SQLite: when an event insert next rolls up (`roll_up`)
            self.roll_up_every_s = ROLL_UP_EVERY_S
        except BaseException:
            db.close()
            raise

    def use_day_zone(self, name: str) -> None:
        """Keep the usage day rollups in local dates of the IANA zone `name` (ledger.timezone); rebuilt from the
        hourly rollups when the zone changed (once, whichever process sharing the store asks first)."""
        zone = ZoneInfo(name)
        with self.db.transaction(lock="usage-day-zone"):
            row = self._row("SELECT value FROM meta WHERE key = ?", (rollup.DAY_ZONE_KEY,))
            if row is None or row["value"] != zone.key:
                self.roll_up()  # (SQLite) the hours complete before the days are rebuilt
                rollup.rebuild_days(self.db, zone)
        self.day_zone = zone

    def _migrate(self) -> None:
        scripts = migrations(self.db.dialect)
        with self.db.transaction(lock="migrate"):
            self.db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = self._row("SELECT version FROM schema_version")
            if row is None:
                self.db.execute("INSERT INTO schema_version VALUES (0)")
            version = int(row["version"]) if row else 0
            if version > len(scripts):
                raise StoreError(f"the store at {self.db.where} has schema version {version}, newer than this "
                                 f"Tollhouse knows ({len(scripts)}): upgrade Tollhouse")
            for i, statements in enumerate(scripts[version:], start=version + 1):
                for statement in statements:
                    self.db.execute(statement)
                self.db.execute("UPDATE schema_version SET version = ?", (i,))

    def schema_version(self) -> int:
        row = self._row("SELECT version FROM schema_version")
        return int(row["version"]) if row else 0

    def roll_up(self) -> int:
        """Add the events stored since the last roll-up to the usage rollups; how many that was. SQLite rolls up
        from its event inserts at most once per `roll_up_every_s` and before any read of the rollups (so a read
        always counts every stored event); PostgreSQL adds each batch as it is written (gateways sharing it commit
        out of seq order) and has nothing to do here."""
        if self.db.dialect != "sqlite":
            return 0
        with self.db.transaction():
            return rollup.roll_up(self.db, self.day_zone)

    def _rollups_current(self) -> None:
        """Before reading the rollups: every stored event counted (a roll-up only when some are not). When the
        store cannot be written (a full or read-only disk), the rollups are read as they are, short of the events
        of the last second or so before the fault, and the log says so: reading usage must not fail with the disk."""
        if self.db.dialect == "sqlite" and not rollup.rolled_up(self.db):
            try:
                self.roll_up()
            except StoreError as exc:
                if isinstance(exc, StoreConflict):
                    raise
                log.warning("usage is read without the latest events, which cannot be added to the rollups: %s",
                            exc)

    def close(self) -> None:
        if self.db.dialect == "sqlite":
            try:  # the rollups as complete as the events for whoever opens the store next (any reader would add them)
                self._rollups_current()
            except StoreError as exc:  # a full or read-only disk: nothing is lost, the next reader rolls up
                log.warning("closing the store without adding the latest events to the usage rollups: %s", exc)
        self.db.close()

    def _row(self, sql: str, args: Sequence[Any] = ()) -> dict[str, Any] | None:
        rows = self.db.query(sql, args)
        return rows[0] if rows else None

    def _insert(self, table: str, record: Any) -> None:
        """Insert a record dataclass whose field names are the table's columns."""
        names = [f.name for f in fields(record)]
        self.db.execute(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})",
                        [getattr(record, n) for n in names])

    # events

    def insert_events(self, events: Sequence[CallEvent], captures: Mapping[str, Capture] | None = None) -> int:
        """Store events, and the captured content of those in `captures` (event id → capture), in one
        transaction; ones whose id is already stored are skipped. Returns how many events were new. The usage
        rollups count the new ones, in the same transaction."""
        return len(self.insert_new_events(events, captures))

    def insert_new_events(self, events: Sequence[CallEvent], captures: Mapping[str, Capture] | None = None
                          ) -> Sequence[CallEvent]:
        """`insert_events`, returning the events that were new: the ones the insert itself reports stored (a
        retried batch's events come back once, however many deliveries race): what an ingest counts in the
        budget counters."""
        with self.db.transaction():
            if not events:
                fresh: Sequence[CallEvent] = events
            elif self.db.dialect == "sqlite":
                fresh = self._insert_sqlite(events)  # the rollups too
            else:
                fresh = _inserted(events, {r["id"] for r in self.db.executemany_returning(_INSERT_EVENT, events)})
                rollup.add_new_pg(self.db, fresh, self.day_zone)
            if captures:
                self.db.executemany(_INSERT_CAPTURE, [(event_id, *c) for event_id, c in captures.items()])
            return fresh

    def _insert_sqlite(self, events: Sequence[CallEvent]) -> Sequence[CallEvent]:
        """SQLite, in the caller's transaction (which holds the database's write lock): the batch in one statement
        (`_INSERT_EVENTS_JSON`), and the events of the last second added to the rollups when a roll-up is due (a
        second's events share their hour and person keys: several times fewer rollup rows to update than per
        batch). When all the batch went in (the usual case: new calls), it is the answer; otherwise (an id stored
        before: a replayed or resent batch) the new ones, numbered after the last event stored before, are read
        back. (No RETURNING row per event, and no savepoint, whose undo copies go to a temporary file.)"""
        db = self.db
        last = db.tuples("SELECT MAX(seq) FROM events")[0][0] or 0
        stored = db.execute(_INSERT_EVENTS_JSON, (orjson.dumps([tuple(e) for e in events]),))
        now = time.monotonic()
        if now >= self._roll_up_due:
            self._roll_up_due = now + self.roll_up_every_s
            rollup.roll_up(db, self.day_zone)
        if stored == len(events):
            return events
        return _inserted(events, {row[0] for row in db.tuples("SELECT id FROM events WHERE seq > ?", (last,))})

    def event(self, event_id: str) -> dict[str, Any] | None:
        """One event by id, with its captured `prompt` and `response` (None when not captured)."""
        return self._row(f"{EVENTS_WITH_CONTENT} WHERE events.id = ?", (event_id,))

    def list_events(self, limit: int, subject: str | None = None, before_seq: int | None = None,
                    content: bool = False, filters: Mapping[str, Sequence[str]] | None = None
                    ) -> list[dict[str, Any]]:
        """Newest first; with `content`, each row also has its captured `prompt` and `response`. `filters`:
        column (one of EVENT_FILTER_COLUMNS) -> the values kept."""
        where: list[str] = []
        args: list[Any] = []
        if subject is not None:
            where.append("subject = ?")
            args.append(subject)
        for column, values in sorted((filters or {}).items()):
            if column not in EVENT_FILTER_COLUMNS:
                raise ValueError(f"events are not filtered on {column!r}")
            where.append(f"events.{column} IN ({', '.join('?' for _ in values)})")
            args.extend(values)
        if before_seq is not None:
            where.append("seq < ?")
            args.append(before_seq)
        sql = EVENTS_WITH_CONTENT if content else "SELECT * FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        return self.db.query(sql, args)

    def usage_history(self, scope: str, ids: Sequence[str], since_ms: int, bucket_ms: int
                      ) -> list[tuple[int, str, int, int, int, int]]:
        """Settled usage since `since_ms` in time buckets, per provider, for a ledger counter.

        scope: subject (ids = [subject]), team (ids = the team and its descendants), project, or org.
        """
        where, args = _scope_filter(scope, ids)
        sql = ("SELECT b, provider, COALESCE(SUM(cost_nusd), 0) AS c, SUM(input_tokens) AS i, "
               "SUM(output_tokens) AS o, SUM(CASE WHEN status < 400 THEN 1 ELSE 0 END) AS n "
               "FROM (SELECT (ts_ms / ?) * ? AS b, provider, cost_nusd, input_tokens, output_tokens, status "
               f"FROM events WHERE ts_ms >= ? AND decision != 'block'{where}) AS e GROUP BY b, provider ORDER BY b")
        rows = self.db.query(sql, [bucket_ms, bucket_ms, since_ms, *args])
        return [(int(r["b"]), r["provider"], int(r["c"]), int(r["i"]), int(r["o"]), int(r["n"])) for r in rows]

    def usage_totals(self, scope: str, ids: Sequence[str], since_ms: int, until_ms: int
                     ) -> dict[str, tuple[int, int, int, int]]:
        """Settled (provider -> spend nano-USD, input tokens, output tokens, requests) in [since, until)."""
        where, args = _scope_filter(scope, ids)
        sql = ("SELECT provider, COALESCE(SUM(cost_nusd), 0) AS c, SUM(input_tokens) AS i, SUM(output_tokens) AS o, "
               "SUM(CASE WHEN status < 400 THEN 1 ELSE 0 END) AS n FROM events "
               f"WHERE ts_ms >= ? AND ts_ms < ? AND decision != 'block'{where} GROUP BY provider")
        rows = self.db.query(sql, [since_ms, until_ms, *args])
        return {r["provider"]: (int(r["c"]), int(r["i"]), int(r["o"]), int(r["n"])) for r in rows}

    def usage_rows(self, period: str, group_by: Sequence[str], since: int, until: int,
                   filters: Mapping[str, Sequence[str]], by_period: bool = True) -> list[dict[str, Any]]:
        """Usage per hour or local day (or summed over them) from the rollups (see events/usage.py `rows`)."""
        self._rollups_current()
        return usage.rows(self.db, period, group_by, since, until, filters, by_period)

    def usage_seen(self, column: str, value: str) -> bool:
        """Whether any stored call has `value` in rollup `column` (subject, team, project, ...)."""
        self._rollups_current()
        return usage.seen(self.db, column, value)

    # audit trail

    def append_audit(self, ts_ms: int, kind: str, actor: str, data: dict[str, Any]) -> AuditEntry:
        """Append one entry, chained to the last one. Appends are serialized across every process that
        shares the database (gateways sharing one PostgreSQL), so the chain never forks."""
        with self.db.transaction(lock="audit"):
            row = self._row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            seq, prev = (int(row["seq"]) + 1, row["hash"]) if row else (1, GENESIS)
            digest = entry_hash(prev, canonical(seq, ts_ms, kind, actor, data))
            self.db.execute("INSERT INTO audit (seq, ts_ms, kind, actor, data, prev_hash, hash) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)", (seq, ts_ms, kind, actor, _json(data), prev, digest))
        return AuditEntry(seq, ts_ms, kind, actor, data, prev, digest)

    def audit_entries(self, after_seq: int = 0, limit: int | None = None) -> list[AuditEntry]:
        sql = "SELECT seq, ts_ms, kind, actor, data, prev_hash, hash FROM audit WHERE seq > ? ORDER BY seq"
        args: list[Any] = [after_seq]
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [AuditEntry(**{**r, "data": orjson.loads(r["data"])}) for r in self.db.query(sql, args)]

    def last_audit_entry(self, kind: str) -> AuditEntry | None:
        """The newest entry of a kind (walks back from the end: cheap for recent kinds)."""
        rows = self.db.query("SELECT seq, ts_ms, kind, actor, data, prev_hash, hash FROM audit WHERE kind = ? "
                             "ORDER BY seq DESC LIMIT 1", [kind])
        return AuditEntry(**{**rows[0], "data": orjson.loads(rows[0]["data"])}) if rows else None

    # signed audit checkpoints

    def add_checkpoint(self, seq: int, ts_ms: int, hash: str, key_id: str, signature: str) -> Checkpoint:
        record = Checkpoint(seq, ts_ms, hash, key_id, signature)
        self._insert("audit_checkpoints", record)
        return record

    def checkpoints(self) -> list[Checkpoint]:
        """Oldest first."""
        return [Checkpoint(**r) for r in self.db.query("SELECT * FROM audit_checkpoints ORDER BY seq")]

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
        with self.db.transaction(lock="documents"):
            row = self._row("SELECT COALESCE(MAX(version), 0) + 1 AS v FROM documents WHERE kind = ?", (kind,))
            record = DocumentVersion(kind, int(row["v"]) if row else 1, ts_ms, actor, source, body, note)
            self.db.execute("INSERT INTO documents (kind, version, ts_ms, actor, source, body, note) "
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
        return [_document(r) for r in self.db.query(sql + " ORDER BY version DESC LIMIT ?", args)]

    def latest_versions(self) -> dict[str, int]:
        """kind -> its latest version (for change polling and ETags)."""
        rows = self.db.query("SELECT kind, MAX(version) AS v FROM documents GROUP BY kind")
        return {r["kind"]: int(r["v"]) for r in rows}

    # exemptions

    def add_exemption(self, exemption: Exemption) -> Exemption:
        self._insert("exemptions", exemption)
        return exemption

    def file_exemption(self, exemption: Exemption, check: Callable[[PendingCounts], None]) -> Exemption:
        """Store a new pending exemption unless `check` (given the queue as it is) raises to refuse it. The count
        and the insert are one transaction that no other gateway sharing the store interleaves with."""
        with self.db.transaction(lock="exemption-queue"):
            duplicate = self._row("SELECT * FROM exemptions WHERE status = ? AND subject = ? AND rule_id = ? "
                                  "ORDER BY created_ms LIMIT 1", (PENDING, exemption.subject, exemption.rule_id))
            total = self._count("SELECT COUNT(*) AS n FROM exemptions WHERE status = ?", (PENDING,))
            subject = self._count("SELECT COUNT(*) AS n FROM exemptions WHERE status = ? AND subject = ?",
                                  (PENDING, exemption.subject))
            address = 0 if exemption.client_address is None else self._count(
                "SELECT COUNT(*) AS n FROM exemptions WHERE status = ? AND client_address = ?",
                (PENDING, exemption.client_address))
            check(PendingCounts(total, subject, address, Exemption(**duplicate) if duplicate else None))
            self._insert("exemptions", exemption)
        return exemption

    def _count(self, sql: str, args: Sequence[Any]) -> int:
        row = self._row(sql, args)
        return int(row["n"]) if row else 0

    def exemption(self, exemption_id: str) -> Exemption | None:
        row = self._row("SELECT * FROM exemptions WHERE id = ?", (exemption_id,))
        return Exemption(**row) if row else None

    def list_exemptions(self, status: str | None, limit: int) -> list[Exemption]:
        """Newest first; all of them, or those with `status`."""
        where, args = ("WHERE status = ? ", [status]) if status is not None else ("", [])
        rows = self.db.query(f"SELECT * FROM exemptions {where}ORDER BY created_ms DESC, id DESC LIMIT ?",
                             [*args, limit])
        return [Exemption(**r) for r in rows]

    def decide_exemption(self, exemption_id: str, status: str, reviewer: str, decided_ms: int,
                         decision_kind: str | None, expires_ms: int | None, note: str | None,
                         scope_models: str | None = None, scope_providers: str | None = None) -> Exemption | None:
        """Approve or deny a pending exemption; None when there is none with that id pending. `scope_*`: an
        override's models and providers (comma-separated)."""
        if status not in (APPROVED, DENIED):
            raise ValueError(f"an exemption is decided as {APPROVED} or {DENIED}, not {status!r}")
        with self.db.transaction():
            changed = self.db.execute(
                "UPDATE exemptions SET status = ?, reviewer = ?, decided_ms = ?, decision_kind = ?, expires_ms = ?, "
                "note = ?, scope_models = ?, scope_providers = ? WHERE id = ? AND status = ?",
                (status, reviewer, decided_ms, decision_kind, expires_ms, note, scope_models, scope_providers,
                 exemption_id, PENDING))
            return self.exemption(exemption_id) if changed else None

    def revoke_exemption(self, exemption_id: str, revoked_by: str, now_ms: int) -> Exemption | None:
        """End an approved override still in force; None when there is none with that id."""
        with self.db.transaction():
            changed = self.db.execute(
                "UPDATE exemptions SET status = ?, revoked_ms = ?, revoked_by = ? WHERE id = ? AND status = ? "
                "AND decision_kind = ? AND expires_ms > ?",
                (REVOKED, now_ms, revoked_by, exemption_id, APPROVED, OVERRIDE, now_ms))
            return self.exemption(exemption_id) if changed else None

    def note_expired_overrides(self, now_ms: int) -> list[Exemption]:
        """Approved overrides whose expiry has passed and was not noted yet, now noted (each is returned by
        exactly one call, whichever gateway sharing the store makes it)."""
        out: list[Exemption] = []
        with self.db.transaction():
            rows = self.db.query("SELECT id FROM exemptions WHERE status = ? AND decision_kind = ? AND expires_ms <= ? "
                                 "AND expired_ms IS NULL ORDER BY expires_ms, id", (APPROVED, OVERRIDE, now_ms))
            for row in rows:
                if self.db.execute("UPDATE exemptions SET expired_ms = ? WHERE id = ? AND expired_ms IS NULL",
                                   (now_ms, row["id"])):
                    found = self.exemption(row["id"])
                    if found is not None:
                        out.append(found)
        return out

    def active_overrides(self, now_ms: int) -> list[Exemption]:
        """Approved overrides that have not expired, oldest first."""
        rows = self.db.query("SELECT * FROM exemptions WHERE status = ? AND decision_kind = ? AND expires_ms > ? "
                             "ORDER BY created_ms, id", (APPROVED, OVERRIDE, now_ms))
        return [Exemption(**r) for r in rows]

    # agents

    def upsert_agent(self, agent_id: str, hostname: str | None, version: str | None, token_prefix: str | None,
                     seen_ms: int, status: dict[str, Any]) -> AgentRecord:
        """Record that an agent checked in (first_seen_ms is kept from its first check-in)."""
        with self.db.transaction():
            self.db.execute(
                "INSERT INTO agents (agent_id, hostname, version, token_prefix, first_seen_ms, last_seen_ms, status) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (agent_id) DO UPDATE SET hostname = excluded.hostname, "
                "version = excluded.version, token_prefix = excluded.token_prefix, "
                "last_seen_ms = excluded.last_seen_ms, status = excluded.status",
                (agent_id, hostname, version, token_prefix, seen_ms, seen_ms, _json(status)))
            rows = self.db.query("SELECT * FROM agents WHERE agent_id = ?", (agent_id,))
        return _agent(rows[0])

    def list_agents(self) -> list[AgentRecord]:
        """Most recently seen first."""
        return [_agent(r) for r in self.db.query("SELECT * FROM agents ORDER BY last_seen_ms DESC, agent_id")]


    # budget leases (control plane)

    def save_leases(self, rows: Sequence[LeaseRow]) -> None:
        """Insert or update leases, keyed by (agent, rule, scope, ident)."""
        if not rows:
            return
        with self.db.transaction():
            self.db.executemany(
                "INSERT INTO leases (agent, rule, scope, ident, period, epoch, lease_offset, granted, reported, drawn, "
                "drawn_base, carry, carry_until_ms, expires_ms, live) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (agent, rule, scope, ident) "
                "DO UPDATE SET period = excluded.period, epoch = excluded.epoch, lease_offset = excluded.lease_offset, "
                "granted = excluded.granted, reported = excluded.reported, drawn = excluded.drawn, "
                "drawn_base = excluded.drawn_base, carry = excluded.carry, carry_until_ms = excluded.carry_until_ms, "
                "expires_ms = excluded.expires_ms, live = excluded.live", [tuple(r) for r in rows])

    def delete_leases(self, keys: Sequence[tuple[str, str, str, str]]) -> None:
        if not keys:
            return
        with self.db.transaction():
            self.db.executemany("DELETE FROM leases WHERE agent = ? AND rule = ? AND scope = ? AND ident = ?", keys)

    def load_leases(self) -> list[LeaseRow]:
        return [LeaseRow(r["agent"], r["rule"], r["scope"], r["ident"], int(r["period"]), r["epoch"],
                         int(r["lease_offset"]), int(r["granted"]), int(r["reported"]), int(r["drawn"]),
                         int(r["drawn_base"]), int(r["carry"]), int(r["carry_until_ms"]), int(r["expires_ms"]),
                         bool(r["live"]))
                for r in self.db.query("SELECT * FROM leases ORDER BY agent, rule, scope, ident")]


class LeaseRow(NamedTuple):
    agent: str
    rule: str
    scope: str
    ident: str
    period: int
    epoch: str
    offset: int
    granted: int
    reported: int
    drawn: int
    drawn_base: int  # `drawn` when the agent's current epoch began
    carry: int  # an earlier epoch's grant held as spent until carry_until_ms
    carry_until_ms: int
    expires_ms: int
    live: bool


class SqliteStore(Store):
    """Compatibility: a store over the SQLite file `path` (prefer `open_store`)."""

    def __init__(self, path: Path) -> None:
        super().__init__(SqliteDb(path))

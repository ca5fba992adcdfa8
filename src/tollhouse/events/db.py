"""The database under the store: SQLite or PostgreSQL behind one small interface.

Queries are written once, with ``?`` placeholders (PostgreSQL gets them as ``%s``) and SQL both
dialects accept (``ON CONFLICT ... DO NOTHING | DO UPDATE``, ``COALESCE``, ``LIMIT``). What differs lives
here: connecting, placeholders, how a write transaction is serialized (``BEGIN IMMEDIATE`` in SQLite;
``pg_advisory_xact_lock`` in PostgreSQL, where several gateways share one database) and how driver
errors become `StoreError` (naming the file or host, never a password, and what to do).

Every method runs on the store's own thread (see `StoreRunner`); a Db is not shared across threads.
"""

from __future__ import annotations

import sqlite3
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg.rows import dict_row, tuple_row


class StoreError(Exception):
    """The store could not be opened or used; the message says which file or server and why."""


class StoreConflict(StoreError):
    """A write broke a uniqueness rule (the row exists already)."""


class Db(ABC):
    dialect: str
    where: str  # for messages: the file, or the server and database (never a password)

    @abstractmethod
    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""

    @abstractmethod
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """Run one statement per row; the number of rows changed in all."""

    @abstractmethod
    def query(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows as column -> value."""

    def tuples(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows as plain tuples in column order (cheaper than `query` for many rows)."""
        return [tuple(r.values()) for r in self.query(sql, args)]

    @abstractmethod
    def executemany_returning(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
        """Run one statement with a RETURNING clause per row; every row they returned."""

    @abstractmethod
    def transaction(self, lock: str | None = None) -> Any:
        """A context manager: one write transaction, committed at the end, rolled back on error.
        Transactions that name the same `lock` never run at once, whatever process runs them."""

    @abstractmethod
    def close(self) -> None: ...


class SqliteDb(Db):
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)
        self._depth = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the store at {path}: {exc}") from None

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.IntegrityError as exc:
            raise StoreConflict(f"the store at {self.path}: {exc}") from None
        except sqlite3.Error as exc:
            raise StoreError(f"the store at {self.path} failed: {exc}") from None

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        with self._errors():
            return self._db.execute(sql, args).rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        with self._errors():
            return self._db.executemany(sql, rows).rowcount

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._errors():
            return [dict(r) for r in self._db.execute(sql, args).fetchall()]

    def tuples(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._errors():
            cur = self._db.cursor()
            cur.row_factory = None
            rows: list[tuple[Any, ...]] = cur.execute(sql, args).fetchall()
            return rows

    def executemany_returning(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
        with self._errors():
            return [dict(r) for row in rows for r in self._db.execute(sql, row).fetchall()]

    @contextmanager
    def transaction(self, lock: str | None = None) -> Iterator[None]:
        """BEGIN IMMEDIATE takes the database's write lock: every writer is serialized, named or not."""
        if self._depth:  # nested: part of the enclosing transaction
            yield
            return
        self.execute("BEGIN IMMEDIATE")
        self._depth += 1
        try:
            yield
            self.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        finally:
            self._depth -= 1

    def close(self) -> None:
        self._db.close()


@lru_cache(maxsize=256)
def _pg_sql(sql: str) -> str:
    """`?` placeholders as psycopg's `%s` (queries hold no `?` or `%` literals of their own)."""
    return sql.replace("%", "%%").replace("?", "%s")


def _lock_id(name: str) -> int:
    return zlib.crc32(f"tollhouse:{name}".encode())


class PostgresDb(Db):
    """One connection, opened again after it was lost (the next call retries; the event writer does)."""

    dialect = "postgresql"

    def __init__(self, url: str, connect_timeout_s: int = 5) -> None:
        self._url = url
        self._timeout = connect_timeout_s
        parts = urlsplit(url)
        self._password = parts.password
        host = parts.hostname or "localhost (socket)"
        self.host = f"{host}:{parts.port or 5432}"
        self.where = f"PostgreSQL at {self.host} (database {parts.path.lstrip('/') or parts.username or '?'})"
        self._conn: psycopg.Connection[dict[str, Any]] | None = None
        self._closed = False
        self._in_transaction = False
        self._connection()  # fail at start-up, not at the first write

    def _scrub(self, exc: BaseException) -> str:
        text = " ".join(str(exc).split())
        return text.replace(self._password, "***") if self._password else text

    def _connection(self) -> psycopg.Connection[dict[str, Any]]:
        if self._closed:
            raise StoreError(f"the store ({self.where}) is closed")
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._in_transaction:  # never carry on a transaction on a new connection
                raise StoreError(f"the connection to the store, {self.where}, was lost in a transaction")
            self._conn = None
            try:
                self._conn = psycopg.connect(self._url, autocommit=True, row_factory=dict_row,
                                             connect_timeout=self._timeout, application_name="tollhouse")
                # Usage views group tens of thousands of rollup rows: sorted and hashed in memory, not spilled to
                # disk (the default 4 MB does), and never JIT-compiled (compiling costs more than such a query)
                self._conn.execute("SET work_mem = '64MB'")
                self._conn.execute("SET jit = off")
            except psycopg.Error as exc:
                raise self._unreachable(exc) from None
        return self._conn

    def _unreachable(self, exc: BaseException) -> StoreError:
        return StoreError(f"cannot reach the store, {self.where}: {self._scrub(exc)} -- Check that PostgreSQL is "
                          "running and reachable from here and that store.url names the right host, port, database "
                          "and user (a running gateway keeps its events and retries writing them)")

    @contextmanager
    def _errors(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        conn = self._connection()
        try:
            yield conn
        except psycopg.IntegrityError as exc:
            raise StoreConflict(f"the store, {self.where}: {self._scrub(exc)}") from None
        except psycopg.OperationalError as exc:
            if conn.closed or conn.broken:
                raise self._unreachable(exc) from None
            raise StoreError(f"the store, {self.where}, failed: {self._scrub(exc)}") from None
        except psycopg.Error as exc:
            raise StoreError(f"the store, {self.where}, failed: {self._scrub(exc)}") from None

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        with self._errors() as conn:
            return conn.execute(_pg_sql(sql), args).rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        if not rows:
            return 0
        with self._errors() as conn, conn.cursor() as cur:
            cur.executemany(_pg_sql(sql), rows)
            return cur.rowcount

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._errors() as conn:
            return conn.execute(_pg_sql(sql), args).fetchall()

    def tuples(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._errors() as conn, conn.cursor(row_factory=tuple_row) as cur:
            return cur.execute(_pg_sql(sql), args).fetchall()

    def executemany_returning(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
        if not rows:
            return []
        out: list[dict[str, Any]] = []
        with self._errors() as conn, conn.cursor() as cur:
            cur.executemany(_pg_sql(sql), rows, returning=True)
            while True:
                out.extend(cur.fetchall())
                if not cur.nextset():
                    break
        return out

    @contextmanager
    def transaction(self, lock: str | None = None) -> Iterator[None]:
        if self._in_transaction:  # nested: part of the enclosing transaction
            self._lock(lock)
            yield
            return
        with self._errors() as conn, conn.transaction():
            self._in_transaction = True
            try:
                self._lock(lock)
                yield
            finally:
                self._in_transaction = False

    def _lock(self, name: str | None) -> None:
        """Held until the transaction ends; the same name waits in every session (every gateway)."""
        if name is not None:
            self.query("SELECT pg_advisory_xact_lock(?)", (_lock_id(name),))

    def close(self) -> None:
        self._closed = True
        if self._conn is not None:
            self._conn.close()

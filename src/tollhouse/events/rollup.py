"""Usage rollups: calls, tokens and cost per hour, kept up to date as events are written.

Two tables (schema migration 10), one row per hour and key, with the key's missing values stored as '':

- ``usage_hourly``: by (hour, subject, team, project, cost_centre, provider, model): what a person used;
- ``usage_hourly_org``: the same without the subject: smaller, for every view that does not need people.

`Store.insert_events` adds the events it actually inserted (never a replayed or duplicated one) in the same
transaction, so a rollup always equals its events. Days are derived from hours when read (`usage.py`), in the
organisation's timezone: a local day is the hours that start on that local date.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tollhouse.events.db import Db
from tollhouse.events.model import CallEvent

HOUR_MS = 3_600_000

PERSON_TABLE = "usage_hourly"
ORG_TABLE = "usage_hourly_org"
# key columns of each table, after hour_ms
PERSON_KEY = ("subject", "team", "project", "cost_centre", "provider", "model")
ORG_KEY = ("team", "project", "cost_centre", "provider", "model")
MEASURES = ("calls", "errors", "blocked", "would_block", "input_tokens", "output_tokens", "cost_nusd")
TABLES = {PERSON_TABLE: PERSON_KEY, ORG_TABLE: ORG_KEY}

# The measures of a set of events, in SQL over the events table (the migration's backfill; the benchmark's).
_MEASURES_SQL = ("COUNT(*), SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), "
                 "SUM(CASE WHEN decision = 'block' THEN 1 ELSE 0 END), "
                 "SUM(CASE WHEN would = 'block' THEN 1 ELSE 0 END), "
                 "SUM(input_tokens), SUM(output_tokens), COALESCE(SUM(cost_nusd), 0)")


def table_sql(table: str, int_type: str = "{int}") -> str:
    """CREATE TABLE for one rollup (a migration's text: `int_type` is filled in per dialect)."""
    key = TABLES[table]
    cols = ", ".join([f"hour_ms {int_type} NOT NULL", *(f"{k} TEXT NOT NULL" for k in key),
                      *(f"{m} {int_type} NOT NULL" for m in MEASURES)])
    return f"CREATE TABLE {table} ({cols}, PRIMARY KEY (hour_ms, {', '.join(key)}))"


def backfill_sql(table: str, where: str = "") -> str:
    """Add the rollup of the events (those matching `where`, SQL) to `table`, in one statement."""
    key = TABLES[table]
    keyed = ", ".join(f"COALESCE({k}, '')" for k in key)
    groups = ", ".join(str(i) for i in range(1, len(key) + 2))
    return (f"INSERT INTO {table} (hour_ms, {', '.join(key)}, {', '.join(MEASURES)}) "
            f"SELECT (ts_ms / {HOUR_MS}) * {HOUR_MS}, {keyed}, {_MEASURES_SQL} FROM events "
            f"{'WHERE ' + where + ' ' if where else 'WHERE true '}GROUP BY {groups} "
            f"ON CONFLICT (hour_ms, {', '.join(key)}) DO UPDATE SET "
            + ", ".join(f"{m} = {table}.{m} + excluded.{m}" for m in MEASURES))


def migration_sql() -> str:
    """Migration 10: both rollup tables, filled from the events already stored."""
    return ";\n".join([table_sql(PERSON_TABLE), table_sql(ORG_TABLE), backfill_sql(PERSON_TABLE),
                       backfill_sql(ORG_TABLE)])


def _upsert_sql(table: str) -> str:
    key = TABLES[table]
    cols = ("hour_ms", *key, *MEASURES)
    return (f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)}) "
            f"ON CONFLICT (hour_ms, {', '.join(key)}) DO UPDATE SET "
            + ", ".join(f"{m} = {table}.{m} + excluded.{m}" for m in MEASURES))


UPSERT = {table: _upsert_sql(table) for table in TABLES}


def _measures(e: CallEvent) -> tuple[int, ...]:
    return (1, int(e.status >= 400), int(e.decision == "block"), int(e.would == "block"), e.input_tokens,
            e.output_tokens, e.cost_nusd or 0)


def aggregate(events: Iterable[CallEvent]) -> dict[str, list[tuple[Any, ...]]]:
    """table -> rows to upsert (hour, key..., measures...) summing `events`."""
    person: dict[tuple[Any, ...], list[int]] = {}
    for e in events:
        key = (e.ts_ms // HOUR_MS * HOUR_MS, e.subject or "", e.team or "", e.project or "", e.cost_centre or "",
               e.provider or "", e.model or "")
        values = _measures(e)
        found = person.get(key)
        if found is None:
            person[key] = list(values)
        else:
            for i, v in enumerate(values):
                found[i] += v
    org: dict[tuple[Any, ...], list[int]] = {}
    for key, sums in person.items():
        short = (key[0], *key[2:])
        found = org.get(short)
        if found is None:
            org[short] = list(sums)
        else:
            for i, v in enumerate(sums):
                found[i] += v
    return {PERSON_TABLE: [(*k, *v) for k, v in person.items()], ORG_TABLE: [(*k, *v) for k, v in org.items()]}


def add(db: Db, events: Sequence[CallEvent]) -> None:
    """Add `events` (just inserted, in the caller's transaction) to the rollups."""
    if not events:
        return
    for table, rows in aggregate(events).items():
        db.executemany(UPSERT[table], rows)

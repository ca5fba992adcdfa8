"""Usage rollups: calls, tokens and cost per hour and per local day, kept up to date with the stored events.

Five tables (schema migration 10), one row per period and key, a key's missing values stored as '':

- ``usage_hourly`` / ``usage_daily``: by (period, subject, team, project, cost_centre, provider, model);
- ``usage_hourly_org`` / ``usage_daily_org``: the same without the subject: far fewer rows, for every view that
  does not need people;
- ``usage_daily_people``: by (day, subject, team) only: a day's usage per person.

An hour is keyed by its start (``hour_ms``, Unix ms). A day is a local date of the organisation's timezone (the
store's `day zone`), keyed by ``day_ms``: that date's midnight *UTC* in Unix ms (a calendar date, not an instant:
the local midnight is another instant, and not 24 hours from the next one across a DST change).

Every stored event is counted once (never a replayed or duplicated one), and every read of the rollups counts every
stored event; the database does the summing, so the store thread holds the GIL for none of it. PostgreSQL:
`Store.insert_events` adds the events it actually inserted in the same transaction (`add_new_pg`: gateways sharing
the database commit out of seq order, so a batch is added as it is written). SQLite
(one writer at a time: commits in seq order): the events after a mark (meta `usage_rolled_up_seq`) are summed by
the database (`roll_up`), from an insert at most once a second and before any read of the rollups (a second's
events share their rows). When the day zone changes, the day
tables are rebuilt from the hours, each hour on the local date it starts on (`rebuild_days`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from tollhouse.events.db import Db
from tollhouse.events.model import CallEvent

HOUR_MS = 3_600_000
DAY_MS = 86_400_000

PERSON_KEY = ("subject", "team", "project", "cost_centre", "provider", "model")
ORG_KEY = ("team", "project", "cost_centre", "provider", "model")
PEOPLE_KEY = ("subject", "team")
MEASURES = ("calls", "errors", "blocked", "would_block", "input_tokens", "output_tokens", "cost_nusd")
# table -> (period column, key columns)
TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "usage_hourly": ("hour_ms", PERSON_KEY), "usage_hourly_org": ("hour_ms", ORG_KEY),
    "usage_daily": ("day_ms", PERSON_KEY), "usage_daily_org": ("day_ms", ORG_KEY),
    "usage_daily_people": ("day_ms", PEOPLE_KEY),  # a tenth of usage_daily's rows: a day's usage per person
}
HOUR_TABLES = ("usage_hourly", "usage_hourly_org")
DAY_TABLES = ("usage_daily", "usage_daily_org", "usage_daily_people")

DAY_ZONE_KEY = "usage_day_zone"  # meta: the zone the day tables are in

# The measures of a set of events, in SQL over the events table.
_MEASURES_SQL = ("COUNT(*), SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), "
                 "SUM(CASE WHEN decision = 'block' THEN 1 ELSE 0 END), "
                 "SUM(CASE WHEN would = 'block' THEN 1 ELSE 0 END), "
                 "SUM(input_tokens), SUM(output_tokens), COALESCE(SUM(cost_nusd), 0)")


def table_sql(table: str, int_type: str = "{int}") -> str:
    """CREATE TABLE for one rollup (a migration's text: `int_type` is filled in per dialect)."""
    period, key = TABLES[table]
    cols = ", ".join([f"{period} {int_type} NOT NULL", *(f"{k} TEXT NOT NULL" for k in key),
                      *(f"{m} {int_type} NOT NULL" for m in MEASURES)])
    # SQLite: stored in key order (WITHOUT ROWID), so a range of periods is read in one sweep of the table
    return f"CREATE TABLE {table} ({cols}, PRIMARY KEY ({period}, {', '.join(key)})) {{rowless}}"


def _accumulate(table: str) -> str:
    period, key = TABLES[table]
    return (f"ON CONFLICT ({period}, {', '.join(key)}) DO UPDATE SET "
            + ", ".join(f"{m} = {table}.{m} + excluded.{m}" for m in MEASURES))


def backfill_sql(table: str, where: str = "", day_offset: str = "0", ordered: bool = False) -> str:
    """Add the rollup of the stored events (those matching `where`, SQL) to `table`, in one statement; a day table's
    dates at a fixed UTC offset (`day_offset`, SQL: ms, or `?` for a parameter ahead of those in `where`; 0: UTC).
    `ordered`: rows upserted in key order (writers sharing PostgreSQL then lock them in one order)."""
    period, key = TABLES[table]
    keyed = ", ".join(f"COALESCE({k}, '')" for k in key)
    groups = ", ".join(str(i) for i in range(1, len(key) + 2))
    span = f"((ts_ms + {day_offset}) / {DAY_MS}) * {DAY_MS}" if period == "day_ms" else \
        f"(ts_ms / {HOUR_MS}) * {HOUR_MS}"
    return (f"INSERT INTO {table} ({period}, {', '.join(key)}, {', '.join(MEASURES)}) "
            f"SELECT {span}, {keyed}, {_MEASURES_SQL} FROM events WHERE {where or 'true'} GROUP BY {groups} "
            + (f"ORDER BY {groups} " if ordered else "") + _accumulate(table))


def migration_sql() -> str:
    """Migration 10: the rollup tables, filled from the events already stored (days in UTC until a zone is set)."""
    return ";\n".join([*(table_sql(t) for t in TABLES), *(backfill_sql(t) for t in TABLES),
                       f"INSERT INTO meta (key, value) VALUES ('{DAY_ZONE_KEY}', 'UTC')"])




# SQLite: the events stored since the last roll-up, summed per hour and person key once into a temporary table; each
# rollup is then added from those sums (far fewer rows than events), a day table's for one run of hours at one UTC
# offset at a time (parameters: offset_ms, start_ms, end_ms).
_BATCH_COLUMNS = ("hour_ms", *PERSON_KEY, *MEASURES)
_BATCH_TABLE = ("CREATE TEMP TABLE IF NOT EXISTS rollup_batch ("
                + ", ".join(f"{c} {'TEXT' if c in PERSON_KEY else 'INTEGER'} NOT NULL" for c in _BATCH_COLUMNS) + ")")
_BATCH_FILL = (f"INSERT INTO temp.rollup_batch SELECT (ts_ms / {HOUR_MS}) * {HOUR_MS}, "
               + ", ".join(f"COALESCE({k}, '')" for k in PERSON_KEY) + f", {_MEASURES_SQL} FROM events "
               f"WHERE seq > ? GROUP BY {', '.join(str(i) for i in range(1, len(PERSON_KEY) + 2))}")


def _from_batch_sql(table: str) -> str:
    period, key = TABLES[table]
    sums = ", ".join(f"SUM({m})" for m in MEASURES)
    if period == "day_ms":
        span, where = f"((hour_ms + ?) / {DAY_MS}) * {DAY_MS}", "hour_ms >= ? AND hour_ms < ?"
    else:
        span, where = "hour_ms", "true"
    return (f"INSERT INTO {table} ({period}, {', '.join(key)}, {', '.join(MEASURES)}) "
            f"SELECT {span}, {', '.join(key)}, {sums} FROM temp.rollup_batch WHERE {where} "
            f"GROUP BY {', '.join(str(i) for i in range(1, len(key) + 2))} " + _accumulate(table))


FROM_BATCH = {table: _from_batch_sql(table) for table in TABLES}


def _pg_new_sql(table: str, ranged: bool) -> str:
    """PostgreSQL: add the events whose ids are given (just inserted) to `table`, summed by the database, a day table's
    dates at one UTC offset (computed here from the zone, as for SQLite: the database's own time-zone data is never
    asked). Parameters: hour table (ids); day table (offset_ms, ids[, start_ms, end_ms]: `ranged`, for a batch across
    an offset change). Rows are upserted in key order: writers sharing the database lock the rows they update in one
    order, so they wait for each other rather than deadlock."""
    day = TABLES[table][0] == "day_ms"
    where = "id = ANY(?)" + (" AND ts_ms >= ? AND ts_ms < ?" if day and ranged else "")
    return backfill_sql(table, where, "?", ordered=True)


PG_NEW = {table: _pg_new_sql(table, False) for table in TABLES}
PG_NEW_RANGED = {table: _pg_new_sql(table, True) for table in DAY_TABLES}
ROLLED_UP_KEY = "usage_rolled_up_seq"  # meta (SQLite): the last event seq the rollups count


def _measures(e: CallEvent) -> tuple[int, ...]:
    return (1, int(e.status >= 400), int(e.decision == "block"), int(e.would == "block"), e.input_tokens,
            e.output_tokens, e.cost_nusd or 0)


def _add(into: dict[tuple[Any, ...], list[int]], key: tuple[Any, ...], values: Sequence[int]) -> None:
    found = into.get(key)
    if found is None:
        into[key] = list(values)
    else:
        for i, v in enumerate(values):
            found[i] += v


def local_date_ms(ts_ms: int, zone: ZoneInfo) -> int:
    """The local date of an instant, as that date's midnight UTC in Unix ms (the day tables' `day_ms`)."""
    day = datetime.fromtimestamp(ts_ms / 1000, zone).date()
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


def aggregate(events: Iterable[CallEvent], zone: ZoneInfo) -> dict[str, list[tuple[Any, ...]]]:
    """table -> rows (period, key..., measures...) summing `events`, in key order; days are local dates in `zone`.
    The rollups' definition in Python: the database's sums (`roll_up`, `add_new_pg`) are checked against it."""
    person_hours: dict[tuple[Any, ...], list[int]] = {}
    person_days: dict[tuple[Any, ...], list[int]] = {}
    # each hour's UTC offset (offsets change on the hour in every zone there is)
    offset_of_hour: dict[int, int] = {}
    for e in events:
        hour = e.ts_ms // HOUR_MS
        offset = offset_of_hour.get(hour)
        if offset is None:
            offset = offset_of_hour[hour] = _offset_ms(hour * HOUR_MS, zone)
        day = (e.ts_ms + offset) // DAY_MS * DAY_MS
        key = (e.subject or "", e.team or "", e.project or "", e.cost_centre or "", e.provider or "", e.model or "")
        values = _measures(e)
        _add(person_hours, (e.ts_ms // HOUR_MS * HOUR_MS, *key), values)
        _add(person_days, (day, *key), values)
    out: dict[str, list[tuple[Any, ...]]] = {}
    people: dict[tuple[Any, ...], list[int]] = {}
    for key, sums in person_days.items():
        _add(people, key[:3], sums)  # (day, subject, team)
    for person, org, rows in (("usage_hourly", "usage_hourly_org", person_hours),
                              ("usage_daily", "usage_daily_org", person_days)):
        teams: dict[tuple[Any, ...], list[int]] = {}
        for key, sums in rows.items():
            _add(teams, (key[0], *key[2:]), sums)
        # in key order: concurrent writers (gateways sharing PostgreSQL) lock the rows they update in one order,
        # so they wait for each other rather than deadlock
        out[person] = [(*k, *v) for k, v in sorted(rows.items())]
        out[org] = [(*k, *v) for k, v in sorted(teams.items())]
    out["usage_daily_people"] = [(*k, *v) for k, v in sorted(people.items())]
    return out


def add_new_pg(db: Db, events: Sequence[CallEvent], zone: ZoneInfo) -> None:
    """PostgreSQL: add `events` (just inserted, in the caller's transaction) to the rollups, summed by the database
    over their ids: one statement per rollup (per run of hours at one UTC offset), whatever the batch's size, and no
    Python summing under the GIL."""
    if not events:
        return
    ids = sorted(e.id for e in events)
    times = [e.ts_ms for e in events]
    for table in HOUR_TABLES:
        db.execute(PG_NEW[table], (ids,))
    stretches = _offset_stretches(min(times) // HOUR_MS * HOUR_MS, max(times) // HOUR_MS * HOUR_MS + HOUR_MS, zone)
    for start, end, offset in stretches:
        for table in DAY_TABLES:
            if len(stretches) == 1:
                db.execute(PG_NEW[table], (offset, ids))
            else:
                db.execute(PG_NEW_RANGED[table], (offset, ids, start, end))


def roll_up(db: Db, zone: ZoneInfo) -> int:
    """SQLite: add the events stored since the last roll-up (`ROLLED_UP_KEY`) to the rollups, in the caller's write
    transaction; how many events that was. The database does the summing, in a fixed number of statements: the
    sqlite3 module lets go of the GIL while a statement runs, so the store thread sums beside the event loop
    (summing in Python held the GIL: the loop thread waited for it ten times as often and served ~10 % fewer calls
    at c=32). SQLite commits in seq order (one writer at a time), so "after the mark" is exactly "not yet counted"."""
    mark = int(db.tuples("SELECT value FROM meta WHERE key = ?", (ROLLED_UP_KEY,))[0][0])
    db.execute(_BATCH_TABLE)
    db.execute("DELETE FROM temp.rollup_batch")
    if not db.execute(_BATCH_FILL, (mark,)):
        return 0
    (last, count), = db.tuples("SELECT MAX(seq), COUNT(*) FROM events WHERE seq > ?", (mark,))
    (lo, hi), = db.tuples("SELECT MIN(hour_ms), MAX(hour_ms) FROM temp.rollup_batch")
    for table in HOUR_TABLES:
        db.execute(FROM_BATCH[table])
    for start, end, offset in _offset_stretches(int(lo), int(hi) + HOUR_MS, zone):
        for table in DAY_TABLES:
            db.execute(FROM_BATCH[table], (offset, start, end))
    db.execute("UPDATE meta SET value = ? WHERE key = ?", (str(last), ROLLED_UP_KEY))
    return int(count)


def rolled_up(db: Db) -> bool:
    """SQLite: whether the rollups count every stored event (a read, no lock)."""
    (mark,), = db.tuples("SELECT value FROM meta WHERE key = ?", (ROLLED_UP_KEY,))
    (last,), = db.tuples("SELECT MAX(seq) FROM events")
    return last is None or int(last) <= int(mark)


def rebuild_days(db: Db, zone: ZoneInfo) -> None:
    """Rebuild the day tables from the hour tables for `zone` (in the caller's transaction): each hour goes to the
    local date it starts on, one statement per stretch of hours at one UTC offset (DST changes split them)."""
    for table in DAY_TABLES:
        db.execute(f"DELETE FROM {table}")
    bounds = db.query("SELECT MIN(hour_ms) AS lo, MAX(hour_ms) AS hi FROM usage_hourly")
    lo, hi = bounds[0]["lo"], bounds[0]["hi"]
    if lo is not None:
        for start, end, offset in _offset_stretches(int(lo), int(hi) + HOUR_MS, zone):
            for day_table, hour_table in (("usage_daily", "usage_hourly"), ("usage_daily_org", "usage_hourly_org")):
                _, key = TABLES[day_table]
                cols = ", ".join(key)
                sums = ", ".join(f"SUM({m})" for m in MEASURES)
                db.execute(f"INSERT INTO {day_table} (day_ms, {cols}, {', '.join(MEASURES)}) "
                           f"SELECT ((hour_ms + {offset}) / {DAY_MS}) * {DAY_MS}, {cols}, {sums} FROM {hour_table} "
                           f"WHERE hour_ms >= ? AND hour_ms < ? GROUP BY 1, {cols} " + _accumulate(day_table),
                           (start, end))
        cols = ", ".join(PEOPLE_KEY)
        db.execute(f"INSERT INTO usage_daily_people (day_ms, {cols}, {', '.join(MEASURES)}) "
                   f"SELECT day_ms, {cols}, {', '.join(f'SUM({m})' for m in MEASURES)} FROM usage_daily "
                   f"WHERE true GROUP BY day_ms, {cols}")
    db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
               (DAY_ZONE_KEY, zone.key))


def _offset_stretches(lo: int, hi: int, zone: ZoneInfo) -> list[tuple[int, int, int]]:
    """[start, end, UTC offset in ms) of each run of hours in [lo, hi) at one offset."""
    out: list[tuple[int, int, int]] = []
    hour = lo
    while hour < hi:
        offset = _offset_ms(hour, zone)
        end = hour + HOUR_MS
        while end < hi and _offset_ms(end, zone) == offset:
            end += HOUR_MS
        out.append((hour, end, offset))
        hour = end
    return out


def _offset_ms(ts_ms: int, zone: ZoneInfo) -> int:
    delta = datetime.fromtimestamp(ts_ms / 1000, zone).utcoffset()
    return int(delta.total_seconds() * 1000) if delta is not None else 0

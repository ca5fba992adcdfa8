"""Reading the usage rollups (see rollup.py): sums per hour or per local day and per key, over a range and
filters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tollhouse.events import rollup
from tollhouse.events.db import Db

# The columns a view may group by or filter on (rollup key columns).
COLUMNS = frozenset(rollup.PERSON_KEY)


def _table(period: str, columns: set[str]) -> str:
    """The smallest rollup of `period` (hour | day) that has every column asked for."""
    base = "usage_hourly" if period == "hour" else "usage_daily"
    if period == "day" and "subject" in columns and columns <= set(rollup.PEOPLE_KEY):
        return "usage_daily_people"
    return f"{base}_org" if columns <= set(rollup.ORG_KEY) else base


def rows(db: Db, period: str, group_by: Sequence[str], since: int, until: int,
         filters: Mapping[str, Sequence[str]], by_period: bool = True) -> list[dict[str, Any]]:
    """Rows {period_ms, <group_by columns>, <measures>} for the periods in [since, until) (an hour: its start, Unix
    ms; a day: its local date as midnight UTC, see rollup.py), keeping the rows whose column is one of
    `filters[column]` for each filter. A column's '' is returned as None. Not `by_period`: one row per key, the
    sum of those periods (no period_ms)."""
    if period not in ("hour", "day"):
        raise ValueError(f"a usage period is hour or day, not {period!r}")
    unknown = (set(group_by) | set(filters)) - COLUMNS
    if unknown:
        raise ValueError(f"not a usage column: {sorted(unknown)}")
    table = _table(period, set(group_by) | set(filters))
    column = rollup.TABLES[table][0]
    where = [f"{column} >= ?", f"{column} < ?"]
    args: list[Any] = [since, until]
    for name, values in sorted(filters.items()):
        where.append(f"{name} IN ({', '.join('?' for _ in values)})")
        args.extend(v or "" for v in values)
    cols = ", ".join([column, *group_by] if by_period else group_by)
    sums = ", ".join(f"SUM({m}) AS {m}" for m in rollup.MEASURES)
    group = f" GROUP BY {cols}" if cols else ""
    found = db.query(f"SELECT {cols + ', ' if cols else ''}{sums} FROM {table} WHERE {' AND '.join(where)}{group}",
                     args)
    if not cols and found and found[0][rollup.MEASURES[0]] is None:
        return []  # no row in the range: SUM over nothing
    for row in found:
        if by_period:
            row["period_ms"] = row.pop(column)
        for name in group_by:
            if row[name] == "":
                row[name] = None
        for m in rollup.MEASURES:
            row[m] = int(row[m])
    return found


def seen(db: Db, column: str, value: str) -> bool:
    """Whether any stored call has `value` in `column` (an id no longer in the directory, but in the history)."""
    if column not in COLUMNS:
        raise ValueError(f"not a usage column: {column}")
    # subject, team and project are indexed in the events table: a lookup, where a rollup would be scanned
    table = "events" if column in ("subject", "team", "project") else _table("day", {column})
    return bool(db.query(f"SELECT 1 AS x FROM {table} WHERE {column} = ? LIMIT 1", (value,)))

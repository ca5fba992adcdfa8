"""Reading the usage rollups (see rollup.py): sums per hour and per key, over a range and filters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tollhouse.events import rollup
from tollhouse.events.db import Db

# The columns a view may group by or filter on (rollup key columns).
COLUMNS = frozenset(rollup.PERSON_KEY)


def _table(columns: set[str]) -> str:
    """The smallest rollup that has every column asked for."""
    return rollup.ORG_TABLE if columns <= set(rollup.ORG_KEY) else rollup.PERSON_TABLE


def hours(db: Db, group_by: Sequence[str], since_ms: int, until_ms: int,
          filters: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
    """Rows {hour_ms, <group_by columns>, <measures>} for the hours starting in [since_ms, until_ms), keeping the
    rows whose column is one of `filters[column]` for each filter. A column's '' is returned as None."""
    unknown = (set(group_by) | set(filters)) - COLUMNS
    if unknown:
        raise ValueError(f"not a usage column: {sorted(unknown)}")
    table = _table(set(group_by) | set(filters))
    where = ["hour_ms >= ?", "hour_ms < ?"]
    args: list[Any] = [since_ms, until_ms]
    for column, values in sorted(filters.items()):
        where.append(f"{column} IN ({', '.join('?' for _ in values)})")
        args.extend(v or "" for v in values)
    cols = ", ".join(["hour_ms", *group_by])
    sums = ", ".join(f"SUM({m}) AS {m}" for m in rollup.MEASURES)
    rows = db.query(f"SELECT {cols}, {sums} FROM {table} WHERE {' AND '.join(where)} GROUP BY {cols}", args)
    for row in rows:
        for column in group_by:
            if row[column] == "":
                row[column] = None
        for m in rollup.MEASURES:
            row[m] = int(row[m])
    return rows


def seen(db: Db, column: str, value: str) -> bool:
    """Whether any rolled-up call has `value` in `column` (an id no longer in the directory, but in the history)."""
    if column not in COLUMNS:
        raise ValueError(f"not a usage column: {column}")
    # subject, team and project are indexed in the events table: a lookup, where a rollup would be scanned
    table = "events" if column in ("subject", "team", "project") else _table({column})
    return bool(db.query(f"SELECT 1 AS x FROM {table} WHERE {column} = ? LIMIT 1", (value,)))

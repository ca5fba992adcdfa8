"""Reading stored calls back for a policy backtest: streamed in time order a page at a time (keyset pagination
on (ts_ms, seq), so memory stays bounded whatever the window holds), and the settled usage stored before the
window that the simulated budget counters start from. SQLite and PostgreSQL, through the store's `Db`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from tollhouse.events.store import Store
from tollhouse.ledger.local import HistoryRow
from tollhouse.policy.backtest import Past

PAGE = 20_000
_COLUMNS = ", ".join(Past._fields)
# Rows after (last ts, last seq) in (ts_ms, seq) order: a range on the ts_ms index, the few rows of the last
# millisecond already read left out.
_PAGE_SQL = (f"SELECT {_COLUMNS} FROM events WHERE ts_ms >= ? AND ts_ms < ? AND NOT (ts_ms = ? AND seq <= ?) "
             "ORDER BY ts_ms, seq LIMIT ?")
_SCOPE_COLUMNS = {"subject": "subject", "team": "team", "project": "project"}  # org: every event


def stream_calls(store: Store, since_ms: int, until_ms: int, page: int = PAGE) -> Iterator[Past]:
    """Every call stored with since_ms <= ts_ms < until_ms, oldest first (ties in the order stored)."""
    last_ts, last_seq = since_ms, -1
    make = Past._make
    while True:
        rows = store.db.tuples(_PAGE_SQL, (last_ts, until_ms, last_ts, last_seq, page))
        yield from map(make, rows)
        if len(rows) < page:
            return
        last = make(rows[-1])
        last_ts, last_seq = int(last.ts_ms), int(last.seq)


def settled_between(store: Store, scope: str, ids: Sequence[str], since_ms: int, until_ms: int, bucket_ms: int
                    ) -> list[HistoryRow]:
    """Settled usage stored in [since, until) in time buckets per provider (the ledger loader's rows) for one
    counter: scope subject, team (ids: the team and the teams under it), project, or org."""
    column = _SCOPE_COLUMNS.get(scope)
    where = f" AND {column} IN ({', '.join('?' for _ in ids)})" if column else ""
    sql = ("SELECT b, provider, COALESCE(SUM(cost_nusd), 0) AS c, SUM(input_tokens) AS i, "
           "SUM(output_tokens) AS o, SUM(CASE WHEN status < 400 THEN 1 ELSE 0 END) AS n "
           "FROM (SELECT (ts_ms / ?) * ? AS b, provider, cost_nusd, input_tokens, output_tokens, status "
           f"FROM events WHERE ts_ms >= ? AND ts_ms < ? AND decision != 'block'{where}) AS e "
           "GROUP BY b, provider ORDER BY b")
    rows = store.db.query(sql, [bucket_ms, bucket_ms, since_ms, until_ms, *(ids if column else ())])
    return [(int(r["b"]), r["provider"], int(r["c"]), int(r["i"]), int(r["o"]), int(r["n"])) for r in rows]

"""Reading stored calls back for a policy backtest: streamed in time order a page at a time (keyset pagination
on (ts_ms, seq), so memory stays bounded whatever the window holds), and the settled usage stored before the
window that the simulated budget counters start from. SQLite and PostgreSQL, through the store's `Db`."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, TypeVar

from tollhouse.events.store import Store
from tollhouse.ledger.local import HistoryRow
from tollhouse.policy.backtest import Past

PAGE = 20_000
_COLUMNS = ", ".join(Past._fields)
# Rows after (last ts, last seq) in (ts_ms, seq) order: a range on the ts_ms index, the few rows of the last
# millisecond already read left out.
_PAGE_SQL = (f"SELECT {_COLUMNS} FROM events WHERE ts_ms >= ? AND ts_ms < ? AND NOT (ts_ms = ? AND seq <= ?) "
             "ORDER BY ts_ms, seq LIMIT ?")
_TS, _SEQ = Past._fields.index("ts_ms"), Past._fields.index("seq")
_SCOPE_COLUMNS = {"subject": "subject", "team": "team", "project": "project"}  # org: every event


def stream_calls(store: Store, since_ms: int, until_ms: int, page: int = PAGE, ahead: int | None = None
                 ) -> Iterator[Past]:
    """Every call stored with since_ms <= ts_ms < until_ms, oldest first (ties in the order stored). `ahead`: pages
    read by a thread while the caller works on the one before (0: read in the caller's thread; None: one page on
    PostgreSQL, whose reads mostly wait for the server, none on SQLite, whose reads hold the interpreter and only
    compete with the caller for it)."""
    if ahead is None:
        ahead = 1 if store.db.dialect == "postgresql" else 0
    make = Past._make
    pages = _pages(store, since_ms, until_ms, page)
    for rows in (read_ahead(pages, ahead) if ahead else pages):
        yield from map(make, rows)


def _pages(store: Store, since_ms: int, until_ms: int, page: int) -> Iterator[list[tuple[Any, ...]]]:
    last_ts, last_seq = since_ms, -1
    while True:
        rows = store.db.tuples(_PAGE_SQL, (last_ts, until_ms, last_ts, last_seq, page))
        if rows:
            yield rows
        if len(rows) < page:
            return
        last = rows[-1]
        last_ts, last_seq = int(last[_TS]), int(last[_SEQ])


_Item = TypeVar("_Item")
_END = object()


def read_ahead(items: Iterator[_Item], depth: int) -> Iterator[_Item]:
    """`items`, made by a thread up to `depth` ahead of the caller (the store's waits and reads overlap the
    caller's work; memory holds at most depth + 2 items). An exception the thread meets is raised here, in order.
    Closing the iterator early stops the thread (after the item it is making) and waits for it."""
    box: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def run() -> None:
        last: object = _END
        try:
            for item in items:
                if stop.is_set():
                    break
                box.put(item)
        except BaseException as exc:  # handed to the caller, who raises it
            last = _Failed(exc)
        box.put(last)  # always the thread's last word: the caller reads up to it

    thread = threading.Thread(target=run, name="read-ahead", daemon=True)
    thread.start()
    got: object = None
    try:
        while True:
            got = box.get()
            if got is _END:
                return
            if isinstance(got, _Failed):
                raise got.exc
            yield got  # type: ignore[misc]
    finally:
        stop.set()
        while not (got is _END or isinstance(got, _Failed)):  # closed early: take what it still puts
            got = box.get()
        thread.join()


class _Failed(NamedTuple):
    exc: BaseException


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

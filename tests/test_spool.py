"""The spool's queries on both store backends: the watermark, reading after it, the bound."""

from __future__ import annotations

from shipping import call
from tollhouse.events import spool
from tollhouse.events.model import Capture
from tollhouse.events.store import Store


def test_the_watermark_reads_and_bounds_the_spool(store: Store) -> None:
    assert spool.watermark(store) == 0 and spool.head(store) == 0 and spool.read(store, 0, 10) == []
    store.insert_events([call(n) for n in range(10)], {call(3).id: Capture("p", None)})
    store.insert_events([call(n) for n in range(5)])  # duplicates: no new rows
    items = spool.read(store, 0, 4)
    assert [i.event for i in items] == [call(n) for n in range(4)]  # booleans come back as bool
    assert [i.capture for i in items] == [None, None, None, Capture("p", None)]
    spool.set_watermark(store, items[-1].seq)
    assert spool.watermark(store) == items[-1].seq and spool.backlog(store, items[-1].seq) == 6
    assert spool.drop_oldest(store, items[-1].seq, 6) is None  # within the bound
    dropped = spool.drop_oldest(store, items[-1].seq, 2)
    assert dropped is not None and dropped.events == 4
    assert (dropped.first_ts_ms, dropped.last_ts_ms) == (call(4).ts_ms, call(7).ts_ms)
    assert spool.watermark(store) == dropped.watermark
    assert [i.event.id for i in spool.read(store, dropped.watermark, 10)] == [call(8).id, call(9).id]
    assert len(store.list_events(100)) == 10  # given up on, not deleted: the local ledger still counts them


def test_pruning_removes_only_old_events_the_control_plane_has(store: Store) -> None:
    store.insert_events([call(n) for n in range(6)], {call(1).id: Capture("old prompt", "old answer")})
    shipped = spool.read(store, 0, 4)
    spool.set_watermark(store, shipped[-1].seq)  # events 0-3 acknowledged, 4-5 still to ship
    cutoff = call(2).ts_ms  # older than event 2: 0 and 1
    assert spool.prune(store, cutoff) == 2
    left = sorted(e["id"] for e in store.list_events(100))
    assert left == sorted(call(n).id for n in range(2, 6))
    assert spool.prune(store, call(5).ts_ms + 1) == 2  # everything old now: only the shipped 2 and 3 go
    assert sorted(e["id"] for e in store.list_events(100)) == [call(4).id, call(5).id]  # never unshipped ones
    assert [i.event.id for i in spool.read(store, spool.watermark(store), 10)] == [call(4).id, call(5).id]

"""The event writer under storage faults: it never dies, holds events in memory (bounded, said), and
writes them when storage is back; a call's intent is superseded by its final event."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shipping import call
from tollhouse.events.journal import PROVISIONAL, Journal, recover
from tollhouse.events.model import CallEvent
from tollhouse.events.store import Store, StoreError, open_store
from tollhouse.events.writer import EventWriter, StoreRunner


class Switch:
    """Makes a real store's event inserts fail while `broken`."""

    def __init__(self, store: Store) -> None:
        self.broken = False
        real = store.insert_events

        def insert(events: Sequence[CallEvent], captures: Any = None) -> int:
            if self.broken:
                raise StoreError(f"the store at {store.db.where} failed: database or disk is full")
            return real(events, captures)

        store.insert_events = insert  # type: ignore[method-assign]


def _stored(runner: StoreRunner) -> Any:
    return runner.run(lambda s: [r["id"] for r in reversed(s.list_events(10_000))])


def test_a_failing_store_never_kills_the_writer_and_reads_do_not_hang(tmp_path: Path) -> None:
    async def main() -> None:
        store = open_store("", tmp_path)
        switch = Switch(store)
        runner = StoreRunner(store)
        errors: list[int] = []
        writer = EventWriter(runner, 0.01, 500, on_write_error=lambda: errors.append(1),
                             journal=Journal(tmp_path / "journal"), max_pending=100)
        writer.start()
        switch.broken = True
        for n in range(50):
            writer.record(call(n))
        assert not await writer.flush(0.3)  # answers, rather than wait for a store that fails
        assert errors and writer.problem() is not None and "disk is full" in writer.problem()  # type: ignore[operator]
        assert writer.accepting()  # 50 of 100 held
        for n in range(50, 95):
            writer.record(call(n))
        assert not writer.accepting()  # 95 held: near the bound, new calls are refused
        for n in range(95, 120):
            writer.record(call(n)._replace(decision="block", status=503))
        assert writer.dropped == 20 and writer.held == 100  # refusals past the bound: dropped and counted
        writer.record(call(500))  # a forwarded call's event is kept past the bound
        switch.broken = False
        assert await writer.flush(10)
        assert writer.problem() is None and writer.accepting()
        assert await _stored(runner) == [call(n).id for n in [*range(100), 500]]
        await writer.close()
        runner.close()
        assert not list((tmp_path / "journal").glob("segment-*"))

    asyncio.run(main())


def test_the_intent_of_a_call_is_never_stored_once_its_final_event_exists(tmp_path: Path) -> None:
    async def main() -> None:
        runner = StoreRunner(open_store("", tmp_path))
        journal_dir = tmp_path / "journal"
        writer = EventWriter(runner, 0.01, 500, journal=Journal(journal_dir))
        writer.start()
        intent = call(1)._replace(status=0, usage_source=PROVISIONAL, cost_nusd=10**8)
        writer.begin(intent)
        writer.begin(call(2)._replace(status=0, usage_source=PROVISIONAL))
        writer.record(call(3))
        assert await writer.flush(10)  # a batch went to the store, its segments were deleted
        # The calls still in flight kept their intents in the journal (a kill -9 now forgets nothing).
        assert sorted(e.id for e in recover(journal_dir).events) == [call(1).id, call(2).id]
        writer.record(call(1))
        assert await writer.flush(10)
        assert await _stored(runner) == [call(3).id, call(1).id]
        assert [e.id for e in recover(journal_dir).events] == [call(2).id]  # still in flight
        row = await runner.run(lambda s: s.event(call(1).id))
        assert row is not None and row["usage_source"] == "response"
        await writer.close()
        runner.close()

    asyncio.run(main())

"""The event writer under storage faults: it never dies, holds events in memory (bounded, said), and
writes them when storage is back; a call's intent is superseded by its final event."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from shipping import call
from tollhouse.events.journal import PROVISIONAL, Journal, recover
from tollhouse.events.model import CallEvent
from tollhouse.events.store import Store, StoreError, open_store
from tollhouse.events.writer import EventWriter, StoreRunner
from tollhouse.gateway.state import replay_journal


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


def test_events_only_memory_held_are_journaled_as_soon_as_the_disk_is_back(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")

    async def main() -> None:
        store = open_store("", tmp_path)
        switch = Switch(store)
        runner = StoreRunner(store)
        writer = EventWriter(runner, 0.01, 500, journal=Journal(mnt / "journal", segment_bytes=64 * 1024))
        writer.start()
        switch.broken = True
        (mnt / "filler").write_bytes(b"x" * (256 * 1024 - 64 * 1024 - 8192))  # room for what is mapped, no more
        for n in range(400):  # ~300 bytes each: more than the one segment holds
            writer.record(call(n))
        assert writer.memory_only > 0
        assert not await writer.flush(0.2)
        problem = writer.problem()
        assert problem is not None and "No space left on device" in problem and "memory only" in problem
        (mnt / "filler").unlink()
        async with asyncio.timeout(10):  # the writer brings the journal back by itself (store still failing)
            while writer.memory_only:  # noqa: ASYNC110 - polls a condition the writer has no event for
                await asyncio.sleep(0.01)
        assert {e.id for e in recover(mnt / "journal").events} == {call(n).id for n in range(400)}
        switch.broken = False
        assert await writer.flush(10)
        assert len(await _stored(runner)) == 400
        await writer.close()
        runner.close()

    try:
        asyncio.run(main())
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_leftovers_the_store_cannot_take_at_start_are_adopted_and_stored_later(tmp_path: Path) -> None:
    journal_dir = tmp_path / "journal"
    earlier = Journal(journal_dir)
    for n in range(5):
        earlier.append(call(n))
    earlier.append(call(9)._replace(status=0, usage_source=PROVISIONAL))  # killed in flight
    del earlier  # as a killed process leaves it

    async def main() -> None:
        store = open_store("", tmp_path)
        switch = Switch(store)
        switch.broken = True
        leftover = replay_journal(store, journal_dir)  # the disk is full at start: kept, not lost
        assert leftover is not None and len(leftover.events) == 6
        runner = StoreRunner(store)
        writer = EventWriter(runner, 0.01, 500, journal=Journal(journal_dir))
        writer.adopt(leftover)
        writer.start()
        writer.record(call(5))
        assert not await writer.flush(0.2)
        switch.broken = False
        assert await writer.flush(10)
        assert await _stored(runner) == [call(n).id for n in (0, 1, 2, 3, 4, 9, 5)]
        assert [e.id for e in recover(journal_dir).events] == []  # the old segments went once stored
        await writer.close()
        runner.close()

    asyncio.run(main())


def test_a_read_waits_for_a_stream_its_client_has_seen_end_and_only_for_those_answered_before_it(
        tmp_path: Path) -> None:
    """A stream's client can have its last event while the gateway still works on the call (redacting the
    captured answer off the loop): a read of the store started then waits for the call's event; a stream that
    ends after the read began does not hold the read up."""
    async def main() -> None:
        runner = StoreRunner(open_store("", tmp_path))
        writer = EventWriter(runner, 30.0, 500)  # never written on the interval: only a flush writes
        writer.start()
        ticket = writer.hold_reads()
        read = asyncio.create_task(writer.flush(10))
        done, _ = await asyncio.wait({read}, timeout=0.2)
        assert not done  # the answered call is not recorded yet: the read must not go ahead without it
        later = writer.hold_reads()  # a stream ending now belongs to reads started from now
        writer.record(call(1))
        writer.release_reads(ticket)
        assert await read
        assert await _stored(runner) == [call(1).id]
        assert not await writer.flush(0.1)  # `later` is still being recorded
        writer.release_reads(later)
        assert await writer.flush(1)
        await writer.close()
        runner.close()

    asyncio.run(main())

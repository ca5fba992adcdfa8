"""Batched event writing off the request path.

`record()` is a list append; a background task hands batches to the store thread. A batch that
fails to write stays queued and is retried (nothing is dropped); `close()` drains everything.
A call's captured content (enterprise capture mode) travels with its event, in the same transaction.

Storage faults: the writer never dies. An event the journal cannot take (disk full, read-only) is
kept in memory, journaled as soon as the journal is back and stored as soon as the store is; while
the events held in memory approach `max_pending`, `accepting()` turns False (the request path then
refuses new calls: a call we cannot record is not forwarded). Past the bound, refusals' events are
dropped, each counted, and said in the log; calls that were forwarded are still kept.

`begin()` journals a call's intent (a provisional event at its worst case) before it is forwarded;
`record()` of the final event (same id) supersedes it. Only a replay ever stores an intent: the
one of a call whose gateway was killed before the call finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from tollhouse.events.journal import Journal, Recovered, journal_line
from tollhouse.events.model import CallEvent, Capture
from tollhouse.events.store import Store

log = logging.getLogger("tollhouse.events")

T = TypeVar("T")

MAX_PENDING = 100_000  # events held in memory (not yet in the store) before new calls are refused
_HIGH_WATER = 0.9  # of max_pending: not accepting from here on
_MAX_BACKOFF_S = 5.0


class StoreRunner:
    """Runs store calls on one dedicated thread (a store's connection is used from one thread only)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tollhouse-store")

    async def run(self, fn: Callable[[Store], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, self.store)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.store.close()


class EventWriter:
    def __init__(self, runner: StoreRunner, flush_interval_s: float, batch_size: int,
                 on_write_error: Callable[[], None] = lambda: None, journal: Journal | None = None,
                 max_pending: int = MAX_PENDING, on_drop: Callable[[], None] = lambda: None) -> None:
        self._runner = runner
        self._journal = journal
        self._interval = flush_interval_s
        self._batch = batch_size
        self._max = max_pending
        self._high_water = int(max_pending * _HIGH_WATER)
        self._pending: list[CallEvent] = []
        self._captures: dict[str, Capture] = {}  # event id → content, until its event is stored
        self._open: dict[str, bytes] = {}  # event id → journal line of the intent of a call in flight
        self._volatile: dict[str, CallEvent] = {}  # unsaved events the journal could not take
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._answering: set[int] = set()  # calls whose client may have seen their end, not yet recorded
        self._answer_seq = itertools.count(1)
        self._answers_changed = asyncio.Event()  # set and replaced when one of them is, while reads wait
        self._reads_waiting = 0
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._on_error = on_write_error
        self._on_drop = on_drop
        self.written = 0
        self.dropped = 0  # events lost past the bound (each logged and counted)
        self.store_error: str | None = None  # the last batch write's failure, until one succeeds
        self._writing: list[CallEvent] = []  # the batch the store thread is committing
        self._id_prefix = os.urandom(4).hex()
        self._id_seq = itertools.count()
        self._id_ms = -1  # the millisecond `_id_head` is for
        self._id_head = ""  # the ids of that millisecond start with this
        self._drop_logged = 0.0

    def new_id(self, ts_ms: int) -> str:
        """Unique, time-ordered event ids without a syscall per call (uuid4 reads os.urandom): the time in
        ms, this writer's random prefix, a sequence number (the head is formatted once per millisecond)."""
        if ts_ms != self._id_ms:
            self._id_ms = ts_ms
            self._id_head = f"{ts_ms:012x}{self._id_prefix}"
        return "%s%08x" % (self._id_head, next(self._id_seq) & 0xFFFFFFFF)  # noqa: UP031 (the fastest form)

    def unsaved(self) -> list[CallEvent]:
        """Events recorded but not (yet) committed to the store: the batch being written, then pending.

        Read right after a store query returns (on the loop), this is exactly what the query missed:
        the store thread runs queries and commits one at a time, and their results reach the loop in
        that order, so a committed batch is never both in a query's result and in this list."""
        return [*self._writing, *self._pending]

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def held(self) -> int:
        """Events in memory not yet in the store."""
        return len(self._pending) + len(self._writing)

    @property
    def memory_only(self) -> int:
        """Events in memory that neither the journal nor the store holds (a kill -9 would lose them)."""
        return len(self._volatile)

    def accepting(self) -> bool:
        """False while the events held in memory are near the bound: new calls must not be forwarded."""
        return len(self._pending) + len(self._writing) < self._high_water

    def problem(self) -> str | None:
        """What is wrong with recording events, for people (None: nothing)."""
        parts = []
        if self._journal is not None and self._journal.error is not None:
            parts.append(self._journal.error)
        if self.store_error is not None:
            parts.append(f"cannot write events to the store: {self.store_error}")
        if not parts:
            return None
        held = f"{self.held} events are held in memory ({self.memory_only} in memory only) and written " \
               "automatically when storage is back"
        if not self.accepting():
            held += f"; the bound of {self._max} is near, so new calls are refused"
        if self.dropped:
            held += f"; {self.dropped} refused calls' events were dropped past the bound"
        return "; ".join([*parts, held])

    def adopt(self, leftover: Recovered) -> None:
        """Events an earlier run journaled that the store could not take at start: pending, as if just
        recorded; their segments are deleted once they are stored."""
        if self._journal is not None:
            self._journal.adopt(leftover.paths)
        self._captures.update(leftover.captures)
        self._pending[:0] = leftover.events
        self._idle.clear()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="tollhouse-event-writer")

    def begin(self, event: CallEvent) -> None:
        """Journal a call's intent before it is forwarded: a provisional event (status 0, the worst case
        reserved, usage_source "reserved") that `record()` of the final event with the same id supersedes.
        A copy into mapped memory, as `record()`: no syscall."""
        self.begin_line(event.id, journal_line(event))

    def begin_line(self, event_id: str, line: bytes) -> None:
        """`begin` for an intent already serialised (a journal line of the provisional event's columns)."""
        self._open[event_id] = line
        if self._journal is not None:
            self._journal.append_line(line)  # journal down: carried into the next segment once it is up

    def record(self, event: CallEvent, capture: Capture | None = None) -> None:
        self._open.pop(event.id, None)
        if len(self._pending) + len(self._writing) >= self._max and not self._keep_past_bound(event):
            return
        if self._journal is not None and not self._journal.append(event, capture):
            self._volatile[event.id] = event
        if capture is not None:
            self._captures[event.id] = capture
        self._pending.append(event)
        self._idle.clear()
        if len(self._pending) >= self._batch:
            self._wake.set()

    def _keep_past_bound(self, event: CallEvent) -> bool:
        """Past the bound, a forwarded call's event is still kept (it is spend); a refusal's is dropped."""
        if event.decision != "block" and self.held < self._max + self._max // 10:
            return True
        self.dropped += 1
        self._on_drop()
        now = time.monotonic()
        if now - self._drop_logged > 10:
            self._drop_logged = now
            log.error("%d events are held in memory because storage is failing (%s): past the bound of %d, "
                      "%d events have been dropped so far (%s, decision %s)", self.held, self.problem(),
                      self._max, self.dropped, event.id, event.decision)
        return False

    def hold_reads(self) -> int:
        """The client may have all of a call's answer (a stream's last event) while the call is not recorded:
        a `flush` started from now waits (within its timeout) until `release_reads(ticket)`, which every
        ticket gets exactly once, after the call is recorded. Later tickets never hold up an earlier flush."""
        ticket = next(self._answer_seq)
        self._answering.add(ticket)
        return ticket

    def release_reads(self, ticket: int) -> None:
        self._answering.discard(ticket)
        if self._reads_waiting:
            changed, self._answers_changed = self._answers_changed, asyncio.Event()
            changed.set()

    async def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until everything recorded so far, and every call whose client has been answered so far, is in
        the store; False if it is not after `timeout_s`."""
        answered = set(self._answering)
        try:
            async with asyncio.timeout(timeout_s):
                while not answered.isdisjoint(self._answering):
                    self._reads_waiting += 1
                    try:
                        await self._answers_changed.wait()
                    finally:
                        self._reads_waiting -= 1
                if self._pending:
                    self._wake.set()
                while not self._idle.is_set():
                    await self._idle.wait()
        except TimeoutError:
            if self._pending:
                self._wake.set()
            return False
        return True

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._pending:  # the loop gave up (store dead): say so rather than drop silently
            log.error("shutdown with %d events not yet in the store (%d of them in memory only, lost); the "
                      "others stay in the journal and are replayed at the next start", len(self._pending),
                      self.memory_only)
        if self._journal is not None:
            self._journal.close(drained=not self._pending)

    async def _loop(self) -> None:
        failures = 0
        while True:
            try:
                if not await self._step():
                    return
                failures = 0
            except Exception as exc:  # disk full, read-only, locked database, ...: keep everything and retry
                failures += 1
                self._on_error()
                self.store_error = str(exc) or type(exc).__name__
                log.error("writing %d events failed (attempt %d), will retry: %s", len(self._pending), failures,
                          self.store_error)
                if self._closing and failures >= 5:
                    return
                await asyncio.sleep(min(0.1 * 2**failures, _MAX_BACKOFF_S))

    async def _step(self) -> bool:
        """One batch (or one wait); False when closing and done."""
        if not self._pending:
            self._idle.set()
            if self._closing:
                return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
        self._wake.clear()
        journal = self._journal
        if not self._pending:
            if journal is not None and not journal.up and journal.rotate(self._open.values()):
                self._journal_again()
            return True
        batch = self._pending
        self._pending = []
        self._writing = batch
        captures = {e.id: c for e in batch if (c := self._captures.get(e.id)) is not None} \
            if self._captures else None
        try:
            if journal is not None and journal.rotate(self._open.values()):
                self._journal_again()
            await self._runner.run(lambda s, b=batch, c=captures: _store_batch(s, journal, b, c))  # type: ignore[misc]
        except BaseException:
            self._writing = []
            self._pending = batch + self._pending
            raise
        self._writing = []
        if self.store_error is not None:
            log.warning("events are being written to the store again (%d in this batch)", len(batch))
            self.store_error = None
        if self._volatile:  # (a loop over the batch on the event loop only when the journal was down)
            for event in batch:
                self._volatile.pop(event.id, None)
        for event_id in captures or ():
            del self._captures[event_id]
        self.written += len(batch)
        return True

    def _journal_again(self) -> None:
        """The journal is up again: the events only memory held go into it (they are durable again)."""
        journal = self._journal
        assert journal is not None
        for event_id, event in list(self._volatile.items()):
            if not journal.append(event, self._captures.get(event_id)):
                return
            del self._volatile[event_id]


def _store_batch(store: Store, journal: Journal | None, batch: list[CallEvent],
                 captures: dict[str, Capture] | None) -> None:
    """On the store thread: the batch committed, and the journal's file work off the event loop: trimming the
    segments it set aside, deleting those whose events are all stored (this batch covers them), and making the
    segment its next rotation starts."""
    if journal is not None:
        journal.close_retired()
    store.insert_events(batch, captures)
    if journal is not None:
        journal.committed()
        journal.prepare_spare()

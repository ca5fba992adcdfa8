"""Batched event writing off the request path.

`record()` is a list append; a background task hands batches to the store thread. A batch that
fails to write stays queued and is retried (nothing is dropped); `close()` drains everything.
A call's captured content (enterprise capture mode) travels with its event, in the same transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from tollhouse.events.journal import Journal
from tollhouse.events.model import CallEvent, Capture
from tollhouse.events.store import Store

log = logging.getLogger("tollhouse.events")

T = TypeVar("T")


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
                 on_write_error: Callable[[], None] = lambda: None, journal: Journal | None = None) -> None:
        self._runner = runner
        self._journal = journal
        self._interval = flush_interval_s
        self._batch = batch_size
        self._pending: list[CallEvent] = []
        self._captures: dict[str, Capture] = {}  # event id → content, until its event is stored
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._on_error = on_write_error
        self.written = 0
        self._writing: list[CallEvent] = []  # the batch the store thread is committing
        self._id_prefix = os.urandom(4).hex()
        self._id_seq = itertools.count()

    def new_id(self, ts_ms: int) -> str:
        """Unique, time-ordered event ids without a syscall per call (uuid4 reads os.urandom)."""
        return f"{ts_ms:012x}{self._id_prefix}{next(self._id_seq) & 0xFFFFFFFF:08x}"

    def unsaved(self) -> list[CallEvent]:
        """Events recorded but not (yet) committed to the store: the batch being written, then pending.

        Read right after a store query returns (on the loop), this is exactly what the query missed:
        the store thread runs queries and commits one at a time, and their results reach the loop in
        that order, so a committed batch is never both in a query's result and in this list."""
        return [*self._writing, *self._pending]

    @property
    def pending(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="tollhouse-event-writer")

    def record(self, event: CallEvent, capture: Capture | None = None) -> None:
        if self._journal is not None:
            self._journal.append(event, capture)  # on disk (page cache) before the call is answered
        if capture is not None:
            self._captures[event.id] = capture
        self._pending.append(event)
        self._idle.clear()
        if len(self._pending) >= self._batch:
            self._wake.set()

    async def flush(self) -> None:
        """Wait until everything recorded so far is in the store."""
        if self._pending:
            self._wake.set()
        while not self._idle.is_set():
            await self._idle.wait()

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._pending:  # the loop gave up (store dead): say so rather than drop silently
            log.error("shutdown with %d events not yet in the store; they stay in the journal and are "
                      "replayed at the next start", len(self._pending))
        if self._journal is not None:
            self._journal.close(drained=not self._pending)

    async def _loop(self) -> None:
        failures = 0
        while True:
            if not self._pending:
                self._idle.set()
                if self._closing:
                    return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
            self._wake.clear()
            if not self._pending:
                continue
            batch = self._pending
            self._pending = []
            self._writing = batch
            if self._journal is not None:
                self._journal.rotate()
            captures = {e.id: c for e in batch if (c := self._captures.get(e.id)) is not None} \
                if self._captures else None
            try:
                await self._runner.run(lambda s, b=batch, c=captures: s.insert_events(b, c))  # type: ignore[misc]
            except Exception as exc:  # disk full, locked database, ...: keep the batch and retry
                self._writing = []
                self._pending = batch + self._pending
                failures += 1
                self._on_error()
                log.error("writing %d events failed (attempt %d), will retry: %s", len(batch), failures, exc)
                if self._closing and failures >= 5:
                    return
                await asyncio.sleep(min(0.1 * 2**failures, 5.0))
                continue
            self._writing = []
            for event_id in captures or ():
                del self._captures[event_id]
            failures = 0
            self.written += len(batch)
            if self._journal is not None:
                self._journal.committed()  # the covered segments' events are all in this batch

"""Recording audit entries from the running gateway, off the request path and in order."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from tollhouse.events.writer import StoreRunner

log = logging.getLogger("tollhouse.audit")


class AuditLog:
    def __init__(self, runner: StoreRunner, clock: Callable[[], float]) -> None:
        self._runner = runner
        self._clock = clock
        self._pending: set[asyncio.Future[Any]] = set()

    def record(self, kind: str, actor: str, data: dict[str, Any]) -> None:
        """Append an entry (on the store thread, in the order of calls); failures are logged loudly."""
        ts_ms = int(self._clock() * 1000)
        fut = asyncio.ensure_future(self._runner.run(lambda s: s.append_audit(ts_ms, kind, actor, data)))
        self._pending.add(fut)
        fut.add_done_callback(self._done)

    def _done(self, fut: asyncio.Future[Any]) -> None:
        self._pending.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            log.error("could not append to the audit trail: %s", fut.exception())

    async def flush(self) -> None:
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

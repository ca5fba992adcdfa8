"""Recording audit entries from the running gateway, off the request path and in order.

Each appended entry goes to the syslog forwarder, if there is one. With a signing key, the head of the
chain is signed into a checkpoint every `checkpoint_every` entries, every
`checkpoint_interval_s` seconds while entries arrive, and at shutdown (see audit/checkpoint.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tollhouse.audit.chain import AuditEntry
from tollhouse.audit.checkpoint import sign_checkpoint
from tollhouse.audit.syslog import SyslogForwarder
from tollhouse.events.store import Store
from tollhouse.events.writer import StoreRunner

log = logging.getLogger("tollhouse.audit")


class AuditLog:
    def __init__(self, runner: StoreRunner, clock: Callable[[], float], signer: Ed25519PrivateKey | None = None,
                 checkpoint_every: int = 100, checkpoint_interval_s: float = 60.0,
                 forwarder: SyslogForwarder | None = None) -> None:
        self._runner = runner
        self._clock = clock
        self._pending: set[asyncio.Future[Any]] = set()
        self._signer = signer
        self._every = checkpoint_every
        self._interval_s = checkpoint_interval_s
        self._unsigned: AuditEntry | None = None  # the newest entry no checkpoint covers yet
        self._since_checkpoint = 0
        self._timer: asyncio.Task[None] | None = None
        self._forwarder = forwarder

    def start(self) -> None:
        if self._forwarder is not None:
            self._forwarder.start()
        if self._signer is not None:
            self._timer = asyncio.create_task(self._checkpoint_periodically(), name="tollhouse-audit-checkpoint")

    def record(self, kind: str, actor: str, data: dict[str, Any]) -> None:
        """Append an entry (on the store thread, in the order of calls); failures are logged loudly."""
        ts_ms = int(self._clock() * 1000)
        self._track(self._runner.run(lambda s: s.append_audit(ts_ms, kind, actor, data)), self._appended)

    def _track(self, coro: Any, done: Callable[[asyncio.Future[Any]], None]) -> None:
        fut = asyncio.ensure_future(coro)
        self._pending.add(fut)
        fut.add_done_callback(done)

    def _appended(self, fut: asyncio.Future[AuditEntry]) -> None:
        self._pending.discard(fut)
        if fut.cancelled():
            return
        if fut.exception() is not None:
            log.error("could not append to the audit trail: %s", fut.exception())
            return
        self._unsigned = fut.result()
        if self._forwarder is not None:
            self._forwarder.submit(self._unsigned)
        self._since_checkpoint += 1
        if self._since_checkpoint >= self._every:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Sign the newest entry into a checkpoint (on the store thread), if any entry is not yet covered."""
        head, key = self._unsigned, self._signer
        if head is None or key is None:
            return
        self._unsigned, self._since_checkpoint = None, 0
        ts_ms = int(self._clock() * 1000)

        def write(store: Store) -> None:
            cp = sign_checkpoint(key, head.seq, head.hash, ts_ms)
            store.add_checkpoint(cp.seq, cp.ts_ms, cp.hash, cp.key_id, cp.signature)

        self._track(self._runner.run(write), self._checkpointed)

    def _checkpointed(self, fut: asyncio.Future[None]) -> None:
        self._pending.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            log.error("could not write an audit checkpoint: %s", fut.exception())

    async def _checkpoint_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            self.checkpoint()

    async def flush(self) -> None:
        """Wait for what is pending now."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def close(self) -> None:
        """Write what is pending and a last checkpoint covering it; deliver what is queued for syslog."""
        if self._timer is not None:
            self._timer.cancel()
            await asyncio.gather(self._timer, return_exceptions=True)
        while self._pending:  # appends, and the checkpoints they trigger
            await self.flush()
        self.checkpoint()
        await self.flush()
        if self._forwarder is not None:
            await asyncio.to_thread(self._forwarder.close)

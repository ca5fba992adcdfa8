"""Versioned documents of the control plane (the policy, the agent policy): each change is a new version
in the store, audited with its diff, and announced to whoever waits for changes (agents long-polling).

Several gateways may share one store: `poll()` notices versions another gateway wrote.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from tollhouse.control.diff import diff_documents, item_summary
from tollhouse.events.records import DocumentVersion
from tollhouse.events.writer import StoreRunner

Audit = Callable[[str, str, dict[str, Any]], None]  # kind, actor, data


class ChangeFeed:
    """Wakes every waiter when any document changes (the agent bundle's long-poll)."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()
        self.versions: dict[str, int] = {}
        self.closed = False  # shutting down: waiters return at once (a long-poll must not hold the server)

    def close(self) -> None:
        self.closed = True
        self._changed.set()

    def set(self, kind: str, version: int) -> None:
        if self.versions.get(kind) == version:
            return
        self.versions[kind] = version
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, timeout_s: float) -> bool:
        """True if something changed within the timeout."""
        event = self._changed
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


class Documents:
    """Store access for versioned documents of every kind, with audit entries and change announcements."""

    def __init__(self, runner: StoreRunner, clock: Callable[[], float], audit: Audit, feed: ChangeFeed) -> None:
        self._runner = runner
        self._clock = clock
        self._audit = audit
        self.feed = feed

    async def latest(self, kind: str) -> DocumentVersion | None:
        return await self._runner.run(lambda s: s.latest_document(kind))

    async def get(self, kind: str, version: int) -> DocumentVersion | None:
        return await self._runner.run(lambda s: s.document(kind, version))

    async def history(self, kind: str, limit: int, before: int | None = None) -> list[DocumentVersion]:
        return await self._runner.run(lambda s: s.document_history(kind, limit, before))

    async def latest_versions(self) -> dict[str, int]:
        return await self._runner.run(lambda s: s.latest_versions())

    async def refresh(self, versions: Mapping[str, int] | None = None, skip: str = "policy") -> None:
        """Announce versions other gateways sharing the store wrote (`versions`: the store's latest, read
        here when not given). The policy holder announces the policy itself, once it has applied it."""
        if versions is None:
            versions = await self.latest_versions()
        for kind, version in versions.items():
            if kind != skip:
                self.feed.set(kind, version)

    async def last_from(self, kind: str, source: str, scan: int = 200) -> DocumentVersion | None:
        """The newest version that came from `source` (e.g. the rules file), among the last `scan`."""
        for doc in await self.history(kind, scan):
            if doc.source == source:
                return doc
        return None

    async def publish(self, kind: str, body: dict[str, Any], actor: str, source: str,
                      previous: Mapping[str, Any] | None, note: str | None = None,
                      redact: Callable[[Mapping[str, Any]], Mapping[str, Any]] = lambda d: d) -> DocumentVersion:
        """Store `body` as the next version of `kind` and audit what changed from `previous`."""
        ts_ms = int(self._clock() * 1000)
        doc = await self._runner.run(lambda s: s.add_document(kind, ts_ms, actor, source, body, note))
        changes = diff_documents(redact(previous or {}), redact(body))
        data: dict[str, Any] = {"version": doc.version, "source": source, "note": note,
                                "changes": [c.json() for c in changes]}
        if kind == "policy":
            data.update(item_summary(changes))
        self._audit(f"{kind}.changed", actor, data)
        self.feed.set(kind, doc.version)
        return doc

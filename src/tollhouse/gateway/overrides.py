"""The approved exemption overrides, kept in memory for the request path.

A gateway loads them from its store: at start, when it approves or revokes one, and every
`refresh_interval_s` (so gateways that share a store converge within seconds). An agent is fed them by its
control plane's bundle instead (`follow`): the control plane's queue is the only one, and the agent's own
store is never read for them. Each set is published whole as an immutable OverrideSet
(`GatewayState.overrides`, a Published[OverrideSet]); a call reads `.current` once: no store round trip per
request. Expiry needs no reload: each override carries its expiry and is checked against the call's time.

Each refresh also notes the overrides whose expiry has passed (audited once, as `exemption.expired`, by
whichever gateway sharing the store notes it first). When the set's content changes, `on_change` is told
(the agent bundle's long-poll wakes on it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from tollhouse.control.overrides import OverrideSet, grant_of
from tollhouse.events.model import iso_ts
from tollhouse.events.records import Exemption
from tollhouse.events.writer import StoreRunner
from tollhouse.snapshot import Published

log = logging.getLogger("tollhouse.exemptions")

Audit = Callable[[str, str, dict[str, Any]], None]  # kind, actor, data
EXEMPTIONS_FEED = "exemptions"  # the change feed's name for the override set (its version: the generation)


class OverrideHolder:
    """Loads the approved overrides (or follows a control plane's) and publishes each set into `published`."""

    def __init__(self, runner: StoreRunner, clock: Callable[[], float], interval_s: float,
                 audit: Audit | None = None, on_change: Callable[[int], None] | None = None) -> None:
        self.published: Published[OverrideSet] = Published(OverrideSet())
        self._runner = runner
        self._clock = clock
        self._interval = interval_s
        self._audit = audit
        self._on_change = on_change
        self.generation = 0  # bumped whenever the set's content changes
        self.following = False  # an agent: the set comes from the control plane, never from the store
        self.refreshes = 0  # loads from the store completed
        self._started = 0  # refreshes begun; a slower, older one never replaces a newer result
        self._applied = 0
        self._task: asyncio.Task[None] | None = None

    def _publish(self, overrides: OverrideSet) -> None:
        changed = overrides.digest != self.published.current.digest
        self.published.publish(overrides)
        if changed:
            self.generation += 1
            if self._on_change is not None:
                self._on_change(self.generation)

    def follow(self, overrides: OverrideSet) -> None:
        """Use `overrides` (an agent's, from its control plane) from now on; the store is no longer read."""
        self.following = True
        self._publish(overrides)

    async def refresh(self) -> None:
        """Note expiries, then reload from the store (raises StoreError; the last set stays in force)."""
        if self.following:
            return
        self._started += 1
        ticket = self._started
        now_ms = int(self._clock() * 1000)
        expired = await self._runner.run(lambda s: s.note_expired_overrides(now_ms))
        for x in expired:
            self._audit_expiry(x)
        rows = await self._runner.run(lambda s: s.active_overrides(now_ms))
        if ticket > self._applied and not self.following:
            self._applied = ticket
            self._publish(OverrideSet.of(rows))
        self.refreshes += 1

    def _audit_expiry(self, x: Exemption) -> None:
        grant = grant_of(x)
        log.info("exemption %s expired: %s may no longer pass rule %s", x.id, x.subject, x.rule_id)
        if self._audit is not None:
            self._audit("exemption.expired", "gateway", {
                "id": x.id, "subject": x.subject, "rule_id": x.rule_id,
                "expires": iso_ts(x.expires_ms) if x.expires_ms is not None else None,
                "models": list(grant.models) if grant else None,
                "providers": list(grant.providers) if grant else None})

    async def start(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:  # the store said why; the periodic refresh retries
            log.error("could not load the approved exemptions (retrying): %s", exc)
        self._task = asyncio.create_task(self._refresh_forever(), name="tollhouse-exemption-overrides")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _refresh_forever(self) -> None:
        while not self.following:
            await asyncio.sleep(self._interval)
            try:
                await self.refresh()
            except Exception as exc:
                log.warning("could not reload the approved exemptions, keeping %d: %s", self.published.current.size,
                            exc)

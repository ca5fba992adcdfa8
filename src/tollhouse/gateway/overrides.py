"""The approved exemption overrides, kept in memory for the request path.

Loaded at start, reloaded when this gateway approves one and every `refresh_interval_s` (so gateways that
share a store converge within seconds). Each load is published whole as an immutable OverrideSet
(`GatewayState.overrides`, a Published[OverrideSet]); a call reads `.current` once: no store round trip per
request.
Expiry needs no reload: each override carries its expiry and is checked against the call's time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from tollhouse.control.exemptions import OverrideSet
from tollhouse.events.writer import StoreRunner
from tollhouse.snapshot import Published

log = logging.getLogger("tollhouse.exemptions")


class OverrideHolder:
    """Loads the approved overrides and publishes each load into `published`."""

    def __init__(self, runner: StoreRunner, clock: Callable[[], float], interval_s: float) -> None:
        self.published: Published[OverrideSet] = Published(OverrideSet())
        self._runner = runner
        self._clock = clock
        self._interval = interval_s
        self._started = 0  # refreshes begun; a slower, older one never replaces a newer result
        self._applied = 0
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        """Reload from the store (raises StoreError; the last set stays in force)."""
        self._started += 1
        ticket = self._started
        now_ms = int(self._clock() * 1000)
        rows = await self._runner.run(lambda s: s.active_overrides(now_ms))
        if ticket > self._applied:
            self._applied = ticket
            self.published.publish(OverrideSet(rows))

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
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.refresh()
            except Exception as exc:
                log.warning("could not reload the approved exemptions, keeping %d: %s", self.published.current.size,
                            exc)

"""One lifespan for every component with background work or resources to release.

Components are started in the order they were added and stopped in reverse. Only what started is stopped, and
every one of those is stopped: an error stopping one is logged and the others are still stopped. A start that
fails stops what had started, in reverse, and then raises its error.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NamedTuple

log = logging.getLogger("tollhouse")

Step = Callable[[], Awaitable[None] | None]


class Component(NamedTuple):
    name: str
    start: Step | None
    stop: Step | None


class Lifespan:
    def __init__(self) -> None:
        self._pending: list[Component] = []  # added, not started yet (in start order)
        self._started: list[Component] = []  # started (in start order); stopped from the end

    def add(self, name: str, start: Step | None = None, stop: Step | None = None) -> None:
        """A component started by `start()`, after those added before it; stopped before them."""
        self._pending.append(Component(name, start, stop))

    def adopt(self, name: str, stop: Step) -> None:
        """A resource already running (built and started by its constructor): only its stop is left to do.
        It counts as started: `stop()` releases it even if `start()` is never called."""
        self._started.append(Component(name, None, stop))

    @property
    def started(self) -> tuple[str, ...]:
        return tuple(c.name for c in self._started)

    async def start(self) -> None:
        """Start every component added since the last start, in order. If one fails, everything started
        (adopted resources included) is stopped, in reverse, and its error is raised."""
        while self._pending:
            component = self._pending.pop(0)
            try:
                if component.start is not None:
                    await _run(component.start)
            except BaseException:
                self._pending.clear()
                await self.stop()
                raise
            self._started.append(component)

    async def stop(self) -> list[tuple[str, Exception]]:
        """Stop everything that started, last started first. Returns (name, error) of each stop that failed
        (each is logged); the rest are stopped anyway. Cancelling the caller does not skip any stop: the
        cancellation is raised once all have run."""
        failures: list[tuple[str, Exception]] = []
        interrupted: BaseException | None = None
        while self._started:
            component = self._started.pop()
            if component.stop is None:
                continue
            try:
                await _run(component.stop)
            except Exception as exc:
                log.error("stopping %s failed (the other components are stopped anyway): %s", component.name,
                          exc, exc_info=exc)
                failures.append((component.name, exc))
            except BaseException as exc:
                interrupted = interrupted or exc
        if interrupted is not None:
            raise interrupted
        return failures


async def _run(step: Step) -> None:
    result = step()
    if inspect.isawaitable(result):
        await result


class Background:
    """A loop run as a task between start and stop (stop cancels it and waits for it to end)."""

    def __init__(self, name: str, run: Callable[[], Coroutine[Any, Any, object]]) -> None:
        self.name = name
        self._run = run
        self.task: asyncio.Task[object] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    def add_to(self, lifespan: Lifespan) -> Background:
        lifespan.add(self.name, self.start, self.stop)
        return self

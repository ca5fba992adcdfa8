"""Test helpers for telemetry shipping: an agent-side spool (a real local SQLite store with its event writer)
and a control plane's view of what arrived."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

from conftest import Gateway
from tollhouse.events.journal import Journal
from tollhouse.events.model import CallEvent, Capture
from tollhouse.events.store import open_store
from tollhouse.events.writer import EventWriter, StoreRunner

T0 = 1_795_000_000_000


def call(n: int, prefix: str = "ship") -> CallEvent:
    return CallEvent(f"{prefix}-{n:06d}", T0 + n * 1000, "alice", "employee", "platform", None, None, "openai",
                     "chat", "/v1/chat/completions", True, "gpt-4o-mini", "gpt-4o-mini", n % 2 == 0, 200, 10, 5, 0,
                     0, 4800, "response", "allow", None, None, 12.5, None, False, None)


@asynccontextmanager
async def agent_spool(data_dir: Path) -> AsyncIterator[tuple[StoreRunner, EventWriter]]:
    """The agent's local store and event writer (journaled), as the agent runs them."""
    runner = StoreRunner(open_store("", data_dir))
    writer = EventWriter(runner, 0.01, 500, journal=Journal(data_dir / "journal"))
    writer.start()
    try:
        yield runner, writer
    finally:
        await writer.close()
        runner.close()


async def record(writer: EventWriter, events: Iterable[CallEvent], captures: dict[str, Capture] | None = None
                 ) -> None:
    for e in events:
        writer.record(e, (captures or {}).get(e.id))
    await writer.flush()


async def until(condition: Callable[[], bool], timeout_s: float = 15.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def enroll(cp: Gateway) -> str:
    status, body, _ = cp.request("POST", "/api/v1/agent/tokens", {"label": "test agent"})
    assert status == 201, body
    token: str = json.loads(body)["token"]
    return token


def cp_ids(cp: Gateway) -> list[str]:
    """Every event id the control plane holds (repeats would show a duplicate)."""
    return [e["id"] for e in cp.events(10_000)]


async def cp_ids_async(cp: Gateway) -> list[str]:
    return await asyncio.to_thread(cp_ids, cp)


def metric(cp: Gateway, line_start: str) -> float:
    """The value of the control plane's metric sample whose line starts with `line_start`."""
    _, body, _ = cp.get("/metrics", token=None)
    for line in body.decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0

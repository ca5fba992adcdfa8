"""Storage faults on the request and read paths: fail closed when a call cannot be recorded, journal each
call's intent before it is forwarded, never hang a read, and say what is wrong in /healthz."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from tollhouse.directory import Subject
from tollhouse.events.journal import PROVISIONAL, row_line
from tollhouse.events.store import Store, StoreError
from tollhouse.events.writer import EventWriter
from tollhouse.gateway.metrics import GatewayMetrics
from tollhouse.ledger.types import Charge
from tollhouse.policy.decide import Problem

log = logging.getLogger("tollhouse.events")

T = TypeVar("T")

UNFINISHED = "the gateway stopped before this call finished"
READ_TIMEOUT_S = 3.0  # a read of the event store answers within this (or 503)
FLUSH_WAIT_S = 1.0  # how long a read waits for recorded events to reach the store first


class StorageUnavailable(Exception):
    """The event store did not answer a read in time; the message says why, for people."""


def problem(writer: EventWriter, metrics: GatewayMetrics) -> Problem | None:
    """While the writer cannot take more events, a call is refused (503) in every mode: one that could not be
    recorded must not be forwarded. None while it can."""
    if writer.accepting():
        return None
    metrics.storage_refusals.inc()
    what = writer.problem() or "events cannot be recorded"
    log.error("refusing a call: %s", what)
    return Problem("event_storage_unavailable", 503,
                   f"Tollhouse cannot record this call because its storage is failing ({what}), so it was not "
                   "forwarded to the provider. Retry shortly; if it persists, tell your Tollhouse administrator "
                   "(GET /healthz shows the problem).", always=True, retry_after_s=5)


def begin_call(writer: EventWriter, ts_ms: int, subject: Subject, provider: str, endpoint: str, path: str,
               endpoint_class: str, model: str | None, requested_model: str | None, stream: bool, decision: str,
               rule_id: str | None, would: str | None, worst: Charge | None, exemption_id: str | None = None) -> str:
    """Journal the intent of a call about to be forwarded, at its worst case (`worst`: what it reserved);
    returns the id its final event must carry (the final event supersedes the intent)."""
    event_id = writer.new_id(ts_ms)
    input_tokens, output_tokens, spend = (0, 0, None) if worst is None else \
        (worst.input_tokens, worst.output_tokens, worst.spend_nusd)
    # The CallEvent's columns in order, serialised straight from a plain tuple (this runs for every call).
    writer.begin_line(event_id, row_line((
        event_id, ts_ms, subject.id, subject.kind, subject.team, subject.project, subject.cost_centre, provider,
        endpoint, path, endpoint_class == "metered", model, requested_model, stream, 0, input_tokens, output_tokens,
        0, 0, spend, PROVISIONAL, decision, rule_id, would, 0.0, None, False, UNFINISHED, endpoint_class,
        exemption_id)))
    return event_id


async def read_store(writer: EventWriter, run: Callable[[Callable[[Store], T]], Any], fn: Callable[[Store], T]
                     ) -> tuple[T, int]:
    """A store read that never hangs: it waits a moment for recorded events to be written first, then
    reads. Returns (result, events recorded but not yet in the store). Raises StorageUnavailable."""
    await writer.flush(FLUSH_WAIT_S)
    try:
        result: T = await asyncio.wait_for(run(fn), READ_TIMEOUT_S)
    except TimeoutError:
        raise StorageUnavailable(f"the event store did not answer within {READ_TIMEOUT_S:g} s"
                                 + _because(writer)) from None
    except StoreError as exc:
        raise StorageUnavailable(f"{exc}{_because(writer)}") from None
    return result, writer.held


def _because(writer: EventWriter) -> str:
    problem = writer.problem()
    return f" ({problem})" if problem else ""


def health(writer: EventWriter, metrics: GatewayMetrics) -> dict[str, object]:
    """The /healthz "events" section."""
    problem = writer.problem()
    metrics.events_pending.set(writer.held)
    metrics.events_memory_only.set(writer.memory_only)
    return {"status": "ok" if problem is None else "degraded", "error": problem, "pending": writer.held,
            "memory_only": writer.memory_only, "dropped": writer.dropped, "accepting": writer.accepting()}

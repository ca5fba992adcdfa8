"""Stages: settle and record. Every call leaves exactly one event, forwarded or refused, with its reason;
every block is audited; the reservation is replaced by what the call really used."""

from __future__ import annotations

import time
from typing import NamedTuple

from tollhouse.directory import Subject
from tollhouse.events.model import CallEvent, capture
from tollhouse.gateway.exemption_use import audit_use, exemption_ids
from tollhouse.gateway.forward import Progress
from tollhouse.gateway.state import GatewayState, ProviderRoute
from tollhouse.ledger.types import Charge
from tollhouse.policy.decide import Verdict
from tollhouse.providers.usage import Usage, UsageSource

_COSTED = frozenset({UsageSource.response, UsageSource.partial, UsageSource.estimate})
_SOURCE = {s: s.value for s in UsageSource}  # a dict read: an enum's .value is a descriptor call (hot path)
# An enum member read from a module global: `Enum.member` is a class attribute lookup, not specialised in
# Python 3.11 (~5x a global's cost; these run for every call).
_ESTIMATE, _NO_USAGE, _RESERVED = UsageSource.estimate, UsageSource.none, UsageSource.reserved


Columns = tuple[str, str | None, str | None, str | None]


def columns(verdict: Verdict) -> Columns:
    """The verdict as the event's decision, rule_id, would and exemption_id columns (each a property call:
    worked out once per call)."""
    return verdict.applied, verdict.rule_id, verdict.would, exemption_ids(verdict)


class Finished(NamedTuple):
    """Everything the record stage needs about one call, once it is over."""

    route: ProviderRoute
    endpoint: str  # the provider endpoint (chat, messages, ..., passthrough)
    endpoint_class: str  # metered | governed | free | unknown
    path: str
    subject: Subject
    requested_model: str | None
    stream: bool
    verdict: Verdict | None
    reservation: object | None
    seen: Progress
    request_bytes: int
    started: float
    ts_ms: int
    prompt: str | None  # captured prompt text (enterprise capture), already redacted
    capture: bool
    worst: Charge | None  # settle at this reserved worst case: the answer does not tell the usage
    event_id: str | None  # the id its journaled intent carries (None: refused before it was forwarded)
    # The verdict's columns (applied, rule_id, would, exemption ids) when the request path has them already
    # (worked out once, for the journaled intent); None: worked out here from `verdict`.
    columns: Columns | None = None


def record(state: GatewayState, call: Finished) -> None:
    """Turn the finished call into its event, its audit entry (blocks), and its settle. Runs in `finally`:
    every call is recorded, whatever happened to it."""
    # One unpacking, not a named field read each (each is a descriptor call on the hot path)
    (route, endpoint, endpoint_class, path, subject, requested_model, stream, verdict, reservation, seen,
     request_bytes, started, ts_ms, prompt, captured, worst, event_id, cols) = call
    elapsed = time.perf_counter() - started
    usage = seen.usage
    if usage is not None and seen.usage_source is _ESTIMATE and usage.input_tokens == 0:
        # No usage report at all: about four bytes of prompt JSON per token.
        usage = Usage(max(request_bytes // 4, 1), usage.output_tokens)
    model = seen.model
    cost: int | None = None
    if worst is not None and seen.status < 400 and (usage is None or seen.usage_source is _NO_USAGE):
        # Usage the answer does not tell (governed endpoints, background calls): counted at the worst case.
        usage, cost, seen.usage_source = Usage(worst.input_tokens, worst.output_tokens), worst.spend_nusd, \
            _RESERVED
    if usage is None:
        usage = Usage()
    input_tokens, output_tokens, cache_read_tokens, cache_write_tokens = usage  # (one unpacking: hot path)
    status = seen.status if seen.status else 499
    m = state.metrics
    metered = endpoint_class == "metered"
    if metered and model and seen.usage_source in _COSTED:
        cost = state.prices.cost_nusd(route.price_provider, model, usage)
        if cost is None:
            m.unpriced.labels(route.id, m.model_label(model)).inc()
    decision, rule_id, would, error, exempted = "allow", None, None, seen.error, None
    if verdict is not None:
        decision, rule_id, would, exempted = cols if cols is not None else columns(verdict)
        if decision == "block" and verdict.refusal is not None:
            error = verdict.refusal.message
        if verdict.counters_down is not None:
            error = f"budget counters unavailable: {verdict.counters_down}" + (f"; {error}" if error else "")
    # Positional, in column order (a tuple: built once per call, on the hot path).
    event = CallEvent(
        event_id or state.writer.new_id(ts_ms), ts_ms, subject.id, subject.kind, subject.team,
        subject.project, subject.cost_centre, route.id, endpoint, path, metered, model,
        requested_model, stream, status, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost,
        _SOURCE[seen.usage_source],
        decision, rule_id, would, round(elapsed * 1000, 3),
        round(seen.ttfb * 1000, 3) if seen.ttfb is not None else None, seen.client_disconnected, error,
        endpoint_class, exempted)
    state.writer.record(event, capture(prompt, seen.response_text) if captured else None)
    state.alerts.offer(event, verdict)  # alerting happens off the request path (alerts/service.py)
    if verdict is not None:
        if decision == "block":
            _audit_block(state, event, verdict)
        elif verdict.enforced and verdict.decision is not None and verdict.decision.waived:
            for waived in verdict.decision.waived:
                m.exemption_passes.labels(waived.rule.id).inc()
            if exempted is not None:
                audit_use(state, event, verdict)
    # The event is durable (journaled) before the answer leaves; counting it is not on the answer's path:
    # the loop runs this right after the handler returns, in order, before it handles anything that
    # arrives later (such as this client's next call).
    actual = None if reservation is None else Charge(route.id, cost or 0, input_tokens, output_tokens,
                                                          1 if status < 400 else 0)
    state.loop.call_soon(_settle, state, reservation, actual, route.id, model, decision, status, input_tokens,
                         output_tokens, cost or 0, elapsed)


def _audit_block(state: GatewayState, event: CallEvent, verdict: Verdict) -> None:
    refusal = verdict.refusal
    top = verdict.decision.top if verdict.decision is not None and refusal is None else None
    state.audit.record("call.blocked", "gateway", {
        "event_id": event.id, "rule_id": event.rule_id,
        "rule_type": top.rule.type_name if top is not None else None,
        "refusal": refusal.code if refusal is not None else None,
        "reason": event.error if refusal is not None else verdict.reason, "subject": event.subject,
        "team": event.team, "project": event.project,
        "provider": event.provider, "model": event.requested_model, "status": event.status})


def _settle(state: GatewayState, reservation: object | None, actual: Charge | None, provider: str,
            model: str | None, decision: str, status: int, input_tokens: int, output_tokens: int, cost_nusd: int,
            elapsed: float) -> None:
    """Settle the call's reservation to what it used, and count it in the metrics."""
    if actual is not None:  # there was a reservation
        state.ledger.settle(reservation, actual)
    state.metrics.observe_call(provider, model, decision, status, input_tokens, output_tokens, cost_nusd, elapsed)

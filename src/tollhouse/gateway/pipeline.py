"""The data plane for `/{provider}/...`: one call through ordered stages, each with one job.

    classify → identify → read → inspect → decide → reserve → forward → meter → settle → record
    (here)     identify.py  (here) content.py policy/    ledger/   forward.py  forward.py  record.py
                                              decide.py

- classify: which provider route and endpoint the path names, and the endpoint's class.
- identify: the subject (person / service / unknown), the project, the key the upstream gets.
- read: the body (bounded), its facts (model, stream, worst-case output), the prompt when it is needed.
- inspect: the prompt, for the content (DLP) rules that apply: off the event loop, within limits.dlp_time_ms.
- decide: `policy.decide.decide()`, the one function that decides; called again with the ledger's numbers.
- reserve: the call's worst case is reserved on every cap that counts it, under the verdict's ceilings.
- forward / meter: the upstream answers; the client gets it byte for byte while usage is read.
- settle / record: one event per call (refused ones included), audit for blocks, the reservation settled.

Observe mode forwards everything the gateway can forward and records what enforcing would have done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

from tollhouse.events.store import StoreError
from tollhouse.gateway import enforce, storage, tool_answers
from tollhouse.gateway.capture import capturing
from tollhouse.gateway.content import inspect_request, redact_answer
from tollhouse.gateway.errors import error_response
from tollhouse.gateway.forward import Outbound, Progress, client_gone, forward
from tollhouse.gateway.http import BodyTooLarge, Request, Response, Streamed
from tollhouse.gateway.identify import PROJECT_HEADER, USER_HEADER, Identity, identify
from tollhouse.gateway.record import Columns, Finished, columns, record
from tollhouse.gateway.state import GatewayState, ProviderRoute
from tollhouse.ledger.types import Charge, LeaseUnavailable, ReserveResult
from tollhouse.model_limits import worst_output_tokens
from tollhouse.policy.decide import CountersDown, Gate, Outcome, Problem, Verdict, decide
from tollhouse.policy.dlp import Inspection
from tollhouse.policy.engine import CallFacts, CompiledPolicy
from tollhouse.policy.shadow import reserve_caps, shadow_usage_of, with_shadow_usage
from tollhouse.providers.base import Endpoint, RequestFacts
from tollhouse.providers.classify import passthrough_allows
from tollhouse.providers.family import Family
from tollhouse.providers.usage import UsageSource

log = logging.getLogger("tollhouse.proxy")

_NO_FACTS = RequestFacts(model=None, stream=False, max_output_tokens=None)
_JUDGED = frozenset({"metered", "governed"})  # classes whose model is judged and whose worst case is reserved
_BODILESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
_ALLOWED: Columns = ("allow", None, None, None)  # the event columns of a call no rule judged
# An enum member read from a module global: `Enum.member` is a class attribute lookup, not specialised in
# Python 3.11 (~5x a global's cost; these run for every call).
_BLOCK, _GEMINI, _UNPARSED, _NO_USAGE = Outcome.block, Family.gemini, UsageSource.unparsed, UsageSource.none


class Classified(NamedTuple):
    route: ProviderRoute
    path: str  # judged (decoded)
    forward_path: str  # sent upstream
    endpoint: Endpoint
    endpoint_class: str  # metered | governed | free | unknown
    problem: Problem | None  # a path that cannot be forwarded, or (enforcing) an unknown endpoint with a body
    endpoint_name: str  # endpoint.value (for the event)


class Read(NamedTuple):
    body: bytes
    parsed: dict[str, Any] | None
    facts: RequestFacts
    problem: Problem | None


def classify(request: Request, state: GatewayState) -> Classified | Response:
    """The route and endpoint class of `/{provider}/...`, judged on the normalised path, which is also exactly
    what is forwarded (a path that leaves the provider's root is refused: never forwarded elsewhere)."""
    split = state.routes.split(request.raw_path, request.path)
    routes = state.providers.current
    route = routes.get(split.provider_id)
    if route is None:
        known = ", ".join(f"/{p}/" for p in sorted(routes))
        return error_response(Family.openai, 404, f"Tollhouse has no provider named '{split.provider_id}'. "
                              f"Configured prefixes: {known}. Add it under `providers:` in the config.",
                              "unknown_provider")
    forward_path = split.forward_path
    if split.error is not None:
        return Classified(route, split.path, forward_path, Endpoint.passthrough, "unknown",
                          Problem("invalid_path", 400, split.error, always=True), Endpoint.passthrough.value)
    method = request.method
    rc = state.routes.classify(route.family, method, forward_path)
    problem: Problem | None = None
    upgrade = request.header("upgrade")
    if upgrade is not None and "websocket" in upgrade.lower():
        problem = Problem("websocket_not_carried", 426, f"Tollhouse carries calls to provider '{route.id}' as HTTP "
                          "requests, each judged and metered; a WebSocket transport is not carried. Send the call "
                          "over HTTP(S): Codex and the OpenAI SDKs switch to it on this answer.", always=True)
    elif rc.unknown and method not in _BODILESS \
            and not passthrough_allows(state.settings.providers[route.id].passthrough, forward_path):
        problem = Problem("unknown_endpoint", 403,
                          f"Tollhouse does not know what {method} {forward_path} on provider '{route.id}' does, so "
                          "it cannot tell whether it spends; with enforcement on it is not forwarded. If it is "
                          f"safe, list it under providers.{route.id}.passthrough in the Tollhouse config.")
    return Classified(route, split.path, forward_path, rc.endpoint, rc.endpoint_class, problem, rc.endpoint_name)


def too_large(exc: BodyTooLarge, limit: int) -> Read:
    got = f" ({exc.size} bytes)" if exc.size is not None else ""
    return Read(b"", None, _NO_FACTS, Problem(
        "request_too_large", 413, f"Request body too large{got}: this gateway accepts at most {limit} bytes "
        "(limits.max_body_bytes in the Tollhouse config).", always=True))


def read(state: GatewayState, where: Classified, query: dict[str, str], body: bytes) -> Read:
    """The body's facts (model, stream, output limit, choices, ...), for the classes that are judged."""
    if where.endpoint_class == "unknown" and body and where.problem is not None:
        return Read(body, None, _NO_FACTS, where.problem)
    if where.endpoint_class not in _JUDGED:
        return Read(body, None, _NO_FACTS, None)
    route = where.route
    try:
        obj = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, dict):
        return Read(body, obj, route.protocol.facts(where.endpoint, where.path, query, obj), None)
    if where.endpoint_class == "governed":  # a form or an empty body: judged on what the path names
        return Read(body, None, route.protocol.facts(where.endpoint, where.path, query, {}), None)
    state.metrics.unparsed.labels(route.id).inc()
    return Read(body, None, route.protocol.facts(where.endpoint, where.path, query, {}), Problem(
        "unparseable_request", 400, "Tollhouse could not read this request body as a JSON object, so it cannot "
        "check it against the AI policy; with enforcement on it is not forwarded. Send valid JSON with a model "
        "field."))


async def handle(request: Request, state: GatewayState) -> Response | Streamed:
    started = time.perf_counter()
    # The call's versions, taken once before anything awaits: it is identified in this directory and judged
    # under this policy, whatever is published while it runs.
    policy, directory = state.policy.current, state.directory.current
    now_s = state.clock()
    ts_ms = int(now_s * 1000)
    where = classify(request, state)
    if isinstance(where, Response):
        return where  # no provider: not a call
    route = where.route
    query = request.query if route.family is _GEMINI else {}
    ident = await identify(request.header(USER_HEADER), request.header(PROJECT_HEADER), state, route,
                           route.protocol.client_key(request.headers, query), directory)
    unrecordable = storage.problem(state.writer, state.metrics)
    if unrecordable is not None:
        got = Read(b"", None, _NO_FACTS, unrecordable)
        where = where._replace(problem=unrecordable)  # first: refused whoever calls
    elif where.problem is not None and where.problem.always:
        got = Read(b"", None, _NO_FACTS, where.problem)
    elif ident.problem is not None and ident.problem.always:
        got = Read(b"", None, _NO_FACTS, None)  # refused whatever the body says: not read
    else:
        limit = state.settings.limits.max_body_bytes
        try:
            got = read(state, where, query, await request.body(limit))
        except BodyTooLarge as exc:
            got = too_large(exc, limit)
    # Each stage's result unpacked once: a named field read is a descriptor call in Python 3.11 (hot path).
    _, _, forward_path, endpoint, endpoint_class, where_problem, endpoint_name = where
    body_read, parsed, facts, read_problem = got
    subject, upstream_key, ident_problem, redactor = ident
    seen = Progress(facts.model, _UNPARSED if read_problem is not None and parsed is None
                    and endpoint_class == "metered" else _NO_USAGE)
    verdict: Verdict | None = None
    reservation: object | None = None
    worst: Charge | None = None
    event_id: str | None = None
    prompt: str | None = None
    capture = False
    inspection: Inspection | None = None  # what content inspection found (None: no content rule applies)
    cols: Columns | None = None  # the verdict's event columns, once it is final
    try:
        # A path that cannot be forwarded first, then who is calling, then what the body says.
        problems: tuple[Problem, ...] = ()
        if read_problem is not None or ident_problem is not None:
            first = read_problem if read_problem is where_problem else None
            problems = tuple(p for p in (first, ident_problem, read_problem if first is None else None)
                             if p is not None)
        metered = endpoint_class == "metered"
        if metered and parsed is not None:
            capture = capturing(state)
            if capture or policy.has_content:  # inspect: the content rules that apply (off the loop, bounded)
                content = await inspect_request(state, policy, parsed, subject, capture)
                prompt, inspection = content.prompt, content.inspection
        if problems or not policy.empty:
            verdict, reservation, worst = await _judge(state, policy, where, ident, got, problems, inspection, now_s,
                                                       ts_ms)
        if verdict is not None and verdict.outcome is _BLOCK:
            resp = enforce.render_block(state, route, verdict, subject, facts.model,
                                        datetime.fromtimestamp(now_s, UTC),
                                        tool_answers.block_as_message(request, state, subject, endpoint,
                                                                      facts.stream, ts_ms))
            seen.status = resp.status
            return resp
        body, path, hide_usage = body_read, forward_path, False
        if parsed is not None:
            if verdict is not None and verdict.enforced and verdict.decision is not None \
                    and verdict.decision.redirect is not None:
                path, changed = enforce.redirect_request(route, endpoint, path, parsed, verdict.decision)
                seen.model = verdict.decision.model
                if changed:
                    body = b""  # re-serialised below
            if facts.stream and route.protocol.prepare(endpoint, parsed):
                hide_usage, body = True, b""
            if not body:
                body = orjson.dumps(parsed)
        out = Outbound(route, path, endpoint, metered, upstream_key, verdict, hide_usage, capture,
                       started, redactor, tool_answers.notice(request, state, subject, verdict))
        # The intent, journaled at the worst case before the provider can spend: a kill -9 from here on still
        # leaves the call counted (the final event replaces it).
        decision, rule_id, would, exempted = cols = columns(verdict) if verdict is not None else _ALLOWED
        event_id = storage.begin_call(
            state.writer, ts_ms, subject, route.id, endpoint_name, forward_path, endpoint_class, seen.model,
            facts.model, facts.stream, decision, rule_id, would, worst, exempted)
        answer = await forward(request, state, out, body, facts.stream, seen)
        if inspection is not None and seen.response_text:  # captured, and content rules apply: redact it too
            seen.response_text = await redact_answer(state, policy, seen.response_text, subject)
            inspection = None
        return answer
    except asyncio.CancelledError:
        client_gone(state, route, seen)
        raise
    finally:
        if inspection is not None and seen.response_text:
            seen.response_text = None  # an answer never inspected is not kept (the call ended before it could be)
        # Recorded (journaled) before the response leaves: the server sends it when the handler returns, so a
        # kill -9 can never lose a call the client has already been answered. (A stream's client has its answer
        # as it comes; until the call is recorded its intent, journaled before forwarding, stands for it, and
        # reads of the store wait for it: Progress.answered.)
        try:
            record(state, Finished(route, endpoint_name, endpoint_class, forward_path, subject,
                                   facts.model, facts.stream, verdict, reservation, seen, len(body_read),
                                   started, ts_ms, prompt, capture,
                                   None if worst is None else _charged_at_worst(where, got, worst), event_id, cols))
        finally:
            if seen.answered:
                state.writer.release_reads(seen.answered)


async def _judge(state: GatewayState, policy: CompiledPolicy, where: Classified, ident: Identity, got: Read,
                 problems: tuple[Problem, ...], inspection: Inspection | None, now_s: float, ts_ms: int
                 ) -> tuple[Verdict, object | None, Charge | None]:
    """decide, reserve, decide again on the ledger's numbers, all under `policy` (the call's version). Returns
    the verdict, the reservation and the worst case it holds. (Called when there are rules or problems.)"""
    subject = ident.subject
    route = where.route
    facts = got.facts
    model = facts.model
    enforced = enforce.enforced(state, subject)
    settings = state.settings
    gate = Gate(enforced, problems, True, settings.pricing.unpriced, settings.counters.fail_open)
    call = CallFacts(route.id, route.host, model) if inspection is None else \
        CallFacts(route.id, route.host, model, inspection.rule_ids, inspection.unchecked)
    now = datetime.fromtimestamp(now_s, UTC)
    overrides = state.overrides.current  # an override covers the model and provider it was approved for
    exemptions = overrides.for_call(subject.id, route.id, model, ts_ms)
    verdict = decide(gate, policy, call, subject, now, exemptions)
    if facts.batch_models and not model and not verdict.blocked:
        for name in facts.batch_models:
            # A batch is judged on every model its requests name: one the rules refuse refuses the batch.
            judged = decide(gate, policy, call._replace(model=name), subject, now,
                            overrides.for_call(subject.id, route.id, name, ts_ms))
            if judged.blocked:
                verdict = judged
                break
    decision = verdict.decision
    if decision is not None and decision.violations:
        enforce.count_violations(state, verdict, subject, model)
    caps, ceilings = reserve_caps(verdict, policy)  # shadow rules' caps too: counted, never refusing
    if decision is None or not caps or verdict.outcome is _BLOCK or where.endpoint_class not in _JUDGED:
        # Free calls (and unknown ones let through) spend nothing: no worst case to price or reserve.
        return verdict, None, None
    charge, priced = _worst_case(state, route, got, verdict)
    if not priced:  # no price for the model: refused under spend caps (pricing.unpriced: block)
        gate = gate._replace(priced=False)
        verdict = decide(gate, policy, call, subject, now, exemptions)
        if verdict.blocked:
            return verdict, None, None
        caps, ceilings = reserve_caps(verdict, policy)
    try:
        reserved = state.ledger.try_reserve(caps, charge, ts_ms, ceilings)
        if reserved is None:  # a counter to load from the store first, or a Redis round trip
            reserved = await state.ledger.reserve(caps, charge, ts_ms, ceilings)
    except StoreError as exc:
        down = CountersDown(str(exc), exc.because) if isinstance(exc, LeaseUnavailable) else CountersDown(str(exc))
        verdict = decide(gate, policy, call, subject, now, exemptions, down)
        _counters_down(state, verdict, subject.id, route.id, got.facts.model, ts_ms, str(exc))
        return verdict, None, None
    if state.outage.ongoing:
        state.outage.succeeded(ts_ms)
    usage, shadow_usage = shadow_usage_of(verdict, reserved.usage)
    verdict = decide(gate, policy, call, subject, now, exemptions, usage, judged=verdict)
    if shadow_usage:
        verdict = with_shadow_usage(verdict, shadow_usage)
    if verdict.outcome is _BLOCK:
        _release(state, reserved)
        return verdict, None, charge
    return verdict, reserved.reservation, charge


def _charged_at_worst(where: Classified, got: Read, worst: Charge) -> Charge | None:
    """Calls whose usage the answer does not tell are settled at the worst case they reserved: governed
    endpoints (images, batches, ...) and Responses API background calls (usage known only when polled)."""
    return worst if where.endpoint_class == "governed" or got.facts.background else None


def _release(state: GatewayState, reserved: ReserveResult) -> None:
    """A refused call spent nothing: its reservation (if one was made) is released."""
    if reserved.reservation is not None:
        state.ledger.settle(reserved.reservation, Charge("", 0, 0, 0, 0))


def _worst_case(state: GatewayState, route: ProviderRoute, got: Read, verdict: Verdict | None
                ) -> tuple[Charge, bool]:
    """The most the call can cost: the prompt estimate (about four bytes of request per token) plus the most
    it may generate; and whether the model has a price (if not, the charge counts tokens only). A batch that
    names its requests' models (batch_models) is priced at the priciest of them."""
    facts = got.facts
    model = verdict.decision.model if verdict is not None and verdict.decision is not None else facts.model
    input_est = max(len(got.body) // 4, 1)
    prices = state.prices
    default = state.settings.ledger.default_max_output_tokens
    if model:  # the usual case: one model
        limit = prices.max_output_tokens(route.price_provider, model)
        output_max = worst_output_tokens(facts.max_output_tokens, limit, default) * facts.choices
        cost = prices.token_cost_nusd(route.price_provider, model, input_est, output_max)
        return Charge(route.id, cost or 0, input_est, output_max), cost is not None
    models = facts.batch_models
    if not models:
        output_max = 0 if facts.max_output_tokens is None and got.parsed is None else \
            worst_output_tokens(facts.max_output_tokens, None, default)
        return Charge(route.id, 0, input_est, output_max * facts.choices), False
    worst: Charge | None = None
    for name in models:
        output_max = worst_output_tokens(facts.max_output_tokens, prices.max_output_tokens(route.price_provider, name),
                                         default) * facts.choices
        cost = prices.token_cost_nusd(route.price_provider, name, input_est, output_max)
        if cost is None:  # one unpriced model: the batch cannot be counted
            return Charge(route.id, 0, input_est, output_max), False
        if worst is None or (cost, output_max) > (worst.spend_nusd, worst.output_tokens):
            worst = Charge(route.id, cost, input_est, output_max)
    assert worst is not None
    return worst, True


def _counters_down(state: GatewayState, verdict: Verdict, subject: str, provider: str, model: str | None,
                   ts_ms: int, error: str) -> None:
    """Counted and audited once per outage (not once per call)."""
    how = "closed" if verdict.blocked else "open"
    state.metrics.ledger_unavailable.labels(how).inc()
    state.outage.failed(ts_ms, how, {"rules": sorted({cap.rule.id for cap in verdict.caps}), "subject": subject,
                                     "provider": provider, "model": model, "error": error})
    log.error("budget counters unavailable (%s); failing %s for %s", error, how, subject)

"""The data plane: identify → forward → account → record, for `/{provider}/...`.

Observe mode: every request is forwarded unchanged (apart from the API key swap for gateway keys
and asking OpenAI streams for their usage), every response reaches the client byte for byte as the
upstream sent it, and every call leaves one event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson

from tollhouse.directory import Subject
from tollhouse.events.model import CallEvent, capture
from tollhouse.events.store import StoreError
from tollhouse.gateway import enforce
from tollhouse.gateway.capture import capturing
from tollhouse.gateway.content import NO_CONTENT, inspect_request
from tollhouse.gateway.enforce import Verdict
from tollhouse.gateway.errors import DECISION_HEADER, error_response, stream_error_event
from tollhouse.gateway.http import STREAMED, BodyTooLarge, Request, Response, Streamed
from tollhouse.gateway.state import GatewayState, ProviderRoute
from tollhouse.keys import KEY_PREFIX, sha256_hex
from tollhouse.ledger.local import NANO_PER_USD, Charge, ReserveResult, cap_reason
from tollhouse.policy.engine import Violation, with_violations
from tollhouse.providers.base import Endpoint, RequestFacts, StreamMeter
from tollhouse.providers.family import Family
from tollhouse.providers.text import StreamText, response_text
from tollhouse.providers.usage import Usage, UsageSource
from tollhouse.wire.client import ConnectError, RequestError, RequestTimeoutError, UpstreamResponse
from tollhouse.wire.server import ProtocolClosed

log = logging.getLogger("tollhouse.proxy")

# Never forwarded in either direction (RFC 9110 §7.6.1), plus what we recompute.
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailer", "transfer-encoding", "upgrade", "host", "content-length",
})
_USER_HEADER = "x-tollhouse-user"
BUDGET_HEADER = "x-tollhouse-budget-remaining"
_DISCONNECT_GRACE_S = 0.25
_PROJECT_HEADER = "x-tollhouse-project"



@dataclass(slots=True)
class _Identity:
    subject: Subject
    upstream_key: str | None  # replaces the client's key (gateway keys); None: forward as sent


class _Outcome:
    """What happened to a call, filled in as it goes; becomes the event."""

    __slots__ = ("client_disconnected", "error", "model", "response_text", "status", "ttfb", "usage",
                 "usage_source")

    def __init__(self) -> None:
        self.status = 0
        self.usage: Usage | None = None
        self.usage_source = UsageSource.none
        self.model: str | None = None
        self.ttfb: float | None = None
        self.client_disconnected = False
        self.error: str | None = None
        self.response_text: str | None = None  # captured (enterprise capture mode)


@dataclass(slots=True)
class _Call:
    """Everything known about one call on its way through."""

    route: ProviderRoute
    path: str
    endpoint: Endpoint
    facts: RequestFacts
    ident: _Identity
    verdict: Verdict | None
    hide_usage: bool
    request_bytes: int
    started: float
    ts_ms: int
    out: _Outcome
    reservation: object | None = None
    budget_remaining_nusd: int | None = None
    retry_after_s: int | None = None
    refused: bool = False  # the gateway itself refused the call (unreadable body, counters down)
    capture: bool = False  # enterprise capture mode: keep the prompt and response text
    prompt: str | None = None  # the request's prompt text, when captured

    @property
    def metered(self) -> bool:
        return self.endpoint is not Endpoint.passthrough

    @property
    def decision(self) -> str:
        if self.refused:
            return "block"
        return self.verdict.applied if self.verdict is not None else "allow"


async def handle(request: Request, state: GatewayState) -> Response | Streamed:
    started = time.perf_counter()
    now_s = state.clock()
    ts_ms = int(now_s * 1000)
    provider_id, _, tail = request.path[1:].partition("/")
    route = state.providers.get(provider_id)
    if route is None:
        known = ", ".join(f"/{p}/" for p in sorted(state.providers))
        return error_response(Family.openai, 404, f"Tollhouse has no provider named '{provider_id}'. "
                              f"Configured prefixes: {known}. Add it under `providers:` in the config.",
                              "unknown_provider")
    path = "/" + tail
    # Forwarded as sent (still percent-encoded); judged on the decoded path.
    forward_path = path if request.raw_path is request.path else request.raw_path[len(provider_id) + 1:]
    proto = route.protocol
    endpoint = proto.classify(path) if request.method == "POST" else Endpoint.passthrough

    limit = state.settings.limits.max_body_bytes
    try:
        body = await request.body(limit)
    except BodyTooLarge as exc:
        return _too_large(route, exc.size, limit)

    facts = RequestFacts(model=None, stream=False, max_output_tokens=None)
    parsed: dict[str, Any] | None = None
    metered = endpoint is not Endpoint.passthrough
    query = request.query if route.family is Family.gemini else {}
    if metered:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            parsed = obj
            facts = proto.facts(endpoint, path, query, parsed)
        else:
            state.metrics.unparsed.labels(route.id).inc()
            facts = proto.facts(endpoint, path, query, {})

    ident = await _identify(request, state, route, query)
    if isinstance(ident, Response):
        return ident
    project = ident.subject.project
    if project is not None and not state.directory.has_project(project) and \
            enforce.enforced(state, ident.subject):
        # Enforcing: only known projects. A made-up name must not open a fresh budget counter.
        return _unknown_project(state, route, project)

    verdict: Verdict | None = None
    content = await inspect_request(state, parsed, ident.subject) if metered else NO_CONTENT
    if metered:
        verdict = enforce.judge(state, route, facts, content.inspection, ident.subject,
                                datetime.fromtimestamp(now_s, UTC))
    call = _Call(route, forward_path, endpoint, facts, ident, verdict, False, len(body), started, ts_ms, _Outcome(),
                 capture=metered and capturing(state), prompt=content.prompt)
    call.out.model = facts.model
    if metered and parsed is None:
        call.out.usage_source = UsageSource.unparsed
    try:
        if verdict is not None and verdict.decision.caps and not (verdict.enforced and verdict.applied == "block"):
            try:
                charge = _worst_case(state, call)
                caps = verdict.decision.caps
                reserved = state.ledger.try_reserve(caps, charge, call.ts_ms, verdict.enforced)
                if reserved is None:  # a counter to load from the store first, or a Redis round trip
                    reserved = await state.ledger.reserve(caps, charge, call.ts_ms, enforce=verdict.enforced)
                verdict = call.verdict = _reserved(state, call, verdict, charge, reserved)
            except StoreError as exc:
                unavailable = _counters_unavailable(state, call, verdict, exc)
                if unavailable is not None:
                    call.out.status, call.refused = unavailable.status, True
                    call.out.error = f"budget counters unavailable: {exc}"
                    return unavailable
        if verdict is not None and verdict.enforced:
            if parsed is None:
                call.out.status, call.refused = 400, True
                call.out.error = "request body is not a JSON object"
                return _unparsed_enforced(route)
            if verdict.decision.action == "block":
                resp = enforce.block_response(state, route, verdict, ident.subject, facts.model,
                                              datetime.fromtimestamp(now_s, UTC), call.retry_after_s)
                call.out.status = resp.status
                return resp
            if verdict.decision.redirect is not None:
                call.path, changed = enforce.redirect_request(route, endpoint, call.path, parsed, verdict.decision)
                call.out.model = verdict.decision.model
                if changed:
                    body = b""  # re-serialised below
        if parsed is not None and facts.stream and proto.prepare(endpoint, parsed):
            call.hide_usage = True
            body = b""
        if parsed is not None and not body:
            body = orjson.dumps(parsed)
        return await _forward(request, state, call, body)
    except asyncio.CancelledError:
        _client_gone(state, call)
        raise
    finally:
        # Recorded (journaled) before the response leaves: the server sends it when the handler returns, so a
        # kill -9 can never lose a call the client has already been answered.
        _record(state, call)


def _reserved(state: GatewayState, call: _Call, verdict: Verdict, charge: Charge, result: ReserveResult) -> Verdict:
    """The call's worst case is reserved against every cap that counts it: add any cap it would exceed."""
    if state.outage.ongoing:
        state.outage.succeeded(call.ts_ms)
    call.reservation = result.reservation
    remaining: int | None = None
    exceeded = []
    for st in result.states:
        if st.cap.metric == "spend":
            left = st.limit - st.used - charge.spend_nusd
            remaining = left if remaining is None else min(remaining, left)
        if st.exceeded:
            exceeded.append(Violation(st.cap.rule, st.cap.level, cap_reason(st)))
    if remaining is not None:
        call.budget_remaining_nusd = max(remaining, 0)
    if result.refused_by is not None:
        call.retry_after_s = result.refused_by.retry_after_s
    if not exceeded:
        return verdict
    return verdict._replace(decision=with_violations(verdict.decision, exceeded))


def _worst_case(state: GatewayState, call: _Call) -> Charge:
    """Prompt estimate (about four bytes of request per token) plus the most the call may generate."""
    route = call.route
    input_est = max(call.request_bytes // 4, 1)
    output_max = call.facts.max_output_tokens or state.settings.ledger.default_max_output_tokens
    model = call.verdict.decision.model if call.verdict is not None else call.facts.model
    cost = state.prices.token_cost_nusd(route.price_provider, model, input_est, output_max) if model else None
    return Charge(route.id, cost or 0, input_est, output_max)


def _counters_unavailable(state: GatewayState, call: _Call, verdict: Verdict, exc: Exception) -> Response | None:
    """The budget counters cannot be read. Enforcing: fail closed (503) unless every cap that applies
    is marked fail_open. Either way it is logged and counted."""
    caps = verdict.decision.caps
    fail_open = (not verdict.enforced or state.settings.counters.fail_open
                 or all(cap.rule.fail_open for cap in caps))
    state.metrics.ledger_unavailable.labels("open" if fail_open else "closed").inc()
    state.outage.failed(call.ts_ms, "open" if fail_open else "closed", {
        "rules": sorted({cap.rule.id for cap in caps}), "subject": call.ident.subject.id,
        "provider": call.route.id, "model": call.facts.model, "error": str(exc)})
    log.error("budget counters unavailable (%s); failing %s for %s", exc, "open" if fail_open else "closed",
              call.ident.subject.id)
    if fail_open:
        return None
    rule_ids = ", ".join(sorted({cap.rule.id for cap in caps}))
    return error_response(call.route.family, 503, f"Tollhouse cannot check this call against its budgets "
                          f"(rules {rule_ids}) because the counter store is unavailable, so it was not forwarded. "
                          "Retry shortly; if it persists, tell your Tollhouse administrator.",
                          "budget_store_unavailable", {"type": "service_unavailable"},
                          {"retry-after": "5"}, decision="block")


def _client_gone(state: GatewayState, call: _Call) -> None:
    if not call.out.client_disconnected:
        call.out.client_disconnected = True
        state.metrics.disconnects.labels(call.route.id).inc()


def _unknown_project(state: GatewayState, route: ProviderRoute, project: str) -> Response:
    known = ", ".join(state.directory.project_ids()[:20]) or "none are configured"
    return error_response(route.family, 400, f"X-Tollhouse-Project names {project!r}, which is not a project in "
                          f"the Tollhouse directory (known: {known}). Use one of them, or leave the header out to "
                          "use your default project.", "unknown_project", {"type": "invalid_request_error"})


def _unparsed_enforced(route: ProviderRoute) -> Response:
    return error_response(route.family, 400, "Tollhouse could not read this request body as a JSON object, so "
                          "it cannot check it against the AI policy; with enforcement on it is not forwarded. "
                          "Send valid JSON with a model field.", "unparseable_request",
                          {"type": "invalid_request_error"}, decision="block")


def _too_large(route: ProviderRoute, size: int | None, limit: int) -> Response:
    got = f" ({size} bytes)" if size is not None else ""
    return error_response(route.family, 413, f"Request body too large{got}: this gateway accepts at most "
                          f"{limit} bytes (limits.max_body_bytes in the Tollhouse config).",
                          "request_too_large")


async def _identify(request: Request, state: GatewayState, route: ProviderRoute,
                    query: dict[str, str]) -> _Identity | Response:
    project = request.header(_PROJECT_HEADER) or None
    key = route.protocol.client_key(request.headers, query)
    if key is not None and key.startswith(KEY_PREFIX):
        subject_id = await state.keys.subject_for(key)
        if subject_id is None:
            return error_response(route.family, 401, "This Tollhouse gateway key is unknown or revoked. "
                                  "Ask your administrator for a new one (tollhouse keys create --user NAME).",
                                  "invalid_gateway_key", {"type": "authentication_error"})
        if route.api_key is None:
            return error_response(route.family, 502, f"Tollhouse has no real API key for provider "
                                  f"'{route.id}' to use with gateway keys. Set providers.{route.id}.api_key "
                                  "or its api_key_env variable on the gateway.", "provider_key_missing")
        return _Identity(state.directory.subject(subject_id, project), route.api_key)
    user = request.header(_USER_HEADER) if state.settings.identity.trust_user_header else None
    if user:
        return _Identity(state.directory.subject(user, project), None)
    default_user = state.settings.identity.default_user  # the agent: the machine's configured user
    if default_user:
        return _Identity(state.directory.subject(default_user, project), None)
    if key is None:
        return _Identity(state.directory.subject("anonymous", project), None)
    digest = sha256_hex(key)
    person = state.directory.people_by_key_hash.get(digest)
    return _Identity(state.directory.subject(person or f"key:{digest[:12]}", project), None)


def _upstream_headers(request: Request, route: ProviderRoute, ident: _Identity) -> list[tuple[str, str]]:
    swap = ident.upstream_key is not None
    auth_names = route.auth_names if swap else frozenset()
    headers = [
        (name, value) for name, value in request.headers.items()
        if name not in _HOP_BY_HOP and not name.startswith("x-tollhouse-") and name != "accept-encoding"
        and name not in auth_names
    ]
    if ident.upstream_key is not None:
        headers += route.protocol.auth_headers(ident.upstream_key).items()
    # Usage must be readable: ask for an uncompressed body (the client still gets the same content).
    headers.append(("accept-encoding", "identity"))
    return headers


def _client_headers(upstream: UpstreamResponse, call: _Call) -> list[tuple[str, str]]:
    headers = [(name, value) for name, value in upstream.headers if name not in _HOP_BY_HOP]
    headers.append((DECISION_HEADER, call.decision))
    if call.verdict is not None:
        headers += enforce.client_headers(call.verdict).items()
    if call.budget_remaining_nusd is not None:
        headers.append((BUDGET_HEADER, f"{call.budget_remaining_nusd / NANO_PER_USD:.6f}"))
    return headers


def _upstream_query(request: Request, route: ProviderRoute, ident: _Identity) -> str:
    qs = request.query_string
    if ident.upstream_key is not None and route.family is Family.gemini and "key=" in qs:
        # Gemini also takes the key as ?key=; a gateway key there must not reach the provider.
        return urlencode([(k, v) for k, v in parse_qsl(qs, keep_blank_values=True) if k != "key"])
    return qs


async def _forward(request: Request, state: GatewayState, call: _Call, body: bytes) -> Response | Streamed:
    route, out = call.route, call.out
    qs = _upstream_query(request, route, call.ident)
    target = call.path + ("?" + qs if qs else "")
    try:
        upstream = await route.client.send(request.method, target, _upstream_headers(request, route, call.ident),
                                           body)
        out.ttfb = time.perf_counter() - call.started
        out.status = upstream.status
        if not call.facts.stream:
            data = await upstream.read()
            if call.metered and upstream.status < 400:
                _read_response(call, data)
            return Response(upstream.status, data, _client_headers(upstream, call))
        try:  # each upstream chunk is forwarded the moment it arrives
            return await _stream(request, state, call, upstream)
        finally:
            upstream.close()
    except RequestError as exc:
        return _upstream_failed(state, route, out, exc)
    finally:
        if out.ttfb is not None:
            state.metrics.stats.observe_ttfb(route.id, out.ttfb)


def _read_response(call: _Call, data: bytes) -> None:
    """Usage and model (and the text, when capturing) from a whole response body."""
    route, endpoint, out = call.route, call.endpoint, call.out
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        out.usage_source = UsageSource.unparsed
        return
    if call.capture:
        out.response_text = response_text(route.family, endpoint, obj)
    usage, model = route.protocol.usage(endpoint, obj)
    if usage is not None:
        out.usage, out.usage_source = usage, UsageSource.response
    if model:
        out.model = model


async def _stream(request: Request, state: GatewayState, call: _Call, upstream: UpstreamResponse) -> Streamed:
    """Forward a stream chunk by chunk. A client that goes away cancels the upstream read at once."""
    route, out = call.route, call.out
    meter: StreamMeter | None = None
    text: StreamText | None = None
    if call.metered and upstream.status < 400:
        meter = route.protocol.stream_meter(call.endpoint, call.hide_usage)
        if call.capture:
            text = StreamText(route.family, call.endpoint)
    transport = request.proto.response_stream(upstream.status, _client_headers(upstream, call))
    pump = asyncio.current_task()
    finished = False

    def stop_pump() -> None:
        if not finished and pump is not None:
            pump.cancel()

    def on_disconnect(_: asyncio.Future[None]) -> None:
        # A client may hang up the moment it has the last event, while the upstream's end of stream is
        # still on its way: give the pump a moment to finish; a silent upstream is cut off after it.
        if not finished:
            asyncio.get_running_loop().call_later(_DISCONNECT_GRACE_S, stop_pump)

    watcher = asyncio.ensure_future(request.proto.client_disconnect())
    watcher.add_done_callback(on_disconnect)
    try:
        while (raw := await upstream.next_chunk()) is not None:
            if text is not None:
                text.feed(raw)
            data = meter.feed(raw) if meter is not None else raw
            if data:
                await transport.send_bytes(data)
        if meter is not None and (tail := meter.finish()):
            await transport.send_bytes(tail)
        finished = True
    except ProtocolClosed:
        _client_gone(state, call)
    except asyncio.CancelledError:
        if not watcher.done() or watcher.cancelled():
            raise  # cancelled for another reason (shutdown)
        _client_gone(state, call)
    except RequestError as exc:
        out.error = f"upstream stream ended abnormally: {type(exc).__name__}"
        state.metrics.upstream_errors.labels(route.id, "stream").inc()
        # Tell the client in-band, in its SDK's own error form, rather than end the stream cleanly.
        message = (f"Tollhouse: the stream from provider '{route.id}' ended abnormally "
                   f"({type(exc).__name__}); the answer is incomplete.")
        try:
            await transport.send_bytes(stream_error_event(route.family, message, "upstream_stream_error"))
        except ProtocolClosed:
            _client_gone(state, call)
    finally:
        complete = finished
        finished = True  # from here on a disconnect must not cancel anything
        watcher.cancel()
        if meter is not None:
            _settle_stream(meter, out, complete)
        if text is not None:
            out.response_text = text.text()
    return STREAMED


def _settle_stream(meter: StreamMeter, out: _Outcome, complete: bool) -> None:
    if meter.model:
        out.model = meter.model
    if meter.usage is not None:
        if complete:
            out.usage, out.usage_source = meter.usage, UsageSource.response
        else:
            u = meter.usage
            out.usage = Usage(u.input_tokens, max(u.output_tokens, meter.delta_events), u.cache_read_tokens,
                              u.cache_write_tokens)
            out.usage_source = UsageSource.partial
    elif meter.delta_events or not complete:
        out.usage = Usage(0, meter.delta_events)
        out.usage_source = UsageSource.estimate


def _upstream_failed(state: GatewayState, route: ProviderRoute, out: _Outcome, exc: RequestError) -> Response:
    timeout = isinstance(exc, RequestTimeoutError)
    status = 504 if timeout else 502
    kind = "timeout" if timeout else "unreachable" if isinstance(exc, ConnectError) else "failed"
    state.metrics.upstream_errors.labels(route.id, kind).inc()
    detail = {"timeout": "timed out", "unreachable": "connection failed"}.get(kind, type(exc).__name__)
    out.status = status
    out.error = f"upstream {kind}: {detail}"
    return error_response(
        route.family, status,
        f"Tollhouse could not get an answer from provider '{route.id}' at {route.upstream} ({detail}). "
        f"The request was not processed by the provider. Check that the provider is reachable from the "
        f"gateway and that providers.{route.id}.upstream is right.",
        "upstream_timeout" if timeout else "upstream_unreachable",
    )


def _record(state: GatewayState, call: _Call) -> None:
    """Turn the outcome into an event and metrics. Runs in `finally`: every call is recorded."""
    out, route = call.out, call.route
    elapsed = time.perf_counter() - call.started
    usage = out.usage
    if usage is not None and out.usage_source is UsageSource.estimate and usage.input_tokens == 0:
        # No usage report at all: about four bytes of prompt JSON per token.
        usage = Usage(max(call.request_bytes // 4, 1), usage.output_tokens)
    if usage is None:
        usage = Usage()
    model = out.model
    cost: int | None = None
    m = state.metrics
    model_label = m.model_label(model)
    if call.metered and model and out.usage_source in (UsageSource.response, UsageSource.partial,
                                                       UsageSource.estimate):
        cost = state.prices.cost_nusd(route.price_provider, model, usage)
        if cost is None:
            m.unpriced.labels(route.id, model_label).inc()
    subject = call.ident.subject
    verdict = call.verdict
    decision = call.decision
    event = CallEvent(
        id=state.writer.new_id(call.ts_ms),
        ts_ms=call.ts_ms,
        subject=subject.id,
        subject_kind=subject.kind,
        team=subject.team,
        project=subject.project,
        cost_centre=subject.cost_centre,
        provider=route.id,
        endpoint=call.endpoint.value,
        path=call.path,
        metered=call.metered,
        model=model,
        requested_model=call.facts.model,
        stream=call.facts.stream,
        status=out.status if out.status else 499,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        cost_nusd=cost,
        usage_source=out.usage_source.value,
        decision=decision,
        rule_id=verdict.rule_id if verdict is not None else None,
        would=verdict.would if verdict is not None else None,
        latency_ms=round(elapsed * 1000, 3),
        ttfb_ms=round(out.ttfb * 1000, 3) if out.ttfb is not None else None,
        client_disconnected=out.client_disconnected,
        error=out.error,
    )
    state.writer.record(event, capture(call.prompt, out.response_text) if call.capture else None)
    if verdict is not None and verdict.enforced and decision != "block":
        for waived in verdict.decision.waived:
            m.exemption_passes.labels(waived.rule.id).inc()
    if decision == "block":
        top = verdict.decision.top if verdict is not None else None
        state.audit.record("call.blocked", "gateway", {
            "event_id": event.id, "rule_id": event.rule_id, "rule_type": top.rule.type_name if top else None,
            "reason": out.error if call.refused else (top.reason if top else None), "subject": subject.id,
            "team": subject.team, "project": subject.project, "provider": route.id,
            "model": call.facts.model, "status": event.status})
    # The event is durable (journaled) before the answer leaves; counting it is not on the answer's path:
    # the loop runs this right after the handler returns, in order, before it handles anything that
    # arrives later (such as this client's next call).
    actual = None if call.reservation is None else Charge(route.id, cost or 0, usage.input_tokens,
                                                          usage.output_tokens, 1 if event.status < 400 else 0)
    state.loop.call_soon(_account, state, call.reservation, actual, route.id, model, decision, event.status,
                         usage.input_tokens, usage.output_tokens, cost or 0, elapsed)


def _account(state: GatewayState, reservation: object | None, actual: Charge | None, provider: str,
             model: str | None, decision: str, status: int, input_tokens: int, output_tokens: int, cost_nusd: int,
             elapsed: float) -> None:
    """Settle the call's reservation to what it used, and count it in the metrics."""
    if actual is not None:  # there was a reservation
        state.ledger.settle(reservation, actual)
    state.metrics.observe_call(provider, model, decision, status, input_tokens, output_tokens, cost_nusd, elapsed)

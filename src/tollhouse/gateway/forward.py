"""Stages: forward and meter. The call goes to its provider's configured upstream; the answer comes back to
the client byte for byte (streams chunk by chunk, as they arrive) while its usage is read.

`Progress` is what the stage has seen so far: status, time to first byte, usage. It is filled in as the
answer arrives, so a call the client abandons half way is still recorded with what was seen."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson

from tollhouse.gateway import enforce, redact
from tollhouse.gateway.errors import DECISION_HEADER, error_response, stream_error_event
from tollhouse.gateway.http import STREAMED, Request, Response, Streamed
from tollhouse.gateway.redact import Redactor
from tollhouse.gateway.state import GatewayState, ProviderRoute
from tollhouse.ledger.types import NANO_PER_USD
from tollhouse.policy.decide import Verdict
from tollhouse.providers.base import Endpoint, StreamMeter
from tollhouse.providers.family import Family
from tollhouse.providers.notice import NoticeStream, append_to_body
from tollhouse.providers.text import StreamText, response_text
from tollhouse.providers.usage import Usage, UsageSource
from tollhouse.wire.client import (
    ConnectError,
    RequestError,
    RequestTimeoutError,
    UpstreamLimitError,
    UpstreamResponse,
)
from tollhouse.wire.server import ProtocolClosed

# Never forwarded in either direction (RFC 9110 §7.6.1), plus what we recompute.
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailer", "transfer-encoding", "upgrade", "host", "content-length",
})
BUDGET_HEADER = "x-tollhouse-budget-remaining"


class Progress:
    """What the forward stage has seen of one call's answer so far."""

    __slots__ = ("answered", "client_disconnected", "error", "model", "response_text", "status", "ttfb", "usage",
                 "usage_source")

    def __init__(self, model: str | None, usage_source: UsageSource) -> None:
        self.status = 0
        self.usage: Usage | None = None
        self.usage_source = usage_source
        self.model = model  # the model the provider reports (else the one asked for)
        self.ttfb: float | None = None
        self.client_disconnected = False
        self.error: str | None = None
        self.response_text: str | None = None  # captured (enterprise capture mode)
        self.answered = 0  # the read hold of a stream whose end the client may have seen (EventWriter.hold_reads)


class Outbound:
    """A call on its way out: where it goes and what the client is told with its answer."""

    __slots__ = ("budget_remaining_nusd", "capture", "endpoint", "hide_usage", "metered", "notice", "path",
                 "redactor", "route", "started", "upstream_key", "verdict")

    def __init__(self, route: ProviderRoute, path: str, endpoint: Endpoint, metered: bool, upstream_key: str | None,
                 verdict: Verdict | None, hide_usage: bool, capture: bool, started: float,
                 redactor: Redactor | None, notice: str | None = None) -> None:
        self.route = route
        self.path = path
        self.endpoint = endpoint
        self.metered = metered
        self.upstream_key = upstream_key
        self.verdict = verdict
        self.hide_usage = hide_usage
        self.capture = capture
        self.started = started
        self.redactor = redactor  # the gateway injected a key: it never goes back to the caller
        self.budget_remaining_nusd = verdict.budget_remaining_nusd if verdict is not None else None
        self.notice = notice  # soft_cap_notice: message: appended to the answer's text


_NOT_FORWARDED = _HOP_BY_HOP | {"accept-encoding"}  # (accept-encoding: we ask for identity, below)
_RESPONSE = UsageSource.response  # (a module global: an enum member read is a class attribute lookup)


def upstream_headers(request: Request, route: ProviderRoute, upstream_key: str | None) -> list[tuple[str, str]]:
    dropped = _NOT_FORWARDED | route.auth_names if upstream_key is not None else _NOT_FORWARDED
    headers = [
        (name, value) for name, value in request.headers.items()
        if name not in dropped and not name.startswith("x-tollhouse-")
    ]
    if upstream_key is not None:
        headers += route.protocol.auth_headers(upstream_key).items()
    # Usage must be readable: ask for an uncompressed body (the client still gets the same content).
    headers.append(("accept-encoding", "identity"))
    return headers


def client_headers(upstream: UpstreamResponse, out: Outbound) -> list[tuple[str, str]]:
    headers = redact.headers([(n, v) for n, v in upstream.headers if n not in _HOP_BY_HOP], out.redactor)
    verdict = out.verdict
    headers.append((DECISION_HEADER, verdict.applied if verdict is not None else "allow"))
    if verdict is not None:
        headers += enforce.client_headers(verdict).items()
    if out.budget_remaining_nusd is not None:
        headers.append((BUDGET_HEADER, f"{out.budget_remaining_nusd / NANO_PER_USD:.6f}"))
    return headers


def upstream_query(request: Request, route: ProviderRoute, upstream_key: str | None) -> str:
    qs = request.query_string
    if upstream_key is not None and route.family is Family.gemini and "key=" in qs:
        # Gemini also takes the key as ?key=; a gateway key there must not reach the provider.
        return urlencode([(k, v) for k, v in parse_qsl(qs, keep_blank_values=True) if k != "key"])
    return qs


async def forward(request: Request, state: GatewayState, out: Outbound, body: bytes, stream: bool,
                  seen: Progress) -> Response | Streamed:
    route = out.route
    qs = upstream_query(request, route, out.upstream_key)
    target = out.path + ("?" + qs if qs else "")
    try:
        upstream = await route.client.send(request.method, target, upstream_headers(request, route, out.upstream_key),
                                           body)
        seen.ttfb = time.perf_counter() - out.started
        seen.status = upstream.status
        if not stream:
            data = await upstream.read()
            if out.metered and upstream.status < 400:
                meter_response(out, seen, data)
            data = redact.body(data, out.redactor)
            if out.notice is not None and out.metered and upstream.status < 400:
                data = append_to_body(route.family, out.endpoint, data, out.notice)
            return Response(upstream.status, data, client_headers(upstream, out))
        try:  # each upstream chunk is forwarded the moment it arrives
            return await _stream(request, state, out, upstream, seen)
        finally:
            upstream.close()
    except RequestError as exc:
        return upstream_failed(state, route, seen, exc)
    finally:
        if seen.ttfb is not None:
            state.metrics.stats.observe_ttfb(route.id, seen.ttfb)


def meter_response(out: Outbound, seen: Progress, data: bytes) -> None:
    """Usage and model (and the text, when capturing) from a whole response body."""
    route, endpoint = out.route, out.endpoint
    try:
        obj: Any = orjson.loads(data)
    except orjson.JSONDecodeError:
        seen.usage_source = UsageSource.unparsed
        return
    if out.capture:
        seen.response_text = response_text(route.family, endpoint, obj)
    usage, model = route.protocol.usage(endpoint, obj)
    if usage is not None:
        seen.usage, seen.usage_source = usage, _RESPONSE
    if model:
        seen.model = model


def client_gone(state: GatewayState, route: ProviderRoute, seen: Progress) -> None:
    if not seen.client_disconnected:
        seen.client_disconnected = True
        state.metrics.disconnects.labels(route.id).inc()


async def _stream(request: Request, state: GatewayState, out: Outbound, upstream: UpstreamResponse,
                  seen: Progress) -> Streamed:
    """Forward a stream chunk by chunk. A client that goes away is the server's to notice: it cancels this
    task, and the upstream read with it."""
    route = out.route
    meter: StreamMeter | None = None
    text: StreamText | None = None
    if out.metered and upstream.status < 400:
        meter = route.protocol.stream_meter(out.endpoint, out.hide_usage)
        if out.capture:
            text = StreamText(route.family, out.endpoint)
    transport = redact.stream(request.proto.response_stream(upstream.status, client_headers(upstream, out)),
                              out.redactor)
    noted = NoticeStream(route.family, out.endpoint, out.notice) \
        if out.notice is not None and meter is not None else None
    finished = False
    try:
        while (raw := await upstream.next_chunk()) is not None:
            if text is not None:
                text.feed(raw)
            data = meter.feed(raw) if meter is not None else raw
            if noted is not None:
                data = noted.feed(data)
            if data:
                if upstream.ended:  # the last of the answer: the client may stop reading here
                    _answering(state, seen)
                await transport.send_bytes(data)
        _answering(state, seen)
        if meter is not None and (tail := meter.finish()):
            await transport.send_bytes(noted.feed(tail) if noted is not None else tail)
        if noted is not None and (held := noted.finish()):
            await transport.send_bytes(held)
        await redact.flush(transport)
        transport.end()  # the client has its whole answer now; recording the call may take a moment more
        finished = True
    except ProtocolClosed:
        client_gone(state, route, seen)
    except asyncio.CancelledError:
        if not request.proto.client_gone:
            raise  # cancelled for another reason (shutdown)
        client_gone(state, route, seen)  # the server cancelled us: the client is gone
    except RequestError as exc:
        seen.error = f"upstream stream ended abnormally: {type(exc).__name__}"
        state.metrics.upstream_errors.labels(route.id, "stream").inc()
        # Tell the client in-band, in its SDK's own error form, rather than end the stream cleanly.
        _answering(state, seen)
        message = (f"Tollhouse: the stream from provider '{route.id}' ended abnormally "
                   f"({type(exc).__name__}); the answer is incomplete.")
        try:
            held = noted.finish() if noted is not None else b""  # events held for the notice go out first
            await transport.send_bytes(held + stream_error_event(route.family, message, "upstream_stream_error"))
        except ProtocolClosed:
            client_gone(state, route, seen)
    finally:
        complete = finished
        if meter is not None:
            meter_stream(meter, seen, complete)
        if text is not None:
            seen.response_text = text.text()
    return STREAMED


def _answering(state: GatewayState, seen: Progress) -> None:
    """What is sent from here may end the stream for its client while the call is not yet recorded: reads of
    the store (`EventWriter.flush`) wait for the call's event, so a caller who lists events once its stream
    ended sees the call. The pipeline releases the hold after `record`."""
    if not seen.answered:
        seen.answered = state.writer.hold_reads()


def meter_stream(meter: StreamMeter, seen: Progress, complete: bool) -> None:
    if meter.model:
        seen.model = meter.model
    if meter.usage is not None:
        if complete:
            seen.usage, seen.usage_source = meter.usage, UsageSource.response
        else:
            u = meter.usage
            seen.usage = Usage(u.input_tokens, max(u.output_tokens, meter.delta_events), u.cache_read_tokens,
                               u.cache_write_tokens)
            seen.usage_source = UsageSource.partial
    elif meter.delta_events or not complete:
        seen.usage = Usage(0, meter.delta_events)
        seen.usage_source = UsageSource.estimate


def upstream_failed(state: GatewayState, route: ProviderRoute, seen: Progress, exc: RequestError) -> Response:
    timeout = isinstance(exc, RequestTimeoutError)
    status = 504 if timeout else 502
    kind = "timeout" if timeout else "unreachable" if isinstance(exc, ConnectError) else \
        "limit" if isinstance(exc, UpstreamLimitError) else "failed"
    state.metrics.upstream_errors.labels(route.id, kind).inc()
    seen.status = status
    if kind == "limit":  # the provider answered beyond a configured bound: say which, and how to raise it
        seen.error = f"upstream answer refused: {exc}"
        return error_response(route.family, status, f"Tollhouse refused the answer of provider '{route.id}': {exc}",
                              "upstream_answer_too_large")
    detail = {"timeout": "timed out", "unreachable": "connection failed"}.get(kind, type(exc).__name__)
    seen.error = f"upstream {kind}: {detail}"
    processed = "The request was not processed by the provider." if kind == "unreachable" else \
        "The provider may have started processing the request."
    return error_response(
        route.family, status,
        f"Tollhouse could not get an answer from provider '{route.id}' at {route.upstream} ({detail}). "
        f"{processed} Check that the provider is reachable from the gateway and that providers.{route.id}.upstream "
        "is right.",
        "upstream_timeout" if timeout else "upstream_unreachable",
    )

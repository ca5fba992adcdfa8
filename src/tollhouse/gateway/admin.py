"""Control-plane API under /api/v1 (admin token), health and metrics."""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from typing import TypeVar

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tollhouse import __version__
from tollhouse.events.model import event_json
from tollhouse.events.store import Store
from tollhouse.gateway import storage
from tollhouse.gateway.client_address import client_address
from tollhouse.gateway.http import Request, Response, json_response
from tollhouse.gateway.state import GatewayState
from tollhouse.keys import create_key
from tollhouse.subject_ids import valid_subject_id

T = TypeVar("T")


def api_error(status: int, message: str, code: str) -> Response:
    return json_response({"error": {"message": message, "code": code}}, status)


ENROLLMENT_PREFIX = "the-"  # agents' enrollment tokens (gateway/agent_api.py)


def bearer_token(request: Request) -> str:
    """The token of `Authorization: Bearer <token>` ("" without one)."""
    auth = request.header("authorization") or ""
    return auth[7:].strip() if auth[:7].lower() == "bearer " else ""


def authorized(request: Request, state: GatewayState) -> bool:
    """The request carries the admin token as its bearer token. A wrong one counts against the client's address
    (gateway/sign_in_guard.py), and an address locked out is never let in, even with the right one."""
    token = bearer_token(request)
    if not token:
        return False
    address = client_address(request, state.settings.identity.trusted_proxies)
    if state.guard.locked(address) is not None:
        return False
    if hmac.compare_digest(token.encode(), state.admin_token.encode()):
        return True
    if not token.startswith(ENROLLMENT_PREFIX) or state.admin_token.startswith(ENROLLMENT_PREFIX):
        state.guard.failed(address, f"bearer token on {request.path[:200]}")  # (an agent's token is not a guess)
    return False


def locked_out(request: Request, state: GatewayState) -> int | None:
    """Seconds until this client may try the admin token again (None: it may now)."""
    return state.guard.locked(client_address(request, state.settings.identity.trusted_proxies))


def locked_message(seconds: int) -> str:
    return (f"too many wrong admin tokens from this address: it may not try again for {seconds} s "
            "(console.failed_sign_ins within console.lockout_minutes); every attempt is in the audit trail")


class BadParameter(ValueError):
    """A query parameter a user got wrong; the message says which and what is allowed."""


class ApiError(Exception):
    """Raised by a handler to answer with a control-plane error (the app's error boundary renders it)."""

    def __init__(self, status: int, message: str, code: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.response = json_response({"error": {"message": message, "code": code,
                                                 **({"problems": problems} if problems is not None else {})}},
                                      status)


def refused(what: str, code: str, problems: list[str]) -> ApiError:
    """400 for a document that did not validate: every problem listed, nothing changed."""
    return ApiError(400, f"the {what} was not changed: {len(problems)} problem(s); fix each and send it again",
                    code, problems)


def int_param(query: dict[str, str], name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadParameter(f"query parameter {name!r} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise BadParameter(f"query parameter {name!r} must be between {lo} and {hi}, got {value}")
    return value


async def read(state: GatewayState, fn: Callable[[Store], T]) -> tuple[T, int]:
    try:
        return await storage.read_store(state.writer, state.runner.run, fn)
    except storage.StorageUnavailable as exc:
        raise ApiError(503, f"events cannot be read right now: {exc}. Recorded events are kept and written when "
                       "the store is back; retry shortly.", "event_store_unavailable") from None


async def get_event(request: Request, state: GatewayState) -> Response:
    """One event with its captured prompt and response (null when not captured: telemetry capture mode)."""
    event_id = request.params["id"]
    row, _ = await read(state, lambda s: s.event(event_id))
    if row is None:
        raise ApiError(404, f"no event with id {event_id!r}", "not_found")
    return json_response({"event": event_json(row)})


async def list_audit(request: Request, state: GatewayState) -> Response:
    """Audit entries oldest first, `since` a sequence number (for a SIEM to page forward)."""
    query = request.query
    try:
        since = int_param(query, "since", 0, 0, 2**62) or 0
        limit = int_param(query, "limit", 1000, 1, 10_000) or 1000
    except BadParameter as exc:
        return api_error(400, str(exc), "bad_parameter")
    await state.audit.flush()
    entries = await state.runner.run(lambda s: s.audit_entries(since, limit))
    body: dict[str, object] = {"entries": [e.json() for e in entries]}
    if len(entries) == limit:
        body["next"] = f"/api/v1/audit?since={entries[-1].seq}&limit={limit}"
    return json_response(body)


async def create_gateway_key(request: Request, state: GatewayState) -> Response:
    try:
        data = orjson.loads(await request.body(64 * 1024))
    except orjson.JSONDecodeError as exc:
        return api_error(400, f"request body is not valid JSON: {exc}", "malformed_json")
    user = data.get("user") if isinstance(data, dict) else None
    if not isinstance(user, str) or not user:
        return api_error(400, 'body must be {"user": "NAME", "label": "optional text"}', "bad_request")
    label = data.get("label") if isinstance(data.get("label"), str) else None
    if (problem := valid_subject_id(user)) is not None:
        return api_error(400, f"user is not a valid id: {problem}", "bad_request")
    directory = state.directory.current
    if not directory.knows(user) and data.get("allow_unknown") is not True:
        return api_error(400, f"user {user!r} is not a person or service of the directory (version "
                         f"{directory.version}); add them with PUT /api/v1/directory, or send "
                         '"allow_unknown": true to create the key anyway', "unknown_user")
    key, record = await state.runner.run(lambda s: create_key(s, user, label))
    return json_response({"key": key, "prefix": record.prefix, "user": record.subject, "label": record.label},
                         201)


async def list_gateway_keys(request: Request, state: GatewayState) -> Response:
    records = await state.runner.run(lambda s: s.list_keys())
    return json_response({"keys": [
        {"prefix": r.prefix, "user": r.subject, "label": r.label, "created_ms": r.created_ms,
         "revoked": r.revoked_ms is not None} for r in records]})


async def revoke(request: Request, state: GatewayState, what: str, revoke_in: Callable[[Store, str], int],
                 forget: Callable[[], None]) -> Response:
    """Revoke a stored secret by its prefix and drop the cache that could still admit it."""
    prefix = request.params["prefix"]
    count = await state.runner.run(lambda s: revoke_in(s, prefix))
    if not count:
        return api_error(404, f"no active {what} with prefix {prefix!r}", "not_found")
    forget()
    return json_response({"revoked": prefix})


async def revoke_gateway_key(request: Request, state: GatewayState) -> Response:
    return await revoke(request, state, "gateway key", lambda s, p: s.revoke_key(p), state.keys.forget)


async def healthz(request: Request, state: GatewayState) -> Response:
    policy = state.policies.status()
    live = state.live_settings.current
    events = storage.health(state.writer, state.metrics)
    return json_response({
        "status": events["status"],
        "version": __version__,
        "pid": os.getpid(),
        "enforcement": live.enforcement.value,
        "capture_mode": live.capture_mode.value,
        "events_pending": state.writer.pending,
        "events_written": state.writer.written,
        "providers": sorted(state.providers.current),
        "policy": {"version": policy.version, "source": policy.source, "rules": policy.rules,
                   "error": policy.error},
        "events": events,
        **{name: section() for name, section in state.health.current.items()},
    }, 200 if events["accepting"] else 503)  # not accepting: new calls get 503 (take this gateway out)


async def metrics(request: Request, state: GatewayState) -> Response:
    storage.health(state.writer, state.metrics)  # sets the events gauges
    return Response(200, generate_latest(state.metrics.registry), [("content-type", CONTENT_TYPE_LATEST)])

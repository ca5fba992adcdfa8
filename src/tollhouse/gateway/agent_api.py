"""What agents use: enrollment tokens, the policy bundle (long-polled with ETags), telemetry ingest."""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Sequence
from typing import Any

from tollhouse.events.model import CallEvent
from tollhouse.events.records import EnrollmentToken
from tollhouse.events.store import StoreError
from tollhouse.events.wire import BatchError, from_wire
from tollhouse.gateway.admin import (
    ENROLLMENT_PREFIX,
    BadParameter,
    api_error,
    authorized,
    bearer_token,
    int_param,
    revoke,
)
from tollhouse.gateway.exemption_use import audit_agent_uses
from tollhouse.gateway.http import Request, Response, json_response
from tollhouse.gateway.policy_api import AGENT_POLICY, actor, agent_policy_json, json_body
from tollhouse.gateway.state import GatewayState
from tollhouse.keys import sha256_hex
from tollhouse.ledger.stored import stored_usage

log = logging.getLogger("tollhouse.agents")

MAX_WAIT_S = 60
_AGENT_HEADERS = ("x-tollhouse-agent-id", "x-tollhouse-agent-version", "x-tollhouse-hostname")


async def agent_identity(request: Request, state: GatewayState) -> str | Response:
    """'admin' or the enrollment token's prefix; else a 401 that says what to send."""
    if authorized(request, state):
        return "admin"
    token = bearer_token(request)
    if token.startswith(ENROLLMENT_PREFIX):
        digest = sha256_hex(token)
        cached, record = state.enrollment.get(digest)
        if not cached:
            record = await state.runner.run(lambda s: s.find_enrollment_token(digest))
            state.enrollment.put(digest, record)
        if record is not None and record.revoked_ms is None:
            return record.prefix
    return api_error(401, "agents need 'Authorization: Bearer <token>': an enrollment token from "
                     "POST /api/v1/agent/tokens (or the admin token); this one is missing, unknown or revoked",
                     "unauthorized")


# enrollment tokens (admin)

async def create_token(request: Request, state: GatewayState) -> Response:
    data = await json_body(request, empty={})
    label = data.get("label") if isinstance(data, dict) else None
    if label is not None and not isinstance(label, str):
        return api_error(400, 'body must be {"label": "optional text"}', "bad_request")
    token, record = await issue_token(state, label, actor(request))
    return json_response({"token": token, **record.json()}, 201)


async def issue_token(state: GatewayState, label: str | None, by: str) -> tuple[str, EnrollmentToken]:
    """A new enrollment token (the secret, returned once) and its stored record; audited."""
    token = ENROLLMENT_PREFIX + secrets.token_urlsafe(24)
    record = await state.runner.run(lambda s: s.add_enrollment_token(sha256_hex(token), token[:12], label))
    state.audit.record("agent.token_created", by, {"prefix": record.prefix, "label": label})
    return token, record


async def list_tokens(request: Request, state: GatewayState) -> Response:
    records = await state.runner.run(lambda s: s.list_enrollment_tokens())
    return json_response({"tokens": [r.json() for r in records]})


async def revoke_token(request: Request, state: GatewayState) -> Response:
    response = await revoke(request, state, "enrollment token", lambda s, p: s.revoke_enrollment_token(p),
                            state.enrollment.forget)
    if response.status == 200:
        state.audit.record("agent.token_revoked", actor(request), {"prefix": request.params["prefix"]})
    return response


async def list_agents(request: Request, state: GatewayState) -> Response:
    agents = await state.runner.run(lambda s: s.list_agents())
    return json_response({"agents": [a.json() for a in agents]})


# the bundle

def _etag(state: GatewayState) -> str:
    """Changes whenever the bundle does: the policy, agent policy and directory versions, and the content of the
    exemption overrides in force (an approval, revocation or expiry wakes the long-poll like an edit)."""
    agent_version = state.docs.feed.versions.get(AGENT_POLICY, 0)
    return (f'"p{state.policy.current.version}.a{agent_version}.d{state.directory.current.version}'
            f'.x{state.overrides.current.digest}"')


async def _bundle(state: GatewayState, etag: str) -> dict[str, Any]:
    doc = await state.docs.latest(AGENT_POLICY)
    # after the await: the policy and directory in force now, each read once (`raw` changes with the policy)
    policy, rules, directory = state.policy.current, state.policies.raw, state.directory.current
    overrides = state.overrides.current
    return {
        "etag": etag,
        "policy": {"version": policy.version, "rules": rules, "timezone": state.settings.policy.timezone},
        "agent_policy": agent_policy_json(doc, redact=False),  # the agent needs the proxy's credentials
        "directory": {"version": directory.version,
                      **directory.config.model_dump(mode="json", exclude_defaults=True)},
        # The approved overrides in force (every subject's: they are small), each with what it covers and its
        # expiry; the agent's calls are judged with them (agent/apply.py).
        "exemptions": [g.json() for g in overrides.grants],
    }


_HELD_POLICY = re.compile(r'"p(\d{1,18})\.')


def agent_status(request: Request, state: GatewayState) -> dict[str, Any]:
    """What an agent's poll says of it: the policy version it holds (its bundle's ETag; none yet: it is about to
    get the current one), its user and enforcement (headers the agent sends)."""
    held = _HELD_POLICY.match(request.header("if-none-match") or "")
    status: dict[str, Any] = {"policy_version": int(held.group(1)) if held else state.policy.current.version}
    for key in ("user", "enforcement"):
        value = (request.header(f"x-tollhouse-{key}") or "").strip()[:200]
        if value:
            status[key] = value
    return status


async def bundle(request: Request, state: GatewayState) -> Response:
    """The agent's whole configuration. With `If-None-Match: <etag>` the answer is held until something
    changes (then the new bundle) or `wait` seconds pass (then 304), so an edit reaches agents at once."""
    who = await agent_identity(request, state)
    if isinstance(who, Response):
        return who
    try:
        wait = int_param(request.query, "wait", 30, 0, MAX_WAIT_S)
    except BadParameter as exc:
        return api_error(400, str(exc), "bad_parameter")
    agent_id = request.header(_AGENT_HEADERS[0])
    if agent_id:
        hostname, version = request.header(_AGENT_HEADERS[2]), request.header(_AGENT_HEADERS[1])
        now_ms = int(state.clock() * 1000)
        status = agent_status(request, state)
        await state.runner.run(lambda s: s.upsert_agent(agent_id[:128], hostname, version, who, now_ms, status))
    etag = _etag(state)
    if request.header("if-none-match") == etag and wait:
        deadline = time.monotonic() + wait
        while etag == _etag(state) and not state.docs.feed.closed:
            left = deadline - time.monotonic()
            if left <= 0 or not await state.docs.feed.wait(left):
                break
        etag = _etag(state)
    if request.header("if-none-match") == etag:
        return Response(304, b"", [("etag", etag)])
    return json_response(await _bundle(state, etag), headers=[("etag", etag), ("cache-control", "no-cache")])


# telemetry

async def ingest_events(request: Request, state: GatewayState) -> Response:
    """A batch of call events from an agent, stored once each (by event id): a retried batch is harmless.
    One bad event refuses the whole batch, naming it (`problems`) and listing every bad event's index
    (`bad`), so nothing is half-stored and the agent can send the rest again without them."""
    who = await agent_identity(request, state)
    if isinstance(who, Response):
        return who
    data = await json_body(request)
    if not isinstance(data, dict) or "events" not in data:
        return api_error(400, 'body must be {"events": [event, ...]}', "bad_request")
    try:
        batch = from_wire(data["events"])
    except BatchError as exc:
        return json_response({"error": {"message": f"batch refused, nothing stored: {exc.problems[0]}",
                                        "code": "invalid_events", "problems": exc.problems,
                                        "bad": exc.indices}}, 400)
    events = batch.events
    fresh = await state.runner.run(lambda s: s.insert_new_events(events, batch.captures)) if events else []
    stored = len(fresh)
    if fresh:  # their spend reaches the counters, and the agent's leases hold that much less
        agent = request.header(_AGENT_HEADERS[0]) or who
        await count_shipped(state, agent, fresh)
        audit_agent_uses(state, fresh, agent)
    state.metrics.agent_events.labels("stored").inc(stored)
    state.metrics.agent_events.labels("duplicate").inc(len(events) - stored)
    return json_response({"received": len(events), "stored": stored, "duplicates": len(events) - stored})


async def count_shipped(state: GatewayState, agent: str, events: Sequence[CallEvent]) -> None:
    directory, policy = state.directory.current, state.policy.current
    usage = stored_usage(events, directory.team_chain)
    state.ledger.count_stored(usage, policy.count_windows)
    try:
        await state.leases.drawn(agent.strip()[:200], usage, int(state.clock() * 1000))
    except StoreError as exc:  # the leases keep holding what the events spent: counted twice, never lost
        log.warning("budget leases could not be updated after an ingest: %s", exc)


NOTICE_KINDS = frozenset({"agent.update.available", "agent.update.installed", "agent.update.failed"})


async def notices(request: Request, state: GatewayState) -> Response:
    """An agent's notice (an update available, installed or failed): audited at the control plane, and
    kept as the agent's last status in `GET /api/v1/agents`."""
    who = await agent_identity(request, state)
    if isinstance(who, Response):
        return who
    data = await json_body(request)
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind not in NOTICE_KINDS or not isinstance(data.get("data", {}), dict):
        return api_error(400, f'body must be {{"kind": one of {", ".join(sorted(NOTICE_KINDS))}, "data": {{...}}}}',
                         "bad_request")
    agent_id = (request.header(_AGENT_HEADERS[0]) or "unknown")[:128]
    detail = data.get("data", {})
    state.audit.record(kind, f"agent:{agent_id}", {"agent_id": agent_id, "token": who, **detail})
    now_ms = int(state.clock() * 1000)
    status = {"last_notice": kind, **{k: detail.get(k) for k in ("current", "target") if k in detail}}
    hostname = request.header(_AGENT_HEADERS[2])
    await state.runner.run(lambda s: s.upsert_agent(agent_id, hostname, request.header(_AGENT_HEADERS[1]), who,
                                                     now_ms, status))
    return json_response({"recorded": kind})

"""The exemption workflow's operations, shared by the JSON API and the console pages: file a request,
approve it (a one-off override, or a rule edit), deny it, revoke an override early. Each is stored, audited,
and (approvals, revocations) put in force on this gateway at once and on agents through their bundle."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tollhouse.control.exemptions import (
    MAX_JUSTIFICATION,
    ExemptionError,
    ExemptionProblems,
    Problem,
    QueueLimits,
    parse_approval,
    parse_denial,
    parse_request,
    queue_check,
    text_field,
)
from tollhouse.control.overrides import default_scope
from tollhouse.events.model import iso_ts
from tollhouse.events.records import APPROVED, DENIED, OVERRIDE, PENDING, REVOKED, RULE_EDIT, Exemption
from tollhouse.gateway.policy_holder import FileAuthoritative, RulesFileError, VersionConflict
from tollhouse.gateway.state import GatewayState

log = logging.getLogger("tollhouse.exemptions")


# approve or deny: (state, exemption id, the decision's fields, reviewer) -> the decided exemption
Decide = Callable[[GatewayState, str, Mapping[str, object], str], Awaitable[Exemption]]


@dataclass(frozen=True, slots=True)
class Filed:
    exemption: Exemption
    status_url: str


def status_url(state: GatewayState, exemption_id: str) -> str:
    return f"{state.console_url}exemptions/{exemption_id}"


def exemption_json(state: GatewayState, x: Exemption) -> dict[str, Any]:
    """The API shape: the stored record, its status page, and whether an override is in force now."""
    now_ms = int(state.clock() * 1000)
    active = x.status == APPROVED and x.decision_kind == OVERRIDE and (x.expires_ms or 0) > now_ms
    return {**x.json(), "active": active, "status_url": status_url(state, x.id)}


async def file_request(state: GatewayState, data: Mapping[str, object], client_address: str | None = None
                       ) -> Filed:
    """Raises ExemptionProblems (a field is wrong; the subject is not in the directory) or ExemptionError (a
    duplicate; a queue limit of the requester's address, the subject or the whole queue is reached).
    `client_address`: where the request came from (the per-address limit)."""
    rule_ids = {r.id for r in state.policy.current.rules}
    x = parse_request(data, rule_ids, "ex-" + secrets.token_hex(8), int(state.clock() * 1000),
                      state.directory.current.knows, client_address)
    c = state.settings.exemptions
    check = queue_check(x, QueueLimits(c.max_pending_per_subject, c.max_pending_per_address, c.max_pending),
                        lambda exemption_id: status_url(state, exemption_id))
    await state.runner.run(lambda s: s.file_exemption(x, check))
    state.audit.record("exemption.requested", x.requester, {
        "id": x.id, "subject": x.subject, "rule_id": x.rule_id, "provider": x.provider, "model": x.model,
        "team": x.team, "project": x.project, "call_ts": iso_ts(x.call_ts_ms) if x.call_ts_ms else None,
        "justification": x.justification, "requester": x.requester})
    log.info("exemption %s requested: %s for rule %s", x.id, x.subject, x.rule_id)
    return Filed(x, status_url(state, x.id))


async def pending_exemption(state: GatewayState, exemption_id: str) -> Exemption:
    """The exemption if it can still be decided; else ExemptionError 404 or 409."""
    x = await state.runner.run(lambda s: s.exemption(exemption_id))
    if x is None:
        raise ExemptionError(404, "not_found", f"no exemption request with id {exemption_id!r}")
    if x.status != PENDING:
        when = f" at {iso_ts(x.decided_ms)}" if x.decided_ms else ""
        who = x.revoked_by if x.status == REVOKED else x.reviewer
        raise ExemptionError(409, "already_decided", f"exemption {x.id} was already {x.status} by "
                             f"{who or 'someone'}{when}; only a pending request can be decided (file a new "
                             "request if the situation changed)")
    return x


def _decided(x: Exemption | None, exemption_id: str) -> Exemption:
    if x is None:  # decided by someone else between our read and our write
        raise ExemptionError(409, "already_decided", f"exemption {exemption_id} was decided meanwhile by "
                             "someone else; reload it to see how")
    return x


async def approve(state: GatewayState, exemption_id: str, data: Mapping[str, object], reviewer: str) -> Exemption:
    """Raises ExemptionError (404, 409) or ExemptionProblems (400: a bad field, or a rule edit that does not
    validate)."""
    x = await pending_exemption(state, exemption_id)
    approval = parse_approval(data)
    if approval.rule is not None:
        return await _approve_rule_edit(state, x, approval.rule, approval.note, reviewer)
    now_ms = int(state.clock() * 1000)
    expires_ms = now_ms + approval.hours * 3_600_000
    requested_models, requested_providers = default_scope(x)
    models, providers = approval.models or requested_models, approval.providers or requested_providers
    decided = _decided(await state.runner.run(lambda s: s.decide_exemption(
        exemption_id, APPROVED, reviewer, now_ms, OVERRIDE, expires_ms, approval.note, ",".join(models),
        ",".join(providers))), exemption_id)
    state.audit.record("exemption.approved", reviewer, {
        "id": x.id, "subject": x.subject, "rule_id": x.rule_id, "reviewer": reviewer, "kind": OVERRIDE,
        "hours": approval.hours, "expires": iso_ts(expires_ms), "note": approval.note,
        "justification": x.justification, "models": list(models), "providers": list(providers),
        "requested_model": x.model, "requested_provider": x.provider})
    await _reload(state, x.id, "approved")
    log.info("exemption %s approved by %s: %s may pass rule %s for %d h (models %s, providers %s)", x.id, reviewer,
             x.subject, x.rule_id, approval.hours, ",".join(models), ",".join(providers))
    return decided


async def _reload(state: GatewayState, exemption_id: str, what: str) -> None:
    """Put the change in force on this gateway now (and, through the bundle, on agents)."""
    try:
        await state.override_loader.refresh()
    except Exception as exc:  # stored and audited; the periodic refresh puts it in force
        log.error("exemption %s %s but the overrides could not be reloaded yet: %s", exemption_id, what, exc)


async def revoke(state: GatewayState, exemption_id: str, data: Mapping[str, object], revoker: str) -> Exemption:
    """End an approved override early: calls stop passing at once here, on agents within their long-poll.
    Raises ExemptionError (404; 409: not an override in force). `data`: {"reason": optional}."""
    problems: list[Problem] = []
    reason = text_field(data, "reason", problems, limit=MAX_JUSTIFICATION)
    if problems:
        raise ExemptionProblems(problems)
    now_ms = int(state.clock() * 1000)
    revoked = await state.runner.run(lambda s: s.revoke_exemption(exemption_id, revoker, now_ms))
    if revoked is None:
        x = await state.runner.run(lambda s: s.exemption(exemption_id))
        if x is None:
            raise ExemptionError(404, "not_found", f"no exemption request with id {exemption_id!r}")
        why = "has expired" if x.status == APPROVED and x.decision_kind == OVERRIDE else \
            f"is {x.status}" + (f" ({x.decision_kind})" if x.decision_kind else "")
        raise ExemptionError(409, "not_in_force", f"exemption {x.id} {why}; only an approved override still in "
                             "force can be revoked")
    state.audit.record("exemption.revoked", revoker, {
        "id": revoked.id, "subject": revoked.subject, "rule_id": revoked.rule_id, "revoked_by": revoker,
        "reason": reason, "expires": iso_ts(revoked.expires_ms) if revoked.expires_ms else None})
    await _reload(state, revoked.id, "revoked")
    log.info("exemption %s revoked by %s", revoked.id, revoker)
    return revoked


async def _approve_rule_edit(state: GatewayState, x: Exemption, rule: dict[str, Any], note: str | None,
                             reviewer: str) -> Exemption:
    """Add the rule to the policy, or replace the rule with its id, as a new policy version (audited with its
    diff as policy.changed); then the exemption is approved. Nothing changes if the policy does not validate."""
    base = state.policy.current.version
    current = list(state.policies.raw)
    at = next((i for i, r in enumerate(current) if isinstance(r, dict) and r.get("id") == rule["id"]), None)
    rules = [*current, rule] if at is None else [*current[:at], rule, *current[at + 1:]]
    try:
        doc = await state.policies.publish(rules, reviewer, f"exemption:{x.id}", note or f"exemption {x.id}", base)
    except RulesFileError as exc:
        raise ExemptionProblems([Problem("rule", f"the policy was not changed: {p}") for p in exc.problems]) from None
    except FileAuthoritative as exc:
        raise ExemptionError(409, "policy_file_authoritative", f"nothing was changed: {exc}") from None
    except VersionConflict:
        raise ExemptionError(409, "version_conflict", "the policy changed while this edit was made (now version "
                             f"{state.policy.current.version}); nothing was changed, approve again") from None
    now_ms = int(state.clock() * 1000)
    decided = _decided(await state.runner.run(lambda s: s.decide_exemption(
        x.id, APPROVED, reviewer, now_ms, RULE_EDIT, None, note or f"policy version {doc.version}")), x.id)
    state.audit.record("exemption.approved", reviewer, {
        "id": x.id, "subject": x.subject, "rule_id": x.rule_id, "reviewer": reviewer, "kind": RULE_EDIT,
        "edited_rule": rule["id"], "policy_version": doc.version, "note": note, "justification": x.justification})
    log.info("exemption %s approved by %s as a rule edit of %s: policy version %d", x.id, reviewer, rule["id"],
             doc.version)
    return decided


async def deny(state: GatewayState, exemption_id: str, data: Mapping[str, object], reviewer: str) -> Exemption:
    """Raises ExemptionError (404, 409) or ExemptionProblems (400: no reason)."""
    x = await pending_exemption(state, exemption_id)
    reason = parse_denial(data)
    now_ms = int(state.clock() * 1000)
    decided = _decided(await state.runner.run(lambda s: s.decide_exemption(
        exemption_id, DENIED, reviewer, now_ms, None, None, reason)), exemption_id)
    state.audit.record("exemption.denied", reviewer, {
        "id": x.id, "subject": x.subject, "rule_id": x.rule_id, "reviewer": reviewer, "reason": reason})
    log.info("exemption %s denied by %s", x.id, reviewer)
    return decided


"""Applying a policy decision to a request: block errors, redirects, warning headers, observe mode."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, NamedTuple
from urllib.parse import quote, urlencode

from tollhouse.config import Enforcement
from tollhouse.directory import Subject
from tollhouse.gateway.errors import DECISION_HEADER, error_response
from tollhouse.gateway.http import Response
from tollhouse.gateway.state import GatewayState, ProviderRoute
from tollhouse.policy.decide import Verdict
from tollhouse.policy.engine import Decision
from tollhouse.policy.rules import Rule, Severity
from tollhouse.providers.answers import Stamp, can_answer, message_answer
from tollhouse.providers.base import Endpoint
from tollhouse.providers.family import Family

log = logging.getLogger("tollhouse.policy")

RULE_HEADER = "x-tollhouse-rule"
WARNING_HEADER = "x-tollhouse-warning"
REDIRECTED_HEADER = "x-tollhouse-redirected-from"
EXEMPTION_HEADER = "x-tollhouse-exemption"


def enforced_for(enforcement: Enforcement, enforce_teams: tuple[str, ...], subject: Subject) -> bool:
    """Enforcement on, or on for one of the subject's teams (phased rollout)."""
    if enforcement is Enforcement.on:
        return True
    return bool(enforce_teams) and any(t in enforce_teams for t in subject.teams)


def enforced(state: GatewayState, subject: Subject) -> bool:
    """Whether the policy is applied to this subject's calls now (live: the agent switches it)."""
    return enforced_for(state.live_settings.current.enforcement, state.settings.policy.enforce_teams, subject)


def count_violations(state: GatewayState, verdict: Verdict, subject: Subject, model: str | None) -> None:
    """Every rule a call violated is counted (and logged from WARN up), applied or observed."""
    decision = verdict.decision
    if decision is None:
        return
    for v in decision.violations:
        state.metrics.violations.labels(v.rule.id, v.rule.severity.name, str(verdict.enforced).lower()).inc()
        if v.rule.severity >= Severity.warn:
            log.warning("policy %s: rule %s (%s) subject=%s model=%s: %s", verdict.applied, v.rule.id,
                        v.rule.type_name, subject.id, model, v.reason)


_REFUSAL_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                  413: "invalid_request_error", 429: "rate_limit_error", 502: "api_error", 503: "service_unavailable"}


class AsMessage(NamedTuple):
    """block_style `message` for this call: what its answer must look like."""

    endpoint: Endpoint
    stream: bool
    sse: bool  # Gemini: the stream was asked for with alt=sse
    stamp: Stamp


# The refusals a message can stand in for: a policy says no (the caller can do nothing but read why). Bad
# requests, unknown callers and outages keep their error statuses.
_MESSAGE_REFUSALS = frozenset({403, 429})


def render_block(state: GatewayState, route: ProviderRoute, verdict: Verdict, subject: Subject, model: str | None,
                 ts: datetime, as_message: AsMessage | None = None) -> Response:
    """The answer to a blocked call, in the caller's provider shape: a rule's block, or the gateway's own
    refusal (what was wrong and what to do). With `as_message` (block_style: message), a policy's block is a
    normal assistant answer whose text says the same."""
    refusal = verdict.refusal
    if as_message is not None and not can_answer(route.family, as_message.endpoint):
        as_message = None
    if refusal is None:
        if as_message is not None:
            return message_response(route, model, block_text(state, route, verdict, subject, model, ts),
                                    as_message, verdict.decision.rule_id if verdict.decision else None)
        return block_response(state, route, verdict, subject, model, ts)
    if as_message is not None and refusal.status in _MESSAGE_REFUSALS:
        return message_response(route, model, f"Tollhouse refused this request: {refusal.message}", as_message,
                                None)
    extra: dict[str, Any] = {"type": _REFUSAL_TYPES.get(refusal.status, "api_error")}
    if refusal.code == "unpriced_model":
        extra.update({"model": model, "provider": route.id})
    headers = {"retry-after": str(refusal.retry_after_s)} if refusal.retry_after_s is not None else None
    return error_response(route.family, refusal.status, refusal.message, refusal.code, extra, headers,
                          decision="block")


def exemption_console(state: GatewayState) -> str:
    """The console whose queue takes exemption requests: the authority's (an agent's control plane), else ours."""
    authority = state.settings.exemptions.authority_url
    return f"{authority}/console/" if authority else state.console_url


class BlockFacts(NamedTuple):
    """What a rule's block tells the caller, whatever the shape it is told in."""

    rule: Rule
    reason: str
    policy_url: str
    exemption_url: str


def block_facts(state: GatewayState, route: ProviderRoute, verdict: Verdict, subject: Subject, model: str | None,
                ts: datetime) -> BlockFacts:
    top = verdict.decision.top if verdict.decision is not None else None
    assert top is not None  # a rule's block always has its rule
    rule = top.rule
    policy_url = state.settings.policy_url or state.console_url + "policy"
    exemption_url = exemption_console(state) + "exemptions/new?" + urlencode({
        "rule": rule.id, "provider": route.id, "model": model or "", "subject": subject.id,
        "team": subject.team or "", "project": subject.project or "", "ts": ts.isoformat(timespec="seconds"),
    }, quote_via=quote)
    return BlockFacts(rule, top.reason, policy_url, exemption_url)


def block_text(state: GatewayState, route: ProviderRoute, verdict: Verdict, subject: Subject, model: str | None,
               ts: datetime) -> str:
    """The block as an assistant message: what was refused, why, and the two links, one per line."""
    f = block_facts(state, route, verdict, subject, model, ts)
    own = f" {f.rule.message.rstrip('.')}." if f.rule.message else ""
    retry = verdict.retry_after_s if verdict.status == 429 else None
    when = f"\nThis limit frees up in about {max(retry, 1)} s." if retry is not None else ""
    return (f"Blocked by Tollhouse policy: this request to {route.id} model {model or 'unknown'} was not sent.\n"
            f"Rule {f.rule.id} ({f.rule.type_name}): {f.reason}.{own}{when}\n"
            f"Policy: {f.policy_url}\n"
            f"{state.settings.exemption_instructions}\n"
            f"Request an exemption: {f.exemption_url}")


def message_response(route: ProviderRoute, model: str | None, text: str, how: AsMessage, rule_id: str | None
                     ) -> Response:
    answer = message_answer(route.family, how.endpoint, model, text, how.stream, how.stamp, how.sse)
    headers = [("content-type", answer.content_type), (DECISION_HEADER, "block")]
    if rule_id:
        headers.append((RULE_HEADER, rule_id))
    if how.stream:
        headers.append(("cache-control", "no-cache"))
    return Response(200, answer.body, headers)


def soft_cap_text(state: GatewayState, verdict: Verdict | None) -> str | None:
    """A soft cap's warning as a line to append to the answer (None: the call is under no soft cap)."""
    if verdict is None or not verdict.enforced or verdict.decision is None:
        return None
    top = verdict.decision.top
    if top is None or top.rule.severity is not Severity.soft_cap:
        return None
    own = f" {top.rule.message.rstrip('.')}." if top.rule.message else ""
    policy_url = state.settings.policy_url or state.console_url + "policy"
    return f"\n\n---\nTollhouse warning (rule {top.rule.id}): {top.reason}.{own} Policy: {policy_url}"


def block_response(state: GatewayState, route: ProviderRoute, verdict: Verdict, subject: Subject,
                   model: str | None, ts: datetime) -> Response:
    f = block_facts(state, route, verdict, subject, model, ts)
    rule, policy_url, exemption_url = f.rule, f.policy_url, f.exemption_url
    status = verdict.status  # 429 for a rolling window, else 403
    own = f" {rule.message.rstrip('.')}." if rule.message else ""
    message = (f"Blocked by Tollhouse policy rule {rule.id} ({rule.type_name}) for model {model or 'unknown'}: "
               f"{f.reason}.{own} Policy: {policy_url} . {state.settings.exemption_instructions} "
               f"Request an exemption: {exemption_url}")
    extra: dict[str, Any] = {
        "type": "policy_violation" if route.family is Family.openai else "permission_error",
        "rule_id": rule.id, "rule_type": rule.type_name, "model": model, "provider": route.id,
        "policy_url": policy_url, "exemption_url": exemption_url,
    }
    if route.family is Family.anthropic and status == 429:
        extra["type"] = "rate_limit_error"
    headers = {RULE_HEADER: rule.id}
    retry_after_s = verdict.retry_after_s
    if status == 429 and retry_after_s is not None:
        headers["Retry-After"] = str(max(retry_after_s, 1))
    return error_response(route.family, status, message, rule.type_name, extra, headers, decision="block")


def client_headers(verdict: Verdict | None) -> dict[str, str]:
    """Headers that tell the caller what the policy did (nothing is said in observe mode). A call let through
    by an approved exemption is an `allow` (or whatever the other rules make it) and names the exemption."""
    if verdict is None or not verdict.enforced or verdict.decision is None:
        return {}
    d = verdict.decision
    out: dict[str, str] = {}
    if d.waived:
        out[EXEMPTION_HEADER] = ",".join(verdict.exemption_ids)
    if d.rule_id:
        out[RULE_HEADER] = d.rule_id
    if d.redirect is not None and d.requested_model:
        out[REDIRECTED_HEADER] = d.requested_model
    top = d.top
    if top is not None and top.rule.severity >= Severity.warn:
        text = f"{top.rule.id}: {top.reason}"[:500]
        out[WARNING_HEADER] = text.encode("ascii", "replace").decode("ascii")
    return out


def redirect_request(route: ProviderRoute, endpoint: Endpoint, path: str, parsed: dict[str, Any],
                     decision: Decision) -> tuple[str, bool]:
    """Point the request at the substitute model. Returns (path, body_changed)."""
    target = decision.model
    if target is None:
        return path, False
    if route.family is Family.gemini:
        head, _, tail = path.rpartition("/")
        _, sep, action = tail.partition(":")
        return f"{head}/{target}{sep}{action}", False
    if isinstance(parsed.get("model"), str):
        parsed["model"] = target
        return path, True
    parts = path.split("/")  # Azure: the deployment in the path is the model
    if "deployments" in parts:
        i = parts.index("deployments")
        if i + 1 < len(parts):
            parts[i + 1] = target
            return "/".join(parts), False
    parsed["model"] = target
    return path, True

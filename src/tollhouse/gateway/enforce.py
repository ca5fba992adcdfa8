"""Applying a policy decision to a request: block errors, redirects, warning headers, observe mode."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from tollhouse.config import Enforcement
from tollhouse.directory import Subject
from tollhouse.gateway.errors import error_response
from tollhouse.gateway.http import Response
from tollhouse.gateway.state import GatewayState, ProviderRoute
from tollhouse.policy.decide import Verdict
from tollhouse.policy.engine import Decision
from tollhouse.policy.rules import Severity
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


def render_block(state: GatewayState, route: ProviderRoute, verdict: Verdict, subject: Subject, model: str | None,
                 ts: datetime) -> Response:
    """The answer to a blocked call, in the caller's provider shape: a rule's block, or the gateway's own
    refusal (what was wrong and what to do)."""
    refusal = verdict.refusal
    if refusal is None:
        return block_response(state, route, verdict, subject, model, ts)
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


def block_response(state: GatewayState, route: ProviderRoute, verdict: Verdict, subject: Subject,
                   model: str | None, ts: datetime) -> Response:
    top = verdict.decision.top if verdict.decision is not None else None
    assert top is not None  # a rule's block always has its rule
    rule = top.rule
    status = verdict.status  # 429 for a rolling window, else 403
    policy_url = state.settings.policy_url or state.console_url + "policy"
    exemption_url = exemption_console(state) + "exemptions/new?" + urlencode({
        "rule": rule.id, "provider": route.id, "model": model or "", "subject": subject.id,
        "team": subject.team or "", "project": subject.project or "", "ts": ts.isoformat(timespec="seconds"),
    }, quote_via=quote)
    own = f" {rule.message.rstrip('.')}." if rule.message else ""
    message = (f"Blocked by Tollhouse policy rule {rule.id} ({rule.type_name}) for model {model or 'unknown'}: "
               f"{top.reason}.{own} Policy: {policy_url} . {state.settings.exemption_instructions} "
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

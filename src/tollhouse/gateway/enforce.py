"""Applying a policy decision to a request: block errors, redirects, warning headers, observe mode."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any, NamedTuple
from urllib.parse import quote, urlencode

from tollhouse.config import Enforcement
from tollhouse.directory import Subject
from tollhouse.gateway.errors import error_response
from tollhouse.gateway.http import Response
from tollhouse.gateway.state import GatewayState, ProviderRoute
from tollhouse.policy.dlp import Inspection
from tollhouse.policy.engine import CallFacts, Decision
from tollhouse.policy.rules import Severity
from tollhouse.providers.base import Endpoint, RequestFacts
from tollhouse.providers.family import Family

log = logging.getLogger("tollhouse.policy")

RULE_HEADER = "x-tollhouse-rule"
WARNING_HEADER = "x-tollhouse-warning"
REDIRECTED_HEADER = "x-tollhouse-redirected-from"
EXEMPTION_HEADER = "x-tollhouse-exemption"


_NO_EXEMPTIONS: Mapping[str, str] = MappingProxyType({})


class Verdict(NamedTuple):
    """A decision as applied to this call: `enforced` False means observe (record what would happen).
    (A tuple: one is built per call.)"""

    decision: Decision
    enforced: bool
    exemptions: Mapping[str, str] = _NO_EXEMPTIONS  # rule id → exemption

    @property
    def exemption_ids(self) -> list[str]:
        """The exemptions that let this call past a rule it violated."""
        return sorted({self.exemptions[v.rule.id] for v in self.decision.waived if v.rule.id in self.exemptions})

    @property
    def applied(self) -> str:
        return self.decision.action if self.enforced else "allow"

    @property
    def would(self) -> str | None:
        return None if self.enforced or self.decision.action == "allow" else self.decision.action

    @property
    def rule_id(self) -> str | None:
        return self.decision.rule_id


def enforced_for(enforcement: Enforcement, enforce_teams: tuple[str, ...], subject: Subject) -> bool:
    """Enforcement on, or on for one of the subject's teams (phased rollout)."""
    if enforcement is Enforcement.on:
        return True
    return bool(enforce_teams) and any(t in enforce_teams for t in subject.teams)


def enforced(state: GatewayState, subject: Subject) -> bool:
    """Whether the policy is applied to this subject's calls now (live: the agent switches it)."""
    return enforced_for(state.live.enforcement, state.settings.policy.enforce_teams, subject)


def judge(state: GatewayState, route: ProviderRoute, facts: RequestFacts, inspection: Inspection | None,
          subject: Subject, now: datetime) -> Verdict | None:
    """`inspection`: what inspecting the prompt found for the content rules (gateway/content.py); None: not
    inspected."""
    policy = state.policy.current
    if policy.empty:
        return None
    call = CallFacts(provider=route.id, provider_host=route.host, model=facts.model,
                     content_hits=None if inspection is None else inspection.rule_ids,
                     content_unchecked=frozenset() if inspection is None else inspection.unchecked)
    exemptions = state.overrides.for_subject(subject.id, int(now.timestamp() * 1000))
    decision = policy.evaluate(call, subject, now, waived=exemptions.keys())
    verdict = Verdict(decision, enforced(state, subject), exemptions)
    for v in decision.violations:
        state.metrics.violations.labels(v.rule.id, v.rule.severity.name, str(verdict.enforced).lower()).inc()
        if v.rule.severity >= Severity.warn:
            log.warning("policy %s: rule %s (%s) subject=%s model=%s: %s", verdict.applied, v.rule.id,
                        v.rule.type_name, subject.id, facts.model, v.reason)
    return verdict


def block_response(state: GatewayState, route: ProviderRoute, verdict: Verdict, subject: Subject,
                   model: str | None, ts: datetime, retry_after_s: int | None = None) -> Response:
    top = verdict.decision.top
    assert top is not None  # a block always has its rule
    rule = top.rule
    status = 429 if rule.rate_limited else 403
    policy_url = state.settings.policy_url or state.console_url + "policy"
    exemption_url = state.console_url + "exemptions/new?" + urlencode({
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
    if status == 429 and retry_after_s is not None:
        headers["Retry-After"] = str(max(retry_after_s, 1))
    return error_response(route.family, status, message, rule.type_name, extra, headers, decision="block")


def client_headers(verdict: Verdict | None) -> dict[str, str]:
    """Headers that tell the caller what the policy did (nothing is said in observe mode). A call let through
    by an approved exemption is an `allow` (or whatever the other rules make it) and names the exemption."""
    if verdict is None or not verdict.enforced:
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

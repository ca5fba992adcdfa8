"""A call an approved exemption let through: the exemption named on its event (and, by enforce.client_headers,
in X-Tollhouse-Exemption), and the use audited, one entry per call."""

from __future__ import annotations

from tollhouse.events.model import CallEvent
from tollhouse.gateway.state import GatewayState
from tollhouse.policy.decide import Verdict


def exemption_ids(verdict: Verdict | None) -> str | None:
    """The exemptions (comma-separated) that let a call that goes past the rules it violated; None when none
    did, or the call was refused."""
    if verdict is None or verdict.blocked or not verdict.exemptions:
        return None
    ids = verdict.exemption_ids
    return ",".join(ids) if ids else None


def audit_use(state: GatewayState, event: CallEvent, verdict: Verdict) -> None:
    decision = verdict.decision
    waived = sorted({v.rule.id for v in decision.waived}) if decision is not None else []
    state.audit.record("exemption.used", event.subject, {
        "id": event.exemption_id, "event_id": event.id, "subject": event.subject, "rules": waived,
        "provider": event.provider, "model": event.requested_model, "decision": event.decision,
        "status": event.status})

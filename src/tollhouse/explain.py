"""`tollhouse policy explain` (pure): which rules apply to a call, why, which exemptions cover it, and the
decision, reached by the same `decide()` the gateway runs.

Live state comes in as data: the exemption overrides in force (an OverrideSet, read from the store by the
command) and, through `usage`, the ledger's numbers for the caps that count the call. `usage` is the hook for
live spend and leases: given the caps, it returns their CapUsage (used, this call's need, limit) or
CountersDown; None means the caps are listed but not judged against spend (said in the output).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import NamedTuple

from tollhouse.control.overrides import ANY, Grant, OverrideSet
from tollhouse.directory import Subject
from tollhouse.events.model import iso_ts
from tollhouse.policy.decide import Gate, Outcome, Usage, Verdict, decide
from tollhouse.policy.engine import CallFacts, Cap, CompiledPolicy

UsageSource = Callable[[Sequence[Cap]], Usage]  # the caps that count the call -> the ledger's numbers


class Explanation(NamedTuple):
    lines: tuple[str, ...]
    verdict: Verdict


def _covers(g: Grant) -> str:
    models = "any model" if ANY in g.models else ", ".join(g.models)
    providers = "any provider" if ANY in g.providers else ", ".join(g.providers)
    return f"{models} on {providers}"


def explain_call(policy: CompiledPolicy, call: CallFacts, subject: Subject, now: datetime, enforced: bool,
                 overrides: OverrideSet, usage: UsageSource | None = None) -> Explanation:
    now_ms = int(now.timestamp() * 1000)
    exemptions = overrides.for_call(subject.id, call.provider, call.model, now_ms)
    decision = policy.evaluate(call, subject, now, explain=True, waived=exemptions.keys())
    lines = [f"scopes, most specific first: {', '.join(lv.label for lv in policy.levels(subject))}"]
    lines += ["  " + line for line in decision.trace or ("(no rule applies)",)]
    for g in overrides.held_by(subject.id, now_ms):
        covering = exemptions.get(g.rule_id) == g.exemption_id
        lines.append(f"exemption {g.exemption_id}: rule {g.rule_id}, {_covers(g)}, until {iso_ts(g.expires_ms)}"
                     + (" (covers this call)" if covering else " (does not cover this call)"))
    numbers: Usage = None
    if decision.caps:
        if usage is None:
            lines.append("caps: listed above, not judged against live spend here (the gateway judges them on "
                         "its counters: GET /api/v1/spend)")
        else:
            numbers = usage(decision.caps)
    verdict = decide(Gate(enforced), policy, call, subject, now, exemptions, numbers,
                     judged=Verdict(Outcome.allow, enforced, decision))
    final = verdict.decision or decision
    if final.redirect is not None:
        lines.append(f"model after redirect: {final.model}")
    top = final.top
    action = final.action
    text = f"decision: {action.upper()}" + (f" by rule {top.rule.id}: {top.reason}" if top else "")
    if verdict.refusal is not None:
        text = f"decision: BLOCK ({verdict.refusal.code}): {verdict.refusal.message}"
    ids = verdict.exemption_ids
    if ids and action != "block":
        text += f" (let through by exemption {', '.join(ids)})"
    if not enforced:
        text += f"  (observe mode: recorded as would-{action}, not applied)"
    lines.append(text)
    return Explanation(tuple(lines), verdict)

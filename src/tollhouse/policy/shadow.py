"""Shadow caps: the spend and token caps of `mode: shadow` rules are counted like any cap (so that what they
would do is known) but never refuse a call. decide() judges the caps of the rules in force; these helpers give
the ledger the shadow rules' caps to count beside them (no ceiling: `reserve_caps`, which the gateway and the
backtest both use) and add their overruns to the verdict's `shadowed` judgement (`with_shadow_usage`), which
`Verdict.would` and `rule_id` report."""

from __future__ import annotations

from collections.abc import Sequence

from tollhouse.ledger.types import CapUsage
from tollhouse.money import cap_reason
from tollhouse.policy.decide import Verdict
from tollhouse.policy.engine import Cap, CompiledPolicy, Violation, with_violations
from tollhouse.policy.rules import Mode


def shadow_ids(policy: CompiledPolicy) -> frozenset[str]:
    """The ids of the policy's enabled shadow rules."""
    return frozenset(r.id for r in policy.rules if r.enabled and r.mode is Mode.shadow)


def shadow_caps(verdict: Verdict, shadow: frozenset[str]) -> tuple[Cap, ...]:
    """The caps of shadow rules that count this call (`shadow`: the policy's shadow rule ids)."""
    shadowed = verdict.shadowed
    if shadowed is None or not shadow:
        return ()
    return tuple(c for c in shadowed.caps if c.rule.id in shadow)


def reserve_caps(verdict: Verdict, policy: CompiledPolicy) -> tuple[tuple[Cap, ...], tuple[int | None, ...]]:
    """What the ledger reserves a call on, and under which ceilings: the verdict's caps under its ceilings, then the
    caps of shadow rules that count the call with no ceiling (counted exactly as if they were enforced, never
    refusing). `shadow_usage_of` splits the ledger's usage for them back in two."""
    extra = shadow_caps(verdict, shadow_ids(policy)) if policy.shadow is not None else ()
    if not extra:
        return verdict.caps, verdict.ceilings
    return (*verdict.caps, *extra), (*verdict.ceilings, *(None,) * len(extra))


def shadow_usage_of(verdict: Verdict, usage: Sequence[CapUsage]) -> tuple[Sequence[CapUsage], Sequence[CapUsage]]:
    """The ledger's usage for `reserve_caps(verdict, ...)` split: the verdict's caps', the shadow caps'."""
    n = len(verdict.caps)
    return (usage, ()) if len(usage) == n else (usage[:n], usage[n:])


def with_shadow_usage(verdict: Verdict, usage: Sequence[CapUsage]) -> Verdict:
    """The verdict with the shadow caps this call goes over added to its shadowed judgement (never applied)."""
    over = [Violation(u.cap.rule, u.cap.level, cap_reason(u)) for u in usage if u.used + u.need > u.limit]
    if not over or verdict.shadowed is None:
        return verdict
    return verdict._replace(shadowed=with_violations(verdict.shadowed, over))

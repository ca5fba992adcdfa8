"""The one decision: may this call go, and how. A pure function (no I/O, no clock: time is passed in).

`decide()` takes everything the request path has established about a call, as plain data:
- `Gate`: what the gateway found before judging the rules: problems with the request itself (a body too
  large, an unknown gateway key, a made-up project, an endpoint nobody knows, a body that is not JSON,
  events that cannot be recorded, ...), whether enforcement applies to this subject, whether the model
  has a price;
- the compiled policy, the subject, the call's facts, the subject's exemptions and the time;
- the ledger's plain numbers for every cap that counts the call (`CapUsage`: used, this call's need,
  limit), or the fact that the counters could not be read.

It returns a `Verdict` for every outcome: allow, warn, redirect, a block by a rule, or the gateway's own
refusal (with its status, code and message). The request path never decides anything itself; it carries
out verdicts. The ledgers only count and reserve atomically, under the ceilings `Verdict.ceilings` gives.

Precedence (first match wins):
1. problems that make the call impossible to forward in any mode (`Problem.always`): 413, 401, 400, 502;
2. while enforcing, the gateway's own refusals (`Problem.always` False): unknown caller, unknown project,
   unknown endpoint, unreadable body, events cannot be recorded, content inspection over its time;
3. while enforcing, a spend cap on a model with no price (`pricing.unpriced: block`);
4. while enforcing, counters unavailable (unless every cap that applies, or the config, fails open);
5. the rules, with the caps judged on the ledger's numbers (most severe violation wins); a call with no
   price (let through by `pricing.unpriced: allow`) goes over a spend cap that is already spent.
In observe mode, 2-5 are recorded as what would have happened (`would`), and the call goes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from types import MappingProxyType
from typing import NamedTuple

from tollhouse.config import Unpriced
from tollhouse.ledger.types import CapUsage
from tollhouse.money import cap_reason
from tollhouse.policy.engine import CallFacts, Cap, CompiledPolicy, Decision, Violation, with_violations


class Problem(NamedTuple):
    """Something the gateway found wrong with a call before judging the rules. `always`: the call cannot
    be forwarded whatever the mode (no body, no key to forward with); else only enforcing refuses it."""

    code: str  # the error code the caller sees (`invalid_gateway_key`, `unknown_project`, ...)
    status: int
    message: str  # says what was wrong and what to do
    always: bool = False
    retry_after_s: int | None = None


class Gate(NamedTuple):
    """What the request path established about a call, for `decide`."""

    enforced: bool  # the policy applies to this subject now (enforcement on, or a phased-in team)
    problems: tuple[Problem, ...] = ()  # in the order found
    priced: bool = True  # the model has a price (or an override); False also when the model is unknown
    unpriced: Unpriced = Unpriced.block  # pricing.unpriced
    counters_fail_open: bool = False  # counters.fail_open


class CountersDown(NamedTuple):
    """The counter store could not be read."""

    error: str
    because: str = "the counter store is unavailable"  # the cause, as the block message words it


Usage = Sequence[CapUsage] | CountersDown | None  # None: not counted yet (or no cap applies)


class Outcome(StrEnum):
    allow = "allow"
    warn = "warn"
    redirect = "redirect"
    block = "block"


_NO_EXEMPTIONS: Mapping[str, str] = MappingProxyType({})
_APPLIED = {o: o.value for o in Outcome}
_OUTCOME = {o.value: o for o in Outcome}  # a dict read: an enum's .value is a descriptor call (hot path)
# An enum member read from a module global: `Enum.member` is a class attribute lookup, not specialised in
# Python 3.11 (~5x a global's cost; these run for every call).
_BLOCK, _ALLOW = Outcome.block, Outcome.allow


class Verdict(NamedTuple):
    """The decision on one call, as applied (`outcome`) or, in observe mode, as it would have been (`would`).
    (A tuple: one or two are built per call.)"""

    outcome: Outcome  # what the gateway does: the X-Tollhouse-Decision value
    enforced: bool
    decision: Decision | None = None  # the rules' judgement (None: no rule was judged)
    refusal: Problem | None = None  # the gateway's own refusal (outcome block), or what it would refuse
    exemptions: Mapping[str, str] = _NO_EXEMPTIONS  # rule id -> the exemption the subject holds
    usage: tuple[CapUsage, ...] = ()
    counters_down: str | None = None  # the counter store's error (forwarded uncounted unless blocked: failed open)
    # The judgement with the policy's shadow rules applied too (None: the policy has none): what they would do.
    shadowed: Decision | None = None

    @property
    def blocked(self) -> bool:
        return self.outcome is _BLOCK

    @property
    def applied(self) -> str:
        return _APPLIED[self.outcome]

    @property
    def would(self) -> str | None:
        """What enforcing every rule, shadow rules included, would have done, when it differs from what was
        done: in observe mode whatever enforcing would do; while enforcing, what shadow rules would change."""
        if self.refusal is not None:
            return None if self.enforced else "block"
        full = self.shadowed if self.shadowed is not None else self.decision
        action = full.action if full is not None else "allow"
        return None if action == _APPLIED[self.outcome] else action

    @property
    def rule_id(self) -> str | None:
        """The rule that decided the outcome; else (observe mode, shadow rules) the one that would have."""
        if self.refusal is not None and self.enforced:
            return None
        d = self.decision
        if self.shadowed is None:  # the usual case: no shadow rules
            return d.rule_id if d is not None else None
        found = d.rule_id if d is not None and self.enforced else None
        if found is None and self.would is not None:
            found = self.shadowed.rule_id
        return found

    @property
    def status(self) -> int:
        """The status a blocked call gets (0 when the call goes)."""
        if self.outcome is not Outcome.block:
            return 0
        if self.refusal is not None:
            return self.refusal.status
        top = self.decision.top if self.decision is not None else None
        return 429 if top is not None and top.rule.rate_limited else 403

    @property
    def reason(self) -> str | None:
        if self.refusal is not None:
            return self.refusal.message
        top = self.decision.top if self.decision is not None else None
        return top.reason if top is not None else None

    @property
    def retry_after_s(self) -> int | None:
        if self.refusal is not None:
            return self.refusal.retry_after_s
        top = self.decision.top if self.decision is not None else None
        if top is None:
            return None
        waits = [u.retry_after_s for u in self.usage if u.cap.rule is top.rule and u.used + u.need > u.limit]
        return max(waits) if waits else None

    @property
    def caps(self) -> tuple[Cap, ...]:
        return self.decision.caps if self.decision is not None else ()

    @property
    def ceilings(self) -> tuple[int | None, ...]:
        """What the ledger may let each cap's counter reach with this call: a hard cap's limit while
        enforcing, else no ceiling (the call is counted, never refused by the ledger)."""
        d = self.decision
        if d is None:
            return ()
        return d.hard_limits if self.enforced else (None,) * len(d.caps)

    @property
    def budget_remaining_nusd(self) -> int | None:
        """The tightest spend cap's room after this call's worst case (None: no spend cap)."""
        left: int | None = None
        for cap, used, need, limit, _ in self.usage:  # (unpacked: a field read each is a descriptor call)
            if cap.metric == "spend":
                room = limit - used - need
                left = room if left is None else min(left, room)
        return None if left is None else max(left, 0)

    @property
    def exemption_ids(self) -> list[str]:
        """The exemptions that let this call past a rule it violated."""
        d = self.decision
        if d is None:
            return []
        return sorted({self.exemptions[v.rule.id] for v in d.waived if v.rule.id in self.exemptions})


def decide(gate: Gate, policy: CompiledPolicy | None, call: CallFacts, subject: object, now: object,
           exemptions: Mapping[str, str] = _NO_EXEMPTIONS, usage: Usage = None, judged: Verdict | None = None
           ) -> Verdict:
    """The verdict on one call. `policy` None (or empty): no rules. `subject` is a directory Subject and
    `now` an aware datetime (typed loosely to keep this module free of their imports' weight). `judged`: this
    function's verdict on the same call before the ledger's numbers were known; its rules' judgement is reused
    (the rules' part depends on nothing the numbers change)."""
    enforced = gate.enforced
    problems = gate.problems
    for problem in problems:
        if problem.always:
            return Verdict(Outcome.block, enforced, refusal=problem)
    decision: Decision | None = None
    shadowed: Decision | None = None
    if judged is not None and judged.decision is not None:
        decision, shadowed = judged.decision, judged.shadowed
    elif policy is not None and not policy.empty:
        decision = policy.evaluate(call, subject, now, waived=exemptions.keys())  # type: ignore[arg-type]
        if policy.shadow is not None:
            shadowed = policy.shadow.evaluate(call, subject, now, waived=exemptions.keys())  # type: ignore[arg-type]
    observed = problems[0] if problems else None
    if observed is not None and enforced:
        return Verdict(Outcome.block, True, decision, observed, exemptions)
    caps = decision.caps if decision is not None else ()
    if caps and not gate.priced and gate.unpriced is Unpriced.block and any(c.metric == "spend" for c in caps):
        problem = unpriced_problem(call.model, [c for c in caps if c.metric == "spend"])
        if enforced:
            return Verdict(Outcome.block, True, decision, problem, exemptions)
        observed = observed or problem
    if isinstance(usage, CountersDown):
        fail_open = gate.counters_fail_open or all(cap.rule.fail_open for cap in caps)
        if enforced and not fail_open:
            return Verdict(Outcome.block, True, decision, counters_problem(caps, usage.because), exemptions,
                           counters_down=usage.error)
        return _rules(decision, enforced, exemptions, (), observed, usage.error, shadowed=shadowed)
    return _rules(decision, enforced, exemptions, tuple(usage or ()), observed, None, gate.priced, shadowed)


def _rules(decision: Decision | None, enforced: bool, exemptions: Mapping[str, str], usage: tuple[CapUsage, ...],
           observed: Problem | None, counters_down: str | None, priced: bool = True,
           shadowed: Decision | None = None) -> Verdict:
    if decision is None:
        return Verdict(_ALLOW, enforced, None, observed, exemptions, usage, counters_down)
    if usage:
        over: list[Violation] | None = None
        for u in usage:
            cap, used, need, limit, _ = u  # one unpacking, not a descriptor call per field read (hot path)
            # The call goes over the cap. A call with no price (let through by `pricing.unpriced: allow`) counts
            # as nothing, so it also goes over a spend cap that is already spent: its real cost is unknown, not 0.
            if used + need > limit or (not priced and cap.metric == "spend" and used >= limit):
                if over is None:
                    over = []
                over.append(Violation(cap.rule, cap.level, cap_reason(u)))
        if over is not None:
            decision = with_violations(decision, over)
            if shadowed is not None:
                shadowed = with_violations(shadowed, over)
    action = _OUTCOME[decision.action] if enforced else _ALLOW
    return Verdict(action, enforced, decision, observed, exemptions, usage, counters_down, shadowed)


def unpriced_problem(model: str | None, caps: Sequence[Cap]) -> Problem:
    rules = ", ".join(sorted({c.rule.id for c in caps}))
    name = model or "(no model named)"
    return Problem("unpriced_model", 403,
                   f"Tollhouse has no price for model {name}, and spend cap(s) {rules} apply to this call, so it "
                   "cannot be counted against them and was not forwarded. Ask your Tollhouse administrator to add "
                   f"a price under pricing.overrides (provider, model {name}, input_mtok, output_mtok), or to "
                   "set pricing.unpriced: allow.")


def counters_problem(caps: Sequence[Cap], because: str = CountersDown._field_defaults["because"]) -> Problem:
    rule_ids = ", ".join(sorted({cap.rule.id for cap in caps}))
    return Problem("budget_store_unavailable", 503,
                   f"Tollhouse cannot check this call against its budgets (rules {rule_ids}) because {because}, "
                   "so it was not forwarded. Retry shortly; if it persists, tell your Tollhouse administrator.",
                   retry_after_s=5)

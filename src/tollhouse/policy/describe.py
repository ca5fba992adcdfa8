"""A compiled rule in plain words, one sentence: who it applies to, what it looks at, what it does, and whether
it is applied (enforce) or only judged and recorded (shadow). For the console's policy page and anyone reading a
policy who does not read YAML."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from tollhouse.money import fmt_usd
from tollhouse.policy.compiled import Kind, Mode, Rule, ScopeKind, Severity, Window
from tollhouse.policy.timewindow import TimeWindow

_WHO = {ScopeKind.team: "Team {} (and its sub-teams)", ScopeKind.project: "Project {}",
        ScopeKind.individual: "{}", ScopeKind.service: "Service {}"}
_EVERY = {ScopeKind.org: "Everyone", ScopeKind.team: "Every team", ScopeKind.project: "Every project",
          ScopeKind.individual: "Every person", ScopeKind.service: "Every service"}
_DONE = {Severity.log: "is only logged", Severity.warn: "raises an alert and goes through",
         Severity.soft_cap: "goes through with a warning", Severity.block: "is blocked"}
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_NANO_PER_USD = 1_000_000_000


def _listed(values: Iterable[str]) -> str:
    return ", ".join(sorted(values)) or "(none)"


def _window(w: Window) -> str:
    return "a calendar month" if w.monthly else f"any {w.label}"


def _clock(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _days(days: frozenset[int]) -> str:
    if days == frozenset(range(1, 8)):
        return "every day"
    ordered = sorted(days)
    if ordered == list(range(ordered[0], ordered[-1] + 1)) and len(ordered) > 2:
        return f"{_DAYS[ordered[0] - 1]}-{_DAYS[ordered[-1] - 1]}"
    return ", ".join(_DAYS[d - 1] for d in ordered)


def time_window(w: TimeWindow) -> str:
    spans = ", ".join(f"{_clock(a)}-{_clock(b)}" for a, b in w.minutes) or "all day"
    return f"{_days(w.days)} {spans} ({w.tz.key})"


def _usd(amount: object) -> str:
    return fmt_usd(int(Decimal(str(amount)) * _NANO_PER_USD))


def _what(rule: Rule) -> str:
    """The calls the rule catches, as a clause completing "a call ..."."""
    kind = rule.kind
    if kind in (Kind.model_allow, Kind.model_deny, Kind.provider_allow, Kind.provider_deny):
        noun = "model" if kind in (Kind.model_allow, Kind.model_deny) else "provider"
        if rule.allow:
            return f"to a {noun} other than {_listed(rule.values)}"
        return f"to the {noun}{'s' if len(rule.values) > 1 else ''} {_listed(rule.values)}"
    if kind is Kind.redirect:
        return (f"to a model other than {_listed(rule.values)}" if rule.allow
                else f"to the models {_listed(rule.values)}")
    if kind is Kind.time and rule.window is not None:
        return f"{'inside' if rule.inside else 'outside'} {time_window(rule.window)}"
    if kind is Kind.spend:
        providers = f" on {_listed(rule.providers)}" if rule.providers else ""
        return f"once spending{providers} passes {_usd(rule.threshold)} in {_window(rule.count_window)}, a further call"
    if kind is Kind.tokens:
        metric = rule.metric.replace("_", " ")
        return f"once {metric} pass {int(rule.threshold):,} in {_window(rule.count_window)}, a further call"
    if kind is Kind.cost_centre:
        return "without a cost centre"
    if kind is Kind.content:
        return f"whose prompt matches {_listed(set(rule.pattern_names))}"
    return f"of type {rule.type_name}"


def _who(rule: Rule) -> str:
    if rule.target is None or rule.scope is ScopeKind.org:
        return _EVERY[rule.scope]
    return _WHO[rule.scope].format(rule.target)


def describe_rule(rule: Rule) -> str:
    """"Rule no-o1: Everyone: a call to the models o1 is blocked. Shadow: judged and recorded, never applied." """
    done = f"is redirected to {rule.redirect_to}" if rule.redirect_to else _DONE[rule.severity]
    what = _what(rule)
    caught = what if what.startswith("once ") else f"a call {what}"
    sentence = f"Rule {rule.id}: {_who(rule)}: {caught} {done}."
    if rule.fail_open:
        sentence += " If it cannot be judged, the call goes through."
    if rule.mode is Mode.shadow:
        sentence += " Shadow mode: judged and recorded as 'would', never applied."
    if not rule.enabled:
        sentence += " Disabled: not evaluated."
    return sentence

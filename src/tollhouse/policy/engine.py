"""Compile rules into indexes by scope and kind; evaluate a call against them.

Precedence (see README "Policy precedence"):
- Scope levels for a subject, most specific first: the subject itself (an individual or service rule
  naming them), every individual / every service (untargeted), the call's project, the subject's team,
  then each ancestor team, nearest first, then the org.
- Override kinds (model lists, provider lists, time windows, redirects): only the most specific level
  that has rules of that kind applies; broader levels' rules of that kind are superseded.
- Cumulative kinds (spend caps, token rates, cost-centre attribution, content DLP): every level applies.
- A redirect is applied first; the rest of the policy is judged on the substitute model.
- The decision is the most severe violation: block > soft_cap > warn > log (INFO).
- Waived rules (a subject's approved exemptions, passed in as data): their violations are kept apart in
  `Decision.waived` and do not decide the outcome; a waived redirect is not applied; a waived cap is still
  counted but never refuses the call.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

from tollhouse.directory import Subject
from tollhouse.policy.rules import OVERRIDE_KINDS, Kind, Mode, Rule, ScopeKind, Severity, Window

_SCOPE_ORDER = {ScopeKind.individual: 0, ScopeKind.service: 0}


class CallFacts(NamedTuple):
    """What the policy looks at. Content rules read what inspecting the prompt found (policy/dlp.py, done before
    evaluate, off the event loop): `content_hits` the ids of the content rules that matched (None: the prompt was
    not inspected), `content_unchecked` those whose inspection ran out of time. (A tuple: one is built per call.)"""

    provider: str
    provider_host: str
    model: str | None
    content_hits: frozenset[str] | None = None
    content_unchecked: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Level:
    rank: int
    scope: ScopeKind
    target: str | None

    @property
    def label(self) -> str:
        if self.scope is ScopeKind.org:
            return "org"
        if self.target is None:
            return f"every {self.scope.value}"
        return f"{self.scope.value} {self.target}"


@dataclass(frozen=True, slots=True)
class Cap:
    """A spend or token cap that applies to the call; the ledger counts and enforces it."""

    rule: Rule
    level: Level
    counter: tuple[str, str]  # (scope kind, id) whose usage is counted
    window: Window
    providers: frozenset[str] | None
    metric: str  # spend | tokens | input_tokens | output_tokens | requests
    limit: Decimal
    units: int = 0  # the limit in counter units (nano-dollars for spend), computed once
    key: tuple[str, str, str] = ("", "", "")  # (scope, id, window): the counter this cap counts
    waived: bool = False  # an exemption lets this subject past the cap (it is still counted)

    def __post_init__(self) -> None:
        units = int(self.limit * 1_000_000_000) if self.metric == "spend" else int(self.limit)
        object.__setattr__(self, "units", units)
        object.__setattr__(self, "key", (self.counter[0], self.counter[1], self.window.label))

    @property
    def hard(self) -> bool:
        """Going over refuses the call (when enforcing)."""
        return self.rule.severity is Severity.block and not self.waived


@dataclass(frozen=True, slots=True)
class Violation:
    rule: Rule
    level: Level
    reason: str


@dataclass(frozen=True, slots=True)
class Decision:
    action: str  # allow | warn | redirect | block  (the X-Tollhouse-Decision value)
    model: str | None  # the model the upstream gets
    requested_model: str | None
    redirect: Violation | None = None
    violations: tuple[Violation, ...] = ()
    caps: tuple[Cap, ...] = ()
    trace: tuple[str, ...] = ()
    waived: tuple[Violation, ...] = ()  # violations of waived rules: they did not count
    waived_rules: frozenset[str] = frozenset()  # the rule ids waived for this call
    # Computed once with the (memoised) decision, read on every call: per cap, its limit when going over it
    # refuses the call (a hard cap, not waived), else None; the violation that decided the outcome (most
    # severe, first of equals); the rule that decided it (that violation's, else the redirect's).
    hard_limits: tuple[int | None, ...] = field(init=False, default=())
    top: Violation | None = field(init=False, default=None)
    rule_id: str | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hard_limits", tuple(cap.units if cap.hard else None for cap in self.caps))
        best: Violation | None = None
        for v in self.violations:
            if best is None or v.rule.severity > best.rule.severity:
                best = v
        object.__setattr__(self, "top", best)
        rule = best.rule if best is not None else self.redirect.rule if self.redirect is not None else None
        object.__setattr__(self, "rule_id", rule.id if rule is not None else None)

    @property
    def severity(self) -> Severity | None:
        top = self.top
        return top.rule.severity if top else None


@dataclass(frozen=True, slots=True)
class _Applicable:
    """Rules that apply to one (subject, project), precedence already resolved."""

    redirects: tuple[tuple[Rule, Level], ...]
    checks: tuple[tuple[Rule, Level], ...]  # model / provider / time / cost centre / content
    caps: tuple[Cap, ...]  # built once per subject; filtered by provider per call
    superseded: tuple[tuple[Rule, Level, Level], ...]  # (rule, its level, the level that overrode it)
    provider_caps: bool = False  # some cap counts only certain providers
    timed: bool = False  # a time-window rule applies: the outcome depends on the minute
    content: bool = False  # a content rule applies: the outcome depends on the prompt


@dataclass(frozen=True, eq=False)
class CompiledPolicy:
    rules: tuple[Rule, ...]
    version: int = 0
    _index: dict[tuple[ScopeKind, str | None], dict[Kind, list[Rule]]] = field(default_factory=dict)
    _cache: dict[tuple[str, str | None, str, tuple[str, ...]], _Applicable] = field(default_factory=dict)
    # Decisions already reached, for calls that no time, prompt or exemption makes different (see evaluate).
    _decisions: dict[tuple[object, ...], Decision] = field(default_factory=dict)
    empty: bool = field(default=True, init=False)  # no enabled rule (set once, below)
    has_content: bool = field(default=False, init=False)  # some enabled rule inspects prompts (CONTENT_DLP)
    # Rules with `mode: shadow` are judged but never applied: this policy leaves them out (they take no part
    # in precedence either), and `shadow` is the same policy with them applied, to say what they would do.
    shadow: CompiledPolicy | None = field(default=None, init=False)
    # Every window a cap counts over (the month first): the counters an agent's shipped call counts toward.
    count_windows: tuple[Window, ...] = field(default=(), init=False)

    def __post_init__(self) -> None:
        shadows = False
        for rule in self.rules:
            if not rule.enabled:
                continue
            if rule.mode is Mode.shadow:
                shadows = True
                continue
            self._index.setdefault((rule.scope, rule.target), {}).setdefault(rule.kind, []).append(rule)
        if shadows:
            applied = tuple(replace(r, mode=Mode.enforce) if r.mode is Mode.shadow else r for r in self.rules)
            object.__setattr__(self, "shadow", CompiledPolicy(applied, self.version))
        object.__setattr__(self, "empty", not self._index and not shadows)
        object.__setattr__(self, "has_content", any(r.enabled and r.kind is Kind.content for r in self.rules))
        windows = {r.count_window for r in self.rules if r.enabled and r.kind in (Kind.spend, Kind.tokens)}
        object.__setattr__(self, "count_windows", tuple(sorted(windows, key=lambda w: (not w.monthly, w.seconds))))

    def levels(self, subject: Subject) -> list[Level]:
        out: list[Level] = []
        if subject.kind == "service":
            out += [Level(0, ScopeKind.service, subject.id), Level(1, ScopeKind.service, None)]
        else:
            out += [Level(0, ScopeKind.individual, subject.id), Level(1, ScopeKind.individual, None)]
        if subject.project:
            out += [Level(2, ScopeKind.project, subject.project), Level(3, ScopeKind.project, None)]
        out += [Level(4 + depth, ScopeKind.team, team) for depth, team in enumerate(subject.teams)]
        if subject.teams:
            out.append(Level(900, ScopeKind.team, None))
        out.append(Level(1000, ScopeKind.org, None))
        return out

    def _applicable(self, subject: Subject) -> _Applicable:
        key = (subject.id, subject.project, subject.kind, subject.teams)
        found = self._cache.get(key)
        if found is not None:
            return found
        redirects: list[tuple[Rule, Level]] = []
        checks: list[tuple[Rule, Level]] = []
        caps: list[tuple[Rule, Level]] = []
        superseded: list[tuple[Rule, Level, Level]] = []
        winner: dict[Kind, Level] = {}
        for level in self.levels(subject):
            by_kind = self._index.get((level.scope, level.target))
            if not by_kind:
                continue
            for kind, rules in by_kind.items():
                if kind in OVERRIDE_KINDS:
                    won = winner.setdefault(kind, level)
                    if won.rank != level.rank:
                        superseded += [(r, level, won) for r in rules]
                        continue
                target = redirects if kind is Kind.redirect else caps if kind in (Kind.spend, Kind.tokens) \
                    else checks
                target += [(r, level) for r in rules]
        built = tuple(_cap(r, lv, subject) for r, lv in caps)
        found = _Applicable(tuple(redirects), tuple(checks), built, tuple(superseded),
                            any(cap.providers is not None for cap in built),
                            any(r.kind is Kind.time for r, _ in checks), any(r.kind is Kind.content for r, _ in checks))
        if len(self._cache) < 200_000:
            self._cache[key] = found
        return found

    def subject_caps(self, subject: Subject) -> tuple[Cap, ...]:
        """Every cap that counts this subject's calls, whatever the provider (to load their counters early)."""
        return self._applicable(subject).caps

    def caps_counting(self, scope: str, ident: str, subject: Subject | None) -> list[Cap]:
        """Every cap whose counter is (scope, ident), whatever the provider (for spend reports).
        `subject` is the resolved subject when scope is "subject"."""
        out: list[Cap] = []
        if scope == "subject" and subject is not None:
            return [cap for cap in self._applicable(subject).caps if cap.counter == ("subject", ident)]
        org = Level(1000, ScopeKind.org, None)
        for rule in self.rules:
            if not rule.enabled or rule.mode is Mode.shadow or rule.kind not in (Kind.spend, Kind.tokens):
                continue
            if rule.type_name == "MONTHLY_SPEND_CAP_PER_SUBJECT" or rule.scope.value != scope:
                continue
            if scope != "org" and rule.target not in (None, ident):
                continue
            level = org if scope == "org" else Level(4, rule.scope, rule.target)
            out.append(Cap(rule, level, (scope, "*" if scope == "org" else ident), rule.count_window,
                           rule.providers, "spend" if rule.kind is Kind.spend else rule.metric, rule.threshold))
        return out

    def content_rules(self, subject: Subject) -> tuple[Rule, ...]:
        """The CONTENT_DLP rules that apply to this subject: its prompts are inspected for them before evaluate
        (shadow ones included: they are judged too)."""
        if self.shadow is not None:
            return self.shadow.content_rules(subject)
        app = self._applicable(subject)
        return tuple(r for r, _ in app.checks if r.kind is Kind.content) if app.content else ()

    def evaluate(self, call: CallFacts, subject: Subject, now: datetime, explain: bool = False,
                 waived: Set[str] = frozenset()) -> Decision:
        """Judge a call. Caps are returned for the ledger to count; they are not judged here.
        `waived`: ids of rules the subject holds an exemption from.

        A decision depends only on the subject, the provider, the model, the minute (time windows are
        minute-precise) and what inspecting the prompt found (content rules); calls that agree on what their rules
        look at get the same (immutable) decision without judging the rules again."""
        if explain or waived:
            return self._evaluate(call, subject, now, explain, waived)
        app = self._applicable(subject)
        key = (subject.id, subject.project, subject.kind, subject.teams, subject.cost_centre, call.provider,
               call.provider_host, call.model, int(now.timestamp()) // 60 if app.timed else 0,
               (call.content_hits, call.content_unchecked) if app.content else None)
        found = self._decisions.get(key)
        if found is None:
            found = self._evaluate(call, subject, now, False, frozenset())
            if len(self._decisions) >= 100_000:
                self._decisions.clear()
            self._decisions[key] = found
        return found

    def _evaluate(self, call: CallFacts, subject: Subject, now: datetime, explain: bool,
                  waived: Set[str]) -> Decision:
        trace: list[str] | None = [] if explain else None
        waived_rules = frozenset(waived) if waived else frozenset()
        app = self._applicable(subject)
        model = call.model
        redirect: Violation | None = None
        waived_redirect: list[Violation] = []
        for rule, level in app.redirects:
            if model is not None and _list_hit(rule, model):
                hit = Violation(rule, level, f"model {model} is redirected to {rule.redirect_to} "
                                             f"by rule {rule.id} ({level.label})")
                if rule.id in waived_rules:
                    waived_redirect.append(hit)
                    if trace is not None:
                        trace.append(f"waived    {rule.id} [{level.label}]: {model} is not redirected")
                    continue
                redirect = hit
                if trace is not None:
                    trace.append(f"redirect  {rule.id} [{level.label}]: {model} -> {rule.redirect_to}")
                model = rule.redirect_to
                break
        violations: list[Violation] = []
        for rule, level in app.checks:
            reason = _check(rule, call, model, subject, now)
            if trace is not None:
                label = "waived" if reason and rule.id in waived_rules else "VIOLATED" if reason else "ok"
                trace.append(f"{label:9} {rule.id} [{level.label}] {rule.type_name}"
                             f"{': ' + reason if reason else ''}")
            if reason:
                violations.append(Violation(rule, level, reason))
        caps = app.caps
        if app.provider_caps:  # only provider-scoped caps need filtering per call
            caps = tuple(cap for cap in caps if cap.providers is None or _provider_hit(cap.providers, call))
        if waived_rules:
            caps = tuple(replace(cap, waived=True) if cap.rule.id in waived_rules else cap for cap in caps)
        if trace is not None:
            for cap in caps:
                trace.append(f"cap       {cap.rule.id} [{cap.level.label}] {cap.rule.type_name}: {cap.metric} "
                             f"of {cap.counter[0]} {cap.counter[1]} per {cap.window.label} <= {cap.limit}")
            for rule, level, won in app.superseded:
                trace.append(f"superseded {rule.id} [{level.label}]: {rule.kind.value} rules at {won.label} "
                             "take precedence")
        return _decide(call.model, model, redirect, violations, caps, tuple(trace or ()), waived_rules,
                       tuple(waived_redirect))


def with_violations(decision: Decision, extra: Sequence[Violation]) -> Decision:
    """The decision once cap violations found by the ledger are added (those of waived rules set apart)."""
    if not extra:
        return decision
    return _decide(decision.requested_model, decision.model, decision.redirect,
                   [*decision.violations, *extra], decision.caps, decision.trace, decision.waived_rules,
                   decision.waived)


def _decide(requested: str | None, model: str | None, redirect: Violation | None,
            violations: Sequence[Violation], caps: tuple[Cap, ...], trace: tuple[str, ...],
            waived_rules: frozenset[str] = frozenset(), waived: tuple[Violation, ...] = ()) -> Decision:
    if waived_rules:
        waived = (*waived, *(v for v in violations if v.rule.id in waived_rules))
        violations = [v for v in violations if v.rule.id not in waived_rules]
    worst = max((v.rule.severity for v in violations), default=None)
    if worst is Severity.block:
        action = "block"
    elif redirect is not None:
        action = "redirect"
    elif worst is not None and worst >= Severity.warn:
        action = "warn"
    else:
        action = "allow"
    return Decision(action=action, model=model, requested_model=requested, redirect=redirect,
                    violations=tuple(violations), caps=caps, trace=trace, waived=waived, waived_rules=waived_rules)


def _list_hit(rule: Rule, model: str) -> bool:
    """For a model-list rule: is this model a violation (or, for redirects, to be replaced)?"""
    listed = model in rule.values
    return not listed if rule.allow else listed


def _provider_hit(values: Iterable[str], call: CallFacts) -> bool:
    vals = values if isinstance(values, frozenset) else frozenset(values)
    return call.provider in vals or call.provider_host in vals


def _check(rule: Rule, call: CallFacts, model: str | None, subject: Subject, now: datetime) -> str:
    """'' when the rule is satisfied, else the human reason it is violated."""
    kind = rule.kind
    if kind is Kind.model_allow or kind is Kind.model_deny:
        if model is None:
            return ""
        if _list_hit(rule, model):
            return (f"model {model} is not on the approved list" if rule.allow
                    else f"model {model} is on the deny list")
        return ""
    if kind is Kind.provider_allow or kind is Kind.provider_deny:
        listed = _provider_hit(rule.values, call)
        if rule.allow and not listed:
            return f"provider {call.provider} ({call.provider_host}) is not on the approved list"
        if not rule.allow and listed:
            return f"provider {call.provider} ({call.provider_host}) is on the deny list"
        return ""
    if kind is Kind.time:
        assert rule.window is not None  # guaranteed by the parser for time rules
        inside = rule.window.contains(now)
        if inside == rule.inside:
            local = now.astimezone(rule.window.tz).strftime("%a %H:%M %Z")
            return f"AI use is not allowed {'inside' if rule.inside else 'outside'} the approved hours ({local})"
        return ""
    if kind is Kind.cost_centre:
        if subject.cost_centre is None:
            return (f"{subject.id} is not allocated to a project or team with a cost centre; name one with "
                    "the X-Tollhouse-Project header")
        return ""
    if kind is Kind.content:
        if call.content_hits is not None and rule.id in call.content_hits:
            return "the prompt matches a data-loss-prevention pattern"
        if rule.id in call.content_unchecked and rule.severity is Severity.block and not rule.fail_open:
            return ("content inspection exceeded limits.dlp_time_ms, so the prompt could not be checked (fail "
                    "closed; a smaller prompt passes, or an administrator can raise limits.dlp_time_ms or mark "
                    "the rule fail_open)")
        return ""
    return ""


def counter_scope(rule: Rule) -> str:
    """The kind of counter a cap rule counts in: subject, org, team or project."""
    if rule.scope in (ScopeKind.individual, ScopeKind.service) or rule.type_name == "MONTHLY_SPEND_CAP_PER_SUBJECT":
        return "subject"  # a MONTHLY_SPEND_CAP_PER_SUBJECT at any scope: each subject their own
    return "org" if rule.scope is ScopeKind.org else "team" if rule.scope is ScopeKind.team else "project"


def _cap(rule: Rule, level: Level, subject: Subject) -> Cap:
    """Whose usage a cap counts: a named target's, or (untargeted) each subject's / team's / project's own."""
    scope = counter_scope(rule)
    if scope == "subject":
        personal = rule.scope in (ScopeKind.individual, ScopeKind.service)  # else each subject's own
        counter = ("subject", (rule.target if personal else None) or subject.id)
    elif scope == "org":
        counter = ("org", "*")
    elif scope == "team":
        counter = ("team", rule.target or subject.team or "")
    else:
        counter = ("project", rule.target or subject.project or "")
    metric = "spend" if rule.kind is Kind.spend else rule.metric
    return Cap(rule=rule, level=level, counter=counter, window=rule.count_window, providers=rule.providers,
               metric=metric, limit=rule.threshold)

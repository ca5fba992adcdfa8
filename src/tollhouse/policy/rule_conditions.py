"""Rule conditions: one pydantic model per `condition.type`, told apart by that type (case-insensitive).

The seed's lower-case types (`model`, `provider`, `time`, `budget`, `usage`) and the enforcement doc's
upper-case ones are all members of one discriminated union. Every model forbids unknown keys, and each
one compiles itself into the engine's `Rule`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, NamedTuple

from pydantic import BaseModel, ConfigDict, Discriminator, PlainValidator, Tag, model_validator

from tollhouse.policy.compiled import MONTHLY, Kind, Rule, Window, parse_count_window
from tollhouse.policy.rule_fields import (
    Allowlist,
    CountWindow,
    Days,
    Denylist,
    FieldProblem,
    Hours,
    Models,
    Patterns,
    Providers,
    Threshold,
    ZoneName,
    one_of,
    shown,
)
from tollhouse.policy.timewindow import TimeWindow, WindowError, parse_days, parse_hours, zone

CONDITION_TYPES = ("model", "provider", "time", "budget", "usage", "MODEL_ALLOWLIST", "MODEL_DENYLIST",
                   "PROVIDER_ALLOWLIST", "PROVIDER_DENYLIST", "MONTHLY_SPEND_CAP_PER_SUBJECT",
                   "BUDGET_CROSS_PROVIDER", "COST_CENTRE_REQUIRED", "CONTENT_DLP")
_CANONICAL = {t.lower(): t for t in CONDITION_TYPES}

# Built-in DLP detectors (CONTENT_DLP "detectors": [...]).
DETECTORS: dict[str, str] = {
    # Bounded repeats keep every detector linear in the prompt's length (no catastrophic backtracking).
    "email": r"\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}\b",
    "aws_access_key": r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    "private_key": r"-----BEGIN (?:RSA |EC |OPENSSH |DSA )?PRIVATE KEY-----",
    "credit_card": r"\b(?:\d[ -]?){13,16}\b",
    "us_ssn": r"\b\d{3}-\d{2}-\d{4}\b",
    "github_token": r"\bgh[pousr]_[A-Za-z0-9]{36,}\b",
    "openai_key": r"\bsk-[A-Za-z0-9_-]{20,}\b",
}


class CompileProblem(Exception):
    """A rule that validated but cannot be compiled in this policy (the policy's default zone is unknown)."""

    def __init__(self, field: str, what: str) -> None:
        super().__init__(f"{field}: {what}")
        self.field = field
        self.what = what


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    TYPE: ClassVar[str]
    type: str  # as written; TYPE is its canonical name

    def compile(self, common: Mapping[str, Any], redirect_to: str | None, tz: str) -> Rule:
        raise NotImplementedError


class ListCondition(Condition):
    """Model and provider lists. `listed()` says how the list is read: (allow, values)."""

    IS_MODEL: ClassVar[bool]

    def listed(self) -> tuple[bool, frozenset[str]]:
        raise NotImplementedError

    def compile(self, common: Mapping[str, Any], redirect_to: str | None, tz: str) -> Rule:
        allow, values = self.listed()
        if redirect_to is not None:
            kind = Kind.redirect
        elif self.IS_MODEL:
            kind = Kind.model_allow if allow else Kind.model_deny
        else:
            kind = Kind.provider_allow if allow else Kind.provider_deny
        type_name = "MODEL_REDIRECT" if kind is Kind.redirect else kind.value.upper()
        return Rule(kind=kind, type_name=type_name, allow=allow, values=values, redirect_to=redirect_to, **common)


def _one_list(given: list[tuple[str, frozenset[str] | None]], example: str) -> tuple[str, frozenset[str]]:
    present: list[tuple[str, frozenset[str]]] = [(k, v) for k, v in given if v is not None]
    if not present:
        raise FieldProblem(f"required: a list such as {example}", at=(given[0][0],))
    if len(present) > 1:
        names = " or ".join(repr(k) for k, _ in given)
        raise FieldProblem(f"give one list: {names}, not {len(present)}", at=(present[1][0],))
    return present[0]


_OPERATORS = {"in": "in", "not_in": "not_in"}
_check_operator = one_of(_OPERATORS, "is not an operator; use 'in' (listed values violate) or 'not_in' "
                                     "(unlisted violate)")
Operator = Annotated[str | None, PlainValidator(lambda v: None if v is None else _check_operator(v))]


class _SeedList(ListCondition):
    """The seed's form: an operator and `models` (`providers`), or a named `allowlist` / `denylist`."""

    NOUN: ClassVar[str]
    EXAMPLE: ClassVar[str]
    operator: Operator = None
    allowlist: Allowlist | None = None
    denylist: Denylist | None = None

    def _values(self) -> frozenset[str] | None:
        raise NotImplementedError

    @model_validator(mode="after")
    def _consistent(self) -> _SeedList:
        self.listed()
        return self

    def listed(self) -> tuple[bool, frozenset[str]]:
        key, values = _one_list([(self.NOUN, self._values()), ("allowlist", self.allowlist),
                                 ("denylist", self.denylist)], self.EXAMPLE)
        op = self.operator
        if (op == "in" and key == "allowlist") or (op == "not_in" and key == "denylist"):
            raise FieldProblem("contradicts the list name; 'not_in' goes with allowlist, 'in' with denylist",
                               at=("operator",))
        if key == self.NOUN and op is None:
            raise FieldProblem(f"required with '{self.NOUN}': 'in' or 'not_in'", at=("operator",))
        allow = key == "allowlist" or (key == self.NOUN and op == "not_in")
        return allow, values


class ModelCondition(_SeedList):
    TYPE = "model"
    IS_MODEL = True
    NOUN = "models"
    EXAMPLE = '["gpt-4o"]'
    models: Models | None = None

    def _values(self) -> frozenset[str] | None:
        return self.models


class ProviderCondition(_SeedList):
    TYPE = "provider"
    IS_MODEL = False
    NOUN = "providers"
    EXAMPLE = '["openai"]'
    providers: Providers | None = None

    def _values(self) -> frozenset[str] | None:
        return self.providers


class ModelAllowlist(ListCondition):
    TYPE = "MODEL_ALLOWLIST"
    IS_MODEL = True
    models: Models | None = None
    allowlist: Allowlist | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ModelAllowlist:
        self.listed()
        return self

    def listed(self) -> tuple[bool, frozenset[str]]:
        return True, _one_list([("models", self.models), ("allowlist", self.allowlist)], '["gpt-4o"]')[1]


class ModelDenylist(ListCondition):
    TYPE = "MODEL_DENYLIST"
    IS_MODEL = True
    models: Models | None = None
    denylist: Denylist | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ModelDenylist:
        self.listed()
        return self

    def listed(self) -> tuple[bool, frozenset[str]]:
        return False, _one_list([("models", self.models), ("denylist", self.denylist)], '["gpt-4o"]')[1]


class ProviderAllowlist(ListCondition):
    TYPE = "PROVIDER_ALLOWLIST"
    IS_MODEL = False
    providers: Providers | None = None
    allowlist: Allowlist | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ProviderAllowlist:
        self.listed()
        return self

    def listed(self) -> tuple[bool, frozenset[str]]:
        return True, _one_list([("providers", self.providers), ("allowlist", self.allowlist)], '["openai"]')[1]


class ProviderDenylist(ListCondition):
    TYPE = "PROVIDER_DENYLIST"
    IS_MODEL = False
    providers: Providers | None = None
    denylist: Denylist | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ProviderDenylist:
        self.listed()
        return self

    def listed(self) -> tuple[bool, frozenset[str]]:
        return False, _one_list([("providers", self.providers), ("denylist", self.denylist)], '["openai"]')[1]


class TimeWindowSpec(BaseModel):
    """{"days": [1,2,3,4,5], "hours": [8, 18]}, {"days": "mon-fri", "hours": "22:00-06:30"}, optional timezone."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    days: Days | None = None
    hours: Hours | None = None
    timezone: ZoneName | None = None


_TIME_OPERATORS = {"outside": False, "not_in": False, "inside": True, "in": True}


class TimeCondition(Condition):
    TYPE = "time"
    operator: Annotated[bool, PlainValidator(one_of(
        _TIME_OPERATORS, "is not an operator; use 'outside' (violation outside the window) or 'inside'"))] = False
    window: TimeWindowSpec
    timezone: ZoneName | None = None

    def compile(self, common: Mapping[str, Any], redirect_to: str | None, tz: str) -> Rule:
        name = self.window.timezone or self.timezone or tz
        try:
            tzinfo = zone(name)
        except WindowError as exc:
            raise CompileProblem("timezone", str(exc)) from None
        days = self.window.days if self.window.days is not None else parse_days(None)
        minutes = self.window.hours if self.window.hours is not None else parse_hours(None)
        window = TimeWindow(days=days, minutes=minutes, tz=tzinfo)
        return Rule(kind=Kind.time, type_name="TIME_WINDOW", window=window, inside=self.operator, **common)


class CostCentreRequired(Condition):
    TYPE = "COST_CENTRE_REQUIRED"

    def compile(self, common: Mapping[str, Any], redirect_to: str | None, tz: str) -> Rule:
        return Rule(kind=Kind.cost_centre, type_name=self.TYPE, **common)


def _detectors(value: object) -> tuple[str, ...]:
    items = [] if value is None else [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise FieldProblem(f"must be a list of names: {', '.join(sorted(DETECTORS))}")
    for det in items:
        if not isinstance(det, str) or det not in DETECTORS:
            raise FieldProblem(f"{shown(det)} is not a detector; use {', '.join(sorted(DETECTORS))}")
    return tuple(items)


class ContentDlp(Condition):
    TYPE = "CONTENT_DLP"
    patterns: Patterns = ()
    detectors: Annotated[tuple[str, ...], PlainValidator(_detectors)] = ()

    @model_validator(mode="after")
    def _something(self) -> ContentDlp:
        if not self.patterns and not self.detectors:
            raise FieldProblem("give at least one regex in 'patterns' or a name in 'detectors', "
                               "e.g. \"detectors\": [\"aws_access_key\"]", at=("patterns",))
        return self

    def compile(self, common: Mapping[str, Any], redirect_to: str | None, tz: str) -> Rule:
        patterns = (*self.patterns, *(re.compile(DETECTORS[d]) for d in self.detectors))
        return Rule(kind=Kind.content, type_name=self.TYPE, patterns=patterns, **common)


_METRIC = re.compile(r"(tokens|input_tokens|output_tokens|requests)(?:_(per_minute|per_hour|per_day|per_month))?")
_METRIC_WINDOWS = {"per_minute": 60, "per_hour": 3600, "per_day": 86400, "per_month": 30 * 86400}


class Metric(NamedTuple):
    counted: str  # tokens | input_tokens | output_tokens | requests
    default_seconds: int  # the window when none is given: the metric's own (per_hour: 1 h), else 1 h


def _metric(value: object) -> Metric:
    if not isinstance(value, str):
        raise FieldProblem("use e.g. tokens_per_hour, tokens_per_minute, requests_per_minute")
    m = _METRIC.fullmatch(value)
    if m is None:
        raise FieldProblem(f"{shown(value)} is not a metric; use tokens_per_hour, tokens_per_minute, tokens_per_day, "
                           "requests_per_minute, ...")
    return Metric(m.group(1), _METRIC_WINDOWS.get(m.group(2) or "", 3600))


class UsageCondition(Condition):
    TYPE = "usage"
    metric: Annotated[Metric, PlainValidator(_metric)] = Metric("tokens", 3600)
    threshold: Threshold
    window: CountWindow = None

    @model_validator(mode="after")
    def _rolling(self) -> UsageCondition:
        if self.window is not None and self.window.monthly:
            raise FieldProblem("token rates use rolling windows: '1m', '1h', '24h', '7d', '30d'", at=("window",))
        return self

    def compile(self, common: Mapping[str, Any], redirect_to: str | None, tz: str) -> Rule:
        window = self.window or Window(monthly=False, seconds=self.metric.default_seconds)
        return Rule(kind=Kind.tokens, type_name="TOKEN_RATE_LIMIT", metric=self.metric.counted,
                    threshold=self.threshold, count_window=window, **common)


class BudgetCondition(Condition):
    TYPE = "budget"
    threshold: Threshold
    window: CountWindow = None
    providers: Providers | None = None
    provider: Providers | None = None  # one provider: the same as providers: [it]

    @model_validator(mode="after")
    def _one_list(self) -> BudgetCondition:
        if self.providers is not None and self.provider is not None:
            raise FieldProblem("give 'providers' (a list) or 'provider' (one), not both", at=("provider",))
        return self

    def compile(self, common: Mapping[str, Any], redirect_to: str | None, tz: str) -> Rule:
        return Rule(kind=Kind.spend, type_name="BUDGET", threshold=self.threshold,
                    count_window=self.window or MONTHLY, providers=self.providers or self.provider, **common)


def _monthly_only(value: object) -> Window | None:
    if value is None:
        return None
    rolling = FieldProblem("MONTHLY_SPEND_CAP_PER_SUBJECT is month to date; use BUDGET_CROSS_PROVIDER for "
                           "rolling windows")
    if not isinstance(value, str):
        raise rolling
    try:
        window = parse_count_window(value, MONTHLY)
    except ValueError as exc:
        raise FieldProblem(str(exc)) from None
    if not window.monthly:
        raise rolling
    return window


def _one_provider(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise FieldProblem('required: the one provider this cap counts, e.g. "openai"')
    return value


class MonthlySpendCap(Condition):
    TYPE = "MONTHLY_SPEND_CAP_PER_SUBJECT"
    provider: Annotated[str, PlainValidator(_one_provider)]
    threshold: Threshold
    window: Annotated[Window | None, PlainValidator(_monthly_only)] = None

    def compile(self, common: Mapping[str, Any], redirect_to: str | None, tz: str) -> Rule:
        return Rule(kind=Kind.spend, type_name=self.TYPE, threshold=self.threshold, count_window=MONTHLY,
                    providers=frozenset({self.provider}), **common)


class CrossProviderBudget(Condition):
    TYPE = "BUDGET_CROSS_PROVIDER"
    providers: Providers
    threshold: Threshold
    window: CountWindow = None

    def compile(self, common: Mapping[str, Any], redirect_to: str | None, tz: str) -> Rule:
        window = self.window or Window(monthly=False, seconds=30 * 86400)
        return Rule(kind=Kind.spend, type_name=self.TYPE, threshold=self.threshold, count_window=window,
                    providers=self.providers, **common)


CONDITIONS: dict[str, type[Condition]] = {c.TYPE: c for c in (
    ModelCondition, ProviderCondition, TimeCondition, BudgetCondition, UsageCondition, ModelAllowlist,
    ModelDenylist, ProviderAllowlist, ProviderDenylist, MonthlySpendCap, CrossProviderBudget, CostCentreRequired,
    ContentDlp)}
MODEL_CONDITIONS = frozenset({"model", "MODEL_ALLOWLIST", "MODEL_DENYLIST"})


def condition_tag(value: Any) -> str | None:
    """The canonical type of a condition as written (case-insensitive); an unknown type is returned as it
    is (pydantic reports it as an invalid tag), no type at all is None."""
    if isinstance(value, Condition):
        return value.TYPE
    kind = value.get("type") if isinstance(value, dict) else None
    if not isinstance(kind, str):
        return None
    return _CANONICAL.get(kind.lower(), kind)


AnyCondition = Annotated[
    Annotated[ModelCondition, Tag("model")] | Annotated[ProviderCondition, Tag("provider")]
    | Annotated[TimeCondition, Tag("time")] | Annotated[BudgetCondition, Tag("budget")]
    | Annotated[UsageCondition, Tag("usage")] | Annotated[ModelAllowlist, Tag("MODEL_ALLOWLIST")]
    | Annotated[ModelDenylist, Tag("MODEL_DENYLIST")] | Annotated[ProviderAllowlist, Tag("PROVIDER_ALLOWLIST")]
    | Annotated[ProviderDenylist, Tag("PROVIDER_DENYLIST")]
    | Annotated[MonthlySpendCap, Tag("MONTHLY_SPEND_CAP_PER_SUBJECT")]
    | Annotated[CrossProviderBudget, Tag("BUDGET_CROSS_PROVIDER")]
    | Annotated[CostCentreRequired, Tag("COST_CENTRE_REQUIRED")] | Annotated[ContentDlp, Tag("CONTENT_DLP")],
    Discriminator(condition_tag),
]


__all__ = ["CONDITIONS", "CONDITION_TYPES", "DETECTORS", "MODEL_CONDITIONS", "AnyCondition", "CompileProblem",
           "Condition", "ListCondition", "TimeWindowSpec", "condition_tag"]

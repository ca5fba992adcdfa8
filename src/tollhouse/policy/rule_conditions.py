"""Rule conditions: one pydantic model per `condition.type`, told apart by that type (case-insensitive).
Here: time windows, COST_CENTRE_REQUIRED, CONTENT_DLP and the union of all of them (lists in
`rule_lists`, caps in `rule_caps`).

The seed's lower-case types (`model`, `provider`, `time`, `budget`, `usage`) and the enforcement doc's
upper-case ones are all members of one discriminated union. Every model forbids unknown keys, and each
one compiles itself into the engine's `Rule`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import regex
from pydantic import BaseModel, ConfigDict, Discriminator, PlainValidator, Tag, model_validator

from tollhouse.policy.compiled import Kind, Rule
from tollhouse.policy.rule_caps import BudgetCondition, CrossProviderBudget, MonthlySpendCap, UsageCondition
from tollhouse.policy.rule_condition_base import CompileProblem, Condition
from tollhouse.policy.rule_fields import Days, FieldProblem, Hours, Patterns, ZoneName, one_of, shown
from tollhouse.policy.rule_lists import (
    ListCondition,
    ModelAllowlist,
    ModelCondition,
    ModelDenylist,
    ProviderAllowlist,
    ProviderCondition,
    ProviderDenylist,
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
        patterns = (*self.patterns, *(regex.compile(DETECTORS[d]) for d in self.detectors))
        names = (*(f"patterns[{i}]" for i in range(len(self.patterns))), *self.detectors)
        return Rule(kind=Kind.content, type_name=self.TYPE, patterns=patterns, pattern_names=names, **common)


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

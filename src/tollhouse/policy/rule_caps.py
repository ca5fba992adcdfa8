"""Cap conditions the ledger counts: `budget`, MONTHLY_SPEND_CAP_PER_SUBJECT, BUDGET_CROSS_PROVIDER
(spend in USD) and `usage` (token or request rates over rolling windows)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, NamedTuple

from pydantic import PlainValidator, model_validator

from tollhouse.policy.compiled import MONTHLY, Kind, Rule, Window, parse_count_window
from tollhouse.policy.rule_condition_base import Condition
from tollhouse.policy.rule_fields import CountWindow, FieldProblem, Providers, Threshold, shown

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

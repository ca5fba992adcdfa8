"""Model and provider list conditions: the seed's `model` / `provider` (an operator and `models`, or a
named `allowlist` / `denylist`) and the upper-case MODEL_ALLOWLIST, MODEL_DENYLIST, PROVIDER_ALLOWLIST,
PROVIDER_DENYLIST (`models` / `providers`, or `allowlist` / `denylist` as their names say)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

from pydantic import PlainValidator, model_validator

from tollhouse.policy.compiled import Kind, Rule
from tollhouse.policy.rule_condition_base import Condition
from tollhouse.policy.rule_fields import Allowlist, Denylist, FieldProblem, Models, Providers, one_of


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

"""The rule schema: one pydantic model for every accepted form of a rule, and its compilation into the
engine's `Rule`.

    {"id": "r1", "scope": "org" | "team" | "project" | "individual" | "service",
     "subject" | "team" | "project" | "service": "<target id>",      # the one that fits the scope
     "condition": {"type": ..., ...},                                 # see rule_conditions
     "action": {"type": "log|alert|soft_cap|hard_stop|redirect", "message": "...", "notify": [...],
                "model": "<substitute, redirects only>"},
     "severity": "INFO|WARN|SOFT_CAP|BLOCK", "enabled": true, "fail_open": false, "mode": "enforce|shadow",
     "timezone": "Europe/London", "description": "...", "name": "..."}

Unknown keys are errors at every level. Cross-field checks are field validators reading the fields
declared before them, so one pass reports every problem of a rule.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, PlainValidator, ValidationInfo, field_validator, model_validator

from tollhouse.policy.compiled import Mode, Rule, ScopeKind, Severity
from tollhouse.policy.rule_conditions import MODEL_CONDITIONS, AnyCondition, ListCondition
from tollhouse.policy.rule_fields import FieldProblem, Flag, Notify, OptionalText, ZoneName, one_of, shown

SEVERITIES = {"INFO": Severity.log, "WARN": Severity.warn, "SOFT_CAP": Severity.soft_cap, "BLOCK": Severity.block}
ACTIONS = {"log": Severity.log, "info": Severity.log, "alert": Severity.warn, "warn": Severity.warn,
           "soft_cap": Severity.soft_cap, "hard_stop": Severity.block, "block": Severity.block}
REDIRECT = "redirect"
_TARGET_KEY = {ScopeKind.team: "team", ScopeKind.project: "project", ScopeKind.individual: "subject",
               ScopeKind.service: "service"}


def _action_type(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or (value.lower() not in ACTIONS and value.lower() != REDIRECT):
        raise FieldProblem(f"{shown(value)} is not an action; use alert, soft_cap, hard_stop or redirect")
    return value


def _severity(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value.upper() not in SEVERITIES:
        raise FieldProblem(f"{shown(value)} is not a severity; use INFO, WARN or BLOCK")
    return value


def _substitute(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise FieldProblem('a redirect needs the substitute model, e.g. "model": "gpt-4o-mini"')
    return value


Substitute = Annotated[str | None, PlainValidator(_substitute)]
_SUBSTITUTE_KEYS = ("model", "to", "target_model")


class ActionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Annotated[str | None, PlainValidator(_action_type)] = None
    message: OptionalText = None
    notify: Notify = ()
    model: Substitute = None
    to: Substitute = None
    target_model: Substitute = None

    @property
    def is_redirect(self) -> bool:
        return self.type is not None and self.type.lower() == REDIRECT

    @property
    def substitute(self) -> str | None:
        return self.model or self.to or self.target_model

    @model_validator(mode="after")
    def _substitute_fits(self) -> ActionSpec:
        given = [k for k in _SUBSTITUTE_KEYS if getattr(self, k) is not None]
        if self.is_redirect and not given:
            raise FieldProblem('a redirect needs the substitute model, e.g. "model": "gpt-4o-mini"', at=("model",))
        if self.is_redirect and len(given) > 1:
            raise FieldProblem(f"give the substitute once, as \"model\" (also given as {given[1]!r})",
                               at=(given[1],))
        if not self.is_redirect and given:
            raise FieldProblem('only a redirect takes a substitute model: "type": "redirect"', at=(given[0],))
        return self


class RuleSpec(BaseModel):
    """One rule as written; `compile()` makes the engine's `Rule` of it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: OptionalText = None
    description: OptionalText = None
    scope: Annotated[ScopeKind, PlainValidator(one_of(
        {s.value: s for s in ScopeKind},
        "is not a scope; use one of org, team, project, individual, service"))] = ScopeKind.org
    subject: str | None = None
    team: str | None = None
    project: str | None = None
    service: str | None = None
    timezone: ZoneName | None = None
    enabled: Flag = True
    fail_open: Flag = False
    mode: Annotated[Mode, PlainValidator(one_of(
        {m.value: m for m in Mode},
        "is not a mode; use 'enforce' (the default) or 'shadow' (judged and recorded, never applied)"))] \
        = Mode.enforce
    condition: AnyCondition
    action: ActionSpec | None = None
    severity: Annotated[str | None, PlainValidator(_severity)] = None

    @field_validator("id", mode="plain")
    @classmethod
    def _id(cls, value: object) -> str:
        if not isinstance(value, str) or not value.strip():
            raise FieldProblem("required: a unique, human-readable rule name")
        return value

    @field_validator("subject", "team", "project", "service", mode="plain")
    @classmethod
    def _target_fits_scope(cls, value: object, info: ValidationInfo) -> str:
        scope = info.data.get("scope")
        key = info.field_name
        if scope is ScopeKind.org:
            raise FieldProblem("an org-scoped rule applies to everyone; remove it or change the scope")
        if isinstance(scope, ScopeKind) and _TARGET_KEY[scope] != key:
            article = "an" if scope.value[0] in "aeiou" else "a"
            raise FieldProblem(f"does not fit scope {scope.value!r}; {article} {scope.value} rule is targeted with "
                               f"{_TARGET_KEY[scope]!r}")
        if not isinstance(value, str) or not value:
            raise FieldProblem("must be a non-empty string id")
        return value

    @field_validator("action", mode="after")
    @classmethod
    def _action_fits_condition(cls, action: ActionSpec | None, info: ValidationInfo) -> ActionSpec | None:
        condition = info.data.get("condition")
        if action is None or not action.is_redirect or condition is None:
            return action
        if condition.TYPE not in MODEL_CONDITIONS or not isinstance(condition, ListCondition):
            raise FieldProblem("redirect works with model conditions only (type model / MODEL_DENYLIST)",
                               at=("type",))
        allow, values = condition.listed()
        if allow and action.substitute not in values:
            raise FieldProblem("the substitute must be on the allowlist, or the redirect would loop", at=("model",))
        if not allow and action.substitute in values:
            raise FieldProblem("the substitute is itself in the list it replaces", at=("model",))
        return action

    @field_validator("severity", mode="after")
    @classmethod
    def _severity_agrees(cls, severity: str | None, info: ValidationInfo) -> str | None:
        action = info.data.get("action")
        atype = action.type if isinstance(action, ActionSpec) else None
        if severity is None or atype is None or atype.lower() == REDIRECT:
            return severity
        if SEVERITIES[severity.upper()] is not ACTIONS[atype.lower()]:
            raise FieldProblem(f"{severity} contradicts action.type {atype!r}; give one or make them agree")
        return severity

    @property
    def target(self) -> str | None:
        return None if self.scope is ScopeKind.org else getattr(self, _TARGET_KEY[self.scope])

    def graded(self) -> Severity:
        """The one scale: action.type when given, else severity, else block (a redirect: log)."""
        action = self.action
        if action is not None and action.type is not None and not action.is_redirect:
            return ACTIONS[action.type.lower()]
        if self.severity is not None:
            return SEVERITIES[self.severity.upper()]
        return Severity.log if action is not None and action.is_redirect else Severity.block

    def compile(self, default_timezone: str) -> Rule:
        """The engine's Rule (raises CompileProblem if the policy's default zone is needed and unknown)."""
        action = self.action
        common: dict[str, Any] = {
            "id": self.id, "scope": self.scope, "target": self.target, "severity": self.graded(),
            "message": (action.message if action else None) or self.description or "",
            "enabled": self.enabled, "fail_open": self.fail_open, "notify": action.notify if action else (),
            "mode": self.mode,
        }
        redirect_to = action.substitute if action is not None and action.is_redirect else None
        return self.condition.compile(common, redirect_to, self.timezone or default_timezone)


RULE_FIELDS = tuple(RuleSpec.model_fields)
ACTION_FIELDS = tuple(ActionSpec.model_fields)

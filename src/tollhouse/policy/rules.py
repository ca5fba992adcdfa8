"""Rules: one schema for the seed's JSON rules and the enforcement doc's rule types.

`parse_rules(raw)` turns plain data (from YAML, JSON or the API) into the engine's compiled `Rule`s,
through the one pydantic model of `rule_schema` (a discriminated union on `condition.type`), or raises
`PolicyError` listing every problem with its rule id and field. Every path that accepts rules (config
`policy.rules`, `policy.rules_file`, PUT /api/v1/policy, exemption rule edits, agent bundles,
`tollhouse policy check`) comes through here.
"""

from __future__ import annotations

from pydantic import ValidationError

from tollhouse.policy.compiled import (
    LIST_KINDS,
    MONTHLY,
    OVERRIDE_KINDS,
    Kind,
    Mode,
    Rule,
    ScopeKind,
    Severity,
    Window,
    parse_count_window,
)
from tollhouse.policy.rule_conditions import CONDITION_TYPES, DETECTORS, CompileProblem
from tollhouse.policy.rule_errors import describe
from tollhouse.policy.rule_schema import RuleSpec

__all__ = ["CONDITION_TYPES", "DETECTORS", "LIST_KINDS", "MONTHLY", "OVERRIDE_KINDS", "Kind", "Mode", "PolicyError",
           "Rule", "RuleSpec", "ScopeKind", "Severity", "Window", "parse_count_window", "parse_rules"]


class PolicyError(ValueError):
    """Invalid rules. `problems` holds one line per problem: `rule <id>: <field>: <what is wrong>`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _label(index: int, item: object) -> str:
    """How problem lines name a rule: its id, or its position when it has none (or one with a colon, which
    would read as the end of the name in "rule NAME: field: problem")."""
    if isinstance(item, dict):
        rid = item.get("id")
        if isinstance(rid, str) and rid and ":" not in rid:
            return rid
    return f"#{index}"


def parse_rule(item: object, label: str, default_timezone: str) -> Rule | list[str]:
    """One rule compiled, or its problem lines."""
    if not isinstance(item, dict):
        return [f"rule {label}: (rule): must be an object with id, scope, condition, action"]
    try:
        return RuleSpec.model_validate(item).compile(default_timezone)
    except ValidationError as exc:
        return describe(label, exc)
    except CompileProblem as exc:
        return [f"rule {label}: {exc.field}: {exc.what}"]


def parse_rules(raw: object, default_timezone: str = "UTC") -> tuple[Rule, ...]:
    if not isinstance(raw, list | tuple):
        raise PolicyError(["rules: must be a list of rule objects"])
    problems: list[str] = []
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        label = _label(i, item)
        parsed = parse_rule(item, label, default_timezone)
        if isinstance(parsed, list):
            problems.extend(parsed)
            continue
        if parsed.id in seen:
            problems.append(f"rule {label}: id: appears more than once; rule ids must be unique")
        seen.add(parsed.id)
        rules.append(parsed)
    if problems:
        raise PolicyError(problems)
    return tuple(rules)

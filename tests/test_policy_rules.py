"""The rule schema: the seed's JSON and DESIGN.md's rule forms parse verbatim, the upper-case rule types and
severities share one scale, and every invalid rule is reported (all at once) with its rule id and field."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tollhouse.policy.rules import (
    DETECTORS,
    MONTHLY,
    Kind,
    PolicyError,
    Rule,
    ScopeKind,
    Severity,
    Window,
    parse_rules,
)

# --- DESIGN.md "Rules": the forms r1..r9, verbatim, with each "..." filled in by a sensible action ---------------

DESIGN_FORMS = """[
{"id": "r1", "scope": "org", "condition": {"type": "model", "operator": "not_in", "allowlist": ["claude-3-haiku-20240307"]},
 "action": {"type": "hard_stop", "message": "..."}, "enabled": true},
{"id": "r2", "scope": "org", "condition": {"type": "model", "operator": "in", "models": ["claude-3-opus-20240229"]},
 "action": {"type": "redirect", "model": "claude-3-5-sonnet-20241022", "message": "..."}},
{"id": "r3", "scope": "individual", "subject": "bob",
 "condition": {"type": "MODEL_ALLOWLIST", "models": ["gpt-4o", "claude-3-opus-20240229"]},
 "action": {"type": "hard_stop", "message": "bob's own list"}},
{"id": "r4", "scope": "individual", "condition": {"type": "budget", "threshold": 1, "window": "monthly"},
 "action": {"type": "hard_stop", "message": "your $1 a month is spent"}},
{"id": "r5", "scope": "team", "team": "platform", "severity": "BLOCK",
 "condition": {"type": "MODEL_DENYLIST", "models": ["gpt-4o"]}},
{"id": "r6", "scope": "individual", "condition": {"type": "usage", "metric": "tokens_per_hour", "threshold": 100000, "window": "1h"},
 "action": {"type": "hard_stop", "message": "slow down"}},
{"id": "r7", "scope": "individual", "condition": {"type": "MONTHLY_SPEND_CAP_PER_SUBJECT", "provider": "openai", "threshold": 50},
 "action": {"type": "soft_cap", "message": "over $50 of OpenAI this month"}},
{"id": "r8", "scope": "team", "team": "platform",
 "condition": {"type": "BUDGET_CROSS_PROVIDER", "providers": ["openai", "anthropic"], "threshold": 1000, "window": "30d"},
 "action": {"type": "alert", "message": "platform spent $1000 in 30 days"}},
{"id": "r9", "scope": "org", "condition": {"type": "COST_CENTRE_REQUIRED"}, "severity": "BLOCK"}
]"""  # noqa: E501

# --- /work/shared/seeds/003_*.txt: the seed's rule examples, verbatim ---------------------------------------------

SEED_BUDGET_GUARD_MONTHLY = """{
"id": "budget-guard-monthly",
"scope": "org",
"condition": {
"type": "budget",
"threshold": 500
},
"action": {
"type": "hard_stop",
"message": "Monthly budget exceeded"
},
"enabled": true
}"""

SEED_STARTUP_BUDGET_GUARD = """{
"id": "startup-budget-guard",
"scope": "org",
"condition": { "type": "budget", "threshold": 2000, "window": "monthly" },
"action": {
"type": "hard_stop",
"message": "Monthly AI budget exhausted. Resets on the 1st."
},
"enabled": true
}"""

SEED_ENTERPRISE_ALLOWLIST = """{
"id": "enterprise-model-allowlist",
"scope": "org",
"condition": {
"type": "model",
"operator": "not_in",
"allowlist": ["claude-3-5-sonnet-20241022", "claude-3-haiku-20240307"]
},
"action": {
"type": "hard_stop",
"message": "Model not on approved list. See infosec/approved-models.md"
},
"enabled": true
}"""

SEED_OFF_HOURS = """{
"id": "off-hours-protection",
"scope": "team",
"condition": {
"type": "time",
"operator": "outside",
"window": { "days": [1,2,3,4,5], "hours": [8, 18] }
},
"action": {
"type": "alert",
"notify": ["eng-leads@company.com"],
"message": "Off-hours AI usage detected"
},
"enabled": true
}"""


def by_id(rules: tuple[Rule, ...]) -> dict[str, Rule]:
    return {r.id: r for r in rules}


def one(rule: dict[str, Any], tz: str = "UTC") -> Rule:
    (parsed,) = parse_rules([rule], tz)
    return parsed


def problems(raw: object, tz: str = "UTC") -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_rules(raw, tz)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


# --- the verbatim forms ------------------------------------------------------------------------------------------


def test_design_forms_r1_to_r9_parse() -> None:
    rules = parse_rules(json.loads(DESIGN_FORMS))
    assert [r.id for r in rules] == [f"r{i}" for i in range(1, 10)]
    r = by_id(rules)

    assert (r["r1"].kind, r["r1"].scope, r["r1"].target, r["r1"].allow) == (Kind.model_allow, ScopeKind.org, None, True)
    assert r["r1"].values == {"claude-3-haiku-20240307"}
    assert r["r1"].severity is Severity.block and r["r1"].message == "..."

    assert r["r2"].kind is Kind.redirect and r["r2"].allow is False
    assert r["r2"].values == {"claude-3-opus-20240229"}
    assert r["r2"].redirect_to == "claude-3-5-sonnet-20241022"

    assert (r["r3"].kind, r["r3"].scope, r["r3"].target) == (Kind.model_allow, ScopeKind.individual, "bob")
    assert r["r3"].type_name == "MODEL_ALLOWLIST"

    assert (r["r4"].kind, r["r4"].scope, r["r4"].target) == (Kind.spend, ScopeKind.individual, None)
    assert r["r4"].threshold == Decimal(1) and r["r4"].count_window == MONTHLY and r["r4"].providers is None
    assert not r["r4"].rate_limited  # calendar budgets answer 403, not 429

    assert (r["r5"].kind, r["r5"].scope, r["r5"].target) == (Kind.model_deny, ScopeKind.team, "platform")
    assert r["r5"].severity is Severity.block and r["r5"].values == {"gpt-4o"}

    assert r["r6"].kind is Kind.tokens and r["r6"].metric == "tokens"
    assert r["r6"].threshold == Decimal(100000) and r["r6"].count_window == Window(monthly=False, seconds=3600)
    assert r["r6"].rate_limited

    assert r["r7"].kind is Kind.spend and r["r7"].type_name == "MONTHLY_SPEND_CAP_PER_SUBJECT"
    assert r["r7"].providers == {"openai"} and r["r7"].count_window == MONTHLY
    assert r["r7"].threshold == Decimal(50) and r["r7"].severity is Severity.soft_cap

    assert r["r8"].kind is Kind.spend and r["r8"].providers == {"openai", "anthropic"}
    assert r["r8"].count_window == Window(monthly=False, seconds=30 * 86400) and r["r8"].count_window.label == "30d"
    assert r["r8"].severity is Severity.warn and r["r8"].target == "platform"

    assert r["r9"].kind is Kind.cost_centre and r["r9"].severity is Severity.block
    assert all(rule.enabled for rule in rules)


def test_r1_with_models_instead_of_allowlist() -> None:
    rule = one({"id": "r1", "scope": "org", "condition": {"type": "model", "operator": "not_in",
                                                          "models": ["claude-3-haiku-20240307"]},
                "action": {"type": "hard_stop", "message": "..."}, "enabled": True})
    assert (rule.kind, rule.allow, rule.values) == (Kind.model_allow, True, {"claude-3-haiku-20240307"})


@pytest.mark.parametrize("target_key, scope", [("team", "team"), ("project", "project"), ("service", "service"),
                                               ("subject", "individual")])
def test_each_scope_is_targeted_by_its_own_key(target_key: str, scope: str) -> None:
    rule = one({"id": "t", "scope": scope, target_key: "x",
                "condition": {"type": "MODEL_DENYLIST", "models": ["gpt-4o"]}, "severity": "BLOCK"})
    assert (rule.scope, rule.target) == (ScopeKind(scope), "x")


def test_seed_examples_parse_verbatim() -> None:
    raw = [json.loads(s) for s in (SEED_BUDGET_GUARD_MONTHLY, SEED_STARTUP_BUDGET_GUARD, SEED_ENTERPRISE_ALLOWLIST,
                                   SEED_OFF_HOURS)]
    r = by_id(parse_rules(raw, "Europe/London"))

    monthly = r["budget-guard-monthly"]
    assert (monthly.kind, monthly.threshold, monthly.count_window) == (Kind.spend, Decimal(500), MONTHLY)
    assert monthly.severity is Severity.block and monthly.message == "Monthly budget exceeded"

    guard = r["startup-budget-guard"]
    assert (guard.kind, guard.scope, guard.threshold, guard.count_window) == (Kind.spend, ScopeKind.org,
                                                                            Decimal(2000), MONTHLY)
    assert guard.severity is Severity.block
    assert guard.message == "Monthly AI budget exhausted. Resets on the 1st."

    allow = r["enterprise-model-allowlist"]
    assert (allow.kind, allow.allow) == (Kind.model_allow, True)
    assert allow.values == {"claude-3-5-sonnet-20241022", "claude-3-haiku-20240307"}
    assert allow.severity is Severity.block

    off = r["off-hours-protection"]
    assert (off.kind, off.scope, off.target, off.inside) == (Kind.time, ScopeKind.team, None, False)
    assert off.severity is Severity.warn and off.notify == ("eng-leads@company.com",)
    assert off.window is not None
    assert off.window.days == {1, 2, 3, 4, 5} and off.window.minutes == ((8 * 60, 18 * 60),)
    assert off.window.tz.key == "Europe/London"  # the default zone reaches the window


# --- upper-case types, one severity scale ------------------------------------------------------------------------


@pytest.mark.parametrize("cond, kind", [
    ({"type": "MODEL_ALLOWLIST", "models": ["a"]}, Kind.model_allow),
    ({"type": "MODEL_DENYLIST", "models": ["a"]}, Kind.model_deny),
    ({"type": "MODEL_ALLOWLIST", "allowlist": ["a"]}, Kind.model_allow),
    ({"type": "PROVIDER_ALLOWLIST", "providers": ["openai"]}, Kind.provider_allow),
    ({"type": "PROVIDER_DENYLIST", "providers": ["api.openai.com"]}, Kind.provider_deny),
    ({"type": "provider", "operator": "in", "providers": ["openai"]}, Kind.provider_deny),
    ({"type": "provider", "operator": "not_in", "providers": ["openai"]}, Kind.provider_allow),
    ({"type": "MONTHLY_SPEND_CAP_PER_SUBJECT", "provider": "openai", "threshold": 5}, Kind.spend),
    ({"type": "BUDGET_CROSS_PROVIDER", "providers": ["openai"], "threshold": 5}, Kind.spend),
    ({"type": "COST_CENTRE_REQUIRED"}, Kind.cost_centre),
    ({"type": "CONTENT_DLP", "detectors": ["email"]}, Kind.content),
    ({"type": "model_denylist", "models": ["a"]}, Kind.model_deny),  # case does not matter
    ({"type": "Budget", "threshold": 5}, Kind.spend),
    ({"type": "usage", "metric": "requests_per_minute", "threshold": 5}, Kind.tokens),
])
def test_condition_types(cond: dict[str, Any], kind: Kind) -> None:
    rule = one({"id": "x", "scope": "org", "condition": cond, "severity": "BLOCK"})
    assert rule.kind is kind


@pytest.mark.parametrize("fields, severity", [
    ({"severity": "INFO"}, Severity.log),
    ({"severity": "WARN"}, Severity.warn),
    ({"severity": "BLOCK"}, Severity.block),
    ({"severity": "block"}, Severity.block),
    ({"action": {"type": "alert"}}, Severity.warn),
    ({"action": {"type": "soft_cap"}}, Severity.soft_cap),
    ({"action": {"type": "hard_stop"}}, Severity.block),
    ({"severity": "WARN", "action": {"type": "alert"}}, Severity.warn),  # agreeing forms are fine
    ({"severity": "BLOCK", "action": {"type": "hard_stop"}}, Severity.block),
    ({}, Severity.block),  # neither: a rule that exists is meant to stop the call
])
def test_severities_and_actions_are_one_scale(fields: dict[str, Any], severity: Severity) -> None:
    rule = one({"id": "x", "scope": "org", "condition": {"type": "MODEL_DENYLIST", "models": ["a"]}, **fields})
    assert rule.severity is severity


def test_scale_is_ordered() -> None:
    assert Severity.log < Severity.warn < Severity.soft_cap < Severity.block


def test_redirect_action() -> None:
    rule = one({"id": "x", "scope": "org", "action": {"type": "redirect", "model": "b"},
                "condition": {"type": "model", "operator": "not_in", "allowlist": ["a", "b"]}})
    assert (rule.kind, rule.allow, rule.redirect_to, rule.severity) == (Kind.redirect, True, "b", Severity.log)


def test_disabled_rule_is_kept_and_flagged() -> None:
    raw = json.loads(SEED_ENTERPRISE_ALLOWLIST)
    raw["enabled"] = False
    rule = one(raw)
    assert rule.enabled is False
    assert rule.kind is Kind.model_allow  # still fully parsed, so it can be re-enabled as it is
    # A disabled rule is still validated: a broken rule does not hide behind enabled: false.
    lines = problems([{**raw, "condition": {"type": "model", "operator": "not_in"}}])
    assert len(lines) == 1 and lines[0].startswith("rule enterprise-model-allowlist: condition.models:")


def test_time_rule_fields() -> None:
    rule = one({"id": "night", "scope": "org", "severity": "WARN", "timezone": "America/New_York",
                "condition": {"type": "time", "operator": "inside", "window": {"days": "sat,sun", "hours": "22-6"}}})
    assert rule.window is not None and rule.inside
    assert rule.window.tz.key == "America/New_York"
    assert rule.window.days == {6, 7} and rule.window.minutes == ((22 * 60, 6 * 60),)


def test_dlp_rule_compiles_patterns_and_detectors() -> None:
    rule = one({"id": "dlp", "scope": "org", "severity": "BLOCK",
                "condition": {"type": "CONTENT_DLP", "patterns": [r"ACME-\d+"], "detectors": ["email", "us_ssn"]}})
    assert [p.pattern for p in rule.patterns] == [r"ACME-\d+", DETECTORS["email"], DETECTORS["us_ssn"]]


# --- invalid rules -----------------------------------------------------------------------------------------------

ALLOW = {"type": "MODEL_ALLOWLIST", "models": ["gpt-4o-mini"]}
BUDGET = {"type": "budget", "threshold": 10}

INVALID: list[tuple[str, dict[str, Any], str, str]] = [
    # (case, rule, the field the problem line must name, a word the explanation must contain)
    ("unknown condition type", {"id": "u1", "condition": {"type": "vibes"}}, "condition.type", "vibes"),
    ("no condition", {"id": "u2", "action": {"type": "alert"}}, "condition.type", "required"),
    ("missing models list", {"id": "m1", "condition": {"type": "model", "operator": "in"}, "severity": "BLOCK"},
     "condition.models", "required"),
    ("missing models list (upper-case type)", {"id": "m2", "condition": {"type": "MODEL_DENYLIST"}},
     "condition.models", "required"),
    ("empty models list", {"id": "m3", "condition": {"type": "MODEL_DENYLIST", "models": []}},
     "condition.models", "non-empty"),
    ("bad operator", {"id": "o1", "condition": {"type": "model", "operator": "equals", "models": ["a"]}},
     "condition.operator", "in"),
    ("operator contradicting the list", {"id": "o2", "condition": {"type": "model", "operator": "in",
                                                                   "allowlist": ["a"]}},
     "condition.operator", "contradicts"),
    ("bad time operator", {"id": "o3", "condition": {"type": "time", "operator": "during", "window": {}}},
     "condition.operator", "outside"),
    ("redirect without model", {"id": "d1", "condition": {"type": "model", "operator": "in", "models": ["a"]},
                                "action": {"type": "redirect"}}, "action.model", "substitute"),
    ("redirect substitute itself denied", {"id": "d2", "condition": {"type": "model", "operator": "in",
                                                                     "models": ["opus", "sonnet"]},
                                           "action": {"type": "redirect", "model": "sonnet"}},
     "action.model", "substitute"),
    ("redirect substitute not on its allowlist", {"id": "d3", "condition": {"type": "model", "operator": "not_in",
                                                                            "allowlist": ["haiku"]},
                                                  "action": {"type": "redirect", "model": "sonnet"}},
     "action.model", "allowlist"),
    ("redirect of a budget", {"id": "d4", "condition": BUDGET, "action": {"type": "redirect", "model": "a"}},
     "action.type", "model"),
    ("budget without threshold", {"id": "b1", "condition": {"type": "budget", "window": "monthly"}},
     "condition.threshold", "required"),
    ("negative threshold", {"id": "b2", "condition": {"type": "budget", "threshold": -5}},
     "condition.threshold", "non-negative"),
    ("threshold not a number", {"id": "b3", "condition": {"type": "budget", "threshold": "lots"}},
     "condition.threshold", "number"),
    ("bad window '7x'", {"id": "w1", "condition": {"type": "budget", "threshold": 5, "window": "7x"}},
     "condition.window", "7x"),
    ("bad usage window '7x'", {"id": "w2", "condition": {"type": "usage", "threshold": 5, "window": "7x"}},
     "condition.window", "7x"),
    ("usage with monthly window", {"id": "w3", "condition": {"type": "usage", "metric": "tokens_per_hour",
                                                             "threshold": 5, "window": "monthly"}},
     "condition.window", "rolling"),
    ("usage negative threshold", {"id": "w4", "condition": {"type": "usage", "threshold": -1}},
     "condition.threshold", "non-negative"),
    ("per-subject cap on a rolling window", {"id": "w5", "condition": {"type": "MONTHLY_SPEND_CAP_PER_SUBJECT",
                                                                       "provider": "openai", "threshold": 5,
                                                                       "window": "7d"}},
     "condition.window", "month"),
    ("per-subject cap without provider", {"id": "w6", "condition": {"type": "MONTHLY_SPEND_CAP_PER_SUBJECT",
                                                                    "threshold": 5}},
     "condition.provider", "required"),
    ("cross-provider budget without providers", {"id": "w7", "condition": {"type": "BUDGET_CROSS_PROVIDER",
                                                                           "threshold": 5}},
     "condition.providers", "list"),
    ("unknown metric", {"id": "w8", "condition": {"type": "usage", "metric": "vibes_per_hour", "threshold": 5}},
     "condition.metric", "vibes_per_hour"),
    ("unknown scope", {"id": "s1", "scope": "galaxy", "condition": ALLOW}, "scope", "galaxy"),
    ("target field that does not fit the scope", {"id": "s2", "scope": "team", "subject": "bob", "condition": ALLOW},
     "subject", "scope"),
    ("org rule with a target", {"id": "s3", "scope": "org", "team": "platform", "condition": ALLOW},
     "team", "org"),
    ("empty target", {"id": "s4", "scope": "project", "project": "", "condition": ALLOW}, "project", "non-empty"),
    ("unknown top-level field", {"id": "f1", "condition": ALLOW, "severty": "BLOCK"}, "severty", "unknown field"),
    ("enabled not a boolean", {"id": "f2", "condition": ALLOW, "enabled": "yes"}, "enabled", "true or false"),
    ("action not an object", {"id": "f3", "condition": ALLOW, "action": "hard_stop"}, "action", "object"),
    ("unknown action", {"id": "f4", "condition": ALLOW, "action": {"type": "nuke"}}, "action.type", "nuke"),
    ("unknown severity", {"id": "f5", "condition": ALLOW, "severity": "FATAL"}, "severity", "FATAL"),
    ("severity contradicting action", {"id": "f6", "condition": ALLOW, "severity": "INFO",
                                       "action": {"type": "hard_stop"}}, "severity", "contradicts"),
    ("missing id", {"condition": ALLOW}, "id", "required"),
    ("bad regex in CONTENT_DLP", {"id": "c1", "condition": {"type": "CONTENT_DLP", "patterns": ["ok", "(unclosed"]}},
     "condition.patterns[1]", "regular expression"),
    ("unknown detector", {"id": "c2", "condition": {"type": "CONTENT_DLP", "detectors": ["email", "horoscope"]}},
     "condition.detectors", "horoscope"),
    ("DLP with nothing to match", {"id": "c3", "condition": {"type": "CONTENT_DLP"}}, "condition.patterns", "least"),
]


@pytest.mark.parametrize("case, rule, field, word", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_rule_names_rule_and_field(case: str, rule: dict[str, Any], field: str, word: str) -> None:
    valid = {"id": "fine", "scope": "org", "condition": ALLOW, "severity": "BLOCK"}
    lines = problems([valid, rule])
    rid = rule.get("id", "#1")
    assert lines, case
    assert any(line.startswith(f"rule {rid}: {field}: ") and word in line.split(": ", 2)[2] for line in lines), lines
    assert not any("fine" in line for line in lines)  # the valid neighbour is not blamed


@pytest.mark.parametrize("where", ["top", "condition", "window"])
def test_bad_timezone(where: str) -> None:
    cond: dict[str, Any] = {"type": "time", "operator": "outside", "window": {"days": "mon-fri", "hours": "9-17"}}
    rule: dict[str, Any] = {"id": "tz", "scope": "org", "severity": "WARN", "condition": cond}
    if where == "top":
        rule["timezone"] = "Mars/Olympus_Mons"
    elif where == "condition":
        cond["timezone"] = "Mars/Olympus_Mons"
    else:
        cond["window"]["timezone"] = "Mars/Olympus_Mons"
    (line,) = problems([rule])
    assert line.startswith("rule tz: ") and "timezone" in line and "Mars/Olympus_Mons" in line


def test_bad_default_timezone_reaches_time_rules() -> None:
    raw = [json.loads(SEED_OFF_HOURS)]
    (line,) = problems(raw, "Not/AZone")
    assert line.startswith("rule off-hours-protection: ") and "Not/AZone" in line


def test_duplicate_ids() -> None:
    rule = {"id": "same", "scope": "org", "condition": ALLOW, "severity": "BLOCK"}
    assert problems([rule, {**rule, "condition": BUDGET}]) == [
        "rule same: id: appears more than once; rule ids must be unique"]


def test_several_bad_rules_are_all_reported_at_once() -> None:
    raw = [
        {"id": "good", "scope": "org", "condition": ALLOW, "severity": "BLOCK"},
        {"id": "bad-type", "condition": {"type": "vibes"}},
        {"id": "bad-scope", "scope": "galaxy", "condition": ALLOW},
        {"id": "bad-threshold", "condition": {"type": "budget", "threshold": -1}},
        "not a rule",
        {"id": "good", "scope": "org", "condition": BUDGET},  # duplicate of the first
        {"id": "two-problems", "scope": "team", "subject": "bob", "colour": "red", "condition": ALLOW},
    ]
    lines = problems(raw)
    heads = [line.split(": ", 2)[:2] for line in lines]
    assert ["rule bad-type", "condition.type"] in heads
    assert ["rule bad-scope", "scope"] in heads
    assert ["rule bad-threshold", "condition.threshold"] in heads
    assert ["rule #4", "(rule)"] in heads
    assert ["rule good", "id"] in heads
    assert ["rule two-problems", "colour"] in heads
    assert ["rule two-problems", "subject"] in heads
    assert len(lines) == 7


@pytest.mark.parametrize("raw", [None, {}, {"rules": []}, "rules", 3])
def test_rules_must_be_a_list(raw: object) -> None:
    assert problems(raw) == ["rules: must be a list of rule objects"]


def test_empty_list_is_no_rules() -> None:
    assert parse_rules([]) == ()


# --- robustness --------------------------------------------------------------------------------------------------

# A field name that is not an identifier is quoted (it may contain anything, ':' included).
LINE = re.compile(r"^rule [^:]+: (?:'[^']*'|[^:'])+(?:, (?:'[^']*'|[^:'])+)*: .+|^rules: .+", re.DOTALL)

json_scalars = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=8)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
words = st.sampled_from(["model", "provider", "time", "budget", "usage", "MODEL_ALLOWLIST", "MODEL_DENYLIST",
                         "PROVIDER_ALLOWLIST", "PROVIDER_DENYLIST", "MONTHLY_SPEND_CAP_PER_SUBJECT",
                         "BUDGET_CROSS_PROVIDER", "COST_CENTRE_REQUIRED", "CONTENT_DLP", "in", "not_in", "outside",
                         "inside", "monthly", "1h", "7x", "-1", "email", "redirect", "hard_stop", "alert", "soft_cap",
                         "BLOCK", "INFO", "org", "team", "individual", "project", "service", "UTC", "Europe/London",
                         "gpt-4o", "mon-fri", "9-17", "22:00-06:30", "(", "a{4294967296}", "tokens_per_hour"])
values = json_values | words | st.lists(words, max_size=3)
windows = st.fixed_dictionaries({}, optional={"days": values, "hours": values, "timezone": values})
conditions = st.fixed_dictionaries({"type": words | json_values}, optional={
    k: values for k in ("models", "allowlist", "denylist", "operator", "providers", "provider", "threshold",
                        "metric", "patterns", "detectors", "timezone")} | {"window": windows | values})
actions = st.fixed_dictionaries({}, optional={"type": words | json_values, "model": values, "message": values,
                                              "notify": values, "to": values})
rule_like = st.fixed_dictionaries({}, optional={
    "id": st.sampled_from(["a", "b", ""]) | json_values, "scope": words | json_values, "condition": conditions,
    "action": actions, "enabled": values, "severity": words | json_values, "subject": values, "team": values,
    "project": values, "service": values, "timezone": words | json_values, "fail_open": values, "extra": values})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(rule_like | json_values, max_size=4) | json_values)
@example([{"id": "p", "condition": {"type": "CONTENT_DLP", "patterns": 5}}])
@example([{"id": "d", "condition": {"type": "CONTENT_DLP", "detectors": [["email"]]}}])
@example([{"id": "r", "condition": {"type": "CONTENT_DLP", "patterns": ["a{4294967296}"]}}])
@example([{"id": ":"}, {"id": "team:budget", "condition": {"type": "budget"}}])  # named by position
def test_parse_rules_returns_rules_or_policy_error(raw: object) -> None:
    try:
        rules = parse_rules(raw)
    except PolicyError as exc:
        assert exc.problems
        assert all(isinstance(line, str) and LINE.match(line) for line in exc.problems), exc.problems
    else:
        assert all(isinstance(r, Rule) for r in rules)
        assert len({r.id for r in rules}) == len(rules)


# Deterministic regressions for what the property above found (CONTENT_DLP options of the wrong shape).

@pytest.mark.parametrize("cond, field", [
    ({"type": "CONTENT_DLP", "patterns": 5}, "condition.patterns"),
    ({"type": "CONTENT_DLP", "detectors": 5}, "condition.detectors"),
    ({"type": "CONTENT_DLP", "detectors": [["email"]]}, "condition.detectors"),
    ({"type": "CONTENT_DLP", "detectors": [{"name": "email"}]}, "condition.detectors"),
    ({"type": "CONTENT_DLP", "patterns": ["a{4294967296}"]}, "condition.patterns[0]"),
])
def test_dlp_options_of_the_wrong_shape_are_policy_errors(cond: dict[str, Any], field: str) -> None:
    (line,) = problems([{"id": "dlp", "scope": "org", "severity": "BLOCK", "condition": cond}])
    assert line.startswith(f"rule dlp: {field}")


def test_dlp_pattern_given_as_one_string_is_not_split_into_characters() -> None:
    # "patterns": "secret" must mean the regex 'secret' (or be refused), never six one-letter regexes that flag
    # every prompt containing an 'e'.
    try:
        rule = one({"id": "dlp", "scope": "org", "severity": "BLOCK",
                    "condition": {"type": "CONTENT_DLP", "patterns": "secret"}})
    except PolicyError as exc:
        assert exc.problems[0].startswith("rule dlp: condition.patterns")
    else:
        assert not any(p.search("hello there") for p in rule.patterns), [p.pattern for p in rule.patterns]
        assert any(p.search("the secret plan") for p in rule.patterns)

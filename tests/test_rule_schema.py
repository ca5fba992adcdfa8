"""The one rule model (policy/rule_schema.py, a pydantic discriminated union on condition.type):

- for generated valid rules, in the seed's lower-case form and the upper-case form, it compiles exactly the
  `Rule` the hand-written validator it replaced compiled (that validator is kept, verbatim, at the bottom of
  this file as the reference; the package no longer has it);
- an unknown key inserted anywhere (rule, condition, time window, action) is an error naming that key;
- misspelt fields at every level, `mode`, and the words of the messages (never pydantic's own);
- parse speed.
"""

from __future__ import annotations

import re
import time
from decimal import Decimal, InvalidOperation
from typing import Any

import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tollhouse.policy.compiled import MONTHLY, Kind, ScopeKind, Severity, Window, parse_count_window
from tollhouse.policy.rule_conditions import CONDITIONS, DETECTORS, TimeWindowSpec, condition_tag
from tollhouse.policy.rule_errors import quoted
from tollhouse.policy.rule_schema import ActionSpec, RuleSpec
from tollhouse.policy.rules import Mode, PolicyError, Rule, parse_rules
from tollhouse.policy.timewindow import WindowError, parse_window, zone

# --- generated valid rules ---------------------------------------------------------------------------------------

MODELS = ["gpt-4o", "gpt-4o-mini", "o1", "claude-3-haiku-20240307", "claude-3-5-sonnet-20241022"]
PROVIDERS = ["openai", "anthropic", "gemini", "api.openai.com"]
ZONES = ["UTC", "Europe/London", "America/New_York", "Asia/Kolkata"]
SEVERITY_NAMES = {1: ["INFO"], 2: ["WARN"], 3: ["SOFT_CAP"], 4: ["BLOCK"]}
ACTION_LEVELS = {"log": 1, "info": 1, "alert": 2, "warn": 2, "soft_cap": 3, "hard_stop": 4, "block": 4}
TARGET_KEY = {"team": "team", "project": "project", "individual": "subject", "service": "service"}


def cased(word: str) -> st.SearchStrategy[str]:
    return st.sampled_from(sorted({word, word.lower(), word.upper(), word.title()}))


def one_or_list(pool: list[str]) -> st.SearchStrategy[Any]:
    return st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True) | st.sampled_from(pool)


thresholds = (st.integers(0, 10**9) | st.floats(0, 1e9, allow_nan=False, allow_infinity=False)
              | st.decimals(0, 10**6, places=2).map(str))
rolling = st.builds(lambda n, unit: f"{n}{unit}", st.integers(1, 400), st.sampled_from(["s", "m", "min", "h", "d",
                                                                                        " h", "D"]))
count_windows = st.sampled_from(["monthly", "month", "calendar_month", "mtd", "Monthly"]) | rolling
days = (st.lists(st.integers(0, 7), min_size=1, max_size=7)
        | st.sampled_from(["mon-fri", "sat,sun", "1-5", "fri-mon", "monday", "Tue"]))
hours = (st.tuples(st.integers(0, 24), st.integers(0, 24)).filter(lambda t: t[0] != t[1]).map(list)
         | st.sampled_from(["9-17", "22:00-06:30", "08:00-18:00, 20-22", ["9-12", "13-17"]]))
time_windows = st.fixed_dictionaries({}, optional={"days": days, "hours": hours, "timezone": st.sampled_from(ZONES)})
metrics = st.sampled_from(["tokens", "input_tokens", "output_tokens", "requests"]).flatmap(
    lambda m: st.sampled_from([m, f"{m}_per_minute", f"{m}_per_hour", f"{m}_per_day", f"{m}_per_month"]))


def seed_list(kind: str, noun: str, pool: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    values = one_or_list(pool)
    typ = cased(kind)
    return (st.fixed_dictionaries({"type": typ, "operator": st.sampled_from(["in", "not_in"]), noun: values})
            | st.fixed_dictionaries({"type": typ, "allowlist": values}, optional={"operator": st.just("not_in")})
            | st.fixed_dictionaries({"type": typ, "denylist": values}, optional={"operator": st.just("in")}))


def upper_list(kind: str, noun: str, other: str, pool: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    values = one_or_list(pool)
    return (st.fixed_dictionaries({"type": cased(kind), noun: values})
            | st.fixed_dictionaries({"type": cased(kind), other: values}))


seed_conditions = (
    seed_list("model", "models", MODELS)
    | seed_list("provider", "providers", PROVIDERS)
    | st.fixed_dictionaries({"type": cased("time"), "window": time_windows}, optional={
        "operator": st.sampled_from(["outside", "inside", "in", "not_in"]), "timezone": st.sampled_from(ZONES)})
    | st.fixed_dictionaries({"type": cased("budget"), "threshold": thresholds}, optional={"window": count_windows})
    | st.fixed_dictionaries({"type": cased("budget"), "threshold": thresholds, "providers": one_or_list(PROVIDERS)},
                            optional={"window": count_windows})
    | st.fixed_dictionaries({"type": cased("budget"), "threshold": thresholds, "provider": st.sampled_from(PROVIDERS)},
                            optional={"window": count_windows})
    | st.fixed_dictionaries({"type": cased("usage"), "threshold": thresholds},
                            optional={"metric": metrics, "window": rolling})
)
upper_conditions = (
    upper_list("MODEL_ALLOWLIST", "models", "allowlist", MODELS)
    | upper_list("MODEL_DENYLIST", "models", "denylist", MODELS)
    | upper_list("PROVIDER_ALLOWLIST", "providers", "allowlist", PROVIDERS)
    | upper_list("PROVIDER_DENYLIST", "providers", "denylist", PROVIDERS)
    | st.fixed_dictionaries({"type": cased("MONTHLY_SPEND_CAP_PER_SUBJECT"), "provider": st.sampled_from(PROVIDERS),
                             "threshold": thresholds}, optional={"window": st.sampled_from(["monthly", "month"])})
    | st.fixed_dictionaries({"type": cased("BUDGET_CROSS_PROVIDER"), "providers": one_or_list(PROVIDERS),
                             "threshold": thresholds}, optional={"window": count_windows})
    | st.fixed_dictionaries({"type": cased("COST_CENTRE_REQUIRED")})
    | st.fixed_dictionaries({"type": cased("CONTENT_DLP")}, optional={
        "patterns": st.lists(st.sampled_from([r"ACME-\d+", r"(?i)project\s+falcon", "secret"]), max_size=3)
        | st.just("secret"),
        "detectors": st.lists(st.sampled_from(sorted(DETECTORS)), max_size=3, unique=True)})
    .filter(lambda c: bool(c.get("patterns") or c.get("detectors")))
)


def _as_list(value: Any) -> set[str]:
    return {value} if isinstance(value, str) else set(value)


def model_list(cond: dict[str, Any]) -> tuple[bool, set[str]] | None:
    """(allow, values) of a model-list condition, None for any other."""
    tag = condition_tag(cond)
    if tag == "MODEL_ALLOWLIST":
        return True, _as_list(cond.get("models", cond.get("allowlist")))
    if tag == "MODEL_DENYLIST":
        return False, _as_list(cond.get("models", cond.get("denylist")))
    if tag == "model":
        if "allowlist" in cond:
            return True, _as_list(cond["allowlist"])
        if "denylist" in cond:
            return False, _as_list(cond["denylist"])
        return cond["operator"] == "not_in", _as_list(cond["models"])
    return None


@st.composite
def valid_rules(draw: st.DrawFn, conditions: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    cond = draw(conditions)
    rule: dict[str, Any] = {"id": draw(st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True)), "condition": cond}
    scope = draw(st.none() | st.sampled_from(["org", "team", "project", "individual", "service"]))
    if scope is not None:
        rule["scope"] = draw(cased(scope))
        if scope != "org" and draw(st.booleans()):
            rule[TARGET_KEY[scope]] = draw(st.sampled_from(["platform", "bob", "checkout", "support-bot"]))
    action: dict[str, Any] = draw(st.fixed_dictionaries({}, optional={
        "message": st.text(max_size=12), "notify": st.lists(st.sampled_from(["eng-leads@company.com", "ops-slack"]),
                                                            max_size=2)}))
    listed = model_list(cond)
    how = draw(st.sampled_from(["severity", "action", "both", "redirect", "neither"]))
    if how == "redirect" and listed is not None:
        allow, values = listed
        pool = sorted(values) if allow else [m for m in MODELS if m not in values]
        if pool:
            action["type"] = "redirect"
            action[draw(st.sampled_from(["model", "to", "target_model"]))] = draw(st.sampled_from(pool))
            if draw(st.booleans()):
                rule["severity"] = draw(st.sampled_from(["INFO", "WARN", "SOFT_CAP", "BLOCK"]))
    elif how in ("action", "both"):
        atype = draw(st.sampled_from(sorted(ACTION_LEVELS)))
        action["type"] = draw(cased(atype))
        if how == "both":
            rule["severity"] = draw(st.sampled_from(SEVERITY_NAMES[ACTION_LEVELS[atype]]).flatmap(cased))
    elif how == "severity":
        rule["severity"] = draw(st.sampled_from(["INFO", "WARN", "SOFT_CAP", "BLOCK", "block", "Warn"]))
    if action or draw(st.booleans()):
        rule["action"] = action
    optional = draw(st.fixed_dictionaries({}, optional={
        "enabled": st.booleans(), "fail_open": st.booleans(), "description": st.text(max_size=12),
        "name": st.text(max_size=12), "timezone": st.sampled_from(ZONES)}))
    rule.update(optional)
    return rule


any_valid_rule = valid_rules(seed_conditions) | valid_rules(upper_conditions)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(valid_rules(seed_conditions), max_size=4, unique_by=lambda r: r["id"]),
       st.sampled_from(ZONES))
def test_seed_form_compiles_as_the_old_parser_did(raw: list[dict[str, Any]], tz: str) -> None:
    assert parse_rules(raw, tz) == old_parse_rules(raw, tz)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(valid_rules(upper_conditions), max_size=4, unique_by=lambda r: r["id"]),
       st.sampled_from(ZONES))
def test_upper_case_form_compiles_as_the_old_parser_did(raw: list[dict[str, Any]], tz: str) -> None:
    assert parse_rules(raw, tz) == old_parse_rules(raw, tz)


# --- an unknown key anywhere is an error naming it -----------------------------------------------------------------

NEAR_MISSES = ["windw", "operater", "threshhold", "mesage", "notfy", "severty", "enabeld", "scpoe", "conditon",
               "modles", "allow_list", "hour", "day", "tz", "metrics", "provders", "detector", "pattern", "typ",
               "operator", "window", "models", "providers", "provider", "threshold", "timezone", "message", "team",
               "subject", "days", "hours", "notify", "severity", "action", "mode", "to"]
keys = st.sampled_from(NEAR_MISSES) | st.text(min_size=1, max_size=8)


def allowed_at(rule: dict[str, Any], level: str) -> set[str]:
    if level == "rule":
        return set(RuleSpec.model_fields)
    if level == "action":
        return set(ActionSpec.model_fields)
    if level == "window":
        return set(TimeWindowSpec.model_fields)
    tag = condition_tag(rule["condition"])
    assert tag is not None
    return set(CONDITIONS[tag].model_fields)


def field_name(key: str) -> str:
    return key if key.isidentifier() else quoted(key)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_valid_rule, st.sampled_from(["rule", "condition", "action", "window"]), keys, st.data())
def test_an_unknown_key_anywhere_is_rejected_naming_it(rule: dict[str, Any], level: str, key: str,
                                                       data: st.DataObject) -> None:
    if level == "window" and not isinstance(rule["condition"].get("window"), dict):
        level = "condition"  # only time conditions have a window object
    if key in allowed_at(rule, level):
        key = f"{key}_x"
    value = data.draw(st.none() | st.integers() | st.text(max_size=4) | st.lists(st.integers(), max_size=2))
    path = {"rule": "", "condition": "condition.", "action": "action.", "window": "condition.window."}[level]
    if level == "rule":
        rule[key] = value
    elif level == "condition":
        rule["condition"][key] = value
    elif level == "action":
        rule["action"] = {**(rule.get("action") or {}), key: value}
    else:
        rule["condition"]["window"][key] = value
    with pytest.raises(PolicyError) as info:
        parse_rules([rule])
    (line,) = info.value.problems
    assert line.startswith(f"rule {rule['id']}: {path}{field_name(key)}: unknown field"), line
    assert "; allowed: " in line


# --- typos at every level, precisely ---------------------------------------------------------------------------------

TIME_RULE: dict[str, Any] = {"id": "office", "scope": "team", "team": "platform",
                             "condition": {"type": "time", "operator": "outside",
                                           "window": {"days": "mon-fri", "hours": "9-17"}},
                             "action": {"type": "alert", "message": "late", "notify": ["ops-slack"]}}


def with_change(where: tuple[str, ...], old: str, new: str) -> dict[str, Any]:
    rule: dict[str, Any] = {**TIME_RULE, "condition": {**TIME_RULE["condition"],
                                                       "window": dict(TIME_RULE["condition"]["window"])},
                            "action": dict(TIME_RULE["action"])}
    target = rule
    for part in where:
        target = target[part]
    target[new] = target.pop(old)
    return rule


@pytest.mark.parametrize("where, old, new, line", [
    ((), "scope", "scpoe", "rule office: scpoe: unknown field (did you mean 'scope'?); allowed: action, condition, "
                           "description, enabled, fail_open, id, mode, name, project, scope, service, severity, "
                           "subject, team, timezone"),
    (("condition",), "window", "windw", "rule office: condition.windw: unknown field (did you mean 'window'?); "
                                        "allowed: operator, timezone, type, window"),
    (("condition",), "operator", "operater", "rule office: condition.operater: unknown field (did you mean "
                                             "'operator'?); allowed: operator, timezone, type, window"),
    (("condition", "window"), "hours", "hous", "rule office: condition.window.hous: unknown field (did you mean "
                                               "'hours'?); allowed: days, hours, timezone"),
    (("action",), "message", "mesage", "rule office: action.mesage: unknown field (did you mean 'message'?); "
                                       "allowed: message, model, notify, target_model, to, type"),
    (("action",), "notify", "notfy", "rule office: action.notfy: unknown field (did you mean 'notify'?); "
                                     "allowed: message, model, notify, target_model, to, type"),
])
def test_a_typo_is_named_with_its_path_and_the_fields_allowed_there(where: tuple[str, ...], old: str, new: str,
                                                                    line: str) -> None:
    lines = problems([with_change(where, old, new)])
    assert line in lines, lines


def problems(raw: object, tz: str = "UTC") -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_rules(raw, tz)
    return info.value.problems


def test_a_removed_required_window_says_what_to_write() -> None:
    rule = with_change(("condition",), "window", "windw")
    assert problems([rule])[0] == ('rule office: condition.window: required: an object such as {"days": '
                                   '[1,2,3,4,5], "hours": [8, 18]}')


@pytest.mark.parametrize("rule, line", [
    ({"id": "a", "condition": {"type": "MODEL_DENYLIST", "models": ["x"], "denylist": ["y"]}},
     "rule a: condition.denylist: give one list: 'models' or 'denylist', not 2"),
    ({"id": "a", "condition": {"type": "MODEL_ALLOWLIST", "models": ["x"], "denylist": ["y"]}},
     "rule a: condition.denylist: unknown field; allowed: allowlist, models, type"),
    ({"id": "a", "condition": {"type": "budget", "threshold": 5}, "action": {"type": "alert", "model": "m"}},
     'rule a: action.model: only a redirect takes a substitute model: "type": "redirect"'),
    ({"id": "a", "condition": {"type": "budget", "threshold": 5, "timezone": "UTC"}},
     "rule a: condition.timezone: unknown field; allowed: provider, providers, threshold, type, window"),
    ({"id": "a", "condition": {"type": "budget", "threshold": 5}, "enabled": "yes"},
     "rule a: enabled: must be true or false"),
    ({"id": "a", "condition": "budget"},
     'rule a: condition: must be an object such as {"type": "budget", "threshold": 500}'),
    ({"id": "a", "condition": {"type": "usage"}},
     "rule a: condition.threshold: required: the most tokens (or requests) per window, e.g. 100000"),
    ({"id": "a", "condition": {"type": "budget", "threshold": 5}, "action": {"type": "alert", "notify": "x@y.z",
                                                                              "message": 5}},
     "rule a: action.message: must be a string"),
    ({"id": "a", "condition": {"type": "budget", "threshold": 5}, 7: "x"},
     "rule a: '7': unknown field (field names are strings); allowed: action, condition, description, enabled, "
     "fail_open, id, mode, name, project, scope, service, severity, subject, team, timezone"),
])
def test_messages(rule: dict[Any, Any], line: str) -> None:
    assert problems([rule]) == [line]


PYDANTIC_WORDS = ("Input should", "Value error", "pydantic", "validation error", "Field required", "Extra inputs",
                  "Unable to extract tag", "Input tag")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_valid_rule, st.sampled_from(["id", "scope", "enabled", "severity", "action", "condition", "team",
                                        "timezone", "mode", "fail_open"]),
       st.none() | st.integers() | st.floats() | st.text(max_size=5) | st.lists(st.integers(), max_size=2)
       | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
def test_pydantic_text_never_leaks(rule: dict[str, Any], key: str, value: Any) -> None:
    rule[key] = value
    try:
        parse_rules([rule])
    except PolicyError as exc:
        for line in exc.problems:
            assert not any(word in line for word in PYDANTIC_WORDS), line
            assert line.startswith(f"rule {rule['id'] if key != 'id' else ''}"), line


# --- mode, the compiled rule, speed ---------------------------------------------------------------------------------


def test_mode_defaults_to_enforce_and_shadow_is_kept_on_the_rule() -> None:
    base = {"id": "m", "condition": {"type": "MODEL_DENYLIST", "models": ["gpt-4o"]}}
    (plain,) = parse_rules([base])
    (shadow,) = parse_rules([{**base, "mode": "shadow"}])
    (enforce,) = parse_rules([{**base, "mode": "enforce"}])
    assert plain.mode is Mode.enforce and enforce.mode is Mode.enforce and shadow.mode is Mode.shadow
    assert problems([{**base, "mode": "dry-run"}]) == [
        "rule m: mode: 'dry-run' is not a mode; use 'enforce' (the default) or 'shadow' (judged and recorded, "
        "never applied)"]


def test_a_thousand_rules_parse_well_under_a_second() -> None:
    forms = [
        {"condition": {"type": "model", "operator": "not_in", "allowlist": MODELS}, "action": {"type": "hard_stop"}},
        {"condition": {"type": "time", "window": {"days": "mon-fri", "hours": "9-17"}}, "severity": "WARN"},
        {"condition": {"type": "BUDGET_CROSS_PROVIDER", "providers": PROVIDERS, "threshold": 1000, "window": "30d"}},
        {"condition": {"type": "CONTENT_DLP", "detectors": ["email"], "patterns": [r"ACME-\d+"]}},
        {"scope": "team", "team": "platform", "condition": {"type": "usage", "metric": "tokens_per_hour",
                                                            "threshold": 100000}},
    ]
    raw = [{"id": f"r{i}", **forms[i % len(forms)]} for i in range(1000)]
    runs = []
    for _ in range(3):  # the best of three: the machine is shared
        start = time.perf_counter()
        rules = parse_rules(raw, "Europe/London")
        runs.append(time.perf_counter() - start)
    assert len(rules) == 1000 and all(isinstance(r, Rule) for r in rules)
    assert min(runs) < 0.5, f"1,000 rules took {min(runs):.3f} s at best"


# === REFERENCE ONLY: the hand-written validator the schema replaced, verbatim but for its names =====================
# (Not used by the package. It is the oracle of the two equivalence properties above.)


class OldPolicyError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


_SEVERITIES = {"INFO": Severity.log, "WARN": Severity.warn, "SOFT_CAP": Severity.soft_cap, "BLOCK": Severity.block}
_ACTIONS = {"log": Severity.log, "info": Severity.log, "alert": Severity.warn, "warn": Severity.warn,
            "soft_cap": Severity.soft_cap, "hard_stop": Severity.block, "block": Severity.block}
_CONDITION_TYPES = ("model", "provider", "time", "budget", "usage", "MODEL_ALLOWLIST", "MODEL_DENYLIST",
                    "PROVIDER_ALLOWLIST", "PROVIDER_DENYLIST", "MONTHLY_SPEND_CAP_PER_SUBJECT",
                    "BUDGET_CROSS_PROVIDER", "COST_CENTRE_REQUIRED", "CONTENT_DLP")
_TOP_KEYS = {"id", "scope", "condition", "action", "enabled", "severity", "subject", "team", "project", "service",
             "description", "timezone", "fail_open", "name"}



_METRIC_WINDOWS = {"per_minute": "1m", "per_hour": "1h", "per_day": "24h", "per_month": "30d"}


def _strings(value: object, what: str) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset({value})
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{what} must be a non-empty list of strings")
    return frozenset(value)


def _decimal(value: object, what: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{what} must be a number")
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if not d.is_finite() or d < 0:
        raise ValueError(f"{what} must be a non-negative number, got {value!r}")
    return d


class _Problems:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, rule: str, where: str, what: str) -> None:
        self.lines.append(f"rule {rule}: {where}: {what}")


def old_parse_rules(raw: object, default_timezone: str = "UTC") -> tuple[Rule, ...]:
    if not isinstance(raw, list | tuple):
        raise OldPolicyError(["rules: must be a list of rule objects"])
    problems = _Problems()
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        label = f"#{i}"
        if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"]:
            label = item["id"]
        before = len(problems.lines)
        rule = _parse_rule(item, label, default_timezone, problems)
        if rule is not None and len(problems.lines) == before:
            if rule.id in seen:
                problems.add(label, "id", "appears more than once; rule ids must be unique")
            seen.add(rule.id)
            rules.append(rule)
    if problems.lines:
        raise OldPolicyError(problems.lines)
    return tuple(rules)


def _parse_rule(item: object, label: str, default_tz: str, p: _Problems) -> Rule | None:
    if not isinstance(item, dict):
        p.add(label, "(rule)", "must be an object with id, scope, condition, action")
        return None
    unknown = sorted((str(k) for k in set(item) - _TOP_KEYS), key=str)
    if unknown:
        names = ", ".join(k if k.isidentifier() else _quoted(k) for k in unknown)
        p.add(label, names, f"unknown field; allowed: {', '.join(sorted(_TOP_KEYS))}")
    rid = item.get("id")
    if not isinstance(rid, str) or not rid.strip():
        p.add(label, "id", "required: a unique, human-readable rule name")
        rid = label
    scope_raw = item.get("scope", "org")
    try:
        scope = ScopeKind(str(scope_raw).lower())
    except ValueError:
        p.add(label, "scope", f"{scope_raw!r} is not a scope; use one of org, team, project, individual, service")
        return None
    target = _target(item, scope, label, p)
    enabled = item.get("enabled", True)
    if not isinstance(enabled, bool):
        p.add(label, "enabled", "must be true or false")
        enabled = True
    cond = item.get("condition")
    if not isinstance(cond, dict) or not isinstance(cond.get("type"), str):
        p.add(label, "condition.type", f"required; one of {', '.join(_CONDITION_TYPES)}")
        return None
    action = item.get("action") or {}
    if not isinstance(action, dict):
        p.add(label, "action", "must be an object such as {\"type\": \"hard_stop\", \"message\": \"...\"}")
        return None
    severity, redirect_to = _severity(item, action, label, p)
    message = action.get("message") or item.get("description") or ""
    if not isinstance(message, str):
        p.add(label, "action.message", "must be a string")
        message = ""
    notify = action.get("notify", [])
    fail_open = item.get("fail_open", False)
    if not isinstance(fail_open, bool):
        p.add(label, "fail_open", "must be true or false")
        fail_open = False
    tz = item.get("timezone", cond.get("timezone", default_tz))
    try:
        zone(str(tz))
    except WindowError as exc:
        p.add(label, "timezone", str(exc))
        return None
    base: dict[str, Any] = {
        "id": rid, "scope": scope, "target": target, "severity": severity, "message": message,
        "enabled": enabled, "fail_open": fail_open,
        "notify": tuple(n for n in notify if isinstance(n, str)) if isinstance(notify, list) else (),
    }
    try:
        return _condition(cond, base, redirect_to, str(tz), scope, target)
    except (ValueError, WindowError) as exc:
        where, _, what = str(exc).partition("|")
        if not what:
            where, what = "condition", where
        p.add(label, where, what)
        return None


def _quoted(name: str) -> str:
    """A field name that is not an identifier, quoted so the problem line stays unambiguous."""
    escaped = name.encode("unicode_escape").decode("ascii").replace("'", "\\x27").replace(":", "\\x3a")
    return f"'{escaped}'"


def _target(item: dict[str, Any], scope: ScopeKind, label: str, p: _Problems) -> str | None:
    names = {"team": "team", "project": "project", "individual": "subject", "service": "service"}
    keys = [k for k in ("team", "project", "subject", "service") if k in item]
    if scope is ScopeKind.org:
        if keys:
            p.add(label, keys[0], "an org-scoped rule applies to everyone; remove it or change the scope")
        return None
    want = names[scope.value]
    for k in keys:
        if k != want:
            p.add(label, k, f"does not fit scope {scope.value!r}; a {scope.value} rule is targeted with {want!r}")
    value = item.get(want)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        p.add(label, want, "must be a non-empty string id")
        return None
    return value


def _severity(item: dict[str, Any], action: dict[str, Any], label: str, p: _Problems
              ) -> tuple[Severity, str | None]:
    atype = action.get("type")
    sev_raw = item.get("severity")
    severity: Severity | None = None
    if sev_raw is not None:
        if not isinstance(sev_raw, str) or sev_raw.upper() not in _SEVERITIES:
            p.add(label, "severity", f"{sev_raw!r} is not a severity; use INFO, WARN or BLOCK")
        else:
            severity = _SEVERITIES[sev_raw.upper()]
    if atype is None:
        return severity or Severity.block, None
    if atype == "redirect":
        model = action.get("model") or action.get("to") or action.get("target_model")
        if not isinstance(model, str) or not model:
            p.add(label, "action.model", "a redirect needs the substitute model, e.g. \"model\": \"gpt-4o-mini\"")
            return Severity.log, None
        return severity or Severity.log, model
    if not isinstance(atype, str) or atype.lower() not in _ACTIONS:
        p.add(label, "action.type", f"{atype!r} is not an action; use alert, soft_cap, hard_stop or redirect")
        return Severity.block, None
    by_action = _ACTIONS[atype.lower()]
    if severity is not None and severity is not by_action:
        p.add(label, "severity", f"{sev_raw} contradicts action.type {atype!r}; give one or make them agree")
    return by_action, None


def _condition(c: dict[str, Any], base: dict[str, Any], redirect_to: str | None, tz: str, scope: ScopeKind,
               target: str | None) -> Rule:
    ctype: str = c["type"]
    known = {t.lower(): t for t in _CONDITION_TYPES}
    canonical = known.get(ctype.lower())
    if canonical is None:
        raise ValueError(f"condition.type|{ctype!r} is not a condition type; use one of {', '.join(_CONDITION_TYPES)}")
    t = canonical
    if redirect_to is not None and t not in ("model", "MODEL_DENYLIST", "MODEL_ALLOWLIST"):
        raise ValueError("action.type|redirect works with model conditions only (type model / MODEL_DENYLIST)")
    if t in ("model", "MODEL_ALLOWLIST", "MODEL_DENYLIST", "provider", "PROVIDER_ALLOWLIST", "PROVIDER_DENYLIST"):
        return _list_rule(t, c, base, redirect_to)
    if t == "time":
        op = c.get("operator", "outside")
        if op not in ("outside", "inside", "not_in", "in"):
            raise ValueError("condition.operator|use 'outside' (violation outside the window) or 'inside'")
        window = parse_window(c.get("window"), str(c.get("timezone", tz)))
        return Rule(kind=Kind.time, type_name="TIME_WINDOW", window=window, inside=op in ("inside", "in"), **base)
    if t == "COST_CENTRE_REQUIRED":
        return Rule(kind=Kind.cost_centre, type_name=t, **base)
    if t == "CONTENT_DLP":
        return _dlp_rule(c, base)
    if t == "usage":
        return _usage_rule(c, base)
    return _spend_rule(t, c, base, scope, target)


def _list_rule(t: str, c: dict[str, Any], base: dict[str, Any], redirect_to: str | None) -> Rule:
    is_model = t.startswith(("model", "MODEL"))
    noun = "models" if is_model else "providers"
    raw = None
    allow: bool
    if t in ("MODEL_ALLOWLIST", "PROVIDER_ALLOWLIST"):
        allow, raw = True, c.get(noun, c.get("allowlist"))
    elif t in ("MODEL_DENYLIST", "PROVIDER_DENYLIST"):
        allow, raw = False, c.get(noun, c.get("denylist"))
    else:
        op = c.get("operator")
        if "allowlist" in c:
            allow, raw = True, c["allowlist"]
        elif "denylist" in c:
            allow, raw = False, c["denylist"]
        else:
            raw = c.get(noun)
            allow = op == "not_in"
        if op is not None and op not in ("in", "not_in"):
            raise ValueError("condition.operator|use 'in' (listed values violate) or 'not_in' (unlisted violate)")
        if (op == "in" and "allowlist" in c) or (op == "not_in" and "denylist" in c):
            raise ValueError("condition.operator|contradicts the list name; 'not_in' goes with allowlist, "
                             "'in' with denylist")
        if op is None and "allowlist" not in c and "denylist" not in c:
            raise ValueError(f"condition.operator|required with '{noun}': 'in' or 'not_in'")
    if raw is None:
        raise ValueError(f"condition.{noun}|required: a list such as [\"gpt-4o\"]")
    try:
        values = _strings(raw, noun)
    except ValueError as exc:
        raise ValueError(f"condition.{noun}|{exc}") from None
    if redirect_to is not None:
        kind = Kind.redirect
    elif is_model:
        kind = Kind.model_allow if allow else Kind.model_deny
    else:
        kind = Kind.provider_allow if allow else Kind.provider_deny
    if redirect_to is not None and allow and redirect_to not in values:
        raise ValueError("action.model|the substitute must be on the allowlist, or the redirect would loop")
    if redirect_to is not None and not allow and redirect_to in values:
        raise ValueError("action.model|the substitute is itself in the list it replaces")
    type_name = "MODEL_REDIRECT" if kind is Kind.redirect else kind.value.upper()
    return Rule(kind=kind, type_name=type_name, allow=allow, values=values, redirect_to=redirect_to, **base)


def _dlp_rule(c: dict[str, Any], base: dict[str, Any]) -> Rule:
    raw_patterns = c.get("patterns") or []
    if isinstance(raw_patterns, str):
        raw_patterns = [raw_patterns]
    if not isinstance(raw_patterns, list):
        raise ValueError("condition.patterns|must be a list of regular expressions")
    patterns: list[regex.Pattern[str]] = []
    names: list[str] = []
    for i, pat in enumerate(raw_patterns):
        if not isinstance(pat, str):
            raise ValueError(f"condition.patterns[{i}]|must be a regular expression string")
        try:
            patterns.append(regex.compile(pat))
        except (regex.error, OverflowError, RecursionError, ValueError) as exc:
            raise ValueError(f"condition.patterns[{i}]|not a valid regular expression: {exc}") from None
        names.append(f"patterns[{i}]")
    detectors = c.get("detectors") or []
    if isinstance(detectors, str):
        detectors = [detectors]
    if not isinstance(detectors, list):
        raise ValueError(f"condition.detectors|must be a list of names: {', '.join(sorted(DETECTORS))}")
    for det in detectors:
        if not isinstance(det, str) or det not in DETECTORS:
            raise ValueError(f"condition.detectors|{det!r} is not a detector; use {', '.join(sorted(DETECTORS))}")
        patterns.append(regex.compile(DETECTORS[det]))
        names.append(det)
    if not patterns:
        raise ValueError("condition.patterns|give at least one regex in 'patterns' or a name in 'detectors'")
    return Rule(kind=Kind.content, type_name="CONTENT_DLP", patterns=tuple(patterns),
                pattern_names=tuple(names), **base)


def _usage_rule(c: dict[str, Any], base: dict[str, Any]) -> Rule:
    metric_raw = c.get("metric", "tokens_per_hour")
    if not isinstance(metric_raw, str):
        raise ValueError("condition.metric|use e.g. tokens_per_hour, tokens_per_minute, requests_per_minute")
    m = re.fullmatch(r"(tokens|input_tokens|output_tokens|requests)(?:_(per_minute|per_hour|per_day|per_month))?",
                     metric_raw)
    if not m:
        raise ValueError(f"condition.metric|{metric_raw!r} is not a metric; use tokens_per_hour, "
                         "tokens_per_minute, tokens_per_day, requests_per_minute, ...")
    default = parse_count_window(_METRIC_WINDOWS.get(m.group(2) or "", "1h"), MONTHLY)
    try:
        window = parse_count_window(c.get("window"), default)
        threshold = _decimal(c.get("threshold"), "threshold")
    except ValueError as exc:
        field_name = "window" if "window" in str(exc) else "threshold"
        raise ValueError(f"condition.{field_name}|{exc}") from None
    if window.monthly:
        raise ValueError("condition.window|token rates use rolling windows: '1m', '1h', '24h', '7d', '30d'")
    return Rule(kind=Kind.tokens, type_name="TOKEN_RATE_LIMIT", metric=m.group(1), threshold=threshold,
                count_window=window, **base)


def _spend_rule(t: str, c: dict[str, Any], base: dict[str, Any], scope: ScopeKind, target: str | None) -> Rule:
    if "threshold" not in c:
        raise ValueError("condition.threshold|required: the cap in USD, e.g. 500")
    try:
        threshold = _decimal(c["threshold"], "threshold")
    except ValueError as exc:
        raise ValueError(f"condition.threshold|{exc}") from None
    providers: frozenset[str] | None = None
    default_window = MONTHLY
    if t == "MONTHLY_SPEND_CAP_PER_SUBJECT":
        prov = c.get("provider")
        if not isinstance(prov, str) or not prov:
            raise ValueError("condition.provider|required: the one provider this cap counts, e.g. \"openai\"")
        providers = frozenset({prov})
        if c.get("window") not in (None, "monthly", "month"):
            raise ValueError("condition.window|MONTHLY_SPEND_CAP_PER_SUBJECT is month to date; use "
                             "BUDGET_CROSS_PROVIDER for rolling windows")
    elif t == "BUDGET_CROSS_PROVIDER":
        try:
            providers = _strings(c.get("providers"), "providers")
        except ValueError as exc:
            raise ValueError(f"condition.providers|{exc}") from None
        default_window = Window(monthly=False, seconds=30 * 86400)
    elif "providers" in c or "provider" in c:
        raw = c.get("providers", c.get("provider"))
        try:
            providers = _strings(raw, "providers")
        except ValueError as exc:
            raise ValueError(f"condition.providers|{exc}") from None
    try:
        window = parse_count_window(c.get("window"), default_window)
    except ValueError as exc:
        raise ValueError(f"condition.window|{exc}") from None
    return Rule(kind=Kind.spend, type_name="BUDGET" if t == "budget" else t, threshold=threshold,
                count_window=window, providers=providers,
                **base)

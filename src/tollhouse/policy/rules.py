"""The rule model: one schema for the seed's JSON rules and the enforcement doc's rule types.

`parse_rules(raw)` turns plain data (from YAML, JSON or the API) into typed, validated `Rule`s, or
raises `PolicyError` listing every problem with its rule id and field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import IntEnum, StrEnum
from typing import Any

import regex

from tollhouse.policy.timewindow import TimeWindow, WindowError, parse_window, zone


class PolicyError(ValueError):
    """Invalid rules. `problems` holds one line per problem: `rule <id>: <field>: <what is wrong>`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Severity(IntEnum):
    """One scale for the seed's actions and the enforcement doc's severities."""

    log = 1  # INFO: record only
    warn = 2  # WARN / alert: record, alert, forward
    soft_cap = 3  # forward with X-Tollhouse-Warning, recorded violation
    block = 4  # BLOCK / hard_stop: refuse before the upstream


class ScopeKind(StrEnum):
    org = "org"
    team = "team"
    project = "project"
    individual = "individual"
    service = "service"


class Kind(StrEnum):
    """What a rule is about. Rules of an *override* kind give way to a more specific scope's rules of
    the same kind; the others (caps, attribution, content) all apply at once."""

    model_allow = "model_allowlist"
    model_deny = "model_denylist"
    provider_allow = "provider_allowlist"
    provider_deny = "provider_denylist"
    time = "time"
    redirect = "redirect"
    spend = "spend"
    tokens = "tokens"
    cost_centre = "cost_centre"
    content = "content"


OVERRIDE_KINDS = frozenset({Kind.model_allow, Kind.model_deny, Kind.provider_allow, Kind.provider_deny, Kind.time,
                            Kind.redirect})
LIST_KINDS = frozenset({Kind.model_allow, Kind.model_deny, Kind.provider_allow, Kind.provider_deny})

_SEVERITIES = {"INFO": Severity.log, "WARN": Severity.warn, "SOFT_CAP": Severity.soft_cap, "BLOCK": Severity.block}
_ACTIONS = {"log": Severity.log, "info": Severity.log, "alert": Severity.warn, "warn": Severity.warn,
            "soft_cap": Severity.soft_cap, "hard_stop": Severity.block, "block": Severity.block}
_CONDITION_TYPES = ("model", "provider", "time", "budget", "usage", "MODEL_ALLOWLIST", "MODEL_DENYLIST",
                    "PROVIDER_ALLOWLIST", "PROVIDER_DENYLIST", "MONTHLY_SPEND_CAP_PER_SUBJECT",
                    "BUDGET_CROSS_PROVIDER", "COST_CENTRE_REQUIRED", "CONTENT_DLP")
_TOP_KEYS = {"id", "scope", "condition", "action", "enabled", "severity", "subject", "team", "project", "service",
             "description", "timezone", "fail_open", "name"}

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


@dataclass(frozen=True, slots=True)
class Window:
    """A counting window: the calendar month, or a rolling number of seconds."""

    monthly: bool
    seconds: int = 0

    @property
    def label(self) -> str:
        if self.monthly:
            return "month"
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if self.seconds % size == 0:
                return f"{self.seconds // size}{unit}"
        return f"{self.seconds}s"


MONTHLY = Window(monthly=True)


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    kind: Kind
    # The canonical upper-case rule type (block errors' `code`): MODEL_ALLOWLIST, MODEL_DENYLIST,
    # PROVIDER_ALLOWLIST, PROVIDER_DENYLIST, MODEL_REDIRECT, TIME_WINDOW, BUDGET,
    # MONTHLY_SPEND_CAP_PER_SUBJECT, BUDGET_CROSS_PROVIDER, TOKEN_RATE_LIMIT, COST_CENTRE_REQUIRED, CONTENT_DLP.
    type_name: str
    scope: ScopeKind
    target: str | None  # team / project / person / service id; None: every one at that scope
    severity: Severity
    message: str
    enabled: bool = True
    # model / provider lists
    allow: bool = False  # True: violation when NOT in `values`; False: violation when in it
    values: frozenset[str] = frozenset()
    redirect_to: str | None = None
    # time
    window: TimeWindow | None = None
    inside: bool = False  # True: violation when inside the window; False: when outside it
    # spend and token caps
    threshold: Decimal = Decimal(0)
    count_window: Window = MONTHLY
    providers: frozenset[str] | None = None  # None: every provider
    metric: str = ""  # usage: tokens | input_tokens | output_tokens | requests
    # content: the rule's own `patterns`, then its detectors' (compiled with `regex`: matching takes a timeout
    # and releases the GIL); `pattern_names` labels each: `patterns[i]` or the detector's name
    patterns: tuple[regex.Pattern[str], ...] = ()
    pattern_names: tuple[str, ...] = ()
    fail_open: bool = False
    notify: tuple[str, ...] = field(default=())

    @property
    def rate_limited(self) -> bool:
        """Rolling windows answer 429 with Retry-After; calendar budgets answer 403."""
        return self.kind is Kind.tokens or (self.kind is Kind.spend and not self.count_window.monthly)


def parse_count_window(raw: object, default: Window) -> Window:
    if raw is None:
        return default
    if not isinstance(raw, str):
        raise ValueError("use 'monthly' or a rolling window such as '1m', '1h', '24h', '7d', '30d'")
    text = raw.strip().lower()
    if text in ("monthly", "month", "calendar_month", "mtd"):
        return MONTHLY
    m = re.fullmatch(r"(\d+)\s*(s|m|min|h|d)", text)
    if not m or int(m.group(1)) <= 0:
        raise ValueError(f"{raw!r} is not a window; use 'monthly' or '1m', '1h', '24h', '7d', '30d', 'Nd'")
    size = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}[m.group(2)]
    return Window(monthly=False, seconds=int(m.group(1)) * size)


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


def parse_rules(raw: object, default_timezone: str = "UTC") -> tuple[Rule, ...]:
    if not isinstance(raw, list | tuple):
        raise PolicyError(["rules: must be a list of rule objects"])
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
        raise PolicyError(problems.lines)
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
    return Rule(kind=Kind.content, type_name="CONTENT_DLP", patterns=tuple(patterns), pattern_names=tuple(names),
                **base)


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

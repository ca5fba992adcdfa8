"""The compiled rule the engine evaluates: plain frozen data, built once from the validated schema
(`policy/rule_schema.py`) and never re-read from raw dictionaries."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from enum import IntEnum, StrEnum

import regex

from tollhouse.policy.timewindow import TimeWindow


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


class Mode(StrEnum):
    """`enforce`: the rule is applied. `shadow`: judged and recorded (`would`), never applied."""

    enforce = "enforce"
    shadow = "shadow"


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

_ROLLING = re.compile(r"(\d+)\s*(s|m|min|h|d)")
_UNIT_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_count_window(raw: object, default: Window) -> Window:
    """'monthly' (or month, calendar_month, mtd) or a rolling 'Ns' / 'Nm' / 'Nh' / 'Nd'; None: `default`."""
    if raw is None:
        return default
    if not isinstance(raw, str):
        raise ValueError("use 'monthly' or a rolling window such as '1m', '1h', '24h', '7d', '30d'")
    text = raw.strip().lower()
    if text in ("monthly", "month", "calendar_month", "mtd"):
        return MONTHLY
    m = _ROLLING.fullmatch(text)
    if not m or int(m.group(1)) <= 0:
        raise ValueError(f"{raw!r} is not a window; use 'monthly' or '1m', '1h', '24h', '7d', '30d', 'Nd'")
    return Window(monthly=False, seconds=int(m.group(1)) * _UNIT_SECONDS[m.group(2)])


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
    # content
    # content: the rule's own `patterns`, then its detectors' (compiled with `regex`: matching takes a timeout
    # and releases the GIL); `pattern_names` labels each: `patterns[i]` or the detector's name
    patterns: tuple[regex.Pattern[str], ...] = ()
    pattern_names: tuple[str, ...] = ()
    fail_open: bool = False
    notify: tuple[str, ...] = field(default=())
    mode: Mode = Mode.enforce

    @property
    def rate_limited(self) -> bool:
        """Rolling windows answer 429 with Retry-After; calendar budgets answer 403."""
        return self.kind is Kind.tokens or (self.kind is Kind.spend and not self.count_window.monthly)

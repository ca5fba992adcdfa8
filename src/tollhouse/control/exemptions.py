"""Exemptions (pure): what a request must hold and how a policy owner's decision is read (the overrides in
force are control.overrides).

A request names the subject, the rule (which must be in the current policy) and a justification; the call's
provider, model, team, project and time come pre-filled from the block error's exemption link. Every
problem is reported with the field it is about.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tollhouse.control.overrides import MAX_NAMES
from tollhouse.events.records import OVERRIDE, PENDING, RULE_EDIT, Exemption, PendingCounts
from tollhouse.subject_ids import valid_subject_id

MAX_JUSTIFICATION = 2000  # characters, for a justification, a note or a denial reason
MAX_FIELD = 200  # characters, for names (subject, rule, provider, model, ...)
MIN_HOURS, MAX_HOURS, DEFAULT_HOURS = 1, 720, 24  # a one-off override lasts this long

_OPTIONAL = ("provider", "model", "team", "project")


@dataclass(frozen=True, slots=True)
class Problem:
    field: str
    message: str

    def json(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


class ExemptionError(Exception):
    """A request the workflow refuses: the HTTP status, a code, and a message that says what to do."""

    def __init__(self, status: int, code: str, message: str, existing: Exemption | None = None,
                 limit: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.existing = existing  # the pending request a duplicate refers to
        self.limit = limit  # the queue limit a 429 hit (its config key)
        self.messages = [message]


class ExemptionProblems(ExemptionError):
    """What is wrong with a request or a decision, field by field (400)."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(400, "invalid_field", "; ".join(p.message for p in problems))  # each names its field
        self.problems = problems
        self.messages = [p.message for p in problems]

    @property
    def field(self) -> str:
        return self.problems[0].field


@dataclass(frozen=True, slots=True)
class Approval:
    kind: str  # override | rule_edit
    hours: int  # override duration (0 for a rule edit)
    rule: dict[str, Any] | None  # the full rule, for a rule edit
    note: str | None
    # An override's scope when wider than the call requested: model and provider names or patterns ("*": any)
    models: tuple[str, ...] | None = None
    providers: tuple[str, ...] | None = None


def text_field(data: Mapping[str, object], name: str, problems: list[Problem], required: bool = False,
          limit: int = MAX_FIELD, what: str = "") -> str | None:
    """A string field, stripped; '' counts as absent."""
    raw = data.get(name)
    if raw is not None and not isinstance(raw, str):
        problems.append(Problem(name, f"{name} must be a string, got {type(raw).__name__}"))
        return None
    value = (raw or "").strip()
    if not value:
        if required:
            problems.append(Problem(name, f"{name} is required{what}"))
        return None
    if len(value) > limit:
        problems.append(Problem(name, f"{name} is {len(value)} characters long; at most {limit} are allowed"))
        return None
    return value


def _call_time(data: Mapping[str, object], problems: list[Problem]) -> int | None:
    """The blocked call's time: ISO 8601 (as in the exemption link; no zone means UTC) or Unix ms."""
    raw = data.get("ts")
    if raw is None or raw == "":
        return None
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
        return raw
    if isinstance(raw, str):
        try:
            when = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp() * 1000)
    problems.append(Problem("ts", f"ts must be an ISO 8601 time such as 2026-01-31T14:05:00+00:00, got {raw!r}"))
    return None


def parse_request(data: Mapping[str, object], rule_ids: Collection[str], exemption_id: str,
                  now_ms: int, is_subject: Callable[[str], bool] | None = None,
                  client_address: str | None = None) -> Exemption:
    """A new pending exemption from a request (JSON or form fields). Raises ExemptionProblems.
    `is_subject`: whether the directory has this person or service (None: anyone)."""
    problems: list[Problem] = []
    subject = text_field(data, "subject", problems, required=True, what=" (who was blocked)")
    if subject is not None and (bad := valid_subject_id(subject)) is not None:
        problems.append(Problem("subject", f"subject is not a valid id: {bad}"))
        subject = None
    elif subject is not None and is_subject is not None and not is_subject(subject):
        problems.append(Problem("subject", f"subject {subject!r} is not a person or service of the directory; "
                                "name the person (or service) whose call was blocked, as in the block error"))
        subject = None
    rule_raw = data.get("rule") if data.get("rule") not in (None, "") else data.get("rule_id")
    rule = text_field({"rule": rule_raw}, "rule", problems, required=True, what=" (the id of the rule that blocked)")
    if rule is not None and rule not in rule_ids:
        known = ", ".join(sorted(rule_ids)[:30]) or "the policy has no rules"
        problems.append(Problem("rule", f"rule {rule!r} is not in the current policy (rules: {known})"))
    justification = text_field(data, "justification", problems, required=True, limit=MAX_JUSTIFICATION,
                          what=": say why the call is needed")
    provider, model, team, project = (text_field(data, name, problems) for name in _OPTIONAL)
    requester = text_field(data, "requester", problems)
    call_ts_ms = _call_time(data, problems)
    if problems:
        raise ExemptionProblems(problems)
    assert subject is not None and rule is not None and justification is not None
    return Exemption(id=exemption_id, created_ms=now_ms, status=PENDING, requester=requester or subject,
                     subject=subject, rule_id=rule, provider=provider, model=model, team=team, project=project,
                     call_ts_ms=call_ts_ms, justification=justification, client_address=client_address)


@dataclass(frozen=True, slots=True)
class QueueLimits:
    per_subject: int
    per_address: int
    total: int


_RETRY = "retry once the AI policy owner has decided one of them (they see the queue in the console)"


def queue_check(x: Exemption, limits: QueueLimits, status_url: Callable[[str], str]
                ) -> Callable[[PendingCounts], None]:
    """What the store runs, in the transaction that files `x`, to refuse it: a duplicate (409, one pending per
    subject and rule), or a 429 naming the limit reached (per address, per subject, in all)."""

    def check(counts: PendingCounts) -> None:
        dup = counts.duplicate
        if dup is not None:
            raise ExemptionError(409, "already_pending", f"{x.subject} already has a pending exemption request "
                                 f"for rule {x.rule_id}: {dup.id} ({status_url(dup.id)}); the policy owner will "
                                 "decide it", existing=dup)
        if x.client_address is not None and counts.address >= limits.per_address:
            raise ExemptionError(429, "too_many_pending", f"{counts.address} exemption requests from your address "
                                 f"({x.client_address}) are waiting for a decision, the most one address may have "
                                 f"(exemptions.max_pending_per_address = {limits.per_address}); {_RETRY}",
                                 limit="exemptions.max_pending_per_address")
        if counts.subject >= limits.per_subject:
            raise ExemptionError(429, "too_many_pending", f"{counts.subject} exemption requests for {x.subject} are "
                                 "waiting for a decision, the most one subject may have "
                                 f"(exemptions.max_pending_per_subject = {limits.per_subject}); {_RETRY}",
                                 limit="exemptions.max_pending_per_subject")
        if counts.total >= limits.total:
            raise ExemptionError(429, "queue_full", f"{counts.total} exemption requests are waiting for a decision, "
                                 f"the most the queue holds (exemptions.max_pending = {limits.total}); {_RETRY}",
                                 limit="exemptions.max_pending")

    return check


def _hours(raw: object, problems: list[Problem]) -> int:
    if raw is None or raw == "":
        return DEFAULT_HOURS
    value: int | None = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str) and raw.strip().isascii() and raw.strip().isdecimal():
        value = int(raw.strip())
    if value is None or not MIN_HOURS <= value <= MAX_HOURS:
        problems.append(Problem("hours", f"hours must be a whole number from {MIN_HOURS} to {MAX_HOURS}, "
                                         f"got {raw!r}"))
        return DEFAULT_HOURS
    return value


def _scope(data: Mapping[str, object], name: str, problems: list[Problem]) -> tuple[str, ...] | None:
    """A list of names or patterns (JSON), or the same comma- or space-separated (a form); None: not given."""
    raw = data.get(name)
    if raw is None or raw == "" or raw == []:
        return None
    items = raw.replace(",", " ").split() if isinstance(raw, str) else raw
    example = '["gpt-4o", "gpt-4o-mini"], or ["*"] for any' if name == "models" else '["openai"], or ["*"] for any'
    if not isinstance(items, list) or not items or not all(isinstance(n, str) for n in items):
        problems.append(Problem(name, f"{name} must be a list of names or patterns such as {example}; got {raw!r}"))
        return None
    out = tuple(dict.fromkeys(n.strip() for n in items if n.strip()))
    bad = [n for n in out if "," in n or len(n) > MAX_FIELD or any(c.isspace() for c in n)]
    if bad or not out or len(out) > MAX_NAMES:
        problems.append(Problem(name, f"{name} must be 1 to {MAX_NAMES} names or patterns of at most {MAX_FIELD} "
                                      f"characters without commas or spaces, such as {example}; got {raw!r}"))
        return None
    return out


def parse_approval(data: Mapping[str, object]) -> Approval:
    """{"kind": "override", "hours": 24, "note": ..., "models": [...], "providers": [...]} or
    {"kind": "rule_edit", "rule": {...}}. An override covers the model and provider requested unless `models` /
    `providers` widen it."""
    problems: list[Problem] = []
    kind = data.get("kind") or OVERRIDE
    note = text_field(data, "note", problems, limit=MAX_JUSTIFICATION)
    models = providers = None
    if kind == OVERRIDE:
        hours = _hours(data.get("hours"), problems)
        rule = None
        models, providers = _scope(data, "models", problems), _scope(data, "providers", problems)
    elif kind == RULE_EDIT:
        hours = 0
        raw_rule = data.get("rule")
        rule = raw_rule if isinstance(raw_rule, dict) else None
        if rule is None or not isinstance(rule.get("id"), str) or not rule["id"]:
            problems.append(Problem("rule", 'a rule edit needs "rule": the full rule as JSON, with its "id"'))
    else:
        problems.append(Problem("kind", f'kind must be "{OVERRIDE}" or "{RULE_EDIT}", got {kind!r}'))
        hours, rule = 0, None
    if problems:
        raise ExemptionProblems(problems)
    return Approval(str(kind), hours, rule, note, models, providers)


def parse_denial(data: Mapping[str, object]) -> str:
    """The reason the requester is told."""
    problems: list[Problem] = []
    reason = text_field(data, "reason", problems, required=True, limit=MAX_JUSTIFICATION,
                   what=": tell the requester why")
    if problems or reason is None:
        raise ExemptionProblems(problems)
    return reason

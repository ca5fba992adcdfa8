"""decide(): the one function that says whether a call may go. One table row per kind of verdict, the
gateway's own refusals included; every row is judged enforcing and observing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from tollhouse.config import DirectoryConfig, Person, Team, Unpriced
from tollhouse.directory import Directory
from tollhouse.ledger.types import CapUsage
from tollhouse.policy.decide import CountersDown, Gate, Outcome, Problem, Usage, Verdict, decide
from tollhouse.policy.engine import CallFacts, CompiledPolicy
from tollhouse.policy.rules import parse_rules

DIRECTORY = Directory(DirectoryConfig(
    org="acme", teams=(Team(id="platform"),),
    people=(Person(id="alice", team="platform"), Person(id="bob", team="platform"))))
NOON = datetime(2026, 6, 3, 12, 0, tzinfo=UTC)
NANO = 1_000_000_000

ALLOWLIST = {"id": "approved", "scope": "org", "condition": {"type": "MODEL_ALLOWLIST",
                                                             "models": ["gpt-4o-mini", "gpt-4o"]}}
WARN = {"id": "no-4o", "scope": "team", "team": "platform", "severity": "WARN",
        "condition": {"type": "MODEL_DENYLIST", "models": ["gpt-4o"]}}
REDIRECT = {"id": "cheaper", "scope": "org", "condition": {"type": "model", "operator": "in", "models": ["o1"]},
            "action": {"type": "redirect", "model": "gpt-4o-mini"}}
BUDGET = {"id": "month", "scope": "individual", "condition": {"type": "budget", "threshold": 1, "window": "monthly"},
          "action": {"type": "hard_stop"}}
HOURLY = {"id": "tph", "scope": "individual", "condition": {"type": "usage", "metric": "tokens_per_hour",
                                                            "threshold": 1000, "window": "1h"},
          "action": {"type": "hard_stop"}}
SOFT = {"id": "soft", "scope": "team", "team": "platform",
        "condition": {"type": "budget", "threshold": 5, "window": "monthly"}, "action": {"type": "soft_cap"}}
LENIENT = {**BUDGET, "id": "lenient", "fail_open": True}

TOO_LARGE = Problem("request_too_large", 413, "Request body too large", always=True)
BAD_KEY = Problem("invalid_gateway_key", 401, "This Tollhouse gateway key is unknown or revoked", always=True)
UNKNOWN_CALLER = Problem("unknown_caller", 401, "Tollhouse does not know who is calling")
UNKNOWN_PROJECT = Problem("unknown_project", 400, "X-Tollhouse-Project names 'x'")
UNKNOWN_ENDPOINT = Problem("unknown_endpoint", 403, "Tollhouse does not know what POST /v1/x does")
UNPARSEABLE = Problem("unparseable_request", 400, "could not read this request body as a JSON object")


@dataclass
class Row:
    name: str
    rules: list[dict[str, Any]]
    model: str | None = "gpt-4o-mini"
    problems: tuple[Problem, ...] = ()
    priced: bool = True
    unpriced: Unpriced = Unpriced.block
    fail_open: bool = False
    usage: Any = None  # {rule id: (used, need)} in dollars or tokens, CountersDown, or None
    exemptions: Mapping[str, str] = field(default_factory=dict)
    # expected, enforcing: (outcome, status, code or rule id); observing: `would`
    outcome: Outcome = Outcome.allow
    status: int = 0
    why: str | None = None
    would: str | None = None


ROWS = [
    Row("no rules, no problems", [], outcome=Outcome.allow),
    Row("a body too large is refused even when observing", [ALLOWLIST], problems=(TOO_LARGE,),
        outcome=Outcome.block, status=413, why="request_too_large", would="block"),
    Row("an unknown gateway key is refused even when observing", [], problems=(BAD_KEY,),
        outcome=Outcome.block, status=401, why="invalid_gateway_key", would="block"),
    Row("unknown caller", [ALLOWLIST], problems=(UNKNOWN_CALLER,), outcome=Outcome.block, status=401,
        why="unknown_caller", would="block"),
    Row("unknown project", [], problems=(UNKNOWN_PROJECT,), outcome=Outcome.block, status=400,
        why="unknown_project", would="block"),
    Row("unknown endpoint with a body", [], problems=(UNKNOWN_ENDPOINT,), outcome=Outcome.block, status=403,
        why="unknown_endpoint", would="block"),
    Row("unparseable body", [ALLOWLIST], problems=(UNPARSEABLE,), outcome=Outcome.block, status=400,
        why="unparseable_request", would="block"),
    Row("the first problem found decides", [], problems=(UNKNOWN_CALLER, UNPARSEABLE), outcome=Outcome.block,
        status=401, why="unknown_caller", would="block"),
    Row("a model on the approved list", [ALLOWLIST], outcome=Outcome.allow),
    Row("a model off the approved list", [ALLOWLIST], model="o3", outcome=Outcome.block, status=403,
        why="approved", would="block"),
    Row("a WARN rule warns", [ALLOWLIST, WARN], model="gpt-4o", outcome=Outcome.warn, why="no-4o", would="warn"),
    Row("a redirect is applied, then the rest judged on the substitute", [ALLOWLIST, REDIRECT], model="o1",
        outcome=Outcome.redirect, why="cheaper", would="redirect"),
    Row("an exemption lets the call past the rule it waives", [ALLOWLIST], model="o3",
        exemptions={"approved": "ex-1"}, outcome=Outcome.allow),
    Row("under the budget", [BUDGET], usage={"month": (0.5, 0.25)}, outcome=Outcome.allow),
    Row("over the budget: 403", [BUDGET], usage={"month": (0.9, 0.25)}, outcome=Outcome.block, status=403,
        why="month", would="block"),
    Row("over a rolling token window: 429", [HOURLY], usage={"tph": (900, 200)}, outcome=Outcome.block,
        status=429, why="tph", would="block"),
    Row("over a soft cap: warn", [SOFT], usage={"soft": (4.9, 0.25)}, outcome=Outcome.warn, why="soft",
        would="warn"),
    Row("a waived cap counts but does not refuse", [BUDGET], usage={"month": (0.9, 0.25)},
        exemptions={"month": "ex-2"}, outcome=Outcome.allow),
    Row("an unpriced model under a spend cap is refused", [BUDGET], model="ft:mystery", priced=False,
        outcome=Outcome.block, status=403, why="unpriced_model", would="block"),
    Row("... unless pricing.unpriced: allow", [BUDGET], model="ft:mystery", priced=False,
        unpriced=Unpriced.allow, usage={"month": (0.0, 0.0)}, outcome=Outcome.allow),
    Row("an unpriced model under token caps only is counted, not refused", [HOURLY], model="ft:mystery",
        priced=False, usage={"tph": (0, 100)}, outcome=Outcome.allow),
    Row("counters down: 503", [BUDGET], usage=CountersDown("redis gone"), outcome=Outcome.block, status=503,
        why="budget_store_unavailable", would=None),
    Row("counters down, counters.fail_open", [BUDGET], usage=CountersDown("redis gone"), fail_open=True,
        outcome=Outcome.allow),
    Row("counters down, every cap's rule fails open", [LENIENT], usage=CountersDown("redis gone"),
        outcome=Outcome.allow),
]


def _usage(policy: CompiledPolicy, row: Row) -> Usage:
    if not isinstance(row.usage, dict):
        return row.usage  # type: ignore[no-any-return]
    caps = policy.subject_caps(DIRECTORY.subject("alice"))
    out: list[CapUsage] = []
    for cap in caps:
        used, need = row.usage[cap.rule.id]
        scale = NANO if cap.metric == "spend" else 1
        out.append(CapUsage(cap, int(used * scale), int(need * scale), cap.units, 60))
    return out


def _decide(row: Row, enforced: bool) -> Verdict:
    policy = CompiledPolicy(parse_rules(row.rules)) if row.rules else None
    gate = Gate(enforced, row.problems, row.priced, row.unpriced, row.fail_open)
    call = CallFacts("openai", "api.openai.com", row.model)
    usage = _usage(policy, row) if policy is not None else None
    return decide(gate, policy, call, DIRECTORY.subject("alice"), NOON, row.exemptions, usage)


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_enforcing(row: Row) -> None:
    verdict = _decide(row, enforced=True)
    assert verdict.outcome is row.outcome
    assert verdict.status == row.status
    if row.outcome is Outcome.block:
        assert verdict.reason  # every refusal says why
        code = verdict.refusal.code if verdict.refusal is not None else verdict.rule_id
        assert code == row.why
    elif row.why is not None:
        assert verdict.rule_id == row.why
    assert verdict.would is None  # enforcing: what happens is what is applied


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_observing(row: Row) -> None:
    """Observe mode forwards what it can forward and records what enforcing would have done."""
    verdict = _decide(row, enforced=False)
    always = any(p.always for p in row.problems)
    assert verdict.outcome is (Outcome.block if always else Outcome.allow)
    if not always:
        assert verdict.would == row.would


def test_a_refusal_carries_its_reason_and_status_into_the_answer() -> None:
    verdict = _decide(ROWS[3], enforced=True)
    assert verdict.refusal is UNKNOWN_CALLER and verdict.reason == UNKNOWN_CALLER.message
    assert verdict.rule_id is None  # a gateway refusal is no rule's


def test_a_cap_block_says_the_numbers_exactly() -> None:
    policy = CompiledPolicy(parse_rules([{**BUDGET, "condition": {"type": "budget", "threshold": 0.00005,
                                                                  "window": "monthly"}}]))
    cap = policy.subject_caps(DIRECTORY.subject("alice"))[0]
    usage = [CapUsage(cap, 39_000, 20_000, cap.units, 0)]
    verdict = decide(Gate(True), policy, CallFacts("openai", "api.openai.com", "gpt-4o-mini"),
                     DIRECTORY.subject("alice"), NOON, {}, usage)
    assert verdict.blocked and verdict.status == 403
    assert "$0.000039 of $0.00005 used" in (verdict.reason or "")


def test_ceilings_are_hard_caps_while_enforcing_only() -> None:
    policy = CompiledPolicy(parse_rules([BUDGET, SOFT, HOURLY]))
    call = CallFacts("openai", "api.openai.com", "gpt-4o-mini")
    alice = DIRECTORY.subject("alice")
    enforcing = decide(Gate(True), policy, call, alice, NOON)
    by_rule = {cap.rule.id: ceiling for cap, ceiling in zip(enforcing.caps, enforcing.ceilings, strict=True)}
    assert by_rule == {"month": NANO, "soft": None, "tph": 1000}
    observing = decide(Gate(False), policy, call, alice, NOON)
    assert observing.ceilings == (None, None, None)
    waived = decide(Gate(True), policy, call, alice, NOON, {"month": "ex-1"})
    assert {c.rule.id: x for c, x in zip(waived.caps, waived.ceilings, strict=True)}["month"] is None


def test_budget_remaining_is_the_tightest_spend_cap_after_this_call() -> None:
    policy = CompiledPolicy(parse_rules([BUDGET, SOFT]))
    caps: Sequence[Any] = policy.subject_caps(DIRECTORY.subject("alice"))
    usage = [CapUsage(c, int(0.5 * NANO), int(0.1 * NANO), c.units, 0) for c in caps]
    verdict = decide(Gate(True), policy, CallFacts("openai", "h", "gpt-4o-mini"), DIRECTORY.subject("alice"), NOON,
                     {}, usage)
    assert verdict.budget_remaining_nusd == int(0.4 * NANO)


SHADOW_DENY = {"id": "try-no-4o", "scope": "org", "mode": "shadow",
               "condition": {"type": "MODEL_DENYLIST", "models": ["gpt-4o"]}, "action": {"type": "hard_stop"}}
SHADOW_BOB = {"id": "bob-only-o1", "scope": "individual", "subject": "alice", "mode": "shadow",
              "condition": {"type": "MODEL_ALLOWLIST", "models": ["o1"]}, "action": {"type": "hard_stop"}}


@pytest.mark.parametrize("enforced", [True, False])
def test_a_shadow_rule_is_judged_and_recorded_never_applied(enforced: bool) -> None:
    policy = CompiledPolicy(parse_rules([ALLOWLIST, SHADOW_DENY]))
    verdict = decide(Gate(enforced), policy, CallFacts("openai", "api.openai.com", "gpt-4o"),
                     DIRECTORY.subject("alice"), NOON)
    assert verdict.outcome is Outcome.allow  # gpt-4o is approved; the shadow deny list does not apply
    assert verdict.would == "block" and verdict.rule_id == "try-no-4o"
    allowed = decide(Gate(enforced), policy, CallFacts("openai", "api.openai.com", "gpt-4o-mini"),
                     DIRECTORY.subject("alice"), NOON)
    assert allowed.would is None and allowed.rule_id is None


def test_a_shadow_rule_takes_no_part_in_precedence() -> None:
    """A shadow allowlist of alice's would supersede the org's if it were applied; in shadow it must not."""
    policy = CompiledPolicy(parse_rules([ALLOWLIST, SHADOW_BOB]))
    verdict = decide(Gate(True), policy, CallFacts("openai", "api.openai.com", "o3"), DIRECTORY.subject("alice"), NOON)
    assert verdict.blocked and verdict.rule_id == "approved"  # the org allowlist still applies to alice
    o1 = decide(Gate(True), policy, CallFacts("openai", "api.openai.com", "gpt-4o-mini"), DIRECTORY.subject("alice"),
                NOON)
    assert o1.outcome is Outcome.allow and o1.would == "block" and o1.rule_id == "bob-only-o1"

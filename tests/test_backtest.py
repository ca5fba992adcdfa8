"""Policy backtest: the replay (policy/backtest.py) against a brute-force reference over generated histories, the
report's tallies, and streaming calls back from the store (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from collections import Counter as Tallies
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tollhouse.config import DirectoryConfig, Person, PriceOverride, Project, Team
from tollhouse.directory import Directory
from tollhouse.events.history import read_ahead, settled_between, stream_calls
from tollhouse.events.model import CallEvent
from tollhouse.events.store import Store, StoreError
from tollhouse.ledger.local import Counter as LedgerCounter
from tollhouse.ledger.local import HistoryRow
from tollhouse.ledger.types import CapUsage, Charge, metric_of
from tollhouse.money import cap_reason
from tollhouse.policy.backtest import Past, Setting, Simulation
from tollhouse.policy.backtest_counter import Running, index_of
from tollhouse.policy.backtest_report import run_backtest
from tollhouse.policy.decide import Gate, Verdict, decide
from tollhouse.policy.engine import CallFacts, Cap, CompiledPolicy, Decision, Violation, with_violations
from tollhouse.policy.rules import MONTHLY, parse_count_window, parse_rules
from tollhouse.policy.shadow import shadow_ids
from tollhouse.pricing import PriceBook

TZ = ZoneInfo("America/New_York")
DIRECTORY = Directory(DirectoryConfig(
    org="acme",
    teams=(Team(id="eng"), Team(id="web", parent="eng"), Team(id="ml", parent="eng"), Team(id="sales")),
    projects=(Project(id="checkout", team="web"),),
    people=(Person(id="ann", team="web"), Person(id="bo", team="web"), Person(id="cy", team="ml"),
            Person(id="di", team="sales"), Person(id="ed", team="ml"))))
PEOPLE = (("ann", "web"), ("bo", "web"), ("cy", "ml"), ("di", "sales"), ("ed", "ml"))
# nano-USD per input and output token (prices in USD per million tokens x 1000)
RATES = {"gpt-4o-mini": (150, 600), "gpt-4o": (2500, 10000), "o1": (15000, 60000), "claude-3-5-haiku": (800, 4000)}
PROVIDER = {"gpt-4o-mini": "openai", "gpt-4o": "openai", "o1": "openai", "claude-3-5-haiku": "anthropic"}
PRICES = PriceBook(tuple(PriceOverride(provider=p, model=m, input_mtok=Decimal(i) / 1000, output_mtok=Decimal(o) / 1000)
                         for m, (i, o) in RATES.items() for p in (PROVIDER[m],)))
STEP_MS = 6000  # every call on a 6 s grid: the rolling windows' buckets (1 s for 10m, 6 s for 1h) hold whole calls


def setting(billing_day: int) -> Setting:
    return Setting(DIRECTORY, PRICES, {"openai": "api.openai.com", "anthropic": "api.anthropic.com"},
                   {"openai": "openai", "anthropic": "anthropic"}, billing_day, TZ)


def rule_pool(limits: dict[str, int]) -> list[dict[str, Any]]:
    """Every kind of rule the replay simulates, thresholds drawn by the test."""
    return [
        {"id": "org-month", "scope": "org", "condition": {"type": "budget", "threshold": limits["org"] / 100,
                                                          "window": "monthly"}, "action": {"type": "hard_stop"}},
        {"id": "eng-month", "scope": "team", "team": "eng",
         "condition": {"type": "budget", "threshold": limits["team"] / 100}, "action": {"type": "hard_stop"}},
        {"id": "each-team", "scope": "team", "severity": "SOFT_CAP",
         "condition": {"type": "budget", "threshold": limits["team"] / 200}},
        {"id": "person-openai", "scope": "individual",
         "condition": {"type": "MONTHLY_SPEND_CAP_PER_SUBJECT", "provider": "openai",
                       "threshold": limits["person"] / 100}, "action": {"type": "hard_stop"}},
        {"id": "tokens-10m", "scope": "individual",
         "condition": {"type": "usage", "metric": "tokens", "threshold": limits["tokens"], "window": "10m"},
         "action": {"type": "hard_stop"}},
        {"id": "ml-hour", "scope": "team", "team": "ml",
         "condition": {"type": "usage", "metric": "output_tokens", "threshold": limits["tokens"], "window": "1h"},
         "action": {"type": "hard_stop"}},
        {"id": "web-to-mini", "scope": "team", "team": "web",
         "condition": {"type": "model", "operator": "in", "models": ["gpt-4o"]},
         "action": {"type": "redirect", "model": "gpt-4o-mini"}},
        {"id": "no-o1", "scope": "org", "condition": {"type": "MODEL_DENYLIST", "models": ["o1"]},
         "action": {"type": "block"}},
        {"id": "warn-haiku", "scope": "org", "severity": "WARN",
         "condition": {"type": "MODEL_DENYLIST", "models": ["claude-3-5-haiku"]}},
        {"id": "sales-hours", "scope": "team", "team": "sales", "severity": "WARN",
         "condition": {"type": "time", "operator": "outside", "window": {"days": "mon-fri", "hours": "09:00-17:00"},
                       "timezone": "America/New_York"}},
        {"id": "ml-not-at-night", "scope": "team", "team": "ml",
         "condition": {"type": "time", "operator": "inside", "window": {"hours": "22:00-06:00"}},
         "action": {"type": "block"}},
        {"id": "shadow-org", "scope": "org", "mode": "shadow",
         "condition": {"type": "budget", "threshold": limits["org"] / 300}, "action": {"type": "hard_stop"}},
        {"id": "shadow-no-4o", "scope": "org", "mode": "shadow",
         "condition": {"type": "MODEL_DENYLIST", "models": ["gpt-4o"]}, "action": {"type": "block"}},
    ]


def past(seq: int, ts_ms: int, who: int, model: str, inp: int, outp: int, recorded: str) -> Past:
    subject, team = PEOPLE[who]
    provider = PROVIDER[model]
    i, o = RATES[model]
    if recorded == "refused":  # the gateway's own refusal (unknown key, ...): no rule
        return Past(seq, ts_ms, subject, "employee", team, None, None, provider, "metered", model, model, 401, 0, 0,
                    0, 0, None, "block", None)
    if recorded == "blocked":  # refused by a rule in force then: never forwarded
        return Past(seq, ts_ms, subject, "employee", team, None, None, provider, "metered", model, model, 403, 0, 0,
                    0, 0, None, "block", "old-rule")
    return Past(seq, ts_ms, subject, "employee", team, "checkout" if team == "web" else None, None, provider,
                "metered", model, model, 200, inp, outp, 0, 0, inp * i + outp * o, recorded, None)


@st.composite
def histories(draw: st.DrawFn, people: int = 5, models: Sequence[str] = tuple(sorted(RATES)), least: int = 1,
              most: int = 60) -> tuple[list[Past], list[Past], int, int, list[dict[str, Any]], list[dict[str, Any]]]:
    billing_day = draw(st.integers(1, 28))
    # the window starts up to three days before a billing month begins (in the org's zone)
    start = datetime(2026, draw(st.integers(1, 11)), billing_day, tzinfo=TZ) - timedelta(hours=draw(st.integers(0, 72)))
    since_ms = int(start.timestamp() * 1000) // STEP_MS * STEP_MS
    calls = st.tuples(st.integers(0, people - 1), st.sampled_from(models), st.integers(1, 3000), st.integers(0, 3000),
                      st.sampled_from(["allow"] * 8 + ["refused", "blocked"]))
    gaps = st.integers(0, draw(st.sampled_from([10, 200, 2000, 20000])))  # in 6 s steps: seconds to a day apart
    items = draw(st.lists(st.tuples(gaps, calls), min_size=least, max_size=most))
    before = draw(st.lists(st.tuples(st.integers(1, 900_000), calls), max_size=15))
    pre = sorted((past(-n, since_ms - back * STEP_MS, *c) for n, (back, c) in enumerate(before)),
                 key=lambda p: p.ts_ms)
    ts, window = since_ms, []
    for n, (gap, c) in enumerate(items):
        ts += gap * STEP_MS
        window.append(past(n + 1, ts, *c))
    limits = {"org": draw(st.integers(1, 400)), "team": draw(st.integers(1, 300)),
              "person": draw(st.integers(1, 60)), "tokens": draw(st.integers(1000, 20000))}
    pool = rule_pool(limits)
    proposed = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=len(pool), unique_by=lambda r: r["id"]))
    in_force = draw(st.lists(st.sampled_from(pool), max_size=4, unique_by=lambda r: r["id"]))
    return pre, window, since_ms, billing_day, proposed, in_force


# --- the brute-force reference: every cap's usage summed again, from scratch, for every call ---

def _billing_month(ts_ms: int, billing_day: int) -> tuple[int, int]:
    local = datetime.fromtimestamp(ts_ms / 1000, TZ)
    y, m = local.year, local.month
    if local.day < billing_day:
        y, m = (y - 1, 12) if m == 1 else (y, m - 1)
    return y, m


def _in_scope(cap: Cap, p: Past) -> bool:
    scope, ident = cap.counter
    if scope == "org":
        return True
    if scope == "subject":
        return p.subject == ident
    if scope == "team":
        return ident in DIRECTORY.team_chain(p.team)
    return p.project == ident


def _counts(cap: Cap, p: Past, now_ms: int, billing_day: int) -> bool:
    """Whether a call counted before counts toward the cap at `now_ms`."""
    if not _in_scope(cap, p) or (cap.providers is not None and p.provider not in cap.providers):
        return False
    if cap.window.monthly:
        return _billing_month(p.ts_ms, billing_day) == _billing_month(now_ms, billing_day)
    return p.ts_ms >= now_ms - cap.window.seconds * 1000


class Reference:
    def __init__(self, policy: CompiledPolicy, pre: list[Past], billing_day: int) -> None:
        self.policy = policy
        self.billing_day = billing_day
        self.counted: list[tuple[Past, Charge]] = [(p, _charge(p, p.model)) for p in pre if p.decision != "block"]
        self.shadow = shadow_ids(policy)

    def usage(self, caps: Sequence[Cap], p: Past, charge: Charge) -> list[CapUsage]:
        out = []
        for cap in caps:
            used = sum(metric_of(c.vector(), cap.metric) for q, c in self.counted
                       if _counts(cap, q, p.ts_ms, self.billing_day))
            need = metric_of(charge.vector(), cap.metric) if cap.providers is None or p.provider in cap.providers \
                else 0
            out.append(CapUsage(cap, used, need, cap.units, 0))
        return out

    def judge(self, p: Past) -> Verdict | None:
        if p.decision == "block" and p.rule_id is None:
            return None
        subject = DIRECTORY.subject(p.subject, p.project)
        call = CallFacts(p.provider, "", p.requested_model)
        now = datetime.fromtimestamp(p.ts_ms / 1000, UTC)
        verdict = decide(Gate(True), self.policy, call, subject, now)
        if verdict.blocked:
            return verdict
        model = verdict.decision.model if verdict.decision is not None else p.requested_model
        charge = _charge(p, model)
        verdict = decide(Gate(True), self.policy, call, subject, now, usage=self.usage(verdict.caps, p, charge) or None,
                         judged=verdict)
        if verdict.shadowed is not None:
            extra = [c for c in verdict.shadowed.caps if c.rule.id in self.shadow]
            over = [Violation(u.cap.rule, u.cap.level, cap_reason(u)) for u in self.usage(extra, p, charge)
                    if u.used + u.need > u.limit]
            verdict = verdict._replace(shadowed=with_violations(verdict.shadowed, over))
        if not verdict.blocked:
            self.counted.append((p, charge))
        return verdict


def _charge(p: Past, model: str | None) -> Charge:
    if p.decision == "block":
        return Charge(p.provider, 0, 0, 0, 1)
    i, o = RATES[model or ""]
    return Charge(p.provider, p.input_tokens * i + p.output_tokens * o, p.input_tokens, p.output_tokens, 1)


def loader(pre: list[Past]) -> Any:
    def history(scope: str, ids: Sequence[str], since: int, until: int, bucket: int) -> list[HistoryRow]:
        rows = []
        for p in pre:
            inside = scope == "org" or {"subject": p.subject, "team": p.team, "project": p.project}[scope] in ids
            if inside and since <= p.ts_ms < until and p.decision != "block":
                rows.append((p.ts_ms // bucket * bucket, p.provider, p.cost_nusd or 0, p.input_tokens,
                             p.output_tokens, 1))
        return rows
    return history


def _rule_tallies(verdicts: Sequence[Verdict | None], shadow: frozenset[str]) -> dict[str, Tallies[str]]:
    out: dict[str, Tallies[str]] = {}
    for v in verdicts:
        if v is None:
            continue
        for d, applied in ((v.decision, True), (v.shadowed, False)):
            if d is None:
                continue
            for x in d.violations:
                if (x.rule.id in shadow) != applied:
                    out.setdefault(x.rule.id, Tallies())[x.rule.severity.name] += 1
            if d.redirect is not None and (d.redirect.rule.id in shadow) != applied:
                out.setdefault(d.redirect.rule.id, Tallies())["redirect"] += 1
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(histories())
def test_the_replay_decides_every_call_as_the_brute_force_reference(
        case: tuple[list[Past], list[Past], int, int, list[dict[str, Any]], list[dict[str, Any]]]) -> None:
    pre, window, since_ms, billing_day, proposed_raw, in_force_raw = case
    proposed = CompiledPolicy(parse_rules(proposed_raw))
    in_force = CompiledPolicy(parse_rules(in_force_raw))
    sim = Simulation(proposed, setting(billing_day), since_ms, loader(pre))
    ref = Reference(proposed, pre, billing_day)
    got, want = [], []
    for p in window:
        mine, theirs = sim.judge(p), ref.judge(p)
        got.append(mine.verdict)
        want.append(theirs)
        assert mine.outcome == ("block" if theirs is None else theirs.applied), p
        if theirs is not None and mine.verdict is not None:
            assert mine.verdict.would == theirs.would, p
            assert mine.verdict.rule_id == theirs.rule_id, p
    shadow = shadow_ids(proposed)
    want_rules = _rule_tallies(want, shadow)
    assert _rule_tallies(got, shadow) == want_rules

    report = run_backtest(iter(window), proposed, in_force, setting(billing_day), since_ms, window[-1].ts_ms,
                          loader(pre))
    ref_in_force = Reference(in_force, pre, billing_day)
    before = [ref_in_force.judge(p) for p in window]
    outcome = [("block" if v is None else v.applied) for v in want]
    outcome_before = [("block" if v is None else v.applied) for v in before]
    assert report["calls"] == len(window)
    assert report["changed"] == sum(a != b for a, b in zip(outcome, outcome_before, strict=True))
    assert report["outcomes"] == {k: outcome.count(k) - (k == "block") * report["refused_by_gateway"]
                                  for k in ("allow", "warn", "redirect", "block")}
    for row in report["rules"]:
        t = want_rules.get(row["id"], Tallies())
        assert row["would_block"] == t["block"], row
        assert row["would_warn"] == t["warn"] + t["soft_cap"], row
        assert row["would_redirect"] == t["redirect"], row


def _judgement(d: Decision | None) -> tuple[object, ...] | None:
    """A decision as the backtest reads it: everything but the reasons' wording."""
    if d is None:
        return None
    return (d.action, d.model, d.requested_model, d.redirect.rule.id if d.redirect is not None else None,
            tuple((v.rule.id, v.level) for v in d.violations), d.caps, tuple(v.rule.id for v in d.waived))


def _soft(rule: dict[str, Any]) -> dict[str, Any]:
    """The rule warning instead of refusing (a call over it still counts, so further caps can be gone over)."""
    return {**{k: v for k, v in rule.items() if k != "action"}, "severity": "SOFT_CAP"} \
        if rule.get("action", {}).get("type") == "hard_stop" else rule


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.one_of(histories(), histories(people=1, models=("claude-3-5-haiku",), least=40, most=120)), st.booleans())
def test_the_shortcut_judges_every_call_as_decide_with_the_counters_numbers(
        case: tuple[list[Past], list[Past], int, int, list[dict[str, Any]], list[dict[str, Any]]], soft: bool) -> None:
    """A call under every cap takes its shape's verdict, one over caps the verdict for the same caps gone over:
    the same judgement, call by call, as decide() given every call's numbers. (Few people and models, and caps that
    only warn, make calls of one shape go over different caps in turn.)"""
    pre, window, since_ms, billing_day, proposed_raw, _ = case
    proposed = CompiledPolicy(parse_rules([_soft(r) for r in proposed_raw] if soft else proposed_raw))
    fast = Simulation(proposed, setting(billing_day), since_ms, loader(pre))
    full = Simulation(proposed, setting(billing_day), since_ms, loader(pre), shortcut=False)
    for p in window:
        a, b = fast.judge(p), full.judge(p)
        assert (a.charge, a.known, a.unevaluable, a.saved_nusd) == (b.charge, b.known, b.unevaluable, b.saved_nusd)
        if a.verdict is None or b.verdict is None:
            assert a.verdict is b.verdict is None
            continue
        assert (a.outcome, a.verdict.would, a.verdict.rule_id) == (b.outcome, b.verdict.would, b.verdict.rule_id), p
        assert _judgement(a.verdict.decision) == _judgement(b.verdict.decision), p
        assert _judgement(a.verdict.shadowed) == _judgement(b.verdict.shadowed), p


def test_a_shape_going_over_one_cap_then_two_is_judged_on_each_set_of_caps() -> None:
    """The same call ($0.0048), again and again: over the team's soft cap from the 3rd call, over the person's as well
    from the 6th; the shortcut's verdicts name the caps decide() names for each."""
    rules = [{"id": "team-soft", "scope": "team", "severity": "SOFT_CAP", "condition": {"type": "budget",
                                                                                         "threshold": 0.01}},
             {"id": "me-warn", "scope": "individual", "severity": "WARN",
              "condition": {"type": "budget", "threshold": 0.025}}]
    policy = CompiledPolicy(parse_rules(rules))
    calls = [past(n, 1_780_000_000_000 + n * STEP_MS, 3, "claude-3-5-haiku", 1000, 1000, "allow") for n in range(7)]
    fast = Simulation(policy, setting(1), calls[0].ts_ms, loader([]))
    full = Simulation(policy, setting(1), calls[0].ts_ms, loader([]), shortcut=False)
    got = [fast.judge(p).verdict for p in calls]
    want = [full.judge(p).verdict for p in calls]
    assert [_judgement(v.decision) for v in got if v] == [_judgement(v.decision) for v in want if v]
    named = [sorted(x.rule.id for x in v.decision.violations) for v in got if v is not None and v.decision]
    assert named == [[], [], ["team-soft"], ["team-soft"], ["team-soft"], ["me-warn", "team-soft"],
                     ["me-warn", "team-soft"]]


def test_a_redirect_is_repriced_at_the_substitute_and_its_saving_reported() -> None:
    rules = [r for r in rule_pool({"org": 1, "team": 1, "person": 1, "tokens": 1}) if r["id"] == "web-to-mini"]
    policy = CompiledPolicy(parse_rules(rules))
    p = past(1, 1_780_000_000_000, 0, "gpt-4o", 1000, 100, "allow")  # ann, team web
    judged = Simulation(policy, setting(1), p.ts_ms, loader([])).judge(p)
    assert judged.outcome == "redirect"
    assert judged.charge.spend_nusd == 1000 * 150 + 100 * 600
    assert judged.saved_nusd == (1000 * 2500 + 100 * 10000) - judged.charge.spend_nusd
    report = run_backtest(iter([p]), policy, CompiledPolicy(()), setting(1), p.ts_ms, p.ts_ms, loader([]))
    (row,) = report["rules"]
    assert row["would_redirect"] == 1 and row["cost_usd_saved_by_redirect"] == 0.00329
    assert row["subjects"] == ["ann"] and row["teams"] == ["web"] and report["changes"] == {"allow->redirect": 1}


def test_a_month_boundary_in_the_orgs_zone_resets_a_monthly_budget() -> None:
    """Billing day 5 in New York: 23:59 on the 4th local time is the old month, 00:00 on the 5th the new one."""
    rules = [{"id": "m", "scope": "org", "condition": {"type": "budget", "threshold": 0.001},
              "action": {"type": "block"}}]
    policy = CompiledPolicy(parse_rules(rules))
    end = int(datetime(2026, 3, 5, tzinfo=TZ).timestamp() * 1000)
    calls = [past(1, end - 120_000, 0, "gpt-4o-mini", 4000, 0, "allow"),  # $0.0006
             past(2, end - 60_000, 0, "gpt-4o-mini", 4000, 0, "allow"),  # would make $0.0012: over
             past(3, end, 0, "gpt-4o-mini", 4000, 0, "allow")]  # a new billing month
    sim = Simulation(policy, setting(5), calls[0].ts_ms, loader([]))
    assert [sim.judge(p).outcome for p in calls] == ["allow", "block", "allow"]


def test_content_rules_are_not_evaluable_without_a_stored_prompt() -> None:
    rules = [{"id": "dlp", "scope": "org", "condition": {"type": "CONTENT_DLP", "detectors": ["aws_access_key"]},
              "action": {"type": "block"}}]
    policy = CompiledPolicy(parse_rules(rules))
    p = past(1, 1_780_000_000_000, 0, "gpt-4o-mini", 10, 10, "allow")
    report = run_backtest(iter([p]), policy, CompiledPolicy(()), setting(1), p.ts_ms, p.ts_ms, loader([]))
    assert report["not_evaluable"] == 1 and report["rules"][0]["not_evaluable"] == 1
    assert report["rules"][0]["would_block"] == 0 and report["changed"] == 0


# --- the store side: streamed in (ts, seq) order a page at a time, usage before the window ---

def _event(n: int, ts_ms: int, subject: str, team: str, decision: str = "allow", cost: int = 5) -> CallEvent:
    return CallEvent(f"e{n}", ts_ms, subject, "employee", team, None, None, "openai", "chat", "/v1/chat/completions",
                     True, "gpt-4o-mini", "gpt-4o-mini", False, 403 if decision == "block" else 200, 10, 20, 0, 0,
                     None if decision == "block" else cost, "response", decision, "r" if decision == "block" else None,
                     None, 1.0, None, False, None, "metered", None)


def test_calls_stream_back_in_time_order_across_pages_and_ties(store: Store) -> None:
    # stored out of order, several in the same millisecond, spanning page boundaries
    times = [5_000, 1_000, 3_000, 3_000, 3_000, 2_000, 3_000, 9_000, 4_000, 3_000, 10_000]
    store.insert_events([_event(n, ts, "ann", "web") for n, ts in enumerate(times)])
    got = list(stream_calls(store, 2_000, 9_000, page=2))
    assert [p.ts_ms for p in got] == sorted(t for t in times if 2_000 <= t < 9_000)
    assert len({p.seq for p in got}) == len(got)
    assert all(isinstance(p, Past) and p.subject == "ann" for p in got)
    assert [p.ts_ms for p in stream_calls(store, 0, 100_000, page=3)] == sorted(times)


def test_a_page_read_ahead_is_handed_over_in_order_with_the_readers_error_and_stops_when_closed(store: Store) -> None:
    def pages() -> Iterator[int]:
        yield 1
        yield 2
        raise StoreError("the store went away")

    got = []
    with pytest.raises(StoreError, match="went away"):
        for n in read_ahead(pages(), 1):
            got.append(n)
    assert got == [1, 2]
    store.insert_events([_event(n, 1_000 + n, "ann", "web") for n in range(10)])
    calls = stream_calls(store, 0, 100_000, page=2, ahead=1)
    assert [next(calls).ts_ms for _ in range(3)] == [1_000, 1_001, 1_002]
    calls.close()  # stops the reading thread and waits for it
    assert not [t for t in threading.enumerate() if t.name == "read-ahead"]
    assert [p.ts_ms for p in stream_calls(store, 0, 100_000, page=3, ahead=0)] == [1_000 + n for n in range(10)]


def test_settled_usage_before_the_window_counts_a_team_and_the_teams_under_it(store: Store) -> None:
    store.insert_events([_event(1, 1_000, "ann", "web"), _event(2, 1_500, "cy", "ml", cost=7),
                         _event(3, 1_700, "di", "sales"), _event(4, 1_800, "ann", "web", "block"),
                         _event(5, 9_000, "ann", "web")])
    rows = settled_between(store, "team", ("eng", "web", "ml"), 0, 5_000, 1_000)
    assert rows == [(1_000, "openai", 12, 20, 40, 2)]
    assert settled_between(store, "org", (), 0, 10_000, 10_000) == [(0, "openai", 22, 40, 80, 4)]
    assert settled_between(store, "subject", ("ann",), 0, 5_000, 500) == [(1_000, "openai", 5, 10, 20, 1)]


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["monthly", "10m", "1h", "30d"]), st.integers(1, 28),
       st.lists(st.tuples(st.integers(0, 3_000_000_000), st.sampled_from(["openai", "anthropic"]),
                          st.integers(0, 1000), st.integers(0, 1000)), min_size=1, max_size=40))
def test_the_backtest_counter_holds_what_the_ledgers_counter_holds(
        window_text: str, billing_day: int, calls: list[tuple[int, str, int, int]]) -> None:
    """Calls in time order: the forward-only counter and the embedded ledger's Counter agree at every call."""
    window = parse_count_window(window_text, MONTHLY)
    reads = [(index_of(m), p) for m in ("spend", "tokens", "input_tokens") for p in (None, frozenset({"openai"}))]
    ours, ledgers = Running(window, billing_day, TZ, reads), LedgerCounter(window, billing_day, TZ)
    ts = 1_770_000_000_000
    for gap, provider, spend, tokens in calls:
        ts += gap // 100
        for metric in ("spend", "tokens", "input_tokens"):
            for providers in (None, frozenset({"openai"})):
                assert ours.used(metric, providers, ts) == ledgers.settled(metric, providers, ts)
        vec = (spend, tokens, tokens // 2, 1)
        ours.add(ts, provider, vec)
        ledgers.add_settled(ts, provider, vec)

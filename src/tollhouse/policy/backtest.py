"""Policy backtest (pure): what a policy would have done to stored traffic, call by call, in time order.

A `Simulation` replays past calls through the same `decide()` the gateway runs, enforcing, with budget counters
simulated the way the gateway's embedded ledger would have kept them (policy/backtest_counter.py: monthly
windows in the organisation's zone from its billing day, rolling windows in the ledger's buckets, a team's caps
counting everyone under the team, refused calls counting nothing). What it cannot know it does not guess:

- a call is judged on what it really used (the gateway judges the worst case before the call; history knows
  the actual usage), re-priced at the model it would have gone to when a redirect changes it (or undoes one);
- a call refused in history was never forwarded: if the rules let it through, its usage is unknown and counted
  as nothing (`cost_unknown`);
- a call the gateway itself refused (unknown key, unreadable body, ...: blocked with no rule) is not judged;
- CONTENT_DLP rules need the prompt, which history does not keep: the calls they apply to are `not_evaluable` for
  them (judged as if the prompt matched nothing, and said so).

Counters that begin before the window are loaded, as the gateway does, from what was stored before it
(`HistoryLoader`). Exemptions are not replayed (the calls are judged as if nobody held one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple
from zoneinfo import ZoneInfo

from tollhouse.config import Unpriced
from tollhouse.directory import Directory, Subject
from tollhouse.ledger.local import HistoryRow
from tollhouse.ledger.types import CapUsage, Charge
from tollhouse.ledger.windows import bucket_ms, window_bounds_ms
from tollhouse.policy.backtest_counter import TOKENS, Running, index_of
from tollhouse.policy.decide import Gate, Verdict, decide
from tollhouse.policy.engine import CallFacts, Cap, CompiledPolicy
from tollhouse.policy.rules import Kind
from tollhouse.policy.shadow import shadow_caps, shadow_ids, with_shadow_usage
from tollhouse.pricing import PriceBook
from tollhouse.providers.usage import Usage

JUDGED = frozenset({"metered", "governed"})  # endpoint classes whose model is judged and whose usage counts

# (scope, ids, since_ms, until_ms, bucket_ms) -> settled usage rows stored in [since, until), as the ledger's
# loader gives them: (bucket start ms, provider, spend nano-USD, input tokens, output tokens, requests)
HistoryLoader = Callable[[str, Sequence[str], int, int, int], list[HistoryRow]]


class Past(NamedTuple):
    """One stored call, as the backtest reads it (the store's columns, in this order)."""

    seq: int
    ts_ms: int
    subject: str
    subject_kind: str
    team: str | None
    project: str | None
    cost_centre: str | None
    provider: str
    endpoint_class: str
    model: str | None  # the model the upstream answered as (after a redirect)
    requested_model: str | None  # the model the caller asked for: what is judged
    status: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_nusd: int | None
    decision: str  # as recorded: allow | warn | redirect | block
    rule_id: str | None


@dataclass(frozen=True, slots=True)
class Setting:
    """What judging a past call needs besides the rules: the directory (team chains), prices, where each provider
    route points, the ledger's calendar, and the pricing and counters settings decide() reads."""

    directory: Directory
    prices: PriceBook
    hosts: dict[str, str]  # provider route id -> upstream host name
    price_providers: dict[str, str]  # provider route id -> its id in the price table
    billing_day: int
    tz: ZoneInfo
    unpriced: Unpriced = Unpriced.block
    counters_fail_open: bool = False


class Judged(NamedTuple):
    """One simulation's verdict on one call, and what the call uses going where the verdict sends it (what it
    would have cost, for a call the verdict refuses: the cost the refusal prevents)."""

    verdict: Verdict | None  # None: refused by the gateway itself in history (not judged)
    charge: Charge
    known: bool  # its usage is known (False: refused in history, let through here)
    unevaluable: tuple[str, ...]  # content rules that applied but could not be judged (no prompt)
    saved_nusd: int = 0  # a redirect: the cost at the model asked for less the cost at the substitute

    @property
    def outcome(self) -> str:
        return "block" if self.verdict is None else self.verdict.applied


_NOTHING = Charge("", 0, 0, 0, 0)
_QUARTER_HOUR_MS = 900_000
# What a call's shape decides before counting: its facts, the verdict, the content rules that cannot be judged,
# the shadow rules' caps, the model it goes to, who makes it.
_First = tuple[CallFacts, Verdict, tuple[str, ...], tuple[Cap, ...], str | None, Subject]
# A call shape's caps resolved once to their counters: each cap with its counter, and every counter the call
# counts in (each once): the caps' first, then the shadow caps'.
_Reads = tuple[tuple[Cap, Running, int], ...]  # (cap, its counter, its metric's place in a usage vector)
_Plan = tuple[_Reads, _Reads, tuple[Running, ...]]


class Simulation:
    """One policy, enforcing, over past calls given in time order, with its own budget counters."""

    def __init__(self, policy: CompiledPolicy, setting: Setting, since_ms: int, history: HistoryLoader) -> None:
        self.policy = policy
        self.setting = setting
        self.since_ms = since_ms
        self._history = history
        self._counters: dict[tuple[str, str, str], Running] = {}
        self._shadow = shadow_ids(policy)
        self._content = any(r.enabled and r.kind is Kind.content for r in policy.rules)
        # Time rules: a call's verdict depends on which of their windows it falls in (not on the minute itself,
        # but for the time shown in a violation's reason, which the backtest does not report).
        self._windows = tuple(r.window for r in policy.rules if r.enabled and r.kind is Kind.time and r.window)
        self._gate = Gate(True, (), True, setting.unpriced, setting.counters_fail_open)
        self._subjects: dict[tuple[object, ...], Subject] = {}
        # The verdict before counting, per call shape (it depends on nothing else: see CompiledPolicy.evaluate).
        self._first: dict[tuple[object, ...], _First] = {}
        self._plans: dict[tuple[object, ...], _Plan] = {}  # per call shape, for its priced verdict's caps

    def subject(self, p: Past) -> Subject:
        key = (p.subject, p.subject_kind, p.team, p.project, p.cost_centre)
        found = self._subjects.get(key)
        if found is None:
            found = Subject(p.subject, p.subject_kind, p.team, self.setting.directory.team_chain(p.team), p.project,
                            p.cost_centre)
            if len(self._subjects) < 200_000:
                self._subjects[key] = found
        return found

    def judge(self, p: Past, now: datetime | None = None) -> Judged:
        """The verdict on one past call (`now`: its time as a datetime, when the caller has it already)."""
        if p.decision == "block" and p.rule_id is None:
            return Judged(None, _NOTHING, True, ())
        policy = self.policy
        judged_class = p.endpoint_class in JUDGED
        model = p.requested_model if judged_class else None
        now = now or datetime.fromtimestamp(p.ts_ms / 1000, UTC)
        gate = self._gate
        windows = self._windows
        # the call's shape: who (subject, kind, team, project, cost centre), where, which time windows it is in
        shape = (p[2:7], p.provider, model, p.endpoint_class,
                 tuple([w.contains(now) for w in windows]) if windows else ())
        first = self._first.get(shape)
        if first is None:
            subject = self.subject(p)
            call = CallFacts(p.provider, self.setting.hosts.get(p.provider, ""), model)
            unevaluable: tuple[str, ...] = ()
            if self._content and model is not None and p.endpoint_class == "metered":
                unevaluable = tuple(r.id for r in policy.content_rules(subject))
            verdict = decide(gate, policy, call, subject, now)
            first = (call, verdict, unevaluable, shadow_caps(verdict, self._shadow),
                     verdict.decision.model if verdict.decision is not None else model, subject)
            if len(self._first) >= 20_000:
                self._first.clear()
                self._plans.clear()
            self._first[shape] = first
        call, verdict, unevaluable, extra, upstream, subject = first
        charge, priced, known = self._charge(p, upstream)
        if verdict.blocked:
            return Judged(verdict, charge, known, unevaluable)
        caps = verdict.caps
        if not judged_class or not (caps or extra):
            return Judged(verdict, charge, known, unevaluable, self._saved(p, verdict, charge))
        ts_ms = p.ts_ms
        vec = charge.vector()
        if priced:
            plan = self._plans.get(shape)
            if plan is None:
                plan = self._plans[shape] = self._plan(caps, extra, ts_ms)
            reads, shadow_reads, counters = plan
            usage = _usage(reads, vec, charge.provider, ts_ms)
        else:
            verdict = decide(gate._replace(priced=False), policy, call, subject, now)
            if verdict.blocked:
                return Judged(verdict, charge, known, unevaluable)
            gate = gate._replace(priced=False)
            reads, shadow_reads, counters = self._plan(verdict.caps, extra, ts_ms)
            usage = _usage(reads, vec, charge.provider, ts_ms)
        verdict = decide(gate, policy, call, subject, now, usage=usage or None, judged=verdict)
        if shadow_reads:
            verdict = with_shadow_usage(verdict, _usage(shadow_reads, vec, charge.provider, ts_ms))
        # counted, as the gateway settles a call that went (a refused one counts nothing)
        if not verdict.blocked and any(vec):
            provider = charge.provider
            for counter in counters:
                counter.add(ts_ms, provider, vec)
        return Judged(verdict, charge, known, unevaluable, self._saved(p, verdict, charge))

    def _plan(self, caps: Sequence[Cap], extra: Sequence[Cap], ts_ms: int) -> _Plan:
        """Each cap with its counter (a counter used for the first time is loaded now, at `ts_ms`), and the
        counters a call counted in adds to, each once."""
        reads = tuple((cap, self._counter(cap, ts_ms), index_of(cap.metric)) for cap in caps)
        shadow_reads = tuple((cap, self._counter(cap, ts_ms), index_of(cap.metric)) for cap in extra)
        counters: list[Running] = []
        for _, counter, _ in (*reads, *shadow_reads):
            if counter not in counters:
                counters.append(counter)
        return reads, shadow_reads, tuple(counters)

    def _counter(self, cap: Cap, ts_ms: int) -> Running:
        counter = self._counters.get(cap.key)
        if counter is None:
            counter = self._counters[cap.key] = self._load(cap, ts_ms)
        return counter

    def _saved(self, p: Past, verdict: Verdict, charge: Charge) -> int:
        d = verdict.decision
        if d is None or d.redirect is None or verdict.blocked:
            return 0
        return self._charge(p, d.requested_model)[0].spend_nusd - charge.spend_nusd

    def _charge(self, p: Past, model: str | None) -> tuple[Charge, bool, bool]:
        """What the call uses going to `model`: (charge, the model has a price, the usage is known)."""
        s = self.setting
        if p.decision == "block":  # never forwarded: what it would have used is unknown
            return Charge(p.provider, 0, 0, 0, 1), model is not None and self._priced(p.provider, model), False
        requests = 1 if p.status < 400 else 0
        sent = p.model if p.decision == "redirect" else p.requested_model
        if model == sent or p.endpoint_class != "metered" or model is None:
            cost = p.cost_nusd
            priced = cost is not None or model is None or self._priced(p.provider, model)
        else:  # a redirect made (or undone) here: the same tokens at the other model's price
            cost = s.prices.cost_nusd(s.price_providers.get(p.provider, p.provider), model,
                                      Usage(p.input_tokens, p.output_tokens, p.cache_read_tokens,
                                            p.cache_write_tokens))
            priced = cost is not None
        return Charge(p.provider, cost or 0, p.input_tokens, p.output_tokens, requests), priced, True

    def _priced(self, provider: str, model: str) -> bool:
        s = self.setting
        return s.prices.known(s.price_providers.get(provider, provider), model)

    def _load(self, cap: Cap, ts_ms: int) -> Running:
        """A counter used for the first time starts from what was stored before the window, as the gateway's do."""
        s = self.setting
        counter = Running(cap.window, s.billing_day, s.tz)
        counter.advance(ts_ms)
        start, _ = window_bounds_ms(cap.window, ts_ms, s.billing_day, s.tz)
        if start < self.since_ms:
            scope, ident = cap.counter
            ids = s.directory.descendants(ident) if scope == "team" else (ident,)
            # a month's counter needs no finer time than a quarter hour (every zone's midnight falls on one)
            bucket = bucket_ms(cap.window) if not cap.window.monthly else _QUARTER_HOUR_MS
            for ts, provider, spend, inp, outp, reqs in self._history(scope, ids or (ident,), start, self.since_ms,
                                                                     bucket):
                counter.add(ts, provider, (spend, inp, outp, reqs))
        return counter


def _usage(reads: _Reads, vec: tuple[int, int, int, int], provider: str, ts_ms: int) -> list[CapUsage]:
    """What the ledger would tell decide() for each cap: used before this call, this call's need, the limit.
    (Calls are replayed one at a time: no other call holds a reservation.)"""
    usage: list[CapUsage] = []
    for cap, counter, index in reads:
        providers = cap.providers
        if providers is not None and provider not in providers:
            need = 0
        else:
            need = vec[index] if index != TOKENS else vec[1] + vec[2]
        usage.append(CapUsage(cap, counter.used_at(index, providers, ts_ms), need, cap.units, 0))
    return usage

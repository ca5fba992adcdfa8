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
from datetime import UTC, datetime, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo

from tollhouse.config import Unpriced
from tollhouse.directory import Directory, Subject
from tollhouse.ledger.local import HistoryRow
from tollhouse.ledger.types import CapUsage, Charge
from tollhouse.ledger.windows import bucket_ms, window_bounds_ms
from tollhouse.policy.backtest_counter import NOTHING, Program, Read, Running, index_of
from tollhouse.policy.decide import Gate, Verdict, decide
from tollhouse.policy.engine import CallFacts, Cap, CompiledPolicy, counter_scope
from tollhouse.policy.rules import MONTHLY, Kind
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
_new = tuple.__new__  # a NamedTuple made from all its fields without its Python-level __new__ (the hot path's)
_QUARTER_HOUR_MS = 900_000
_MINUTE_MS = 60_000
# One cap read for a call shape: the cap, its counter's slots (read in place), the cap's slot, the place of what the
# call adds to it in `amounts` (NOTHING: its provider is not counted), and whether it is a shadow rule's cap.
_Check = tuple[Cap, list[int], int, int, bool]


class _Plan(NamedTuple):
    """A call shape's caps resolved once to their counters."""

    checks: tuple[_Check, ...]  # the caps in force, then the shadow rules' caps
    limits: tuple[tuple[list[int], int, int, int], ...]  # per check: (slots, slot, place, limit), for the fast test
    rolling: tuple[Running, ...]  # the rolling counters read (advanced before reading)
    adds: tuple[tuple[list[int], int, int], ...]  # (slots, slot, place): every slot a call adds to, each once
    buckets: tuple[tuple[Running, Program], ...]  # the rolling counters a call adds to, with what it adds


class _Shape:
    """What a call's shape decides before counting (see CompiledPolicy.evaluate: the rules' judgement depends on
    nothing else): its facts, the verdict, the content rules that cannot be judged, the shadow rules' caps, the
    model it goes to, who makes it; and, made on first use, its caps' plan."""

    __slots__ = ("applied", "blocked", "call", "capped", "extra", "over", "plan", "redirect", "subject", "unevaluable",
                 "upstream", "verdict")

    def __init__(self, call: CallFacts, verdict: Verdict, unevaluable: tuple[str, ...], extra: tuple[Cap, ...],
                 upstream: str | None, subject: Subject, judged: bool) -> None:
        self.call, self.verdict, self.unevaluable, self.extra = call, verdict, unevaluable, extra
        self.upstream, self.subject = upstream, subject
        d = verdict.decision
        self.applied, self.blocked = verdict.applied, verdict.blocked
        self.redirect = d is not None and d.redirect is not None and not verdict.blocked
        self.capped = judged and not verdict.blocked and bool(verdict.caps or extra)  # the call is counted
        self.plan: _Plan | None = None
        self.over: dict[tuple[int, ...], Verdict] = {}  # the verdict with these caps (by place in the plan) gone over


class Simulation:
    """One policy, enforcing, over past calls given in time order, with its own budget counters.

    `shortcut` (the default): a call that is under every cap that counts it, by the sums the counters keep, is
    given the verdict decide() gave its shape before counting, without calling decide() again with the ledger's
    numbers: with no cap gone over, decide() returns that same judgement. A call over some caps is given the
    verdict decide() gave, on its numbers, to the first call of its shape over the same caps: decide() judges on
    which caps are gone over, the numbers only word the violations' reasons. (What differs, the verdict's `usage`
    and those reasons, the backtest does not read; tests/test_backtest.py checks both ways give the same judgement
    call by call on generated histories.) False: every counted call goes through decide() with its numbers."""

    def __init__(self, policy: CompiledPolicy, setting: Setting, since_ms: int, history: HistoryLoader,
                 shortcut: bool = True) -> None:
        self.policy = policy
        self.setting = setting
        self.since_ms = since_ms
        self._history = history
        self._shortcut = shortcut
        self._counters: dict[tuple[str, str, str], Running] = {}
        self._monthly: list[Running] = []
        self._month_end = 0  # the end of the billing month the monthly counters are at
        self._reads = _reads_by_counter(policy)
        self._shadow = shadow_ids(policy)
        self._content = any(r.enabled and r.kind is Kind.content for r in policy.rules)
        # Time rules: a call's verdict depends on which of their windows it falls in (not on the minute itself,
        # but for the time shown in a violation's reason, which the backtest does not report).
        self._windows = tuple(r.window for r in policy.rules if r.enabled and r.kind is Kind.time and r.window)
        self._minute = -1  # the minute `_inside` is for (-1: none; a zone off whole minutes is never cached)
        self._inside: tuple[bool, ...] = ()
        self._gate = Gate(True, (), True, setting.unpriced, setting.counters_fail_open)
        self._subjects: dict[tuple[object, ...], Subject] = {}
        self._shapes: dict[tuple[object, ...], _Shape] = {}

    def subject(self, p: Past) -> Subject:
        key = (p.subject, p.subject_kind, p.team, p.project, p.cost_centre)
        found = self._subjects.get(key)
        if found is None:
            found = Subject(p.subject, p.subject_kind, p.team, self.setting.directory.team_chain(p.team), p.project,
                            p.cost_centre)
            if len(self._subjects) < 200_000:
                self._subjects[key] = found
        return found

    def outcome(self, p: Past) -> tuple[str, int]:
        """What the policy does with one past call (`Judged.outcome`) and, when it refuses it, the cost the refusal
        prevents: what comparing with another policy needs, without making a verdict when the call is not counted
        (its shape's verdict is the verdict)."""
        if p.decision == "block" and p.rule_id is None:
            return "block", 0
        key: tuple[object, ...] = p[2:11]
        if self._windows:
            ts_ms = p.ts_ms
            key = (key, self._inside if ts_ms // _MINUTE_MS == self._minute else self._inside_at(ts_ms))
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shape(p, key)
        if shape.capped:
            judged = self.judge(p)
            outcome = judged.outcome
            return outcome, judged.charge.spend_nusd if outcome == "block" else 0
        if shape.blocked:
            return "block", self._charge(p, shape.upstream)[0].spend_nusd
        return shape.applied, 0

    def judge(self, p: Past) -> Judged:
        """The verdict on one past call."""
        (_, ts_ms, _, _, _, _, _, provider, endpoint_class, model, requested_model, status, inp, outp, _, _, cost,
         decision, rule_id) = p
        if decision == "block" and rule_id is None:
            return Judged(None, _NOTHING, True, ())
        # the call's shape: who (subject, kind, team, project, cost centre), where, the model answered and asked
        # for, which time windows it is in
        key: tuple[object, ...] = p[2:11]
        if self._windows:
            key = (key, self._inside if ts_ms // _MINUTE_MS == self._minute else self._inside_at(ts_ms))
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shape(p, key)
        verdict = shape.verdict
        # what the call uses going where the verdict sends it (_charge, inlined for a call that went as it was sent)
        upstream = shape.upstream
        if decision != "block" and (upstream is None or endpoint_class != "metered"
                                    or upstream == (model if decision == "redirect" else requested_model)):
            priced = cost is not None or upstream is None or self._priced(provider, upstream)
            spend, requests = cost or 0, 1 if status < 400 else 0
            charge = _new(Charge, (provider, spend, inp, outp, requests, True))
            known = True
        else:
            charge, priced, known = self._charge(p, upstream)
            spend, inp, outp, requests = charge.spend_nusd, charge.input_tokens, charge.output_tokens, charge.requests
        if not shape.capped:
            return _new(Judged, (verdict, charge, known, shape.unevaluable,
                                 self._saved(p, verdict, charge) if shape.redirect else 0))
        if ts_ms >= self._month_end:
            self._new_month(ts_ms)
        use = (spend, inp, outp, requests, inp + outp, 0)  # by place: see backtest_counter.amounts
        if priced:
            plan = shape.plan
            if plan is None:
                plan = shape.plan = self._plan(verdict.caps, shape.extra, provider, ts_ms)
            if not self._shortcut:
                _advance(plan.rolling, ts_ms)
                verdict = self._judge_counted(verdict, plan, use, shape, ts_ms, self._gate)
            else:
                # Under every cap, decide() with the numbers would give the judgement it gave before them. Rolling
                # counters are read before letting go of what has left their windows (see Running.expiry): sums at
                # least the true ones, so a call under every cap by them is under by the true sums too; else they
                # let go and are read again.
                for slots, j, k, limit in plan.limits:
                    if slots[j] + use[k] > limit:
                        under = bool(plan.rolling) and _advance(plan.rolling, ts_ms) and _under(plan.limits, use)
                        break
                else:
                    under = True
                if under:
                    if use[0] or use[4] or use[3]:  # counted (_count, inlined)
                        for slots, j, k in plan.adds:
                            slots[j] += use[k]
                        for counter, program in plan.buckets:
                            counter.bucket_add(ts_ms, program, use)
                    return _new(Judged, (verdict, charge, known, shape.unevaluable,
                                         self._saved(p, verdict, charge) if shape.redirect else 0))
                # over some caps: decide() judges on which caps the call goes over (their numbers only word the
                # reasons), so its verdict for this shape and these caps is reused
                over = tuple([i for i, (slots, j, k, limit) in enumerate(plan.limits) if slots[j] + use[k] > limit])
                found = shape.over.get(over)
                if found is None:
                    found = self._judge_counted(verdict, plan, use, shape, ts_ms, self._gate)
                    if len(shape.over) < 64:
                        shape.over[over] = found
                verdict = found
        else:
            gate = self._gate._replace(priced=False)
            verdict = decide(gate, self.policy, shape.call, shape.subject, _at(ts_ms))
            if verdict.blocked:
                return Judged(verdict, charge, known, shape.unevaluable)
            plan = self._plan(verdict.caps, shape.extra, provider, ts_ms)
            _advance(plan.rolling, ts_ms)
            verdict = self._judge_counted(verdict, plan, use, shape, ts_ms, gate)
        # counted, as the gateway settles a call that went (a refused one counts nothing)
        if not verdict.blocked:
            _count(plan, ts_ms, use)
        return Judged(verdict, charge, known, shape.unevaluable, self._saved(p, verdict, charge))

    def _judge_counted(self, verdict: Verdict, plan: _Plan, use: tuple[int, ...], shape: _Shape, ts_ms: int,
                       gate: Gate) -> Verdict:
        """decide() on the counters' numbers (what the ledger would tell it), the shadow caps' overruns added."""
        usage = [CapUsage(cap, slots[j], use[k], cap.units, 0) for cap, slots, j, k, shadow in plan.checks
                 if not shadow]
        verdict = decide(gate, self.policy, shape.call, shape.subject, _at(ts_ms), usage=usage or None,
                         judged=verdict)
        shadow_usage = [CapUsage(cap, slots[j], use[k], cap.units, 0) for cap, slots, j, k, shadow in plan.checks
                        if shadow]
        return with_shadow_usage(verdict, shadow_usage) if shadow_usage else verdict

    def _shape(self, p: Past, key: tuple[object, ...]) -> _Shape:
        """A new call shape judged before counting (cached)."""
        policy = self.policy
        judged = p.endpoint_class in JUDGED
        model = p.requested_model if judged else None
        subject = self.subject(p)
        call = CallFacts(p.provider, self.setting.hosts.get(p.provider, ""), model)
        unevaluable: tuple[str, ...] = ()
        if self._content and model is not None and p.endpoint_class == "metered":
            unevaluable = tuple(r.id for r in policy.content_rules(subject))
        verdict = decide(self._gate, policy, call, subject, _at(p.ts_ms))
        shape = _Shape(call, verdict, unevaluable, shadow_caps(verdict, self._shadow),
                       verdict.decision.model if verdict.decision is not None else model, subject, judged)
        if len(self._shapes) >= 20_000:
            self._shapes.clear()
        self._shapes[key] = shape
        return shape

    def _inside_at(self, ts_ms: int) -> tuple[bool, ...]:
        """Which of the time rules' windows `ts_ms` is in (the same for a whole minute: windows are in minutes of
        the day, and a zone whose offset is whole minutes keeps a minute whole)."""
        minute = ts_ms // _MINUTE_MS
        if minute == self._minute:
            return self._inside
        now = _at(ts_ms)
        inside = tuple([w.contains(now) for w in self._windows])
        whole = all((now.astimezone(w.tz).utcoffset() or timedelta(0)).total_seconds() % 60 == 0
                    for w in self._windows)
        self._minute, self._inside = (minute if whole else -1), inside
        return inside

    def _new_month(self, ts_ms: int) -> None:
        s = self.setting
        _, self._month_end = window_bounds_ms(MONTHLY, ts_ms, s.billing_day, s.tz)
        for counter in self._monthly:
            counter.advance(ts_ms)

    def _plan(self, caps: Sequence[Cap], extra: Sequence[Cap], provider: str, ts_ms: int) -> _Plan:
        """Each cap with its counter (a counter used for the first time is loaded now, at `ts_ms`), and the
        counters a call counted in adds to, each once."""
        checks: list[_Check] = []
        for cap, shadow in (*((c, False) for c in caps), *((c, True) for c in extra)):
            counter = self._counter(cap, ts_ms)
            index = index_of(cap.metric)
            counted = cap.providers is None or provider in cap.providers
            checks.append((cap, counter.slots, counter.slot((index, cap.providers)), index if counted else NOTHING,
                           shadow))
        counters: list[Running] = []
        for cap, *_ in checks:
            counter = self._counters[cap.key]
            if counter not in counters:
                counters.append(counter)
        return _Plan(tuple(checks), tuple((slots, j, k, cap.units) for cap, slots, j, k, _ in checks),
                     tuple(c for c in counters if not c.monthly),
                     tuple((c.slots, j, k) for c in counters for j, k in c.program(provider)),
                     tuple((c, c.program(provider)) for c in counters if not c.monthly))

    def _counter(self, cap: Cap, ts_ms: int) -> Running:
        counter = self._counters.get(cap.key)
        if counter is None:
            counter = self._counters[cap.key] = self._load(cap, ts_ms)
            if counter.monthly:
                self._monthly.append(counter)
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
        counter = Running(cap.window, s.billing_day, s.tz, self._reads.get((cap.counter[0], cap.window.label), ()))
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


def _advance(rolling: Sequence[Running], ts_ms: int) -> bool:
    """Rolling counters let go of what has left their windows by `ts_ms`; whether any had something to let go."""
    moved = False
    for counter in rolling:
        if ts_ms >= counter.expiry:
            counter.advance(ts_ms)
            moved = True
    return moved


def _under(limits: Sequence[tuple[list[int], int, int, int]], use: tuple[int, ...]) -> bool:
    """The call (`use`: its usage by place) is under every cap of `limits`: (slots, slot, place, limit)."""
    return all(slots[j] + use[k] <= limit for slots, j, k, limit in limits)


def _count(plan: _Plan, ts_ms: int, use: tuple[int, ...]) -> None:
    """A call that went counted in every counter of its caps (`use`: its usage by place)."""
    if not (use[0] or use[4] or use[3]):
        return
    for slots, j, k in plan.adds:
        slots[j] += use[k]
    for counter, program in plan.buckets:
        counter.bucket_add(ts_ms, program, use)


def _at(ts_ms: int) -> datetime:
    return datetime.fromtimestamp(ts_ms / 1000, UTC)


def _reads_by_counter(policy: CompiledPolicy) -> dict[tuple[str, str], tuple[Read, ...]]:
    """Per kind of counter and counting window (scope, window label), every read the policy's caps on such a counter
    make (shadow rules' included): what a counter keeps."""
    out: dict[tuple[str, str], list[Read]] = {}
    for rule in policy.rules:
        if rule.enabled and rule.kind in (Kind.spend, Kind.tokens):
            read = (index_of("spend" if rule.kind is Kind.spend else rule.metric), rule.providers)
            found = out.setdefault((counter_scope(rule), rule.count_window.label), [])
            if read not in found:
                found.append(read)
    return {key: tuple(reads) for key, reads in out.items()}

"""The backtest's answer (pure): proposed rules and the policy in force, each replayed over the same past calls
(policy/backtest.py), tallied per rule and compared call by call.

`run_backtest(calls, proposed, in_force, setting, since_ms, until_ms, history)` reads `calls` once, in time order
(an iterator: the store streams them), and keeps only counters and tallies, never the calls themselves.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tollhouse.events.model import iso_ts
from tollhouse.policy.backtest import HistoryLoader, Judged, Past, Setting, Simulation
from tollhouse.policy.decide import Verdict
from tollhouse.policy.engine import CompiledPolicy, Decision
from tollhouse.policy.rules import Kind, Rule, Severity
from tollhouse.policy.shadow import shadow_ids

MAX_LISTED = 100  # subjects and teams listed per rule (all are counted)
_NANO = 1_000_000_000


def _usd(nusd: int) -> float:
    return round(nusd / _NANO, 6)


@dataclass(slots=True)
class RuleTally:
    rule: Rule
    would_block: int = 0
    would_warn: int = 0
    would_log: int = 0
    would_redirect: int = 0
    not_evaluable: int = 0
    blocked_nusd: int = 0
    saved_nusd: int = 0
    subjects: set[str] = field(default_factory=set)
    teams: set[str] = field(default_factory=set)
    first_ms: int | None = None
    last_ms: int | None = None

    def hit(self, p: Past) -> None:
        self.subjects.add(p.subject)
        if p.team:
            self.teams.add(p.team)
        if self.first_ms is None:
            self.first_ms = p.ts_ms
        self.last_ms = p.ts_ms

    def json(self) -> dict[str, Any]:
        r = self.rule
        return {
            "id": r.id, "type": r.type_name, "mode": r.mode.value, "severity": r.severity.name.upper(),
            "would_block": self.would_block, "would_warn": self.would_warn, "would_log": self.would_log,
            "would_redirect": self.would_redirect, "cost_usd_blocked": _usd(self.blocked_nusd),
            "cost_usd_saved_by_redirect": _usd(self.saved_nusd),
            "subjects": sorted(self.subjects)[:MAX_LISTED], "subjects_count": len(self.subjects),
            "teams": sorted(self.teams)[:MAX_LISTED], "teams_count": len(self.teams),
            "first": iso_ts(self.first_ms) if self.first_ms is not None else None,
            "last": iso_ts(self.last_ms) if self.last_ms is not None else None,
            "not_evaluable": self.not_evaluable,
        }


# What one verdict (the same object for every call of a shape under its caps) adds to the tallies, found once: the
# verdict itself (kept alive while its id is a key), its outcome, what shadow rules would change, and per rule hit
# its tally and how it was hit.
_Effects = tuple[Verdict, str, str | None, tuple[tuple[RuleTally, str], ...]]


@dataclass(slots=True)
class Tally:
    """Everything counted over the replay (bounded: per rule, per outcome, per subject and team hit)."""

    rules: dict[str, RuleTally]
    shadow: frozenset[str]
    calls: int = 0
    refused_by_gateway: int = 0
    pairs: dict[tuple[str, str], int] = field(default_factory=dict)  # (outcome here, outcome in force) -> calls
    shadow_would: Counter[str] = field(default_factory=Counter)
    blocked_nusd: int = 0
    in_force_blocked_nusd: int = 0
    cost_unknown: int = 0
    not_evaluable: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    _effects: dict[int, _Effects] = field(default_factory=dict)
    # calls not evaluable for these content rules, not yet added to `not_evaluable` and the rules' tallies
    _unevaluable: dict[tuple[str, ...], int] = field(default_factory=dict)

    def add(self, p: Past, mine: Judged, before: str, before_nusd: int) -> None:
        """One call: judged under the proposed rules (`mine`), and its outcome under the policy in force (`before`,
        with the cost a refusal there prevented)."""
        self.calls += 1
        if self.first_ms is None:
            self.first_ms = p.ts_ms
        self.last_ms = p.ts_ms
        verdict = mine.verdict
        if verdict is None:
            self.refused_by_gateway += 1
            return
        effects = self._effects.get(id(verdict))
        if effects is None or effects[0] is not verdict:
            effects = self._effects_of(verdict)
        _, now, would, hits = effects
        pair = (now, before)
        pairs = self.pairs
        pairs[pair] = pairs.get(pair, 0) + 1
        if now == "block":
            self.blocked_nusd += mine.charge.spend_nusd
        elif not mine.known:
            self.cost_unknown += 1
        if before == "block":
            self.in_force_blocked_nusd += before_nusd
        unevaluable = mine.unevaluable
        if unevaluable:
            pending = self._unevaluable
            pending[unevaluable] = pending.get(unevaluable, 0) + 1
        if would is not None:
            self.shadow_would[would] += 1
        for t, how in hits:
            if how == "block":
                t.would_block += 1
                t.blocked_nusd += mine.charge.spend_nusd
            elif how == "log":
                t.would_log += 1
            elif how == "warn":
                t.would_warn += 1
            else:
                t.would_redirect += 1
                t.saved_nusd += mine.saved_nusd
            t.hit(p)

    def _effects_of(self, verdict: Verdict) -> _Effects:
        hits: list[tuple[RuleTally, str]] = []
        d = verdict.decision
        if d is not None and (d.violations or d.redirect is not None):
            self._per_rule(d, True, hits)
        d = verdict.shadowed
        if d is not None and (d.violations or d.redirect is not None):
            self._per_rule(d, False, hits)
        effects = (verdict, verdict.applied, verdict.would, tuple(hits))
        if len(self._effects) >= 10_000:
            self._effects.clear()
        self._effects[id(verdict)] = effects
        return effects

    def _per_rule(self, d: Decision, applied: bool, hits: list[tuple[RuleTally, str]]) -> None:
        """Each rule's own part in one call: its violations (by its severity) and its redirect. Rules in force are
        read from the applied decision, shadow rules from the decision with them applied."""
        shadow = self.shadow
        for v in d.violations:
            rid = v.rule.id
            if (rid in shadow) == applied:
                continue
            t = self.rules.get(rid)
            if t is None:
                continue
            sev = v.rule.severity
            hits.append((t, "block" if sev is Severity.block else "log" if sev is Severity.log else "warn"))
        r = d.redirect
        if r is not None and (r.rule.id in shadow) != applied:
            t = self.rules.get(r.rule.id)
            if t is not None:
                hits.append((t, "redirect"))

    def json(self, since_ms: int, until_ms: int) -> dict[str, Any]:
        for rule_ids, n in self._unevaluable.items():
            self.not_evaluable += n
            for rid in rule_ids:
                found = self.rules.get(rid)
                if found is not None:
                    found.not_evaluable += n
        self._unevaluable.clear()
        def outcomes(c: Counter[str]) -> dict[str, int]:
            return {k: c.get(k, 0) for k in ("allow", "warn", "redirect", "block")}

        now: Counter[str] = Counter()
        before: Counter[str] = Counter()
        changes: Counter[str] = Counter()
        for (here, there), n in self.pairs.items():
            now[here] += n
            before[there] += n
            if here != there:
                changes[f"{there}->{here}"] += n

        return {
            "from": iso_ts(since_ms), "to": iso_ts(until_ms),
            "first_call": iso_ts(self.first_ms) if self.first_ms is not None else None,
            "last_call": iso_ts(self.last_ms) if self.last_ms is not None else None,
            "calls": self.calls, "judged": self.calls - self.refused_by_gateway,
            "refused_by_gateway": self.refused_by_gateway,
            "changed": sum(changes.values()), "changes": dict(sorted(changes.items())),
            "outcomes": outcomes(now), "in_force_outcomes": outcomes(before),
            "cost_usd_blocked": _usd(self.blocked_nusd), "in_force_cost_usd_blocked": _usd(self.in_force_blocked_nusd),
            "cost_unknown": self.cost_unknown, "not_evaluable": self.not_evaluable,
            "shadow": {"rules": sorted(self.shadow), "would": dict(sorted(self.shadow_would.items()))},
            "rules": [t.json() for t in self.rules.values()],
        }


def run_backtest(calls: Iterable[Past], proposed: CompiledPolicy, in_force: CompiledPolicy, setting: Setting,
                 since_ms: int, until_ms: int, history: HistoryLoader) -> dict[str, Any]:
    """Replay `calls` (time order) under `proposed` and under `in_force`; the report as JSON-ready data."""
    mine = Simulation(proposed, setting, since_ms, history)
    theirs = Simulation(in_force, setting, since_ms, history)
    same = proposed.rules == in_force.rules
    tally = Tally({r.id: RuleTally(r) for r in proposed.rules if r.enabled}, shadow_ids(proposed))
    for p in calls:
        judged = mine.judge(p)
        if same:
            outcome = judged.outcome
            tally.add(p, judged, outcome, judged.charge.spend_nusd if outcome == "block" else 0)
        else:
            tally.add(p, judged, *theirs.outcome(p))
    out = tally.json(since_ms, until_ms)
    out["content_rules"] = [r.id for r in proposed.rules if r.enabled and r.kind is Kind.content]
    return out

"""Generated usage history with known spikes and known quiet periods, and the anomaly detector's precision and
recall on it (used by tests/test_alerts_anomaly.py and benchmarks/bench_alerts.py).

Each team has a weekly shape (busy weekdays, a quiet weekend; Mondays and Fridays a little lighter), day-to-day
noise of +-20 %, a slow growth, holiday weeks and single quiet days (near zero: known quiet periods, which must
not raise alerts nor poison the baseline), mild bumps (x1.3: normal variation, not anomalies) and spikes
(x3 to x8: the anomalies to find)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, timedelta

from tollhouse.alerts import anomaly
from tollhouse.alerts.anomaly import Totals
from tollhouse.alerts.config import AnomalyConfig

START = date(2026, 6, 1)  # a Monday
WEEKS = 16
_SHAPE = (0.85, 1.0, 1.05, 1.0, 0.8, 0.08, 0.05)  # Monday .. Sunday


@dataclass
class History:
    days: dict[str, dict[date, Totals]] = field(default_factory=dict)
    spikes: set[tuple[str, date]] = field(default_factory=set)
    quiet: set[tuple[str, date]] = field(default_factory=set)
    bumps: set[tuple[str, date]] = field(default_factory=set)


def generate(seed: int = 7, teams: int = 12) -> History:
    rng = random.Random(seed)
    h = History()
    for t in range(teams):
        team = f"team{t}"
        level = rng.choice((40.0, 75.0, 150.0, 400.0))  # USD on a typical Tuesday
        holiday = rng.randrange(4, WEEKS - 1)  # one holiday week per team
        series: dict[date, Totals] = {}
        for i in range(WEEKS * 7):
            d = START + timedelta(days=i)
            usd = level * _SHAPE[d.weekday()] * (1 + 0.004 * i) * rng.uniform(0.8, 1.2)
            if i // 7 == holiday or (d.weekday() < 5 and rng.random() < 0.03):
                usd *= 0.03
                h.quiet.add((team, d))
            elif i >= 42 and d.weekday() < 5 and rng.random() < 0.05:
                usd *= rng.uniform(3, 8)
                h.spikes.add((team, d))
            elif i >= 42 and rng.random() < 0.05:
                usd *= 1.3
                h.bumps.add((team, d))
            tokens = usd * rng.uniform(18_000, 22_000)
            calls = usd * rng.uniform(2.5, 3.5)
            series[d] = (usd, tokens, calls)
        h.days[team] = series
    return h


@dataclass(frozen=True)
class Score:
    days_judged: int
    true_positives: int
    false_positives: int
    false_negatives: int
    alerts_on_quiet_days: int
    alerts_after_quiet_periods: int  # on the first normal day after a quiet period

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 1.0

    @property
    def recall(self) -> float:
        real = self.true_positives + self.false_negatives
        return self.true_positives / real if real else 1.0


def score(h: History, cfg: AnomalyConfig | None = None, judge_from_day: int = 42) -> Score:
    """Every day from `judge_from_day` on (six weeks of history first), as the detector sees it at day's end."""
    cfg = cfg or AnomalyConfig(enabled=True)
    tp = fp = fn = judged = on_quiet = after_quiet = 0
    for team, series in h.days.items():
        first = min(series)
        for i in range(judge_from_day, WEEKS * 7):
            d = START + timedelta(days=i)
            judged += 1
            flagged = bool(anomaly.daily(series, d, first, cfg))
            spike = (team, d) in h.spikes
            tp += flagged and spike
            fp += flagged and not spike
            fn += spike and not flagged
            on_quiet += flagged and (team, d) in h.quiet
            prev = d - timedelta(days=1)
            after_quiet += flagged and not spike and (team, prev) in h.quiet and (team, d) not in h.quiet
    return Score(judged, tp, fp, fn, on_quiet, after_quiet)

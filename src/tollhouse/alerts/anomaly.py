"""Anomalies against a team's (or a person's) own baseline: pure functions over usage totals.

A day is compared with the same weekday of the trailing weeks (a Monday with Mondays: a quiet weekend is no
baseline for a Monday); an hour with the same hour of the trailing two weeks' days of its kind (weekday or
weekend). The baseline is robust: its median and MAD, and its usual range is the history without its outliers
(earlier spikes and holidays do not move it). A value is anomalous when it is at least the metric's minimum
volume, above `ratio` x the top of the usual range and above median + `sigmas` x 1.4826 x MAD."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from statistics import median
from zoneinfo import ZoneInfo

from tollhouse.alerts.config import AnomalyConfig

METRICS = ("spend", "tokens", "calls")
Totals = tuple[float, float, float]  # USD, tokens, calls
ZERO: Totals = (0.0, 0.0, 0.0)
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


@dataclass(frozen=True, slots=True)
class Baseline:
    median: float
    low: float  # the usual range: the history without its outliers
    high: float
    bound: float  # above this is anomalous
    samples: int


@dataclass(frozen=True, slots=True)
class Finding:
    metric: str  # spend | tokens | calls
    value: float
    baseline: Baseline
    usual: str  # "Monday", "weekday 14:00 hour"


def baseline(history: Sequence[float], ratio: float, sigmas: float, min_samples: int = 3) -> Baseline | None:
    if len(history) < min_samples:
        return None
    mid = median(history)
    spread = 1.4826 * median(abs(x - mid) for x in history)
    usual = [x for x in history if abs(x - mid) <= 3 * spread] if spread > 0 else [x for x in history if x == mid]
    low, high = min(usual), max(usual)
    return Baseline(mid, low, high, max(high * ratio, mid + sigmas * spread), len(history))


def _minimum(cfg: AnomalyConfig, metric: str) -> float:
    return {"spend": cfg.min_usd, "tokens": float(cfg.min_tokens), "calls": float(cfg.min_calls)}[metric]


def judge(value: Totals, history: Sequence[Totals], cfg: AnomalyConfig, usual: str) -> list[Finding]:
    out: list[Finding] = []
    for i, metric in enumerate(METRICS):
        v = value[i]
        if v < _minimum(cfg, metric) or v <= 0:
            continue
        b = baseline([h[i] for h in history], cfg.ratio, cfg.sigmas)
        if b is not None and v > b.bound:
            out.append(Finding(metric, v, b, usual))
    return out


def daily(days: Mapping[date, Totals], day: date, first: date, cfg: AnomalyConfig) -> list[Finding]:
    """`day` (its total so far) against the same weekday of the `cfg.weeks` weeks before, from `first` (the
    first day with any usage) on; days without usage count as zero."""
    history = [days.get(d, ZERO) for k in range(1, cfg.weeks + 1) if (d := day - timedelta(weeks=k)) >= first]
    return judge(days.get(day, ZERO), history, cfg, _DAYS[day.weekday()])


def hourly(hours: Mapping[int, Totals], hour: int, first: int, tz: ZoneInfo, cfg: AnomalyConfig) -> list[Finding]:
    """Hour `hour` (hours since the epoch; its total so far) against the same hour of the 14 days before that
    are of its kind (weekday or weekend), from hour `first` on."""
    weekend = _local(hour, tz).weekday() >= 5
    history = [hours.get(h, ZERO) for k in range(1, 15)
               if (h := hour - 24 * k) >= first and (_local(h, tz).weekday() >= 5) == weekend]
    label = f"{'weekend' if weekend else 'weekday'} {_local(hour, tz):%H}:00 hour"
    return judge(hours.get(hour, ZERO), history, cfg, label)


def _local(hour: int, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(hour * 3600, tz)


def amount(metric: str, value: float) -> str:
    if metric == "spend":
        return f"${value:,.0f}" if value >= 100 else f"${value:,.2f}"
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    return f"{value:,.0f}"


_VERB = {"spend": "spent {}", "tokens": "used {} tokens", "calls": "made {} calls"}


def explain(who: str, when: str, f: Finding) -> str:
    """ "ml spent $412 today; its usual Monday is $60-$85" """
    b = f.baseline
    usual = amount(f.metric, b.low) if b.low == b.high else f"{amount(f.metric, b.low)}-{amount(f.metric, b.high)}"
    return f"{who} {_VERB[f.metric].format(amount(f.metric, f.value))} {when}; its usual {f.usual} is {usual}"

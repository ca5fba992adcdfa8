"""Anomaly detection on generated history with known spikes and quiet periods (precision and recall), the
explanation an on-call engineer reads, and no alert on a normal Monday after a quiet weekend."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tollhouse.alerts import anomaly, anomaly_scan
from tollhouse.alerts.anomaly import Totals
from tollhouse.alerts.config import AnomalyConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from anomaly_history import generate, score

CFG = AnomalyConfig(enabled=True)
UTC_ZONE = ZoneInfo("UTC")


@pytest.mark.parametrize("seed", [1, 2, 3, 7])
def test_precision_and_recall_on_generated_history(seed: int) -> None:
    s = score(generate(seed))
    print(f"seed {seed}: {s.days_judged} team-days, {s.true_positives + s.false_negatives} spikes: precision "
          f"{s.precision:.3f}, recall {s.recall:.3f}")
    assert s.true_positives >= 20
    assert s.precision >= 0.95 and s.recall >= 0.95
    assert s.alerts_on_quiet_days == 0 and s.alerts_after_quiet_periods == 0


def _hours(monday: datetime, weeks: int, today_usd_per_hour: float | None, hour_now: int) -> dict[int, Totals]:
    """`weeks` weeks of a team working 09-17 on weekdays ($8 an hour; a trickle at weekends) before `monday`,
    then that Monday until `hour_now` at `today_usd_per_hour`."""
    out: dict[int, Totals] = {}
    start = monday - timedelta(weeks=weeks)
    for day in range(weeks * 7):
        d = start + timedelta(days=day)
        weekend = d.weekday() >= 5
        for h in ((10, 11) if weekend else range(9, 18)):
            usd = (0.4 if weekend else 8.0) * (1 + 0.1 * ((day * 7 + h) % 3 - 1))
            out[int((d + timedelta(hours=h)).timestamp()) // 3600] = (usd, usd * 20_000, usd * 3)
    if today_usd_per_hour is not None:
        for h in range(9, hour_now + 1):
            usd = today_usd_per_hour
            out[int((monday + timedelta(hours=h)).timestamp()) // 3600] = (usd, usd * 20_000, usd * 3)
    return out


MONDAY = datetime(2026, 12, 7, tzinfo=UTC)


def test_no_alert_on_a_normal_monday_after_a_quiet_weekend() -> None:
    now = MONDAY + timedelta(hours=17, minutes=30)
    usage = {"ml": _hours(MONDAY, 6, 8.0, 17)}
    since = anomaly_scan.history_since_ms(int(now.timestamp() * 1000), CFG)
    now_ms = int(now.timestamp() * 1000)
    assert anomaly_scan.scan(usage, "team", now_ms, since, UTC_ZONE, CFG, "http://g/console/") == []
    # ... nor at 09:30, its first busy hour after a weekend of almost nothing (hours compare with weekdays).
    early = MONDAY + timedelta(hours=9, minutes=30)
    assert anomaly_scan.scan({"ml": _hours(MONDAY, 6, 8.0, 9)}, "team", int(early.timestamp() * 1000), since,
                             UTC_ZONE, CFG, "http://g/console/") == []


def test_a_spiking_monday_is_explained_against_its_usual_monday() -> None:
    now = MONDAY + timedelta(hours=17, minutes=30)
    usage = {"ml": _hours(MONDAY, 6, 46.0, 17)}  # $414 by 17:30 instead of ~$72
    since = anomaly_scan.history_since_ms(int(now.timestamp() * 1000), CFG)
    alerts = anomaly_scan.scan(usage, "team", int(now.timestamp() * 1000), since, UTC_ZONE, CFG,
                               "http://g/console/")
    daily = [a for a in alerts if ":day:" in a.key]
    assert len(daily) == 1
    assert daily[0].text.startswith("ml spent $414 today; its usual Monday is $")
    assert daily[0].key == "anomaly:team:ml:day:2026-12-07" and daily[0].title.startswith("Unusual spend for team ml")
    assert ("Team ml", "http://g/console/teams/ml") in daily[0].links
    hourly = [a for a in alerts if ":hour:" in a.key]
    assert hourly and "its usual weekday 17:00 hour is $" in hourly[0].text


def test_small_volumes_and_short_histories_do_not_alert() -> None:
    assert anomaly.judge((9.0, 0.0, 0.0), [(1.0, 0, 0)] * 6, CFG, "Monday") == []  # under min_usd ($10)
    assert anomaly.judge((500.0, 0.0, 0.0), [(50.0, 0, 0)] * 2, CFG, "Monday") == []  # two samples: no baseline
    found = anomaly.judge((500.0, 0.0, 0.0), [(50.0, 0, 0), (60.0, 0, 0), (55.0, 0, 0)], CFG, "Monday")
    assert [f.metric for f in found] == ["spend"]


def test_the_baseline_ignores_earlier_spikes_and_holidays() -> None:
    b = anomaly.baseline([70, 75, 2, 80, 600, 72], ratio=2.0, sigmas=4.0)
    assert b is not None and (b.low, b.high) == (70, 80) and b.median == 73.5

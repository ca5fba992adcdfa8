"""`tollhouse demo` starts with two weeks of past calls, so the console has a baseline at once."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import free_port
from tollhouse.demo import PEOPLE, SERVICES, WORKLOAD
from tollhouse.demo_history import DAY_MS, history, seed_history

NOW_MS = 1_796_000_000_000


def test_history_spans_two_weeks_before_now_priced_and_quieter_at_weekends() -> None:
    events = history(NOW_MS, [*PEOPLE, *SERVICES], WORKLOAD)
    assert all(NOW_MS - 14 * DAY_MS <= e.ts_ms < NOW_MS for e in events)
    days = {(e.ts_ms - (NOW_MS - 14 * DAY_MS)) // DAY_MS for e in events}
    assert days == set(range(14))
    assert {e.subject for e in events} == {p["id"] for p in [*PEOPLE, *SERVICES]}
    assert sum(1 for e in events if e.cost_nusd) > 0.9 * len(events)  # all but the unpriced fine-tune
    assert history(NOW_MS, [*PEOPLE, *SERVICES], WORKLOAD) == events  # deterministic


def test_seeding_twice_adds_nothing(tmp_path: Path) -> None:
    events = history(NOW_MS, [*PEOPLE, *SERVICES], WORKLOAD)
    url = f"sqlite:///{tmp_path / 'h.db'}"
    assert seed_history(url, tmp_path, events) == len(events)
    assert seed_history(url, tmp_path, events) == 0


def test_demo_starts_fast_with_a_baseline(tmp_path: Path) -> None:
    began = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "tollhouse", "demo", "--port", str(free_port()), "--mock-port",
                             str(free_port()), "--calls", "10", "--data-dir", str(tmp_path / "demo"), "--exit"],
                            capture_output=True, text=True, timeout=60)
    took = time.monotonic() - began
    assert result.returncode == 0, result.stderr
    assert "two weeks of past calls" in result.stdout and took < 15, (took, result.stdout)
    db = sqlite3.connect(tmp_path / "demo" / "tollhouse.db")
    past, days = db.execute("SELECT COUNT(*), COUNT(DISTINCT ts_ms / 86400000) FROM events "
                            "WHERE id LIKE 'demo-history-%'").fetchone()
    assert past > 300 and days >= 14
    daily = db.execute("SELECT COUNT(*) FROM usage_daily_org").fetchone()[0]
    assert daily > 0  # the rollups count the past too

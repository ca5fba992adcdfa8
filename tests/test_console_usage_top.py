"""The usage explorer grouped by a dimension with many keys (console/usage_data.py top_series): each key's totals
summed in the store and only the top keys' days read, the rest drawn as one series from the org's days. The table
and the chart must say what the per-day usage API says, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from conftest import ADMIN, Gateway
from console_roles import role_cookie
from tollhouse.events import usage
from tollhouse.events.store import Store, open_store
from usage_seed import event, ms

NOW = ms("2026-12-10T15:00:00+00:00") / 1000
DIRECTORY = {"org": "acme", "teams": [{"id": "eng"}],
             "people": [{"id": f"p{i:02d}", "team": "eng"} for i in range(14)]}
D = 1_000_000_000


def _seed(store: Store) -> None:
    """14 people over 6 days, each person's cost different by day (so the top 10 and the rest both vary)."""
    calls = []
    for day in range(2, 8):
        for i in range(14):
            if (i + day) % 5 == 0:
                continue  # a person idle that day: their bucket is missing, not zero
            calls.append(event(f"2026-12-{day:02d}T{8 + i % 9:02d}:00:00+00:00", subject=f"p{i:02d}", team="eng",
                               project=None, cost_nusd=(i * 7 % 13 + 1) * D // 4 + day * 1000,
                               decision="block" if i == 3 and day == 4 else "allow"))
    store.insert_events(calls)


def test_rows_summed_over_periods_equal_the_periods_summed(store: Store) -> None:
    _seed(store)
    since, until = ms("2026-12-01T00:00:00+00:00"), ms("2026-12-11T00:00:00+00:00")
    for period, cols, filters in (("day", ["subject"], {}), ("hour", ["subject"], {"subject": ("p01", "p02")}),
                                  ("day", ["project"], {}), ("day", [], {})):
        per = usage.rows(store.db, period, cols, since, until, filters)
        summed: dict[tuple[Any, ...], dict[str, int]] = {}
        for row in per:
            into = summed.setdefault(tuple(row[c] for c in cols), {})
            for m in ("calls", "cost_nusd", "blocked", "input_tokens"):
                into[m] = into.get(m, 0) + row[m]
        whole = usage.rows(store.db, period, cols, since, until, filters, by_period=False)
        assert {tuple(r[c] for c in cols): {m: r[m] for m in ("calls", "cost_nusd", "blocked", "input_tokens")}
                for r in whole} == summed, (period, cols)
    assert usage.rows(store.db, "day", [], 0, 1, {}, by_period=False) == []


def test_explorer_by_person_shows_top_ten_and_the_rest_as_the_api_says(store_url: str, tmp_path: Path) -> None:
    seeded = open_store(store_url, tmp_path)
    _seed(seeded)
    seeded.close()
    gw = Gateway({"store": {"url": store_url}, "directory": DIRECTORY}, tmp_path / "gw", clock=lambda: NOW).start()
    try:
        query = "group_by=person&from=2026-12-01&to=2026-12-09"
        status, body, _ = gw.request("GET", f"/console/usage?{query}", token=None,
                                     headers={"Cookie": role_cookie(ADMIN, "fin", "finance", NOW)})
        api_status, api_body, _ = gw.get(f"/api/v1/usage?{query}")
    finally:
        gw.stop()
    assert status == 200 and api_status == 200, (body[:300], api_body[:300])
    page = body.decode()
    drawn = json.loads(page.split('id="usage-chart-data">')[1].split("</script>")[0])
    series = json.loads(api_body)["series"]  # biggest first, every person's days
    assert len(series) == 14
    starts = drawn["x"]
    assert len(starts) == 9  # 1 to 9 December ("to" is a whole day)

    def per_day(keys: list[dict[str, Any]]) -> list[float]:
        out = []
        for s in starts:
            total = 0.0
            for one in keys:
                for point in one["points"]:
                    if _epoch(point["t"]) == s:
                        total += point["cost_usd"]
            out.append(round(total, 9))
        return out

    labels = [s["label"] for s in drawn["series"]]
    assert labels == [s["key"] for s in series[:10]] + ["(others)"]
    for one, shown in zip(series[:10], drawn["series"][:10], strict=True):
        assert shown["values"] == per_day([one]), one["key"]
    assert drawn["series"][10]["values"] == per_day(series[10:])
    for one in series:  # the table: every person with their totals
        assert f">{one['key']}<" in page
        assert f">{one['totals']['calls']}<" in page


def _epoch(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp())

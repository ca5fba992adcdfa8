"""GET /api/v1/usage, /api/v1/reports/spend.csv, /api/v1/baseline, and the filters of /api/v1/events and
/api/v1/spend, through a real gateway over its store (SQLite and PostgreSQL), with the clock fixed on
2026-12-07 12:00 UTC and the organisation in New York."""

from __future__ import annotations

import csv
import io
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Gateway, Mock, upstreams
from tollhouse.events.store import open_store
from usage_seed import event, ms

NOW = ms("2026-12-07T12:00:00Z") / 1000
DIRECTORY = {
    "org": "acme",
    "teams": [{"id": "engineering", "cost_centre": "CC-1"}, {"id": "platform", "parent": "engineering"},
              {"id": "ml", "parent": "engineering"}, {"id": "sales", "cost_centre": "CC-9"}],
    "projects": [{"id": "checkout", "team": "platform"}],
    "people": [{"id": "alice", "team": "platform"}, {"id": "bob", "team": "ml"}, {"id": "carol", "team": "sales"}],
}
SEED = [
    # 1 December (New York): alice twice on platform, bob once on ml late in the evening (03:00 UTC on the 2nd)
    event("2026-12-01T15:00:00Z", cost_nusd=1_000_000_000),
    event("2026-12-01T15:30:00Z", model="gpt-4o", cost_nusd=2_500_000_000, input_tokens=1000, output_tokens=10),
    event("2026-12-02T03:00:00Z", subject="bob", team="ml", project=None, provider="anthropic",
          model="claude-sonnet", cost_nusd=500_000_000, cost_centre="CC-1"),
    # Saturday 5 December: carol in sales, one blocked call
    event("2026-12-05T16:00:00Z", subject="carol", team="sales", project=None, cost_centre="CC-9",
          cost_nusd=250_000_000),
    event("2026-12-05T16:10:00Z", subject="carol", team="sales", project=None, cost_centre="CC-9", decision="block",
          cost_nusd=0),
    # last month (November): not in the default range
    event("2026-11-20T15:00:00Z", cost_nusd=9_000_000_000),
]


@pytest.fixture
def gw(store_url: str, tmp_path: Path) -> Iterator[Gateway]:
    store = open_store(store_url, tmp_path)
    store.insert_events(SEED)
    store.close()
    gateway = Gateway({"store": {"url": store_url}, "directory": DIRECTORY,
                       "ledger": {"timezone": "America/New_York"}}, tmp_path / "gw", clock=lambda: NOW).start()
    try:
        yield gateway
    finally:
        gateway.stop()


def get_json(gw: Gateway, path: str, status: int = 200) -> Any:
    got, body, _ = gw.get(path)
    assert got == status, body
    return json.loads(body)


def series(body: dict[str, Any]) -> dict[Any, dict[str, Any]]:
    return {s["key"]: s for s in body["series"]}


def test_usage_by_team_per_local_day_in_the_billing_month(gw: Gateway) -> None:
    body = get_json(gw, "/api/v1/usage?group_by=team")
    assert body["from"] == "2026-12-01T00:00:00-05:00" and body["to"] == "2027-01-01T00:00:00-05:00"
    assert body["totals"]["calls"] == 5 and body["totals"]["cost_usd"] == pytest.approx(4.25)
    teams = series(body)
    assert set(teams) == {"platform", "ml", "sales"}
    assert teams["platform"]["points"] == [{"t": "2026-12-01T00:00:00-05:00", "calls": 2, "input_tokens": 1100,
                                            "output_tokens": 60, "cost_usd": 3.5, "blocked": 0, "would_block": 0,
                                            "errors": 0}]
    assert [p["t"] for p in teams["ml"]["points"]] == ["2026-12-01T00:00:00-05:00"]  # 22:00 local, not the 2nd
    assert teams["sales"]["totals"]["blocked"] == 1
    assert [s["key"] for s in body["series"]] == ["platform", "ml", "sales"]  # costliest first


def test_usage_per_hour_by_person_model_and_filters(gw: Gateway) -> None:
    hourly = get_json(gw, "/api/v1/usage?group_by=person&interval=hour&team=engineering")
    people = series(hourly)
    assert set(people) == {"alice", "bob"}  # the team and the teams below it
    assert [p["t"] for p in people["alice"]["points"]] == ["2026-12-01T10:00:00-05:00"]
    assert people["alice"]["points"][0]["calls"] == 2
    models = series(get_json(gw, "/api/v1/usage?group_by=model&provider=openai&from=2026-11-01&to=2026-11-30"))
    assert set(models) == {"gpt-4o-mini"} and models["gpt-4o-mini"]["totals"]["calls"] == 1  # November only
    whole = get_json(gw, "/api/v1/usage?from=2026-11-01&to=2026-12-31")
    assert [s["key"] for s in whole["series"]] == ["all"] and whole["totals"]["calls"] == 6
    cc = series(get_json(gw, "/api/v1/usage?group_by=cost_centre&person=carol,bob"))
    assert {k: v["totals"]["calls"] for k, v in cc.items()} == {"CC-9": 2, "CC-1": 1}
    assert get_json(gw, "/api/v1/usage?project=checkout")["totals"]["calls"] == 2


def test_usage_refuses_what_it_does_not_know(gw: Gateway) -> None:
    error = get_json(gw, "/api/v1/usage?group_by=team&colour=red", 400)["error"]
    assert "colour" in error["message"] and "group_by" in error["message"] and "provider" in error["message"]
    assert "team|project|cost_centre|person|provider|model" in get_json(gw, "/api/v1/usage?group_by=dept",
                                                                        400)["error"]["message"]
    assert get_json(gw, "/api/v1/usage?interval=week", 400)["error"]["code"] == "bad_parameter"
    assert "'from'" in get_json(gw, "/api/v1/usage?from=yesterday", 400)["error"]["message"]
    assert get_json(gw, "/api/v1/usage?from=2026-12-05&to=2026-12-01", 400)["error"]["code"] == "bad_parameter"
    for path in ("/api/v1/usage?team=finance", "/api/v1/usage?project=nope", "/api/v1/usage?person=mallory"):
        assert get_json(gw, path, 404)["error"]["code"] == "not_found", path
    assert gw.get("/api/v1/usage", token=None)[0] == 401


def _csv(gw: Gateway, path: str) -> tuple[list[dict[str, str]], dict[str, str]]:
    status, body, headers = gw.get(path)
    assert status == 200, body
    return list(csv.DictReader(io.StringIO(body.decode()))), headers


def test_spend_csv_for_chargeback(gw: Gateway) -> None:
    rows, headers = _csv(gw, "/api/v1/reports/spend.csv?group_by=cost_centre,model&interval=total")
    assert headers["content-type"].startswith("text/csv")
    assert "attachment" in headers["content-disposition"]
    got = {(r["cost_centre"], r["model"]): (r["calls"], r["cost_usd"]) for r in rows}
    assert got == {("CC-200", "gpt-4o"): ("1", "2.500000000"), ("CC-200", "gpt-4o-mini"): ("1", "1.000000000"),
                   ("CC-1", "claude-sonnet"): ("1", "0.500000000"), ("CC-9", "gpt-4o-mini"): ("2", "0.250000000")}
    assert {r["period_start"] for r in rows} == {"2026-12-01T00:00:00-05:00"}
    daily, _ = _csv(gw, "/api/v1/reports/spend.csv")  # by team per day
    assert [(r["period_start"][:10], r["team"], r["calls"]) for r in daily] == [
        ("2026-12-01", "platform", "2"), ("2026-12-01", "ml", "1"), ("2026-12-05", "sales", "2")]


def test_spend_csv_in_focus_columns(gw: Gateway) -> None:
    rows, _ = _csv(gw, "/api/v1/reports/spend.csv?format=focus&group_by=team")
    for column in ("BilledCost", "EffectiveCost", "BillingCurrency", "ChargePeriodStart", "ChargePeriodEnd",
                   "BillingPeriodStart", "ServiceName", "ProviderName", "ChargeCategory", "SkuId", "x_Team"):
        assert column in rows[0], column
    assert sum(float(r["BilledCost"]) for r in rows) == pytest.approx(4.25)
    bob = next(r for r in rows if r["x_Team"] == "ml")
    assert bob["ProviderName"] == "Anthropic" and bob["SkuId"] == "claude-sonnet"
    assert bob["ChargePeriodStart"] == "2026-12-01T05:00:00Z" and bob["ChargePeriodEnd"] == "2026-12-02T05:00:00Z"
    assert bob["BillingPeriodStart"] == "2026-12-01T05:00:00Z" and json.loads(bob["Tags"]) == {"team": "ml"}
    assert get_json(gw, "/api/v1/reports/spend.csv?format=xml", 400)["error"]["code"] == "bad_parameter"


def test_baseline_of_a_team(gw: Gateway) -> None:
    body = get_json(gw, "/api/v1/baseline?team=engineering&days=7")
    assert body["from"] == "2026-11-30" and body["to"] == "2026-12-06" and body["teams"] == [
        "engineering", "platform", "ml"]
    assert [d["calls"] for d in body["daily"]] == [0, 3, 0, 0, 0, 0, 0]
    assert body["per_day"]["calls"]["median"] == 0 and body["per_day"]["calls"]["max"] == 3
    assert body["weekdays"]["days"] == 5 and body["weekends"]["days"] == 2
    assert body["weekdays"]["cost_usd"]["max"] == pytest.approx(4.0)
    mix = {m["model"]: m for m in body["model_mix"]}
    assert mix["gpt-4o-mini"]["share"] == pytest.approx(1 / 3, abs=1e-3)
    assert mix["gpt-4o"]["cost_share"] == pytest.approx(2.5 / 4, abs=1e-3)
    sales = get_json(gw, "/api/v1/baseline?team=sales&days=7")
    assert sales["weekends"]["calls"]["max"] == 2 and sales["weekdays"]["calls"]["max"] == 0
    assert get_json(gw, "/api/v1/baseline?team=finance", 404)["error"]["code"] == "not_found"
    assert "'team'" in get_json(gw, "/api/v1/baseline", 400)["error"]["message"]
    assert get_json(gw, "/api/v1/baseline?team=ml&days=0", 400)["error"]["code"] == "bad_parameter"


def test_events_filters_work_or_are_refused(gw: Gateway) -> None:
    ml = get_json(gw, "/api/v1/events?team=ml")["events"]
    assert [e["subject"] for e in ml] == ["bob"]
    engineering = get_json(gw, "/api/v1/events?team=engineering")["events"]
    assert {e["team"] for e in engineering} == {"platform", "ml"}
    assert [e["decision"] for e in get_json(gw, "/api/v1/events?decision=block")["events"]] == ["block"]
    assert len(get_json(gw, "/api/v1/events?provider=openai&model=gpt-4o")["events"]) == 1
    page = get_json(gw, "/api/v1/events?team=engineering&limit=1")
    assert "team=engineering" in page["next"]
    assert get_json(gw, "/api/v1/events?team=finance", 404)["error"]["code"] == "not_found"
    error = get_json(gw, "/api/v1/events?teams=ml", 400)["error"]
    assert "teams" in error["message"] and "decision" in error["message"]
    assert get_json(gw, "/api/v1/events?decision=maybe", 400)["error"]["code"] == "bad_parameter"


def test_spend_of_an_unknown_team_is_404(gw: Gateway) -> None:
    assert get_json(gw, "/api/v1/spend?scope=team&id=finance", 404)["error"]["code"] == "not_found"
    assert get_json(gw, "/api/v1/spend?scope=person&id=mallory", 404)["error"]["code"] == "not_found"
    assert "window" in get_json(gw, "/api/v1/spend?scope=team&id=ml&period=month", 400)["error"]["message"]
    known = get_json(gw, "/api/v1/spend?scope=team&id=engineering")
    assert known["requests"] == 3 and known["spend_usd"] == pytest.approx(4.0)


def test_a_call_through_the_gateway_is_in_the_usage_at_once(mock: Mock, tmp_path: Path) -> None:
    gw = Gateway({"identity": {"trust_user_header": True},
                  "providers": upstreams(mock.url, api_key="sk-real-provider-key"), "directory": DIRECTORY},
                 tmp_path / "live").start()
    try:
        body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
        req = urllib.request.Request(gw.url + "/openai/v1/chat/completions", data=body, method="POST",
                                     headers={"Content-Type": "application/json", "X-Tollhouse-User": "alice"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
        usage = get_json(gw, "/api/v1/usage?group_by=person")
        alice = series(usage)["alice"]["totals"]
        assert alice["calls"] == 1 and alice["input_tokens"] > 0 and alice["cost_usd"] > 0
        baseline = get_json(gw, "/api/v1/baseline?team=platform&days=3")
        assert baseline["per_day"]["calls"]["max"] == 0  # today is not a complete day yet
    finally:
        gw.stop()

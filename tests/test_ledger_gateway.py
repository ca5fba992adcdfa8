"""Budgets and token windows through the gateway: never overspent, durable, exact to the cent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from conftest import Gateway, Mock, free_port, upstreams
from test_operations import _wait_healthy

# An output-only price: a call with max_tokens=16 that produces 16 tokens costs exactly $0.10,
# so the worst case reserved equals the actual cost.
PRICED = {"overrides": [{"provider": "openai", "model": "budget-model", "input_mtok": 0, "output_mtok": 6250}]}
DIRECTORY = {"teams": [{"id": "platform"}], "people": [{"id": "alice", "team": "platform"},
                                                       {"id": "bob", "team": "platform"}]}


def budget_rule(threshold: float = 1, window: str = "monthly", **kw: Any) -> dict[str, Any]:
    return {"id": "dollar", "scope": "individual", "condition": {"type": "budget", "threshold": threshold,
                                                                 "window": window},
            "action": {"type": "hard_stop", "message": "Monthly AI budget exhausted."}, **kw}


def _config(mock: Mock, rules: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"identity": {"trust_user_header": True}, "providers": upstreams(mock.url), "enforcement": "on",
            "directory": DIRECTORY, "pricing": PRICED, "policy": {"rules": rules}, **extra}


def _call(url: str, user: str = "alice") -> int:
    client = openai.OpenAI(base_url=url + "/openai/v1", api_key="sk-x", max_retries=0,
                           default_headers={"X-Tollhouse-User": user})
    try:
        client.chat.completions.create(model="budget-model", max_tokens=16,
                                       messages=[{"role": "user", "content": "spend"}])
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


def _together(n: int, fn: Any) -> list[Any]:
    """Run n calls released at the same instant (a barrier), return their results."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        results[i] = fn(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_forty_concurrent_calls_never_overspend_a_one_dollar_cap(mock: Mock, gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory(_config(mock, [budget_rule()]))
    statuses = _together(40, lambda i: _call(gw.url))
    admitted = statuses.count(200)
    assert 9 <= admitted <= 10, statuses
    assert statuses.count(403) == 40 - admitted
    events = gw.events()
    spent = sum(e["cost_usd"] or 0 for e in events)
    assert spent <= 1.0 + 1e-9 and abs(spent - admitted * 0.10) < 1e-9
    blocked = [e for e in events if e["decision"] == "block"]
    assert blocked and all(e["rule_id"] == "dollar" and e["cost_usd"] is None for e in blocked)
    # Bob has his own dollar: untargeted individual caps are per person.
    assert _call(gw.url, "bob") == 200


def test_budget_headroom_header_and_spend_api(mock: Mock, gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory(_config(mock, [budget_rule()]))
    client = openai.OpenAI(base_url=gw.url + "/openai/v1", api_key="sk-x", max_retries=0,
                           default_headers={"X-Tollhouse-User": "alice"})
    raw = client.chat.completions.with_raw_response.create(
        model="budget-model", max_tokens=16, messages=[{"role": "user", "content": "x"}])
    assert raw.headers["x-tollhouse-budget-remaining"] == "0.900000"
    for _ in range(2):
        _call(gw.url)
    status, body, _ = gw.get("/api/v1/spend?scope=person&id=alice&window=month")
    report = json.loads(body)
    assert status == 200 and report["requests"] == 3 and abs(report["spend_usd"] - 0.30) < 1e-9
    assert report["by_provider"]["openai"]["output_tokens"] == 48
    (cap,) = report["caps"]
    assert cap["rule_id"] == "dollar" and cap["limit"] == 1.0 and abs(cap["remaining"] - 0.70) < 1e-9
    status, body, _ = gw.get("/api/v1/spend?scope=team&id=platform&window=24h")
    assert status == 200 and abs(json.loads(body)["spend_usd"] - 0.30) < 1e-9
    status, body, _ = gw.get("/api/v1/spend?scope=galaxy&id=x")
    assert status == 400 and b"scope=" in body


def test_team_cap_counts_everyone_under_it(mock: Mock, gateway_factory: Any) -> None:
    team_cap = {"id": "team-cap", "scope": "team", "team": "platform",
                "condition": {"type": "BUDGET_CROSS_PROVIDER", "providers": ["openai", "anthropic"],
                              "threshold": 0.3, "window": "30d"}, "action": {"type": "hard_stop"}}
    gw: Gateway = gateway_factory(_config(mock, [team_cap, budget_rule(threshold=5)]))
    assert [_call(gw.url, u) for u in ("alice", "bob", "alice")] == [200, 200, 200]
    client = openai.OpenAI(base_url=gw.url + "/openai/v1", api_key="sk-x", max_retries=0,
                           default_headers={"X-Tollhouse-User": "bob"})
    with pytest.raises(openai.RateLimitError) as exc:  # a rolling window: 429 with Retry-After
        client.chat.completions.create(model="budget-model", max_tokens=16,
                                       messages=[{"role": "user", "content": "x"}])
    retry = int(exc.value.response.headers["retry-after"])
    # The oldest of those calls leaves the 30-day window within one bucket (1/600 of the window).
    assert 30 * 86400 - 60 < retry <= 30 * 86400 + 30 * 86400 // 600 + 1
    assert exc.value.body["rule_id"] == "team-cap"  # type: ignore[index]
    # the message names the cap, what is used of it and its limit, in dollars as they are
    assert ("the BUDGET_CROSS_PROVIDER cap for team platform would be exceeded ($0.30 of $0.30 used in the "
            "last 30d)") in exc.value.message


def test_token_rate_window_refuses_with_accurate_retry_after(mock: Mock, gateway_factory: Any) -> None:
    rule = {"id": "tpm", "scope": "individual", "condition": {"type": "usage", "metric": "tokens_per_minute",
                                                              "threshold": 100}, "action": {"type": "hard_stop"}}
    gw: Gateway = gateway_factory(_config(mock, [rule]))
    client = openai.OpenAI(base_url=gw.url + "/openai/v1", api_key="sk-x", max_retries=0,
                           default_headers={"X-Tollhouse-User": "alice"})
    codes = []
    for _ in range(6):
        try:
            client.chat.completions.create(model="budget-model", max_tokens=16,
                                           messages=[{"role": "user", "content": "tokens"}])
            codes.append(200)
        except openai.RateLimitError as exc:
            codes.append(429)
            retry_after = int(exc.response.headers["retry-after"])
            assert 55 <= retry_after <= 61  # the first call leaves the 1-minute window then
    assert codes[0] == 200 and 429 in codes
    ev = [e for e in gw.events() if e["decision"] == "block"]
    assert ev and ev[0]["status"] == 429 and ev[0]["rule_id"] == "tpm"


def test_observe_mode_counts_but_never_refuses(mock: Mock, gateway_factory: Any) -> None:
    cfg = _config(mock, [budget_rule(threshold=0.25)])
    cfg["enforcement"] = "off"
    gw: Gateway = gateway_factory(cfg)
    assert [_call(gw.url) for _ in range(4)] == [200] * 4
    events = gw.events()
    assert [e["would"] for e in reversed(events)] == [None, None, "block", "block"]
    assert all(e["decision"] == "allow" for e in events)


class FakeClock:
    def __init__(self, when: datetime) -> None:
        self.now = when.timestamp()

    def __call__(self) -> float:
        return self.now


def test_monthly_budget_resets_at_midnight_of_the_first_in_the_org_timezone(mock: Mock, tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 12, 1, 4, 59, 0, tzinfo=UTC))  # 23:59 on Nov 30 in New York
    cfg = _config(mock, [budget_rule(threshold=0.2)], ledger={"timezone": "America/New_York"})
    gw = Gateway(cfg, tmp_path / "d", clock=clock).start()
    try:
        assert [_call(gw.url) for _ in range(3)] == [200, 200, 403]  # November's $0.20 is used up
        clock.now = datetime(2026, 12, 1, 5, 0, 1, tzinfo=UTC).timestamp()  # 00:00:01 Dec 1 in New York
        assert [_call(gw.url) for _ in range(3)] == [200, 200, 403]  # a new month, a new $0.20
        months = [datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).month for e in gw.events()
                  if e["decision"] != "block"]
        assert sorted(months) == [12, 12, 12, 12]  # UTC dates; the org-zone months are Nov and Dec
    finally:
        gw.stop()


def test_kill_9_loses_no_settled_spend(mock: Mock, tmp_path: Path) -> None:
    cfg_path = tmp_path / "c.json"
    cfg = _config(mock, [budget_rule(threshold=0.5)], admin_token="tok",
                  events={"flush_interval_s": 30, "batch_size": 100000})
    cfg_path.write_text(json.dumps(cfg))
    data = tmp_path / "data"

    def start() -> tuple[subprocess.Popen[str], str]:
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "tollhouse", "serve", "--config", str(cfg_path),
                                 "--port", str(port), "--data-dir", str(data)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url)
        return proc, url

    proc, url = start()
    assert [_call(url) for _ in range(3)] == [200, 200, 200]  # $0.30 of $0.50, not yet in SQLite (30 s)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    proc, url = start()
    try:
        # Month-to-date spend survived: only two more $0.10 calls fit.
        assert [_call(url) for _ in range(3)] == [200, 200, 403]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert "recovered 3 events" in err


def test_dead_counter_store_fails_closed_unless_the_rule_fails_open(mock: Mock, gateway_factory: Any) -> None:
    strict = budget_rule()
    lenient = {**budget_rule(threshold=2), "id": "lenient", "fail_open": True}
    # Callers the directory does not name are let through (identity.unknown_callers: allow): their counters
    # are the ones not loaded at start.
    visitors = {"trust_user_header": True, "unknown_callers": "allow"}
    gw: Gateway = gateway_factory({**_config(mock, [strict]), "identity": visitors})
    gw2: Gateway = gateway_factory({**_config(mock, [lenient]), "identity": visitors})
    for g in (gw, gw2):
        assert g.state is not None
        g.state.runner.store.close()  # the store dies under the running gateway
    # Someone the directory does not name: their counter was not loaded at start and needs the store now.
    client = openai.OpenAI(base_url=gw.url + "/openai/v1", api_key="sk-x", max_retries=0,
                           default_headers={"X-Tollhouse-User": "visitor"})
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(model="budget-model", max_tokens=16,
                                       messages=[{"role": "user", "content": "x"}])
    assert exc.value.status_code == 503 and "counter store is unavailable" in str(exc.value)
    assert mock.stats.total == 0
    assert _call(gw2.url, "visitor") == 200  # fail_open: forwarded, and counted in the metric below
    assert _call(gw.url) == 200  # alice's counter was loaded at start: her budget is still checked, in memory
    _, metrics, _ = gw2.get("/metrics", token=None)
    assert b'tollhouse_ledger_unavailable_total{failed="open"} 1.0' in metrics


def test_a_new_cap_counts_calls_not_yet_written_to_the_store(mock: Mock, gateway_factory: Any,
                                                             tmp_path: Path) -> None:
    """A budget added while recent calls still sit in the writer's queue counts them too."""
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text("[]\n")
    cfg = _config(mock, [], events={"flush_interval_s": 30, "batch_size": 100000})
    cfg["policy"] = {"rules_file": str(rules_file)}
    gw: Gateway = gateway_factory(cfg)
    assert [_call(gw.url) for _ in range(3)] == [200] * 3  # $0.30, still only in memory and the journal
    rules_file.write_text(yaml.safe_dump([budget_rule(threshold=0.5)]))
    deadline = time.time() + 10
    while time.time() < deadline and json.loads(gw.get("/healthz")[1])["policy"]["version"] < 2:
        time.sleep(0.1)
    assert json.loads(gw.get("/healthz")[1])["events_pending"] >= 3
    assert [_call(gw.url) for _ in range(3)] == [200, 200, 403]

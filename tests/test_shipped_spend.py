"""Spend is one number: calls agents ship to the control plane count in its budget counters (embedded and
Redis), once each however often a batch is retried, so the gateway's own calls and `GET /api/v1/spend` see
them at once."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from conftest import Gateway, Mock, free_port, upstreams
from test_ledger_redis import redis_server

NUSD = 1_000_000_000
CALL_NUSD = 800  # 16 output tokens at $0.05 per million
CAP_NUSD = 10_000
PRICES = {"overrides": [{"provider": "openai", "model": "gpt-4o-mini", "input_mtok": 0, "output_mtok": 0.05}]}
DIRECTORY = {"teams": [{"id": "ml"}], "people": [{"id": "alice", "team": "ml"}, {"id": "bob", "team": "ml"}]}
CAP = {"id": "ml-cap", "scope": "team", "team": "ml", "action": {"type": "hard_stop"},
       "condition": {"type": "budget", "threshold": CAP_NUSD / NUSD, "window": "monthly"}}


def _event(n: int, ts_ms: int) -> dict[str, Any]:
    return {"id": f"bob-laptop-{n:04d}", "ts_ms": ts_ms, "subject": "bob", "team": "ml", "provider": "openai",
            "model": "gpt-4o-mini", "requested_model": "gpt-4o-mini", "status": 200, "input_tokens": 3,
            "output_tokens": 16, "cost_nusd": CALL_NUSD, "decision": "allow", "latency_ms": 12.0}


def _alice_calls(gw: Gateway) -> int:
    client = openai.OpenAI(base_url=gw.url + "/openai/v1", api_key="sk-x", max_retries=0,
                           default_headers={"X-Tollhouse-User": "alice"})
    try:
        client.chat.completions.create(model="gpt-4o-mini", max_tokens=16,
                                       messages=[{"role": "user", "content": "hi"}])
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


@pytest.mark.parametrize("counters", ["local", "redis"])
def test_shipped_calls_count_once_in_the_control_planes_counters(counters: str, mock: Mock, tmp_path: Path,
                                                                   gateway_factory: Any) -> None:
    with redis_server(free_port(), tmp_path) as redis_url:
        config: dict[str, Any] = {
            "providers": upstreams(mock.url), "directory": DIRECTORY, "pricing": PRICES, "enforcement": "on",
            "identity": {"trust_user_header": True}, "policy": {"rules": [CAP]}}
        if counters == "redis":
            config["counters"] = {"url": redis_url}
        gw: Gateway = gateway_factory(config)
        assert _alice_calls(gw) == 200  # 800: the counter is in use (loaded) from here on
        events = [_event(n, int(time.time() * 1000)) for n in range(10)]  # bob's laptop: 8,000
        token = json.loads(gw.request("POST", "/api/v1/agent/tokens", {"label": "l"})[1])["token"]
        for _ in range(2):  # the second delivery is a retry: nothing new is counted
            status, body, _ = gw.request("POST", "/api/v1/agent/events", {"events": events}, token=token,
                                         headers={"X-Tollhouse-Agent-Id": "bob-laptop"})
            assert status == 200, body
        assert json.loads(body) == {"received": 10, "stored": 0, "duplicates": 10}
        spend = json.loads(gw.request("GET", "/api/v1/spend?scope=team&id=ml")[1])
        assert round(spend["spend_usd"] * NUSD) == 11 * CALL_NUSD
        assert round(spend["caps"][0]["used"] * NUSD) == 11 * CALL_NUSD  # the counter agrees with the events
        assert _alice_calls(gw) == 200  # 9,600 of 10,000
        assert _alice_calls(gw) == 403  # 10,400 would pass the cap: bob's laptop spent most of it

"""Shadow caps on live traffic: a `mode: shadow` spend or usage cap is counted by the gateway's ledger exactly as if it
were enforced, and a call over it is recorded as `would` block, never refused."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from conftest import Gateway, Mock, upstreams
from test_gateway_sdks import oai
from test_policy_gateway import DIRECTORY


def _cap(mode: str) -> dict[str, Any]:
    return {"id": "three-an-hour", "scope": "individual", "mode": mode,
            "condition": {"type": "usage", "metric": "requests_per_hour", "threshold": 3},
            "action": {"type": "hard_stop"}}


def _served(gw: Gateway, calls: int) -> list[int]:
    """The status of each of alice's `calls` calls."""
    statuses = []
    for _ in range(calls):
        try:
            raw = oai(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini",
                                                                    messages=[{"role": "user", "content": "x"}])
            statuses.append(raw.http_response.status_code)
        except openai.APIStatusError as exc:
            statuses.append(exc.status_code)
    return statuses


@pytest.mark.parametrize("spend", [False, True])
def test_a_shadow_cap_is_counted_on_live_traffic_and_recorded_as_would_never_applied(
        mock: Mock, gateway_factory: Any, spend: bool) -> None:
    rules = [_cap("shadow")]
    if spend:  # a spend cap no call fits under: every call would be refused
        rules = [{"id": "no-spend", "scope": "org", "mode": "shadow",
                  "condition": {"type": "budget", "threshold": 0.000001}, "action": {"type": "hard_stop"}}]
    gw: Gateway = gateway_factory({"identity": {"trust_user_header": True}, "providers": upstreams(mock.url),
                                   "directory": DIRECTORY, "policy": {"rules": rules}, "enforcement": "on"})
    assert _served(gw, 5) == [200] * 5
    assert mock.stats.total == 5  # nothing refused
    events = sorted(gw.events(), key=lambda e: e["ts"])
    assert [e["decision"] for e in events] == ["allow"] * 5
    if spend:
        assert [e["would"] for e in events] == ["block"] * 5
        assert {e["rule_id"] for e in events} == {"no-spend"}
    else:  # counted call by call as if enforced: the 4th and 5th go over three an hour
        assert [e["would"] for e in events] == [None, None, None, "block", "block"]
        assert [e["rule_id"] for e in events] == [None, None, None, "three-an-hour", "three-an-hour"]
    # GET /api/v1/spend shows the shadow cap beside the enforced ones, marked, with what it counted
    scope, ident = ("org", "*") if spend else ("person", "alice")
    status, body, _ = gw.get(f"/api/v1/spend?scope={scope}&id={ident}")
    assert status == 200, body
    (cap,) = [c for c in json.loads(body)["caps"] if c["rule_id"] == ("no-spend" if spend else "three-an-hour")]
    assert cap["shadow"] is True
    if spend:
        assert cap["used"] > cap["limit"] and cap["remaining"] == 0
    else:
        assert (cap["used"], cap["limit"], cap["remaining"]) == (5, 3, 0)


def test_the_same_cap_enforced_refuses_the_calls_the_shadow_one_says_it_would(
        mock: Mock, gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory({"identity": {"trust_user_header": True}, "providers": upstreams(mock.url),
                                   "directory": DIRECTORY, "policy": {"rules": [_cap("enforce")]},
                                   "enforcement": "on"})
    assert _served(gw, 5) == [200, 200, 200, 429, 429]
    assert mock.stats.total == 3

"""One budget for the whole fleet: a control plane and three agents (real `tollhouse agent` processes) share a
team cap through budget leases; the recorded team spend never passes the cap plus the leases outstanding,
also with an agent killed (SIGKILL) mid-lease and with the control plane down for a while.

Prices: gpt-4o-mini costs $0.05 per million output tokens here and nothing for input; every call asks for at
most 16 tokens and the mock answers 16, so a call reserves and spends exactly 800 n$.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from conftest import ADMIN, Gateway, Mock, free_port, upstreams
from test_ledger_redis import redis_server

NUSD = 1_000_000_000
CALL_NUSD = 16 * 50
CAP_NUSD = 40_000  # $0.00004: 50 calls for the whole team
PRICES = {"overrides": [{"provider": "openai", "model": "gpt-4o-mini", "input_mtok": 0, "output_mtok": 0.05}]}
DIRECTORY = {"teams": [{"id": "ml"}, {"id": "web"}],
             "people": [{"id": "alice", "team": "ml"}, {"id": "bob", "team": "ml"}, {"id": "carol", "team": "ml"},
                        {"id": "dan", "team": "web"}]}
TEAM_CAP = {"id": "ml-cap", "scope": "team", "team": "ml",
            "condition": {"type": "budget", "threshold": CAP_NUSD / NUSD, "window": "monthly"},
            "action": {"type": "hard_stop"}}
CHAT = {"model": "gpt-4o-mini", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
PEOPLE = ("alice", "bob", "carol")


def _plane_config(mock: Mock, **ledger: Any) -> dict[str, Any]:
    return {"providers": upstreams(mock.url), "directory": DIRECTORY, "pricing": PRICES, "enforcement": "on",
            "policy": {"rules": [TEAM_CAP]}, "ledger": {"lease_fraction": 0.1, **ledger}}


class AgentProcess:
    """`tollhouse agent` as its own process, for one person."""

    def __init__(self, tmp: Path, name: str, control_plane: str, token: str, mock: Mock) -> None:
        self.name, self.port = name, free_port()
        self.data = tmp / f"agent-{name}"
        local = tmp / f"{name}.yaml"
        local.write_text(json.dumps({"admin_token": ADMIN, "providers": upstreams(mock.url), "pricing": PRICES}))
        managed = tmp / f"{name}.env"
        managed.write_text(f"TOLLHOUSE_USER={name}\n")
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TOLLHOUSE_MANAGED_CONFIG": str(managed)}
        self.argv = [sys.executable, "-m", "tollhouse", "agent", "--token", token, "--config", str(local),
                     "--port", str(self.port), "--data-dir", str(self.data), "--control-plane", control_plane]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> AgentProcess:
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _until(lambda: _health(self.url) is not None, 30.0)
        _until(lambda: (_health(self.url) or {}).get("control_plane", {}).get("state") == "connected", 30.0)
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def call(self) -> tuple[int, str]:
        """One chat call: its status and, when refused, the message."""
        client = openai.OpenAI(base_url=self.url + "/openai/v1", api_key="sk-laptop", max_retries=0, timeout=20)
        try:
            client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
        except openai.APIStatusError as exc:
            return exc.status_code, str(exc.message)
        return 200, ""

    def health(self) -> dict[str, Any]:
        found = _health(self.url)
        assert found is not None
        return found


def _health(url: str) -> dict[str, Any] | None:
    gw = Gateway.__new__(Gateway)
    gw.port = int(url.rsplit(":", 1)[1])
    try:
        status, body, _ = gw.request("GET", "/healthz", token=None)
    except OSError:
        return None
    return json.loads(body) if status == 200 else None


def _until(check: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def _team_spend(plane: Gateway) -> dict[str, Any]:
    status, body, _ = plane.request("GET", "/api/v1/spend?scope=team&id=ml")
    assert status == 200, body
    found: dict[str, Any] = json.loads(body)
    return found


def _events_spend(plane: Gateway) -> int:
    events = plane.events(limit=1000)
    return sum(round((e["cost_usd"] or 0) * NUSD) for e in events if e["team"] == "ml")


def _hammer(agents: list[AgentProcess], per_agent: int, at: int = -1, action: Any = None
            ) -> dict[str, list[tuple[int, str]]]:
    """Every agent calls in its own thread until it has been refused for a second and a half on end (or made
    `per_agent` calls); `action()` runs in the first agent's thread before its `at`-th call."""
    results: dict[str, list[tuple[int, str]]] = {a.name: [] for a in agents}

    def run(agent: AgentProcess, first: bool) -> None:
        refused_since: float | None = None
        for n in range(per_agent):
            if first and n == at:
                action()
            got = agent.call()
            results[agent.name].append(got)
            if got[0] == 200:
                refused_since = None
            elif refused_since is None:
                refused_since = time.monotonic()
            elif time.monotonic() - refused_since >= 1.5:
                return

    threads = [threading.Thread(target=run, args=(a, i == 0)) for i, a in enumerate(agents)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    return results


@pytest.fixture(params=["local", "redis"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path, mock: Mock) -> Iterator[dict[str, Any]]:
    """A control plane (its counters embedded, or in Redis) and three agent processes."""
    with contextlib.ExitStack() as stack:
        config = _plane_config(mock)
        if request.param == "redis":
            config["counters"] = {"url": stack.enter_context(redis_server(free_port(), tmp_path))}
        yield from _fleet(config, tmp_path, mock)


def _fleet(config: dict[str, Any], tmp_path: Path, mock: Mock) -> Iterator[dict[str, Any]]:
    plane = Gateway(config, tmp_path / "plane").start()
    started: list[AgentProcess] = []
    box: dict[str, Any] = {"plane": plane, "agents": started, "mock": mock, "tmp": tmp_path}
    try:
        status, body, _ = plane.request("POST", "/api/v1/agent/tokens", {"label": "laptops"})
        assert status == 201
        box["token"] = json.loads(body)["token"]
        status, body, _ = plane.request("PUT", "/api/v1/agent-policy", {"enforcement": "on"})
        assert status == 200, body
        for name in PEOPLE:
            started.append(AgentProcess(tmp_path, name, plane.url, box["token"], mock).start())
        yield box
    finally:
        for agent in started:
            agent.stop()
        box["plane"].stop()


def _shipped(plane: Gateway, calls: int) -> None:
    _until(lambda: len([e for e in plane.events(limit=1000) if e["team"] == "ml"]) >= calls, 30.0)


@pytest.mark.slow
def test_three_agents_spend_one_team_cap_together(fleet: dict[str, Any]) -> None:
    plane, agents = fleet["plane"], fleet["agents"]
    results = _hammer(agents, 200)
    answered = sum(1 for r in results.values() for s, _ in r if s == 200)
    refused = [(s, m) for r in results.values() for s, m in r if s != 200]
    calls = sum(len(r) for r in results.values())
    _shipped(plane, calls)
    spend = _team_spend(plane)
    outstanding = round(sum(lease["outstanding"] for lease in spend["leases"]) * NUSD)
    recorded = _events_spend(plane)
    # every agent was stopped by the cap, and said so in the provider's shape
    assert refused and all(s in (403, 429) and "ml-cap" in m for s, m in refused), refused[:3]
    assert all(r and r[-1][0] in (403, 429) for r in results.values())
    # the fleet's spend is within the cap plus what was leased out (here: within the cap itself)
    assert recorded == answered * CALL_NUSD
    assert recorded <= CAP_NUSD + outstanding
    assert recorded <= CAP_NUSD
    # and the cap was used up: what is left is less than one call for each agent (the unspent end of its lease)
    # and for the room no lease holds
    assert recorded > CAP_NUSD - 4 * CALL_NUSD
    # spend is one number: the report's total is the sum of the events, the counter counts the same calls
    assert round(spend["spend_usd"] * NUSD) == recorded
    # and the counter is exactly the events plus what leases still hold: nothing counted twice or missed
    assert round(spend["caps"][0]["used"] * NUSD) == recorded + outstanding


@pytest.mark.slow
def test_an_agent_killed_mid_lease_and_restarted_leaves_the_cap_intact(fleet: dict[str, Any]) -> None:
    plane, agents = fleet["plane"], fleet["agents"]
    carol = agents[2]

    def restart() -> None:  # carol holds a lease now, partly spent; her last calls are not shipped yet
        carol.kill()  # SIGKILL: the lease is neither returned nor renewed
        carol.start()

    results = _hammer([carol, *agents[:2]], 200, 3, restart)
    answered = sum(1 for r in results.values() for s, _ in r if s == 200)
    calls = sum(len(r) for r in results.values())
    _shipped(plane, calls)
    spend = _team_spend(plane)
    recorded = _events_spend(plane)
    outstanding = round(sum(lease["outstanding"] for lease in spend["leases"]) * NUSD)
    assert recorded == answered * CALL_NUSD  # the killed agent's call reached the control plane too
    assert recorded <= CAP_NUSD + outstanding and recorded <= CAP_NUSD
    assert all(r[-1][0] in (403, 429) for r in results.values())


@pytest.mark.slow
def test_with_the_control_plane_down_agents_spend_only_their_leases_then_refuse(
        tmp_path: Path, mock: Mock) -> None:
    plane = Gateway(_plane_config(mock, lease_ttl_s=3), tmp_path / "plane").start()
    agents: list[AgentProcess] = []
    try:
        token = json.loads(plane.request("POST", "/api/v1/agent/tokens", {"label": "l"})[1])["token"]
        assert plane.request("PUT", "/api/v1/agent-policy", {"enforcement": "on"})[0] == 200
        agents += [AgentProcess(tmp_path, name, plane.url, token, mock).start() for name in PEOPLE]
        before = [a.call()[0] for a in agents]
        assert before == [200, 200, 200]
        port = plane.port
        plane.stop()
        offline = _hammer(agents, 200)  # each spends what is left of its lease, then is refused
        leased = sum(1 for r in offline.values() for s, _ in r if s == 200)
        refused = [(s, m) for r in offline.values() for s, m in r if s != 200]
        assert refused and all(s == 503 and "control plane" in m and "unreachable" in m for s, m in refused)
        # what they spent offline is what their leases held (10 % of the cap each, at most)
        assert leased * CALL_NUSD <= 3 * CAP_NUSD // 10
        plane = Gateway(_plane_config(mock, lease_ttl_s=3), tmp_path / "plane", port=port).start()
        _until(lambda: all(a.call()[0] == 200 for a in agents[:1]), 30.0)  # leases granted again
        after = _hammer(agents, 200)
        calls = 3 + 1 + sum(len(r) for r in offline.values()) + sum(len(r) for r in after.values())
        _shipped(plane, calls)
        spend = _team_spend(plane)
        recorded = _events_spend(plane)
        outstanding = round(sum(lease["outstanding"] for lease in spend["leases"]) * NUSD)
        assert recorded <= CAP_NUSD + outstanding and recorded <= CAP_NUSD
        assert all(r[-1][0] in (403, 429) for r in after.values())
        assert round(spend["spend_usd"] * NUSD) == recorded
    finally:
        for agent in agents:
            agent.stop()
        plane.stop()

"""Budget leases do not refuse calls the cap has room for (found by benchmarks/bench_leases.py): an agent's
own shipped spend is not counted twice, and concurrent calls on one agent do not read a lease another call is
renewing as the cap being reached. Real processes: a control plane and one `tollhouse agent`."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Gateway, Mock
from test_fleet_budget import CALL_NUSD, NUSD, TEAM_CAP, AgentProcess, _plane_config, _until


def _fleet_of_one(tmp: Path, mock: Mock, cap_calls: int, fraction: float) -> Iterator[tuple[Gateway, AgentProcess]]:
    config = _plane_config(mock, lease_fraction=fraction)
    config["policy"] = {"rules": [{**TEAM_CAP, "condition": {**TEAM_CAP["condition"],
                                                              "threshold": cap_calls * CALL_NUSD / NUSD}}]}
    plane = Gateway(config, tmp / "plane").start()
    agent: AgentProcess | None = None
    try:
        status, body, _ = plane.request("POST", "/api/v1/agent/tokens", {"label": "laptops"})
        assert status == 201
        assert plane.request("PUT", "/api/v1/agent-policy", {"enforcement": "on"})[0] == 200
        agent = AgentProcess(tmp, "alice", plane.url, json.loads(body)["token"], mock).start()
        yield plane, agent
    finally:
        if agent is not None:
            agent.stop()
        plane.stop()


@pytest.fixture
def small_cap(tmp_path: Path, mock: Mock) -> Iterator[tuple[Gateway, AgentProcess]]:
    yield from _fleet_of_one(tmp_path, mock, cap_calls=6, fraction=0.34)  # leases of 2 calls


@pytest.fixture
def tiny_leases(tmp_path: Path, mock: Mock) -> Iterator[tuple[Gateway, AgentProcess]]:
    yield from _fleet_of_one(tmp_path, mock, cap_calls=1000, fraction=0.001)  # leases of 1 call


def test_an_agent_spends_the_whole_cap_when_its_calls_are_shipped_as_it_goes(
        small_cap: tuple[Gateway, AgentProcess]) -> None:
    plane, agent = small_cap
    for n in range(1, 7):
        status, message = agent.call()
        assert status == 200, f"call {n} of a 6-call cap refused: {message}"
        _until(lambda n=n: len(plane.events(limit=100)) >= n, 30.0)  # shipped: the counter counts it
    status, message = agent.call()
    assert status in (403, 429) and "ml-cap" in message
    used = agent.health()["budget_leases"]["leases"][0]["fleet_used"]
    assert used == 6 * CALL_NUSD  # the agent's own spend, once


def test_concurrent_calls_on_one_agent_are_not_refused_while_the_cap_has_room(
        tiny_leases: tuple[Gateway, AgentProcess]) -> None:
    _, agent = tiny_leases
    results: list[tuple[int, str]] = []

    def caller() -> None:
        for _ in range(5):
            results.append(agent.call())

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    refused: list[Any] = [r for r in results if r[0] != 200]
    assert len(results) == 40 and not refused, refused[:2]

"""The command line tells the truth (issue 18): each command run as a user runs it, in its own process."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import Gateway, Mock, free_port, upstreams
from test_agent import Agent
from test_exemptions import NO_O1, _api, _file
from test_ledger_gateway import FakeClock
from test_policy_gateway import ALLOWLIST, DIRECTORY
from tollhouse.agent.flags import FLAGS_FILE


def tollhouse(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tollhouse", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_demo_says_its_port_is_taken_and_exits(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = tollhouse("demo", "--port", str(port), "--mock-port", str(free_port()), "--calls", "1", "--exit",
                           "--data-dir", str(tmp_path / "demo"), timeout=60)
    assert time.monotonic() - started < 30
    assert result.returncode == 2, result
    assert f"127.0.0.1:{port}" in result.stderr and "--port" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_says_its_mock_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = tollhouse("demo", "--port", str(free_port()), "--mock-port", str(port), "--calls", "1", "--exit",
                           "--data-dir", str(tmp_path / "demo"), timeout=60)
    assert result.returncode == 2 and f"127.0.0.1:{port}" in result.stderr and "--mock-port" in result.stderr


def test_policy_check_accepts_a_config_with_a_rules_file(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "rules.yaml").write_text(yaml.safe_dump([ALLOWLIST]))
    config = folder / "tollhouse.yaml"
    config.write_text(yaml.safe_dump({"directory": DIRECTORY, "policy": {"rules_file": "rules.yaml"}}))
    ok = subprocess.run([sys.executable, "-m", "tollhouse", "policy", "check", str(config)], capture_output=True,
                        text=True, timeout=60, cwd=tmp_path)  # not the config's folder: resolved from the config
    assert ok.returncode == 0, ok.stderr
    assert "OK, 1 rules" in ok.stdout and "rules.yaml" in ok.stdout
    (folder / "rules.yaml").write_text(yaml.safe_dump([{**ALLOWLIST, "scope": "team", "team": "nobody"}]))
    bad = tollhouse("policy", "check", str(config))
    assert bad.returncode == 1 and "nobody" in bad.stderr and "Traceback" not in bad.stderr


def test_audit_verify_refuses_a_store_that_is_not_there(tmp_path: Path) -> None:
    nowhere = tmp_path / "nothing-here"
    for command in (("audit", "verify"), ("audit", "export")):
        result = tollhouse(*command, env={"TOLLHOUSE_DATA_DIR": str(nowhere)})
        assert result.returncode == 1, result
        assert "no store at" in result.stderr and str(nowhere) in result.stderr and "OK" not in result.stdout
        assert not nowhere.exists()  # nothing was created
        explicit = tollhouse(*command, "--data-dir", str(nowhere))
        assert explicit.returncode == 1 and "--data-dir" in explicit.stderr


def test_cef_carries_the_reviewer_the_expiry_and_a_policy_change(mock: Mock, tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 3, 2, 10, 0, tzinfo=UTC))
    data = tmp_path / "data"
    gw = Gateway({"identity": {"trust_user_header": True}, "providers": upstreams(mock.url), "enforcement": "on",
                  "directory": DIRECTORY, "policy": {"rules": [ALLOWLIST, NO_O1]}}, data, clock=clock).start()
    try:
        exemption_id = _file(gw, model="gpt-4o", provider="openai")
        status, body = _api(gw, "POST", f"/api/v1/exemptions/{exemption_id}/approve", {"kind": "override",
                                                                                      "hours": 2}, actor="carol")
        assert status == 200, body
        status, body = _api(gw, "PUT", "/api/v1/policy", {"rules": [ALLOWLIST]})
        assert status == 200, body
    finally:
        gw.stop()
    lines = tollhouse("audit", "export", "--format", "cef", "--data-dir", str(data)).stdout.splitlines()
    (approved,) = [line for line in lines if "|exemption.approved|" in line]
    expires_ms = int(clock() * 1000) + 2 * 3_600_000
    assert "flexString1Label=reviewer flexString1=carol" in approved
    assert f"deviceCustomDate1Label=expires deviceCustomDate1={expires_ms}" in approved
    assert f"flexString2Label=exemption flexString2={exemption_id}" in approved and "act=override" in approved
    changed = [line for line in lines if "|policy.changed|" in line]
    assert "cn1Label=version cn1=1" in changed[0]
    assert "cn1Label=version cn1=2" in changed[-1] and "msg=version 2: removed no-o1" in changed[-1]


def _until(check: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture
def control(gateway_factory: Any, mock: Mock) -> Gateway:
    """A control plane (a gateway) that agents enroll with."""
    gw: Gateway = gateway_factory({"providers": upstreams(mock.url), "directory": DIRECTORY})
    return gw


@pytest.fixture
def agent_process(control: Gateway, token: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, int]]:
    data, port = tmp_path / "agent-data", free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tollhouse", "agent", "--control-plane", control.url, "--token",
                             token, "--port", str(port), "--data-dir", str(data)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "TOLLHOUSE_USER": "alice"})
    try:
        _until(lambda: _up(f"http://127.0.0.1:{port}") and (data / FLAGS_FILE).exists())
        yield proc, data, port
    finally:
        proc.terminate()
        proc.wait(30)


def test_config_show_has_the_running_agents_flags(agent_process: tuple[subprocess.Popen[str], Path, int],
                                                  control: Gateway, token: str) -> None:
    proc, data, port = agent_process
    shown = json.loads(tollhouse("config", "show", "--json", "--data-dir", str(data)).stdout)
    assert shown["port"] == {"value": str(port), "source": "flag"}
    assert shown["control_plane"] == {"value": control.url, "source": "flag"}
    assert shown["token"] == {"value": "***", "source": "flag"}  # never the secret
    assert token not in (data / FLAGS_FILE).read_text()
    proc.terminate()
    proc.wait(30)
    after = json.loads(tollhouse("config", "show", "--json", "--data-dir", str(data)).stdout)
    assert "port" not in after and after["control_plane"]["source"] != "flag"  # no agent runs there now


def test_the_agent_logs_the_control_planes_policy_version(control: Gateway, token: str, mock: Mock,
                                                          tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for rules in ([ALLOWLIST], [NO_O1], [ALLOWLIST, NO_O1], [NO_O1], [ALLOWLIST]):
        status, body, _ = control.request("PUT", "/api/v1/policy", {"rules": rules})
        assert status == 200, body
    version = json.loads(control.get("/api/v1/policy")[1])["version"]
    assert version >= 5
    caplog.set_level(logging.INFO, logger="tollhouse")
    agent = Agent(control.url, token, tmp_path / "agent", mock).start()
    try:
        _until(lambda: any(f"control-plane policy version {version}" in r.getMessage() for r in caplog.records))
    finally:
        agent.stop()


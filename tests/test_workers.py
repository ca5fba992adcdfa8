"""`tollhouse serve --workers N`: several processes on one port, one budget, supervised."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import ADMIN, Mock, free_port, upstreams
from test_ledger_gateway import DIRECTORY, PRICED, _call, _together, budget_rule
from test_ledger_redis import redis_url  # noqa: F401  (fixture)


def _get(url: str) -> dict[str, Any]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        body: dict[str, Any] = json.loads(resp.read())
        return body


@pytest.fixture
def workers(mock: Mock, redis_url: str, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:  # noqa: F811
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "admin_token": ADMIN, "identity": {"trust_user_header": True}, "providers": upstreams(mock.url),
        "enforcement": "on", "directory": DIRECTORY, "pricing": PRICED,
        "policy": {"rules": [budget_rule()]}, "counters": {"url": redis_url}}))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tollhouse", "serve", "--workers", "2", "--config", str(config),
                             "--port", str(port), "--data-dir", str(tmp_path / "data")])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while len(_pids(url, 1)) < 1:
        assert time.monotonic() < deadline and proc.poll() is None, "the workers did not start"
        time.sleep(0.1)
    try:
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def _pids(url: str, tries: int) -> set[int]:
    pids = set()
    for _ in range(tries):
        with contextlib.suppress(OSError):
            pids.add(_get(url + "/healthz")["pid"])  # a new connection each time: the kernel picks a worker
    return pids


def test_two_workers_share_the_port_and_one_budget(workers: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, proc = workers
    deadline = time.monotonic() + 20
    while len(_pids(url, 20)) < 2:
        assert time.monotonic() < deadline, "only one worker answers"
    statuses = _together(40, lambda i: _call(url))
    assert statuses.count(200) == 10 and statuses.count(403) == 30  # $0.10 calls against $1: exact
    time.sleep(1)  # both workers' writers flush
    events = _get(url + "/api/v1/events?limit=100")["events"]
    assert len(events) == 40 and abs(sum(e["cost_usd"] or 0 for e in events) - 1.0) < 1e-9
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def test_a_worker_that_dies_is_started_again(workers: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, _ = workers
    deadline = time.monotonic() + 20
    while len(pids := _pids(url, 20)) < 2:
        assert time.monotonic() < deadline
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while True:
        now = _pids(url, 20)
        if len(now) == 2 and victim not in now:
            break
        assert time.monotonic() < deadline, f"no replacement worker: {now}"
        time.sleep(0.2)
    assert _call(url) == 200


def test_workers_need_shared_counters(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "tollhouse", "serve", "--workers", "2", "--port", str(free_port()),
                           "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "counters.url" in done.stderr and "redis://" in done.stderr
    assert "Traceback" not in done.stderr

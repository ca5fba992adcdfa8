"""A gateway killed (-9) with alerts still waiting for a receiver that is down: after the restart, with the
receiver up, every alert arrives, exactly once. The CLI's `tollhouse alerts test CHANNEL`."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import openai

from alert_receivers import HttpReceiver, new_secret, wait_until
from conftest import Mock, free_port, upstreams
from test_alerts_delivery import WARN_RULE
from test_operations import _wait_healthy
from test_policy_gateway import DIRECTORY

TOKEN = "tok-alerts"


def _serve(cfg: Path, port: int, data: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tollhouse", "serve", "--config", str(cfg), "--port", str(port),
                             "--data-dir", str(data)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _alerts(port: int) -> list[dict[str, Any]]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/alerts",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        alerts: list[dict[str, Any]] = json.loads(resp.read())["alerts"]
        return alerts


def test_alerts_pending_at_a_kill_9_arrive_after_the_restart_exactly_once(mock: Mock, tmp_path: Path) -> None:
    slack, hook = HttpReceiver(), HttpReceiver(new_secret())  # down
    cfg = tmp_path / "c.json"
    rule = dict(WARN_RULE, action={"type": "alert", "notify": ["ops-slack", "siem"]})
    cfg.write_text(json.dumps({
        "admin_token": TOKEN, "identity": {"trust_user_header": True}, "providers": upstreams(mock.url),
        "directory": DIRECTORY, "policy": {"rules": [rule]},
        "alerts": {"channels": {"ops-slack": {"type": "slack", "url": slack.url},
                                "siem": {"type": "webhook", "url": hook.url, "secret": hook.secret}},
                   "retry_min_s": 0.1, "retry_max_s": 0.3, "delivery_timeout_s": 1}}))
    port, data = free_port(), tmp_path / "d"
    proc = _serve(cfg, port, data)
    people = ["alice", "bob", "rita"]
    try:
        _wait_healthy(f"http://127.0.0.1:{port}")
        for who in people:
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/openai/v1", api_key="sk-x", max_retries=0,
                          default_headers={"X-Tollhouse-User": who}).chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "x"}])
        wait_until(lambda: len(_alerts(port)) == 3 and any(d["attempts"] for a in _alerts(port)
                                                            for d in a["deliveries"]), what="3 alerts, tried")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=20)
    db = sqlite3.connect(data / "tollhouse.db")
    assert db.execute("SELECT COUNT(*) FROM alert_deliveries WHERE status = 'pending'").fetchone()[0] == 6
    db.close()
    slack.start()
    hook.start()
    proc = _serve(cfg, port, data)
    try:
        hook.log.wait_for(lambda items: len(items) >= 3)
        slack.log.wait_for(lambda items: len(items) >= 3)
        wait_until(lambda: all(a["state"] == "delivered" for a in _alerts(port)), what="all delivered")
        assert Counter(i[1]["data"]["fields"]["Subject"] for i in hook.log.items) == Counter(people)
        assert len(slack.log.items) == 3 and hook.rejected == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        slack.stop()
        hook.stop()
    assert "secretpath" not in err and (hook.secret or "") not in err  # nothing secret in the logs


def test_alerts_test_command_sends_over_a_channel_or_says_why_not(tmp_path: Path) -> None:
    slack = HttpReceiver().start()
    cfg = tmp_path / "c.json"
    down = HttpReceiver()
    cfg.write_text(json.dumps({"alerts": {"channels": {"ops-slack": {"type": "slack", "url": slack.url},
                                                       "dead": {"type": "slack", "url": down.url}}}}))
    env = {**os.environ}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tollhouse", "alerts", "test", *args, "--config", str(cfg)],
                              capture_output=True, text=True, timeout=60, env=env)

    try:
        ok = cli("ops-slack")
        assert ok.returncode == 0, ok.stderr
        assert "accepted by ops-slack" in ok.stdout and "secretpath" not in ok.stdout
        assert "Tollhouse test alert for ops-slack" in slack.log.items[0][1]["text"]
        failed = cli("dead")
        assert failed.returncode == 1 and "did not accept the test alert" in failed.stderr
        assert "secretpath" not in failed.stderr and "Traceback" not in failed.stderr
        unknown = cli("nope")
        assert unknown.returncode == 1 and "no alert channel 'nope'" in unknown.stderr and "ops-slack" in unknown.stderr
    finally:
        slack.stop()

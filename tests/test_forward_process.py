"""`tollhouse serve` as a process (uvloop, as deployed) with forward_proxy on: the banner names HTTPS_PROXY and the
CA, the SDK with its default base URL is governed through it, SIGTERM stops it with the host tallies stored."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai
import pytest

from conftest import Mock, free_port, upstreams
from test_ledger_redis import redis_url  # noqa: F401  (fixture)
from test_operations import _wait_healthy

pytestmark = pytest.mark.slow
TOKEN = "tok-forward"


def test_serve_runs_the_forward_proxy_under_uvloop(mock: Mock, tmp_path: Path) -> None:
    port, proxy_port, data = free_port(), free_port(), tmp_path / "d"
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"admin_token": TOKEN, "providers": upstreams(mock.url),
                               "identity": {"default_user": "alice"},
                               "directory": {"org": "acme", "teams": [{"id": "t"}],
                                             "people": [{"id": "alice", "team": "t"}]},
                               "forward_proxy": {"port": proxy_port}}))
    proc = subprocess.Popen([sys.executable, "-m", "tollhouse", "serve", "--config", str(cfg), "--port", str(port),
                             "--data-dir", str(data)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}")
        bundle = data.absolute() / "forward-proxy" / "ca-bundle.pem"
        http = openai.DefaultHttpxClient(proxy=f"http://127.0.0.1:{proxy_port}",
                                         verify=ssl.create_default_context(cafile=str(bundle)))
        client = openai.OpenAI(api_key="sk-x", http_client=http, max_retries=0, timeout=20)
        for _ in range(3):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/events",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            events = json.loads(resp.read())["events"]
        assert [(e["subject"], e["provider"]) for e in events] == [("alice", "openai")] * 3
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"Forward proxy: HTTPS_PROXY=http://127.0.0.1:{proxy_port}" in out
    assert f"NODE_EXTRA_CA_CERTS={data.absolute() / 'forward-proxy' / 'ca.pem'}" in out
    assert "Traceback" not in err
    db = sqlite3.connect(data / "tollhouse.db")
    try:  # the tallies the flusher had not stored yet were stored on the way out
        assert db.execute("SELECT intercepted FROM forward_hosts WHERE host = 'api.openai.com'").fetchall() == [(1,)]
    finally:
        db.close()


def test_workers_share_the_proxy_port_and_one_ca(mock: Mock, redis_url: str, tmp_path: Path) -> None:  # noqa: F811
    port, proxy_port, data = free_port(), free_port(), tmp_path / "d"
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"admin_token": TOKEN, "providers": upstreams(mock.url), "counters": {"url": redis_url},
                               "forward_proxy": {"port": proxy_port}}))
    proc = subprocess.Popen([sys.executable, "-m", "tollhouse", "serve", "--workers", "2", "--config", str(cfg),
                             "--port", str(port), "--data-dir", str(data)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        seen: dict[int, str] = {}
        deadline = time.monotonic() + 30
        while len(seen) < 2:  # a new connection each time: the kernel picks a worker
            assert time.monotonic() < deadline and proc.poll() is None, "the workers did not start"
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
                    health = json.loads(resp.read())
                if "forward_proxy" in health:
                    seen[health["pid"]] = health["forward_proxy"]["ca_sha256"]
            time.sleep(0.05)
        assert len(set(seen.values())) == 1, seen  # both workers sign with the one CA in the data dir
        ctx = ssl.create_default_context(cafile=str(data.absolute() / "forward-proxy" / "ca.pem"))
        for _ in range(6):  # fresh connections: both workers answer CONNECTs on the one port
            http = openai.DefaultHttpxClient(proxy=f"http://127.0.0.1:{proxy_port}", verify=ctx)
            openai.OpenAI(api_key="sk-x", http_client=http, max_retries=0, timeout=20).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            http.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err


def test_a_busy_proxy_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        taken = busy.getsockname()[1]
        cfg = tmp_path / "c.json"
        cfg.write_text(json.dumps({"forward_proxy": {"port": taken}}))
        done = subprocess.run([sys.executable, "-m", "tollhouse", "serve", "--config", str(cfg), "--port",
                               str(free_port()), "--data-dir", str(tmp_path / "d")], capture_output=True, text=True,
                              timeout=60)
    assert done.returncode == 2
    assert f"the forward proxy cannot listen on 127.0.0.1:{taken} (forward_proxy.port)" in done.stderr
    assert "Traceback" not in done.stderr

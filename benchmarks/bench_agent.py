#!/usr/bin/env python3
"""Agent benchmark: how fast does a policy edit on the control plane reach an agent, and how much memory
does the agent use idle and under load?

Starts three processes on free loopback ports: ``tollhouse mock-provider``, a control plane
(``tollhouse serve`` with a small directory, enforcement on in the agent policy) and ``tollhouse agent``
enrolled with an enrollment token (the user from a managed file, as MDM would write it).

* propagation: ``--edits`` times (default 20), PUT /api/v1/policy on the control plane alternately adding
  and removing a deny rule for ``gpt-4o``, then call the agent (chat completion, gpt-4o) back to back
  until its answer flips (403 / 200); the time from sending the PUT to the first flipped answer;
* RSS of the agent process (VmRSS from /proc) idle after start-up, and under load: ``wrk -c8`` for
  ``--seconds`` (default 20) of small chat completions through the agent to the mock, sampled every
  0.25 s (peak and at the end), and the agent's throughput meanwhile.

    python benchmarks/bench_agent.py [--edits 20] [--seconds 20] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ADMIN = "bench-admin-token"
DENY_4O = {"id": "no-4o", "scope": "org", "severity": "BLOCK", "condition": {"type": "MODEL_DENYLIST",
                                                                              "models": ["gpt-4o"]}}
CHAT = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, body: Any = None, token: str | None = None) -> tuple[int, bytes]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_http(url: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if http("GET", url)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def tollhouse(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "tollhouse", *args], env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def propagation(cp: str, agent: str, edits: int) -> list[float]:
    out = []
    for i in range(edits):
        deny = i % 2 == 0
        want = 403 if deny else 200
        started = time.perf_counter()
        status, body = http("PUT", cp + "/api/v1/policy", {"rules": [DENY_4O] if deny else []}, ADMIN)
        assert status == 200, body
        while http("POST", agent + "/openai/v1/chat/completions", CHAT)[0] != want:
            if time.perf_counter() - started > 10:
                raise SystemExit(f"edit {i}: the agent did not apply the policy within 10 s")
        out.append(time.perf_counter() - started)
    return out


def load(agent: str, pid: int, seconds: int, workdir: Path) -> dict[str, Any]:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is needed for the load phase (apt-get install wrk)")
    script = workdir / "chat.lua"
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})
    script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
                      'wrk.headers["Content-Type"] = "application/json"\n')
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(rss_mb(pid))
            time.sleep(0.25)

    sampler = threading.Thread(target=sample)
    sampler.start()
    result = subprocess.run([wrk, "-t2", "-c8", f"-d{seconds}s", "-s", str(script),
                             agent + "/openai/v1/chat/completions"], capture_output=True, text=True, check=True)
    done.set()
    sampler.join()
    rps = next(float(line.split()[1]) for line in result.stdout.splitlines() if line.startswith("Requests/sec"))
    non2xx = next((int(line.split()[-1]) for line in result.stdout.splitlines() if "Non-2xx" in line), 0)
    return {"rps": rps, "non_2xx": non2xx, "rss_peak_mb": max(samples), "rss_end_mb": rss_mb(pid)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--edits", type=int, default=20)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    mock_port, cp_port, agent_port = free_port(), free_port(), free_port()
    mock_url, cp, agent = (f"http://127.0.0.1:{p}" for p in (mock_port, cp_port, agent_port))
    upstreams = {p: {"upstream": mock_url} for p in ("openai", "anthropic", "gemini")}
    (work / "cp.json").write_text(json.dumps({
        "admin_token": ADMIN, "providers": upstreams,
        "directory": {"org": "acme", "teams": [{"id": "platform"}], "people": [{"id": "alice", "team": "platform"}]}}))
    (work / "agent.json").write_text(json.dumps({"admin_token": ADMIN, "providers": upstreams}))
    (work / "tollhouse.env").write_text("TOLLHOUSE_USER=alice\nTOLLHOUSE_LOG_LEVEL=warning\n")
    procs = [tollhouse("mock-provider", "--port", str(mock_port)),
             tollhouse("serve", "--config", str(work / "cp.json"), "--port", str(cp_port),
                       "--data-dir", str(work / "cp"))]
    try:
        wait_http(mock_url + "/v1/models")
        wait_http(cp + "/healthz")
        status, body = http("POST", cp + "/api/v1/agent/tokens", {"label": "bench"}, ADMIN)
        assert status == 201, body
        token = json.loads(body)["token"]
        assert http("PUT", cp + "/api/v1/agent-policy", {"enforcement": "on"}, ADMIN)[0] == 200
        started = time.perf_counter()
        agent_proc = tollhouse("agent", "--control-plane", cp, "--token", token, "--config", str(work / "agent.json"),
                               "--port", str(agent_port), "--data-dir", str(work / "agent"),
                               env={"TOLLHOUSE_MANAGED_CONFIG": str(work / "tollhouse.env")})
        procs.append(agent_proc)
        wait_http(agent + "/healthz")
        startup_s = time.perf_counter() - started
        health = json.loads(http("GET", agent + "/healthz")[1])
        assert health["control_plane"]["state"] == "connected", health
        time.sleep(3)
        idle = rss_mb(agent_proc.pid)
        times = propagation(cp, agent, args.edits)
        loaded = load(agent, agent_proc.pid, args.seconds, work)
        events = json.loads(http("GET", agent + "/api/v1/events?limit=1", token=ADMIN)[1])["events"]
        assert events and events[0]["subject"] == "alice", events
    finally:
        shutdown_s = {}
        for p in reversed(procs):  # the agent first, while its control plane still takes the last events
            began = time.perf_counter()
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            shutdown_s[p.args[3]] = round(time.perf_counter() - began, 2)
        shutil.rmtree(work, ignore_errors=True)
    ms = sorted(t * 1000 for t in times)
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "agent_startup_s": round(startup_s, 2),
        "shutdown_s": shutdown_s,  # SIGTERM to exit, per process (20 s: it did not stop and was killed)
        "propagation_ms": {"edits": len(ms), "p50": round(statistics.median(ms), 1),
                           "p90": round(ms[int(len(ms) * 0.9) - 1], 1), "max": round(ms[-1], 1),
                           "min": round(ms[0], 1)},
        "rss_mb": {"idle": round(idle, 1), "load_peak": round(loaded["rss_peak_mb"], 1),
                   "load_end": round(loaded["rss_end_mb"], 1)},
        "load": {"tool": "wrk -t2 -c8", "seconds": args.seconds, "requests_per_s": loaded["rps"],
                 "non_2xx": loaded["non_2xx"]},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "agent.json").write_text(json.dumps(result, indent=2) + "\n")
    p, r = result["propagation_ms"], result["rss_mb"]
    (args.out / "agent.md").write_text(f"""# Agent: policy propagation and memory

{result['date']} · {result['machine']} · `python benchmarks/bench_agent.py` (mock provider, control plane
and agent as separate processes on loopback; everything shares the machine's CPUs).

## Policy propagation, control plane → agent enforcing it

{p['edits']} edits (`PUT /api/v1/policy`, alternately adding and removing a deny rule for gpt-4o), each timed
from sending the PUT until the agent's answer to a gpt-4o call flips (403 / 200). The agent long-polls the
bundle, so an edit is pushed, not waited for.

| p50 | p90 | max | min |
|---:|---:|---:|---:|
| {p['p50']} ms | {p['p90']} ms | {p['max']} ms | {p['min']} ms |

## Agent memory (VmRSS of the `tollhouse agent` process)

| idle (after start-up) | under load, peak | under load, end |
|---:|---:|---:|
| {r['idle']} MB | {r['load_peak']} MB | {r['load_end']} MB |

Load: `wrk -t2 -c8 -d{args.seconds}s`, small chat completions (gpt-4o-mini, allowed) through the agent to the
mock: {loaded['rps']:.0f} requests/s, {loaded['non_2xx']} non-2xx. Agent start-up to /healthz answering:
{result['agent_startup_s']} s.
""")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Budget-lease benchmark: what leases cost an agent per call, how many lease renewals a control plane
answers with 1,000 agents, and how far the fleet's spend goes past a team cap under load.

    python benchmarks/bench_leases.py [--quick] [--base-src /path/to/older/checkout/src] [--out DIR]

Every server is a real process on a free loopback port (``tollhouse mock-provider``, ``tollhouse serve`` as
the control plane, ``tollhouse agent``); everything shares the machine's CPUs. Writes leases.{md,json}.

1. Per-call overhead. One agent, one load (``wrk``: small chat completions through the agent to the mock),
   two policies on its control plane, switched back and forth on the same agent process: *leases*, a hard
   team cap far too big to be reached (every call reserves against the agent's lease), and *no cap* (calls
   are not counted). With ``--base-src`` (a checkout of the commit before leases) a third column: that
   commit's agent under the same cap, counting it alone on the laptop. Rounds alternate the configurations
   (order rotated) because the machine is noisy; per round the lease/no-cap ratio is taken, and the
   median ratio is reported.
2. Renewals. One control plane with a team cap; 1,000 simulated agents (distinct ``X-Tollhouse-Agent-Id``,
   each its own epoch, ``consumed`` growing as a real agent's does) post lease requests over keep-alive
   connections (aiohttp, one event loop), closed loop for N seconds: renewals/s, latency, CPU of the
   control plane and of this client. Then the same agents paced at a fixed rate, for latency below
   saturation.
3. Overspend. A control plane, three ``tollhouse agent`` processes of one team, a hard team cap at the
   default lease size; concurrent calls through all three until every agent is refused. The control plane's
   ``GET /api/v1/spend`` is sampled throughout; after shipping, the recorded spend (sum of the team's events)
   is compared with the cap and with the bound (cap + leases outstanding when the cap was reached: the
   sample at the first refusal).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gateway import parse_wrk

HOST = "127.0.0.1"
ADMIN = "bench-admin-token"
RESULTS = Path(__file__).parent / "results"
SRC = Path(__file__).resolve().parent.parent / "src"
NUSD = 1_000_000_000
Json = dict[str, Any]

# gpt-4o-mini at $0.05 per million output tokens and nothing for input: a call with max_tokens 16 (the mock
# answers 16) reserves and spends exactly 800 n$.
CALL_NUSD = 16 * 50
PRICES = {"overrides": [{"provider": "openai", "model": "gpt-4o-mini", "input_mtok": 0, "output_mtok": 0.05}]}
PEOPLE = ("alice", "bob", "carol")
DIRECTORY = {"org": "bench", "teams": [{"id": "ml"}], "people": [{"id": p, "team": "ml"} for p in PEOPLE]}
CHAT = {"model": "gpt-4o-mini", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


def team_cap(usd: float) -> Json:
    return {"id": "ml-cap", "scope": "team", "team": "ml",
            "condition": {"type": "budget", "threshold": usd, "window": "monthly"}, "action": {"type": "hard_stop"}}


# ------------------------------------------------------------------------------------------------ helpers

def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def pct(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def http(method: str, url: str, body: Any = None, token: str | None = ADMIN) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw, status = resp.read(), resp.status
    except urllib.error.HTTPError as err:
        raw, status = err.read(), err.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"benchmark stopped: {what} did not happen within {timeout_s:g} s")
        time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (fields after the command name)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def median_ratio(pairs: Sequence[tuple[float, float]]) -> float:
    """The median of a/b over paired measurements (a round's two configurations)."""
    return statistics.median(a / b for a, b in pairs if b)


def overspend_figures(cap: int, recorded: int, outstanding_at_cap: int, outstanding_end: int) -> Json:
    """The overspend verdict, in n$: recorded spend against the cap and against the leases' bound."""
    bound = cap + outstanding_at_cap
    return {"cap_nusd": cap, "recorded_nusd": recorded, "leases_outstanding_at_cap_nusd": outstanding_at_cap,
            "leases_outstanding_end_nusd": outstanding_end, "bound_nusd": bound,
            "overspend_nusd": recorded - cap, "within_bound": recorded <= bound,
            "cap_used_pct": round(100 * recorded / cap, 1) if cap else None}


# ---------------------------------------------------------------------------------------------- processes

@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    url: str

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)


@dataclass
class Stack:
    """Processes of one benchmark phase, stopped in reverse order (agents before their control plane)."""

    work: Path
    procs: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, args: list[str], src: Path = SRC, env: dict[str, str] | None = None) -> Proc:
        port = free_port()
        log = (self.work / f"{name}.log").open("w")
        popen = subprocess.Popen([sys.executable, "-m", "tollhouse", *args, "--port", str(port)],
                                 env={**os.environ, "PYTHONPATH": str(src), "TOLLHOUSE_LOG_LEVEL": "warning",
                                      **(env or {})}, stdout=subprocess.DEVNULL, stderr=log)
        log.close()
        proc = Proc(name, popen, f"http://{HOST}:{port}")
        self.procs.append(proc)
        return proc

    def ready(self, proc: Proc, path: str = "/healthz") -> None:
        def up() -> bool:
            if proc.popen.poll() is not None:
                raise SystemExit(f"{proc.name} exited ({proc.popen.returncode}); see {self.work / proc.name}.log")
            return http("GET", proc.url + path, token=None)[0] == 200
        until(up, 60, f"{proc.name} answering {path}")

    def mock(self) -> Proc:
        proc = self.start("mock", ["mock-provider", "--host", HOST])
        self.ready(proc, "/v1/models")
        return proc

    def plane(self, name: str, mock: Proc, rules: list[Json], ledger: Json | None = None, src: Path = SRC) -> Proc:
        config = self.work / f"{name}.json"
        config.write_text(json.dumps({
            "admin_token": ADMIN, "enforcement": "on", "directory": DIRECTORY, "pricing": PRICES,
            "providers": {p: {"upstream": mock.url} for p in ("openai", "anthropic", "gemini")},
            "policy": {"rules": rules}, "ledger": ledger or {}}))
        proc = self.start(name, ["serve", "--config", str(config), "--host", HOST,
                                 "--data-dir", str(self.work / f"{name}-data")], src)
        self.ready(proc)
        return proc

    def agent(self, name: str, user: str, mock: Proc, plane: Proc, token: str, src: Path = SRC) -> Proc:
        config, managed = self.work / f"{name}.json", self.work / f"{name}.env"
        config.write_text(json.dumps({"admin_token": ADMIN, "pricing": PRICES,
                                      "providers": {p: {"upstream": mock.url} for p in ("openai", "anthropic")}}))
        managed.write_text(f"TOLLHOUSE_USER={user}\nTOLLHOUSE_LOG_LEVEL=warning\n")
        return self.start(name, ["agent", "--control-plane", plane.url, "--token", token, "--config", str(config),
                                 "--host", HOST, "--data-dir", str(self.work / f"{name}-data")], src,
                          {"TOLLHOUSE_MANAGED_CONFIG": str(managed)})

    def connected(self, agent: Proc) -> None:
        self.ready(agent)
        until(lambda: health(agent)["control_plane"]["state"] == "connected", 30, f"{agent.name} connected")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()


def health(proc: Proc) -> Json:
    status, body = http("GET", proc.url + "/healthz", token=None)
    if status != 200 or not isinstance(body, dict):
        raise OSError(f"{proc.name} /healthz answered {status}")
    return body


def enroll(plane: Proc) -> str:
    status, body = http("POST", plane.url + "/api/v1/agent/tokens", {"label": "bench"})
    assert status == 201, body
    status, answer = http("PUT", plane.url + "/api/v1/agent-policy", {"enforcement": "on"})
    assert status == 200, answer
    return str(body["token"])


def set_policy(plane: Proc, agent: Proc, rules: list[Json]) -> None:
    """Make `rules` the control plane's policy and wait until the agent runs it."""
    status, body = http("GET", plane.url + "/api/v1/policy")
    assert status == 200, body
    if body["rules"] == rules:  # the same rules again would be a new version the agent never sees
        return
    status, body = http("PUT", plane.url + "/api/v1/policy", {"rules": rules})
    assert status == 200, body
    version = body["version"]
    until(lambda: health(agent)["policy"]["version"] == version, 30, f"{agent.name} running policy v{version}")


def chat(agent: Proc) -> int:
    return http("POST", agent.url + "/openai/v1/chat/completions", CHAT, token=None)[0]


# --------------------------------------------------------------------------------- 1. per-call overhead

def run_wrk(url: str, seconds: float, script: Path, connections: int) -> Json:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is needed for the overhead phase (apt-get install wrk)")
    argv = [wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script), url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise SystemExit(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


def hot_path(calls: int) -> Json:
    """In-process, what the ledger costs a call: reserve + settle on one hard team cap, the agent's LeaseLedger
    (a held, live lease: no round trip) against the LocalLedger the agent used before leases (counter loaded).
    Interleaved repeats, the best of each (the least disturbed by other jobs)."""
    from tollhouse.agent.leases import Held, LeaseKey, LeaseLedger
    from tollhouse.config import DirectoryConfig
    from tollhouse.directory import Directory
    from tollhouse.ledger.local import HistoryRow, LocalLedger
    from tollhouse.ledger.types import Charge
    from tollhouse.policy.engine import CallFacts, CompiledPolicy
    from tollhouse.policy.rules import parse_rules

    directory = Directory(DirectoryConfig.model_validate(DIRECTORY))
    policy = CompiledPolicy(parse_rules([team_cap(1_000_000.0)]))
    caps = policy.evaluate(CallFacts("openai", "api.openai.com", "gpt-4o-mini"), directory.subject("alice"),
                           datetime.datetime.now(datetime.UTC)).caps
    ceilings: list[int | None] = [c.units for c in caps]
    charge = Charge("openai", CALL_NUSD, 0, 0, 0)
    zone = ZoneInfo("UTC")

    async def no_history(scope: str, ident: str, since: int, bucket: int) -> list[HistoryRow]:
        return []

    async def run() -> dict[str, float]:
        now_ms = int(time.time() * 1000)
        local = LocalLedger(no_history, 1, zone, reservation_ttl_s=900)
        await local.warm(caps, now_ms)
        leased = LeaseLedger("http://127.0.0.1:9", "token", "bench", 1, zone)
        for cap in caps:
            key: LeaseKey = (cap.rule.id, cap.counter[0], cap.counter[1])
            leased.leases[key] = Held(cap, leased._period(cap, now_ms), granted=10**15, limit=cap.units,
                                      answered=True, expires=leased.mono() + 3600, size=10**15,
                                      last_use=leased.mono())
        best = {"lease_ledger_us": float("inf"), "local_ledger_us": float("inf")}
        for _ in range(5):
            for name, ledger in (("lease_ledger_us", leased), ("local_ledger_us", local)):
                started = time.perf_counter()
                for _ in range(calls):
                    reserved = ledger.try_reserve(caps, charge, now_ms, ceilings)
                    assert reserved is not None and reserved.reservation is not None
                    ledger.settle(reserved.reservation, charge)
                best[name] = min(best[name], (time.perf_counter() - started) / calls * 1e6)
        return {k: round(v, 2) for k, v in best.items()}

    return asyncio.run(run())


KEYS = ("requests_per_s", "p50_ms", "p99_ms", "agent_cpu_us", "plane_cpu_us")


def overhead(work: Path, seconds: float, rounds: int, connections: int, base_src: Path | None) -> Json:
    stack = Stack(work)
    script = work / "chat.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(json.dumps(CHAT))}\n'
                      'wrk.headers["Content-Type"] = "application/json"\n')
    big = [team_cap(1_000_000.0)]  # never reached: every call reserves against the lease
    try:
        mock = stack.mock()
        plane = stack.plane("plane", mock, big)
        agent = stack.agent("agent", "alice", mock, plane, enroll(plane))
        stack.connected(agent)
        configs: dict[str, Callable[[], tuple[Proc, Proc]]] = {}  # name -> (agent, its control plane)

        def leased() -> tuple[Proc, Proc]:
            set_policy(plane, agent, big)
            return agent, plane

        def uncapped() -> tuple[Proc, Proc]:
            set_policy(plane, agent, [])
            return agent, plane

        configs["leases"], configs["no_cap"] = leased, uncapped
        if base_src is not None:
            old_plane = stack.plane("base-plane", mock, big, src=base_src)
            old_agent = stack.agent("base-agent", "alice", mock, old_plane, enroll(old_plane), base_src)
            stack.connected(old_agent)
            configs["base_local_cap"] = lambda: (old_agent, old_plane)
        mock_direct = run_wrk(mock.url + "/v1/chat/completions", seconds, script, connections)
        runs: dict[str, list[Json]] = {name: [] for name in configs}
        names = list(configs)
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order every round
                target, its_plane = configs[name]()
                for _ in range(20):  # warm: the lease is asked for, connections are open
                    assert chat(target) == 200
                cpu = cpu_seconds(target.pid), cpu_seconds(its_plane.pid)
                result = run_wrk(target.url + "/openai/v1/chat/completions", seconds, script, connections)
                calls = max(1, result.get("requests") or 1)
                # CPU per call: what a call costs the agent (and its control plane, ingesting the shipped events),
                # steadier than req/s on a shared machine
                result["agent_cpu_us"] = round((cpu_seconds(target.pid) - cpu[0]) / calls * 1e6, 1)
                result["plane_cpu_us"] = round((cpu_seconds(its_plane.pid) - cpu[1]) / calls * 1e6, 1)
                runs[name].append(result)
                print(f"  round {r + 1} {name}: {result['requests_per_s']:.0f} req/s, p50 {result['p50_ms']} ms, "
                      f"p99 {result['p99_ms']} ms, agent {result['agent_cpu_us']} us/call, control plane "
                      f"{result['plane_cpu_us']} us/call, non-2xx {result['non_2xx']}", file=sys.stderr)
        leases_health = health(agent)["budget_leases"]
    finally:
        stack.stop()
    summary: Json = {}
    for name, results in runs.items():
        summary[name] = {key: round(statistics.median(r[key] for r in results), 2) for key in KEYS}
        summary[name]["errors"] = sum(r["errors"] for r in results)
        summary[name]["rounds"] = [{k: r[k] for k in KEYS} for r in results]
    ratios: Json = {}
    for other in [n for n in runs if n != "leases"]:
        ratios[f"leases/{other}"] = {
            "rps": round(median_ratio([(a["requests_per_s"], b["requests_per_s"])
                                       for a, b in zip(runs["leases"], runs[other], strict=True)]), 4),
            "agent_cpu": round(median_ratio([(a["agent_cpu_us"], b["agent_cpu_us"])
                                             for a, b in zip(runs["leases"], runs[other], strict=True)]), 4),
            "p50_added_ms": round(statistics.median(a["p50_ms"] - b["p50_ms"]
                                                    for a, b in zip(runs["leases"], runs[other], strict=True)), 3),
            "p99_added_ms": round(statistics.median(a["p99_ms"] - b["p99_ms"]
                                                    for a, b in zip(runs["leases"], runs[other], strict=True)), 3)}
    return {"seconds": seconds, "rounds": rounds, "load": f"wrk -t1 -c{connections} --latency",
            "mock_direct": {k: mock_direct[k] for k in ("requests_per_s", "p50_ms", "p99_ms")},
            "configs": summary, "ratios": ratios, "lease_requests_by_agent": leases_health.get("requests"),
            "base_commit": checkout(base_src) if base_src is not None else None,
            "hot_path": hot_path(20_000)}


# ------------------------------------------------------------------------------------------- 2. renewals

def plane_cpu(cpu_s: float, wall_s: float, renewals: int) -> Json:
    """The control plane's CPU over a run: cores used, and µs per renewal (its capacity: a core answers about
    1e6 / that many renewals a second)."""
    return {"control_plane_cpu_cores": round(cpu_s / wall_s, 2),
            "control_plane_cpu_us_per_renewal": round(cpu_s / renewals * 1e6, 1) if renewals else None}


@dataclass
class SimAgent:
    ident: str
    epoch: str = field(default_factory=lambda: uuid.uuid4().hex)
    consumed: int = 0
    granted: int = 0
    short: int = 0  # answers that granted less than a full lease beyond what was consumed


async def _renew(session: aiohttp.ClientSession, url: str, auth: str, agent: SimAgent, lease_nusd: int,
                 latencies: list[float] | None) -> None:
    # like a real agent: renews when a third of its lease is left, so it reports up to ~2/3 of a lease more
    agent.consumed = min(agent.granted, agent.consumed + random.randint(0, lease_nusd * 2 // 3)) \
        if agent.granted else 0
    body = {"epoch": agent.epoch, "leases": [{"rule": "ml-cap", "scope": "team", "id": "ml",
                                              "consumed": agent.consumed, "need": 0, "release": False}]}
    started = time.perf_counter()
    async with session.post(url, json=body, headers={"authorization": auth, "x-tollhouse-agent-id": agent.ident}) as r:
        answer = await r.json()
        if r.status != 200 or answer["leases"][0]["error"]:
            raise SystemExit(f"lease request for {agent.ident} answered {r.status}: {answer}")
    if latencies is not None:
        latencies.append((time.perf_counter() - started) * 1000)
    agent.granted = int(answer["leases"][0]["granted"])
    agent.short += agent.granted - agent.consumed < lease_nusd


async def _renewals_async(plane: Proc, token: str, agents: int, seconds: float, paced_rps: float,
                          lease_nusd: int) -> Json:
    url, auth = plane.url + "/api/v1/agent/leases", f"Bearer {token}"
    sims = [SimAgent(f"sim-{n:04d}") for n in range(agents)]
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(_renew(session, url, auth, a, lease_nusd, None) for a in sims))  # first leases

        latencies: list[float] = []
        stop = time.perf_counter() + seconds

        async def closed_loop(agent: SimAgent) -> None:
            while time.perf_counter() < stop:
                await _renew(session, url, auth, agent, lease_nusd, latencies)

        cpu0, own0, t0 = cpu_seconds(plane.pid), own_cpu_seconds(), time.perf_counter()
        await asyncio.gather(*(closed_loop(a) for a in sims))
        wall = time.perf_counter() - t0
        saturated = {"renewals": len(latencies), "seconds": round(wall, 2),
                     "renewals_per_s": round(len(latencies) / wall, 1),
                     "p50_ms": round(pct(latencies, 50), 2), "p99_ms": round(pct(latencies, 99), 2),
                     **plane_cpu(cpu_seconds(plane.pid) - cpu0, wall, len(latencies)),
                     "client_cpu_cores": round((own_cpu_seconds() - own0) / wall, 2)}

        paced: list[float] = []
        rate = min(paced_rps, saturated["renewals_per_s"] / 2)
        every = agents / rate  # each agent renews this often
        stop = time.perf_counter() + seconds

        async def paced_loop(n: int, agent: SimAgent) -> None:
            await asyncio.sleep(every * n / agents)
            nxt = time.perf_counter()
            while nxt < stop:
                await _renew(session, url, auth, agent, lease_nusd, paced)
                nxt += every
                await asyncio.sleep(max(0.0, nxt - time.perf_counter()))

        cpu0, t0 = cpu_seconds(plane.pid), time.perf_counter()
        await asyncio.gather(*(paced_loop(n, a) for n, a in enumerate(sims)))
        wall = time.perf_counter() - t0
        paced_result = {"target_per_s": round(rate, 1), "renewals": len(paced),
                        "renewals_per_s": round(len(paced) / wall, 1),
                        "p50_ms": round(pct(paced, 50), 2), "p99_ms": round(pct(paced, 99), 2),
                        **plane_cpu(cpu_seconds(plane.pid) - cpu0, wall, len(paced))}
    return {"saturated": saturated, "paced": paced_result, "short_grants": sum(a.short for a in sims)}


WRK_LEASES = """-- 1,000 agents' lease renewals, round robin; each agent's consumed grows as a real agent's
local agents, step, n, consumed = %(agents)d, %(step)d, 0, {}
local headers = {["Authorization"] = "Bearer %(token)s", ["Content-Type"] = "application/json"}
request = function()
  local i = n %% agents
  n = n + 1
  consumed[i] = (consumed[i] or 0) + math.random(0, step)
  headers["X-Tollhouse-Agent-Id"] = string.format("sim-%%04d", i)
  local body = '{"epoch":"wrk-' .. i .. '","leases":[{"rule":"ml-cap","scope":"team","id":"ml","consumed":'
    .. string.format("%%d", consumed[i]) .. ',"need":0}]}'
  return wrk.format("POST", "/api/v1/agent/leases", headers, body)
end
"""


def renewals_wrk(work: Path, plane: Proc, token: str, agents: int, seconds: float, lease_nusd: int) -> Json:
    """The control plane's own ceiling: the same renewals from wrk (C, one thread, `agents` keep-alive
    connections), which costs far less CPU per request than a Python client."""
    script = work / "leases.lua"
    script.write_text(WRK_LEASES % {"agents": agents, "step": lease_nusd * 2 // 3, "token": token})
    cpu0, t0 = cpu_seconds(plane.pid), time.perf_counter()
    result = run_wrk(plane.url + "/api/v1/agent/leases", seconds, script, agents)
    wall = time.perf_counter() - t0
    return {"renewals_per_s": round(result["requests_per_s"], 1), "renewals": result.get("requests"),
            "p50_ms": result["p50_ms"], "p99_ms": result["p99_ms"], "errors": result["errors"],
            **plane_cpu(cpu_seconds(plane.pid) - cpu0, wall, int(result.get("requests") or 0))}


def renewals(work: Path, agents: int, seconds: float, paced_rps: float) -> Json:
    cap_usd, fraction = 100_000_000.0, 0.000001  # $100 leases: the cap is never the limit here
    lease_nusd = int(cap_usd * fraction * NUSD)
    stack = Stack(work)
    try:
        mock = stack.mock()
        plane = stack.plane("plane", mock, [team_cap(cap_usd)], {"lease_fraction": fraction})
        token = enroll(plane)
        result = asyncio.run(_renewals_async(plane, token, agents, seconds, paced_rps, lease_nusd))
        result["wrk"] = renewals_wrk(work, plane, token, agents, seconds, lease_nusd)
        started = time.perf_counter()
        status, spend = http("GET", plane.url + "/api/v1/spend?scope=team&id=ml")
        spend_ms = (time.perf_counter() - started) * 1000
        assert status == 200, spend
        rss = next(int(line.split()[1]) / 1024 for line in Path(f"/proc/{plane.pid}/status").read_text().splitlines()
                   if line.startswith("VmRSS:"))
    finally:
        stack.stop()
    return {"agents": agents, "seconds": seconds, "cap_usd": cap_usd, "lease_usd": lease_nusd / NUSD, **result,
            "leases_listed": len(spend["leases"]), "leases_outstanding_usd": spend["caps"][0]["leases_outstanding"],
            "spend_api_ms_with_leases": round(spend_ms, 1), "control_plane_rss_mb": round(rss, 1)}


# ------------------------------------------------------------------------------------------ 3. overspend

@dataclass
class Sample:
    t: float
    used: int
    outstanding: int


async def _sampler(session: aiohttp.ClientSession, plane: Proc, samples: list[Sample], stop: asyncio.Event) -> None:
    headers = {"authorization": f"Bearer {ADMIN}"}
    while not stop.is_set():
        async with session.get(plane.url + "/api/v1/spend?scope=team&id=ml", headers=headers) as r:
            body = await r.json()
        cap = body["caps"][0]
        samples.append(Sample(time.perf_counter(), round(cap["used"] * NUSD),
                              round(cap["leases_outstanding"] * NUSD)))
        await asyncio.sleep(0.02)


@dataclass
class Load:
    """How the callers of phase 3 call: `workers` concurrent callers per agent, each pausing `pause_s` after an
    answered call; a caller stops once it has been refused for `give_up_s` without an answer in between (longer
    than an agent waits before asking its control plane again after a refusal, and than the shipping interval)."""

    name: str
    workers: int
    pause_s: float
    give_up_s: float = 2.0
    max_s: float = 90.0


def premature_refusals(timeline: Sequence[tuple[float, int]]) -> int:
    """Refusals that came before some later call was answered: the cap had room for it after all."""
    last_ok = max((t for t, status in timeline if status == 200), default=-1.0)
    return sum(1 for t, status in timeline if status != 200 and t < last_ok)


async def _load(plane: Proc, agents: list[Proc], load: Load, max_calls: int) -> Json:
    samples: list[Sample] = []
    stop = asyncio.Event()
    statuses: dict[str, list[int]] = {a.name: [] for a in agents}
    timeline: list[tuple[float, int]] = []
    calls = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        sampler = asyncio.create_task(_sampler(session, plane, samples, stop))
        started = time.perf_counter()

        async def caller(agent: Proc) -> None:
            nonlocal calls
            refused_since: float | None = None
            while calls < max_calls and time.perf_counter() - started < load.max_s:
                calls += 1
                async with session.post(agent.url + "/openai/v1/chat/completions", json=CHAT) as r:
                    await r.read()
                now = time.perf_counter()
                statuses[agent.name].append(r.status)
                timeline.append((now, r.status))
                if r.status == 200:
                    refused_since = None
                    if load.pause_s:
                        await asyncio.sleep(load.pause_s)
                    continue
                if r.status not in (403, 429):
                    raise SystemExit(f"{agent.name} answered {r.status} under load")
                refused_since = now if refused_since is None else refused_since
                if now - refused_since >= load.give_up_s:
                    return
                await asyncio.sleep(0.1)

        await asyncio.gather(*(caller(a) for a in agents for _ in range(load.workers)))
        wall = time.perf_counter() - started
        stop.set()
        await sampler
    return {"statuses": statuses, "timeline": timeline, "samples": samples, "seconds": round(wall, 2)}


def at_cap(samples: Sequence[Sample], cap: int, lease: int) -> Sample | None:
    """The first sample where the control plane's counter (spend counted plus every lease held) leaves less
    than one lease of room: the cap is reached, what the fleet still spends comes out of leases held."""
    return next((s for s in samples if s.used + lease > cap), None)


def overspend(work: Path, cap_calls: int, load: Load, src: Path = SRC, code: str = "this checkout") -> Json:
    cap = cap_calls * CALL_NUSD
    lease = max(1, int(cap * 0.01))  # the default lease_fraction
    stack = Stack(work)
    try:
        mock = stack.mock()
        plane = stack.plane("plane", mock, [team_cap(cap / NUSD)], src=src)  # default lease sizes
        token = enroll(plane)
        agents = [stack.agent(f"agent-{p}", p, mock, plane, token, src) for p in PEOPLE]
        for agent in agents:
            stack.connected(agent)
        run = asyncio.run(_load(plane, agents, load, cap_calls * 10))
        calls = len(run["timeline"])
        answered = sum(1 for _, status in run["timeline"] if status == 200)

        def team_events() -> list[Json]:
            status, body = http("GET", plane.url + "/api/v1/events?limit=10000")
            assert status == 200, body
            return [e for e in body["events"] if e["team"] == "ml"]

        until(lambda: len(team_events()) >= calls, 60, f"all {calls} calls shipped to the control plane")
        events = team_events()
        recorded = sum(round((e["cost_usd"] or 0) * NUSD) for e in events)
        status, spend = http("GET", plane.url + "/api/v1/spend?scope=team&id=ml")
        assert status == 200, spend
        leases_end = round(spend["caps"][0]["leases_outstanding"] * NUSD)
        agents_end = {a.name: health(a)["budget_leases"]["leases"] for a in agents}
    finally:
        stack.stop()
    samples: list[Sample] = run["samples"]
    reached = at_cap(samples, cap, lease)
    refusals = [t for t, status in run["timeline"] if status != 200]
    first_refusal = min(refusals, default=None)
    at_refusal = min(samples, key=lambda x: abs(x.t - first_refusal)) if first_refusal is not None else None
    # the bound: leases outstanding when the cap was reached (if it never was, the most held at any sample)
    outstanding_at_cap = reached.outstanding if reached else max(x.outstanding for x in samples)
    figures = overspend_figures(cap, recorded, outstanding_at_cap, leases_end)
    return {"load": load.name, "code": code, **figures, "cap_reached_in_samples": reached is not None, "calls": calls,
            "answered": answered, "refused": calls - answered,
            "premature_refusals": premature_refusals(run["timeline"]),
            "answered_spend_nusd": answered * CALL_NUSD, "spend_api_nusd": round(spend["spend_usd"] * NUSD),
            "counter_used_nusd": round(spend["caps"][0]["used"] * NUSD),
            "leases_outstanding_at_first_refusal_nusd": at_refusal.outstanding if at_refusal else None,
            "leases_outstanding_max_nusd": max(x.outstanding for x in samples), "lease_nusd": lease,
            "workers_per_agent": load.workers, "pause_s": load.pause_s, "load_seconds": run["seconds"],
            "spend_samples": len(samples), "agents_end": agents_end, "leases_end": spend["leases"],
            "per_agent": {name: {"answered": st.count(200), "refused": len(st) - st.count(200)}
                          for name, st in run["statuses"].items()}}


# ---------------------------------------------------------------------------------------------- report

def report_overhead(o: Json) -> list[str]:
    title = {"leases": "leases (hard team cap, never reached)", "no_cap": "no cap (calls not counted)",
             "base_local_cap": f"before leases ({o.get('base_commit')}): the same cap counted on the laptop"}
    rows = [f"| {title.get(c, c)} | {v['requests_per_s']:.0f} | {v['p50_ms']} | {v['p99_ms']} | {v['agent_cpu_us']} | "
            f"{v['plane_cpu_us']} | {v['errors']} | {', '.join(str(round(x['requests_per_s'])) for x in v['rounds'])} |"
            for c, v in o["configs"].items()]
    ratio = o["ratios"]["leases/no_cap"]
    lines = ["## 1. Per-call overhead of leases on an agent\n",
             f"Load: `{o['load']}`, {o['seconds']:g} s per run, {o['rounds']} rounds, configurations alternated "
             "(order rotated each round); leases and no cap on the same agent process, switched by changing its "
             "control plane's policy. Small chat completions (gpt-4o-mini, 16 tokens) through `tollhouse agent` to "
             "`tollhouse mock-provider`. Medians over rounds.\n",
             "| configuration | req/s | p50 ms | p99 ms | agent CPU µs/call | control plane CPU µs/call | errors | "
             "req/s per round |", "|---|---:|---:|---:|---:|---:|---:|---|",
             *rows,
             f"| mock provider alone (reference) | {o['mock_direct']['requests_per_s']:.0f} | "
             f"{o['mock_direct']['p50_ms']} | {o['mock_direct']['p99_ms']} | | | | |\n",
             f"**Leases vs no cap: median per-round throughput ratio {ratio['rps']:.3f} "
             f"({(1 - ratio['rps']) * 100:+.1f} % cost; target within 5 %: "
             f"{'met' if ratio['rps'] >= 0.95 else 'NOT met'}); added latency p50 "
             f"{ratio['p50_added_ms']:+} ms, p99 {ratio['p99_added_ms']:+} ms** (medians of the per-round "
             f"differences); agent CPU per call, leases / no cap: **{ratio['agent_cpu']:.3f}** "
             f"({(ratio['agent_cpu'] - 1) * 100:+.1f} %).\n"]
    if "leases/base_local_cap" in o["ratios"]:
        b = o["ratios"]["leases/base_local_cap"]
        lines.append(f"Leases vs the previous commit's agent counting the same cap alone: throughput ratio "
                     f"{b['rps']:.3f}, p50 {b['p50_added_ms']:+} ms, p99 {b['p99_added_ms']:+} ms, agent CPU per call "
                     f"{b['agent_cpu']:.3f}.\n")
    hot = o["hot_path"]
    per_call = o["configs"]["leases"]["agent_cpu_us"]
    added = hot["lease_ledger_us"] - hot["local_ledger_us"]
    lines.append(f"In-process, the ledger's part of a call (reserve + settle on the team cap, best of 5 × 20,000): "
                 f"**LeaseLedger {hot['lease_ledger_us']} µs** with a held lease, LocalLedger (the agent before "
                 f"leases) {hot['local_ledger_us']} µs: leases add {added:.1f} µs per call, "
                 f"{added / per_call * 100:.1f} % of the agent's {per_call} µs of CPU per call above.\n")
    lines.append(f"The agent sent {o['lease_requests_by_agent']} lease requests over the whole run: a held lease is "
                 "renewed in the background, no call waits for the control plane. All processes and wrk share the "
                 "machine's 2 CPUs (with other jobs): req/s moves with whatever else runs, so CPU per call (from "
                 "/proc, the agent's and its control plane's, divided by the calls of the run) is the steadier "
                 "measure of what a call costs. The control plane's share is ingesting the agent's shipped events "
                 "(with a cap: counting them into the counters and the lease).\n")
    return lines


def per_renewal(run: Json) -> str:
    us = run.get("control_plane_cpu_us_per_renewal")
    return f"{us:.0f}" if us else "-"


def report_renewals(n: Json) -> list[str]:
    sat, paced, w = n["saturated"], n["paced"], n["wrk"]
    return ["## 2. Lease renewals at the control plane, 1,000 simulated agents\n",
            f"{n['agents']} agents (each its own `X-Tollhouse-Agent-Id` and epoch, `consumed` growing by up to two "
            f"thirds of its ${n['lease_usd']:g} lease per request, as a real agent renews) against one "
            f"`tollhouse serve` with a team cap; {n['seconds']:g} s per run.\n",
            "| client | renewals/s | p50 ms | p99 ms | control plane CPU (cores) | control plane CPU µs/renewal | "
            "client CPU (cores) |", "|---|---:|---:|---:|---:|---:|---:|",
            f"| aiohttp, one event loop, one keep-alive connection per agent, closed loop | "
            f"{sat['renewals_per_s']:.0f} | {sat['p50_ms']} | {sat['p99_ms']} | {sat['control_plane_cpu_cores']} | "
            f"{per_renewal(sat)} | {sat['client_cpu_cores']} |",
            f"| the same, paced at {paced['target_per_s']:g}/s | {paced['renewals_per_s']:.0f} | {paced['p50_ms']} | "
            f"{paced['p99_ms']} | {paced['control_plane_cpu_cores']} | {per_renewal(paced)} | |",
            f"| wrk, one thread, {n['agents']} connections, agents round robin, closed loop | "
            f"{w['renewals_per_s']:.0f} | {w['p50_ms']} | {w['p99_ms']} | {w['control_plane_cpu_cores']} | "
            f"{per_renewal(w)} | |\n",
            "Closed loop, 1,000 requests are always in flight: the rate is set by whichever process gets least "
            "of the 2 CPUs (the Python client, wrk, the control plane, other jobs), and the latency is mostly "
            "queueing. The control plane's CPU per renewal is the capacity figure: one core answers about "
            "1e6 / that many renewals a second. At the "
            "default TTL (60 s) an agent in use renews about every 20 s: 1,000 agents ask ~50 times a second. "
            f"Grants short of a full lease: {n['short_grants']}. Afterwards `GET /api/v1/spend` listed "
            f"{n['leases_listed']} leases in {n['spend_api_ms_with_leases']} ms; control plane RSS "
            f"{n['control_plane_rss_mb']} MB.\n"]


NOT_REACHED = " (no sample saw the cap reached: the bound uses the most held at any sample)"


def report_overspend(runs: list[Json]) -> list[str]:
    rows = [f"| {s['load']} | {s['code']} | {s['cap_nusd']} | {s['recorded_nusd']} | "
            f"{s['leases_outstanding_at_cap_nusd']} | "
            f"{s['bound_nusd']} | **{s['overspend_nusd']}** | {s['leases_outstanding_end_nusd']} | "
            f"{s['cap_used_pct']} % | "
            f"{s['answered']} / {s['refused']} | {s['premature_refusals']} |" for s in runs]
    notes = []
    for s in runs:
        per_agent = ", ".join(f"{k.removeprefix('agent-')} {v['answered']}/{v['refused']}"
                              for k, v in s["per_agent"].items())
        notes.append(f"- {s['load']}, {s['code']}: {s['workers_per_agent']} caller(s) per agent, "
                     f"{s['load_seconds']} s, "
                     f"{s['spend_samples']} samples; within the bound: **{s['within_bound']}**, overspend ≤ 0: "
                     f"**{s['overspend_nusd'] <= 0}**; answered/refused per agent: {per_agent}; spend API "
                     f"{s['spend_api_nusd']} n$ (equals the sum of events: "
                     f"{s['spend_api_nusd'] == s['recorded_nusd']}), counter used {s['counter_used_nusd']} n$, "
                     f"answered calls' spend {s['answered_spend_nusd']} n$; "
                     f"leases outstanding at the first refusal {s['leases_outstanding_at_first_refusal_nusd']} n$, "
                     f"most at any sample {s['leases_outstanding_max_nusd']} n$"
                     f"{'' if s['cap_reached_in_samples'] else NOT_REACHED}.")
    lease = runs[0]["lease_nusd"] if runs else 0
    return ["## 3. Overspend at a team cap under load\n",
            "A control plane and three `tollhouse agent` processes (alice, bob, carol of team ml), the default lease "
            f"size (1 % of the cap: {lease} n$ here), each call {CALL_NUSD} n$; every caller calls until it has been "
            "refused for 2 s on end. `GET /api/v1/spend` sampled every 20 ms; *at the cap* is the first sample where "
            "the control plane's counter (spend counted plus leases held) leaves less than one lease of room. "
            "Amounts in n$ (1e-9 USD).\n",
            "| load | code | cap | recorded spend (sum of events) | leases outstanding at the cap | "
            "bound (cap + those) | "
            "overspend (recorded - cap) | leases outstanding at the end | cap used | answered / refused | "
            "refused before a later answer |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|", *rows, "",
            "Leases outstanding, as the control plane counts them, are what it granted less what the agents' "
            "shipped events have drawn: spend not yet shipped (agents ship about every second) is part of it, so "
            "in a burst shorter than that nearly the whole cap is outstanding and the bound is loose; the overspend "
            "column is the measured fact (≤ 0: the fleet never spent past the cap). *Refused before a later "
            "answer* counts refusals while other agents still held leases on what was left (they spent it "
            "afterwards); *cap used* under 100 % is budget left in lease fragments smaller than one call, given "
            "back when a lease idles for a TTL.\n", *notes, ""]


def checkout(src: Path) -> str:
    """The commit a src/ directory is checked out at ('+' when it has uncommitted changes)."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True, check=False)
        return done.stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+" if git("status", "--porcelain", "--", ".") else "")


def report(r: Json) -> str:
    lines = ["# Budget leases: per-call cost, renewals, overspend at the cap\n",
             f"{r['date']} · {r['machine']} · commit {r['commit']} · "
             f"`python benchmarks/bench_leases.py{' --quick' if r['quick'] else ''}` "
             "(mock provider, control planes and agents as separate processes on loopback; load generators on the "
             f"same machine, which other jobs share: load average {r['load_average_before']:.1f} before the run, "
             f"{r['load_average_after']:.1f} after).\n"]
    if "overhead" in r:
        lines += report_overhead(r["overhead"])
    if "renewals" in r:
        lines += report_renewals(r["renewals"])
    if "overspend" in r:
        lines += report_overspend(r["overspend"])
    return "\n".join(lines)


PHASES = ("overhead", "renewals", "overspend")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs (about a minute and a half in all)")
    ap.add_argument("--base-src", type=Path, default=None,
                    help="src/ of a checkout before leases (e.g. a worktree of 381571d): a third overhead column")
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--compare-src", type=Path, default=None,
                    help="src/ of another checkout: phase 3 runs on it too (e.g. before a fix)")
    ap.add_argument("--compare-label", default="the other checkout", help="what --compare-src is, in the report")
    ap.add_argument("--only", choices=PHASES, action="append", help="run only this phase (repeatable)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    quick, phases = args.quick, args.only or PHASES
    work = Path(tempfile.mkdtemp(prefix="bench-leases-"))
    result: Json = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                    "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
                    "quick": quick, "commit": checkout(SRC), "load_average_before": os.getloadavg()[0]}
    try:
        if "overhead" in phases:
            print("1. per-call overhead", file=sys.stderr)
            result["overhead"] = overhead(work / "overhead", 3 if quick else 8, 3 if quick else 5, 8, args.base_src)
        if "renewals" in phases:
            print("2. renewals", file=sys.stderr)
            result["renewals"] = renewals(work / "renewals", args.agents, 4 if quick else 10, 1000)
        if "overspend" in phases:
            print("3. overspend", file=sys.stderr)
            loads = [(Load("burst: 8 concurrent callers per agent, back to back", 8, 0.0), 300 if quick else 1000),
                     (Load("steady: 1 caller per agent, 10 calls/s each", 1, 0.1), 60 if quick else 150)]
            codes = [(SRC, f"this checkout ({checkout(SRC)})")]
            if args.compare_src is not None:
                codes.append((args.compare_src, args.compare_label))
            result["overspend"] = [overspend(work / f"overspend-{n}-{m}", calls, load, src, code)
                                   for n, (load, calls) in enumerate(loads) for m, (src, code) in enumerate(codes)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["load_average_after"] = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "leases.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "leases.md").write_text(report(result))
    print(report(result))


if __name__ == "__main__":
    main()

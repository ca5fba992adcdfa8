#!/usr/bin/env python3
"""The benchmark suite (issue 8): Tollhouse side by side with its peers, on one machine, in one run.

Upstream: nginx returning a canned chat completion (JSON with usage; a canned SSE stream with a final
usage chunk when the body says ``"stream": true``). Targets, each started on loopback in turn (never two
at once) and pointed at that upstream:

* ``direct`` -- the upstream itself;  ``nginx`` -- nginx ``proxy_pass`` (the limit for a proxy);
* ``floor`` -- a bare aiohttp + uvloop pass-through (``floor_aiohttp.py``, the Python floor);
* ``litellm`` -- LiteLLM's proxy, one worker, no DB / telemetry, in its own venv under the cache dir;
* ``tollhouse-observe``, ``tollhouse-enforcing`` (1,000 rules, a personal budget and a team token window,
  every call recorded), ``tollhouse-enforcing-redis`` (the same, counters on a private Redis) and
  ``tollhouse-enforcing-workers2`` (``--workers 2``, counters on a private Redis; "not available" while
  ``tollhouse serve --help`` lacks ``--workers``).

Scenarios: ``c1`` (latency, alternating with direct), ``c32`` (wrk), ``stream`` (TTFB and total,
alternating with direct), ``mixed`` (wrk over 1,000 people / 50 teams, several models, some streaming),
``soak`` (constant rate, RSS of every process of the target over time), ``micro`` (bench_policy and
bench_ledger headline figures). Writes ``suite.md``, ``suite.json`` and ``suite.png`` to ``--out``.

    python benchmarks/suite.py [--quick] [--targets a,b] [--scenarios c1,c32,...] [--soak-seconds 600] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_gateway import (
    BUDGET_RULES,
    CHAT_BODY,
    CONCURRENCY,
    HOST,
    STREAM_BODY,
    USER_HEADER,
    WRK_THREADS,
    Service,
    Target,
    admin_get,
    background_load,
    build_scenarios,
    cpu_jiffies,
    cpu_seconds,
    free_port,
    gateway_config,
    latency_summary,
    machine_info,
    request_bytes,
    run_interleaved,
    run_wrk,
    settled_counts,
    start_gateway,
    start_service,
    stop_service,
    stream_summary,
    tollhouse_command,
    wait_ready,
    write_wrk_script,
)
from bench_gateway import (
    Plan as GatewayPlan,
)
from bench_ledger import private_redis
from suite_stats import RSS_LIMIT_MB, ratio, rss_growth, verdict
from tollhouse.config import parse_settings
from tollhouse.directory import Directory
from tollhouse.policy.engine import CallFacts, CompiledPolicy
from tollhouse.policy.rules import parse_rules

Json = dict[str, Any]
HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results"
CACHE = Path(os.environ.get("TOLLHOUSE_BENCH_CACHE", Path.home() / ".cache" / "tollhouse-bench"))
LITELLM_VERSION = "1.93.0"
MIXED_MODELS = ("gpt-4o-mini", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-4o")
MIXED_STREAM_SHARE = 0.25
SOAK_CONNECTIONS = 8
ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")
SCENARIOS = ("c1", "c32", "stream", "mixed", "soak", "micro")


@dataclass(frozen=True)
class Plan(GatewayPlan):
    """bench_gateway's plan plus the soak."""

    soak_seconds: int
    soak_rate: float
    rss_every_s: float


FULL = Plan(200, 2000, 10, 20, 300, 600, 100.0, 5.0)
QUICK = Plan(20, 200, 2, 5, 40, 10, 50.0, 1.0)


# --------------------------------------------------------------------------- tools and throwaway environments


def _run(argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    print("  $ " + " ".join(argv), flush=True)
    return subprocess.run(list(argv), check=True, text=True, **kw)


def ensure_debian_tools(need_redis: bool) -> None:
    """nginx (with the echo module, used to pick the canned answer by request body), wrk, redis-server."""
    missing = [pkg for ok, pkg in ((Path("/usr/sbin/nginx").exists(), "nginx-light"),
                                   (ECHO_MODULE.exists(), "libnginx-mod-http-echo"),
                                   (shutil.which("wrk") is not None, "wrk"),
                                   (not need_redis or shutil.which("redis-server") is not None, "redis-server"))
               if not ok]
    if missing:
        _run(["apt-get", "update", "-q"], stdout=subprocess.DEVNULL)
        _run(["apt-get", "install", "-y", "-q", *missing], stdout=subprocess.DEVNULL,
             env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def ensure_venv(name: str, requirements: Sequence[str], probe: str) -> Path:
    """A venv under the cache dir with `requirements` installed; returns its bin directory."""
    venv = CACHE / name
    bin_dir = venv / "bin"
    if (bin_dir / probe).exists():
        return bin_dir
    CACHE.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", None) or sys.executable
    _run([base, "-m", "venv", "--clear", str(venv)])
    _run([str(bin_dir / "pip"), "install", "-q", *requirements])
    return bin_dir


def litellm_bin() -> Path:
    return ensure_venv(f"litellm-{LITELLM_VERSION}", [f"litellm[proxy]=={LITELLM_VERSION}"], "litellm") / "litellm"


def workers_supported() -> bool:
    proc = subprocess.run([*tollhouse_command(), "serve", "--help"], capture_output=True, text=True, timeout=60,
                          check=False)
    return "--workers" in proc.stdout


# --------------------------------------------------------------------------- processes and RSS


def process_tree(root: int) -> list[int]:
    """`root` and every process descended from it (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    tree, frontier = [root], [root]
    while frontier:
        kids = [pid for pid, ppid in parents.items() if ppid in frontier]
        tree += kids
        frontier = kids
    return tree


def rss_mb(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def process_label(pid: int) -> str:
    with contextlib.suppress(OSError):
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        return f"{pid} {cmd[:80]}"
    return str(pid)


# --------------------------------------------------------------------------- the upstream and the targets


CANNED_JSON = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                 "finish_reason": "stop", "logprobs": None}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18}}, separators=(",", ":"))


def canned_sse() -> str:
    def chunk(delta: Json, finish: str | None = None) -> str:
        return "data: " + json.dumps({
            "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}, separators=(",", ":")) + "\\n\\n"
    usage = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
             "model": "gpt-4o-mini", "choices": [],
             "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}
    return (chunk({"role": "assistant", "content": ""}) + chunk({"content": "Hello"}) + chunk({"content": " there"})
            + chunk({"content": "!"}) + chunk({}, "stop")
            + "data: " + json.dumps(usage, separators=(",", ":")) + "\\n\\ndata: [DONE]\\n\\n")


def nginx_conf(work: Path, name: str, port: int, locations: str, echo: bool) -> Path:
    conf = work / f"{name}.conf"
    temp = work / f"{name}-tmp"
    temp.mkdir(exist_ok=True)
    conf.write_text(
        (f"load_module {ECHO_MODULE};\n" if echo else "")
        + f"worker_processes 1;\npid {work}/{name}.pid;\nerror_log {work}/{name}-error.log warn;\ndaemon off;\n"
        "events { worker_connections 4096; }\n"
        "http {\n  access_log off;\n  keepalive_requests 10000000;\n  keepalive_timeout 300s;\n"
        f"  client_body_temp_path {temp}/body;\n  proxy_temp_path {temp}/proxy;\n"
        f"  fastcgi_temp_path {temp}/fcgi;\n  uwsgi_temp_path {temp}/uwsgi;\n  scgi_temp_path {temp}/scgi;\n"
        "  client_body_buffer_size 64k;\n  client_body_in_single_buffer on;\n"
        + locations + "\n}\n")
    return conf


def start_nginx(work: Path, name: str, port: int, locations: str, echo: bool = False) -> Service:
    conf = nginx_conf(work, name, port, locations, echo)
    service = start_service(name, ["/usr/sbin/nginx", "-c", str(conf), "-p", str(work)], dict(os.environ), work)
    wait_ready(service, f"http://{HOST}:{port}/_ready")
    return service


def start_upstream(work: Path, port: int) -> Service:
    """nginx answering POST /v1/chat/completions with a canned completion, or a canned SSE stream when
    the body has `"stream": true` (the echo module reads the body; a map on it picks the answer)."""
    locations = (
        '  map $request_body $canned { "~\\"stream\\"\\s*:\\s*true" @sse; default @json; }\n'
        f"  server {{\n    listen {HOST}:{port} reuseport;\n"
        "    location = /_ready { return 200 'ok'; }\n"
        "    location / { echo_read_request_body; echo_exec $canned; }\n"
        f"    location @json {{ default_type application/json; return 200 '{CANNED_JSON}'; }}\n"
        f"    location @sse {{ default_type text/event-stream; return 200 '{canned_sse()}'; }}\n  }}")
    return start_nginx(work, "upstream", port, locations, echo=True)


@dataclass
class Ctx:
    work: Path
    upstream_port: int
    users: tuple[str, ...]
    enforcing_config: Json
    stack: contextlib.ExitStack


@dataclass
class Running:
    """A started target: where to send calls and the processes whose RSS and CPU are its own."""

    target: Target
    services: list[Service]
    admin_base: str | None = None  # Tollhouse: where /metrics, /healthz and /api/v1 answer
    notes: list[str] = field(default_factory=list)

    def pids(self) -> list[int]:
        return [pid for s in self.services for pid in process_tree(s.proc.pid)]

    def check_alive(self) -> None:
        for s in self.services:
            s.check_alive()


@dataclass(frozen=True)
class TargetSpec:
    name: str
    description: str
    start: Callable[[Ctx, int], Running]
    tollhouse: bool = False
    available: Callable[[], str | None] = lambda: None  # None, or why the target cannot run here


def _direct(ctx: Ctx, port: int) -> Running:
    return Running(Target("direct", ctx.upstream_port, "/v1/chat/completions"), [])


def _nginx_proxy(ctx: Ctx, port: int) -> Running:
    locations = (f"  upstream canned {{ server {HOST}:{ctx.upstream_port}; keepalive 64; }}\n"
                 f"  server {{\n    listen {HOST}:{port};\n    location = /_ready {{ return 200 'ok'; }}\n"
                 "    location / { proxy_pass http://canned; proxy_http_version 1.1; "
                 'proxy_set_header Connection ""; proxy_buffering off; }\n  }')
    return Running(Target("nginx", port, "/v1/chat/completions"), [start_nginx(ctx.work, "nginx-proxy", port,
                                                                                locations)])


def _floor(ctx: Ctx, port: int) -> Running:
    argv = [sys.executable, str(HERE / "floor_aiohttp.py"), "--port", str(port),
            "--upstream", f"http://{HOST}:{ctx.upstream_port}"]
    service = start_service("floor", argv, dict(os.environ), ctx.work)
    wait_ready(service, f"http://{HOST}:{port}/_ready")
    return Running(Target("floor", port, "/v1/chat/completions"), [service])


def litellm_config(upstream_port: int) -> str:
    models = "".join(f"  - model_name: {m}\n    litellm_params:\n      model: openai/{m}\n"
                     f"      api_base: http://{HOST}:{upstream_port}/v1\n      api_key: sk-bench\n"
                     for m in MIXED_MODELS)
    return ("model_list:\n" + models + "litellm_settings:\n  telemetry: false\n  drop_params: true\n"
            "  turn_off_message_logging: true\n  set_verbose: false\n"
            "general_settings:\n  disable_spend_logs: true\n  disable_error_logs: true\n"
            "  disable_adding_master_key_hash_to_db: true\n")


def _litellm(ctx: Ctx, port: int) -> Running:
    config = ctx.work / "litellm.yaml"
    config.write_text(litellm_config(ctx.upstream_port))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DATABASE_URL")}
    env.update({"LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
                "DISABLE_ADMIN_UI": "True", "LITELLM_MODE": "PRODUCTION"})
    argv = [str(litellm_bin()), "--config", str(config), "--host", HOST, "--port", str(port), "--num_workers", "1",
            "--telemetry", "False"]
    service = start_service("litellm", argv, env, ctx.work)
    wait_ready(service, f"http://{HOST}:{port}/health/liveliness", timeout_s=180)
    return Running(Target("litellm", port, "/v1/chat/completions"), [service],
                   notes=[f"litellm[proxy]=={LITELLM_VERSION}, --num_workers 1, no database, telemetry off"])


def _tollhouse(name: str, extra: Callable[[Ctx], Json], args: Sequence[str] = (),
               redis: bool = False, src: Path | None = None) -> Callable[[Ctx, int], Running]:
    def start(ctx: Ctx, port: int) -> Running:
        config = gateway_config(ctx.upstream_port, extra(ctx))
        if redis:
            url, _ = ctx.stack.enter_context(private_redis(ctx.work))
            config["counters"] = {"url": url}
        service = start_gateway(port, config, ctx.work, name, extra_args=args, src=src)
        return Running(Target(name, port, "/openai/v1/chat/completions"), [service],
                       admin_base=f"http://{HOST}:{port}")
    return start


def _workers_missing() -> str | None:
    return None if workers_supported() else "`tollhouse serve --help` does not list --workers yet"


TARGETS: dict[str, TargetSpec] = {t.name: t for t in (
    TargetSpec("direct", "the nginx upstream itself (canned completion)", _direct),
    TargetSpec("nginx", "nginx proxy_pass, 1 worker, upstream keep-alive", _nginx_proxy),
    TargetSpec("floor", "bare aiohttp + uvloop pass-through (floor_aiohttp.py)", _floor),
    TargetSpec("litellm", f"LiteLLM proxy {LITELLM_VERSION}, 1 worker", _litellm),
    TargetSpec("tollhouse-observe", "tollhouse serve, observe mode, every call recorded (SQLite)",
               _tollhouse("tollhouse-observe", lambda ctx: {}), tollhouse=True),
    TargetSpec("tollhouse-enforcing", "tollhouse serve, enforcing 1,000 rules + personal budget + team token "
               "window, every call recorded (SQLite)",
               _tollhouse("tollhouse-enforcing", lambda ctx: ctx.enforcing_config), tollhouse=True),
    TargetSpec("tollhouse-enforcing-redis", "as tollhouse-enforcing, counters on a private Redis (one process: "
               "the like-for-like base for --workers 2)",
               _tollhouse("tollhouse-enforcing-redis", lambda ctx: ctx.enforcing_config, redis=True), tollhouse=True),
    TargetSpec("tollhouse-enforcing-workers2", "as tollhouse-enforcing with --workers 2, counters on a private Redis",
               _tollhouse("tollhouse-enforcing-workers2", lambda ctx: ctx.enforcing_config, ("--workers", "2"),
                          redis=True), tollhouse=True, available=_workers_missing),
)}


# --------------------------------------------------------------------------- request pools


def mixed_requests(config: Json, users: Sequence[str], seed: int = 7) -> list[tuple[Json, str]]:
    """(body, user) per person: a model the enforcing policy allows that person with no violation (judged
    offline, as the gateway will), streaming for about a quarter of them."""
    rng = random.Random(seed)
    settings = parse_settings(gateway_config(1, config), "suite mixed workload")
    policy = CompiledPolicy(parse_rules(list(settings.policy.rules), settings.policy.timezone))
    directory = Directory(settings.directory)
    now = datetime.datetime.now(datetime.UTC)
    out = []
    for user in users:
        subject = directory.subject(user)
        allowed = [m for m in MIXED_MODELS if (d := policy.evaluate(CallFacts(provider="openai", provider_host=HOST,
                                                                              model=m), subject, now)).action
                   == "allow" and not d.violations]
        body = {**CHAT_BODY, "model": rng.choice(allowed or [CHAT_BODY["model"]])}
        if rng.random() < MIXED_STREAM_SHARE:
            body["stream"] = True
        out.append((body, user))
    return out


def user_pool(target: Target, body: Json, users: Sequence[str]) -> list[bytes]:
    return [request_bytes(target, body, {USER_HEADER: u}) for u in users]


def write_raw_pool_script(path: Path, requests: Sequence[bytes]) -> Path:
    """A wrk script that sends raw requests picked at random from `requests`."""
    items = ",\n".join("  " + json.dumps(r.decode("ascii")) for r in requests)
    path.write_text(f"local pool = {{\n{items}\n}}\n"
                    "local threads = 0\n"
                    "function setup(thread) threads = threads + 1; thread:set('tid', threads) end\n"
                    "function init(args) math.randomseed(7919 * (tid or 1)) end\n"
                    "function request() return pool[math.random(#pool)] end\n")
    return path


# --------------------------------------------------------------------------- scenarios


@dataclass
class Bench:
    plan: Plan
    wrk: str
    ctx: Ctx
    direct: Target
    mixed: list[tuple[Json, str]]


def scenario_c1(b: Bench, r: Running) -> Json:
    targets = [b.direct] if r.target.name == "direct" else [b.direct, r.target]
    pools = {t.name: user_pool(t, CHAT_BODY, b.ctx.users) for t in targets}
    runs = run_interleaved(targets, pools, b.plan.latency_warmup, b.plan.latency_n)
    out = {"direct": latency_summary(runs["direct"]), "target": latency_summary(runs[targets[-1].name])}
    for p in ("p50", "p90", "p99"):
        out[f"{p}_added_ms"] = round(out["target"][f"{p}_ms"] - out["direct"][f"{p}_ms"], 3)
    return out


def _wrk_with_cpu(b: Bench, r: Running, script: Path) -> Json:
    """wrk's figures, plus the CPU the target used per request and what the whole machine (target, wrk,
    upstream, Redis: everything) used per request and how busy it was."""
    pids = r.pids()
    before = {pid: cpu_seconds(pid) for pid in pids}
    busy0, total0 = cpu_jiffies()
    result = run_wrk(b.wrk, r.target, script, b.plan.load_seconds)
    busy1, total1 = cpu_jiffies()
    result.pop("raw", None)
    cpu = sum(cpu_seconds(pid) - before[pid] for pid in pids)
    requests = int(result.get("requests") or 0)
    result["target_cpu_ms_per_request"] = round(cpu * 1000 / requests, 4) if pids and requests else None
    ticks = os.sysconf("SC_CLK_TCK")
    result["machine_cpu_ms_per_request"] = round((busy1 - busy0) / ticks * 1000 / requests, 4) if requests else None
    result["machine_busy_pct"] = round(100.0 * (busy1 - busy0) / max(1, total1 - total0), 1)
    return result


def scenario_c32(b: Bench, r: Running) -> Json:
    script = write_wrk_script(b.ctx.work / f"c32-{r.target.name}.lua", CHAT_BODY, b.ctx.users)
    return _wrk_with_cpu(b, r, script)


def scenario_mixed(b: Bench, r: Running) -> Json:
    pool = [request_bytes(r.target, body, {USER_HEADER: user}) for body, user in b.mixed]
    script = write_raw_pool_script(b.ctx.work / f"mixed-{r.target.name}.lua", pool)
    return {**_wrk_with_cpu(b, r, script),
            "models": sorted({body["model"] for body, _ in b.mixed}),
            "stream_share": round(sum(1 for body, _ in b.mixed if body.get("stream")) / len(b.mixed), 3)}


def scenario_stream(b: Bench, r: Running) -> Json:
    targets = [b.direct] if r.target.name == "direct" else [b.direct, r.target]
    pools = {t.name: user_pool(t, STREAM_BODY, b.ctx.users) for t in targets}
    runs = run_interleaved(targets, pools, b.plan.stream_warmup, b.plan.stream_n)
    out = {"direct": stream_summary(runs["direct"]), "target": stream_summary(runs[targets[-1].name])}
    for part in ("ttfb", "total"):
        for p in ("p50", "p99"):
            out[f"{part}_{p}_added_ms"] = round(out["target"][part][f"{p}_ms"] - out["direct"][part][f"{p}_ms"], 3)
    return out


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response (Content-Length or chunked body); return its status."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
    status = int(head.split(" ", 2)[1])
    if "transfer-encoding: chunked" in head:
        while size := int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16):
            await reader.readexactly(size + 2)
        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then the blank line
            pass
    else:
        length = next((int(line.split(":", 1)[1]) for line in head.split("\r\n") if line.startswith(
            "content-length:")), 0)
        await reader.readexactly(length)
    return status


async def _paced_worker(target: Target, pool: list[bytes], offset: float, interval: float, deadline: float,
                        tally: Json) -> None:
    """One connection sending at t0 + offset + k * interval (open loop; if it falls behind it sends at once)."""
    rng = random.Random(offset)
    reader, writer = await asyncio.open_connection(HOST, target.port)
    next_at = time.perf_counter() + offset
    try:
        while next_at < deadline:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            next_at += interval
            try:
                writer.write(pool[rng.randrange(len(pool))])
                status = await asyncio.wait_for(read_response(reader), 30)
            except (OSError, ValueError, asyncio.IncompleteReadError, TimeoutError):
                tally["errors"] += 1
                writer.close()
                reader, writer = await asyncio.open_connection(HOST, target.port)
                continue
            tally["requests"] += 1
            if not 200 <= status < 300:
                tally["non_2xx"] += 1
    finally:
        writer.close()


async def _soak(b: Bench, r: Running) -> Json:
    plan = b.plan
    pool = user_pool(r.target, CHAT_BODY, b.ctx.users)
    tally: Json = {"requests": 0, "non_2xx": 0, "errors": 0}
    start = time.perf_counter()
    deadline = start + plan.soak_seconds
    interval = SOAK_CONNECTIONS / plan.soak_rate
    workers = asyncio.gather(*(_paced_worker(r.target, pool, i * interval / SOAK_CONNECTIONS, interval, deadline,
                                             tally) for i in range(SOAK_CONNECTIONS)))
    series: dict[int, list[tuple[float, float]]] = {}
    while not workers.done():
        now = time.perf_counter() - start
        for pid in r.pids():
            mb = rss_mb(pid)
            if mb is not None:
                series.setdefault(pid, []).append((round(now, 1), round(mb, 1)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(workers), plan.rss_every_s)
    await workers
    elapsed = time.perf_counter() - start
    processes = [{"pid": process_label(pid), **rss_growth(samples), "series": samples}
                 for pid, samples in series.items()]
    grew = [p["grew_mb"] for p in processes if p["grew_mb"] is not None]
    return {**tally, "seconds": round(elapsed, 1), "rate_target": plan.soak_rate,
            "rate_achieved": round(tally["requests"] / elapsed, 1), "processes": processes,
            "grew_mb": round(sum(grew), 1) if grew else None,
            "max_rss_mb": max((p["max_mb"] for p in processes), default=None),
            "flat": all(p["flat"] for p in processes) if processes else None}


def scenario_soak(b: Bench, r: Running) -> Json | None:
    if not r.services:
        return None  # direct: no process of its own
    print(f"    soak {b.plan.soak_seconds} s at {b.plan.soak_rate:g} req/s", flush=True)
    return asyncio.run(_soak(b, r))


SCENARIO_RUNNERS: dict[str, Callable[[Bench, Running], Json | None]] = {
    "c1": scenario_c1, "c32": scenario_c32, "stream": scenario_stream, "mixed": scenario_mixed,
    "soak": scenario_soak}


# --------------------------------------------------------------------------- Tollhouse checks


def budget_exact_probe(r: Running, user: str, n: int = 100) -> Json:
    """`n` calls for one person, each on a new connection (so they spread over the workers); then the
    person's budget counter must have grown by exactly the spend the store recorded for those calls."""
    assert r.admin_base is not None

    def snapshot() -> tuple[int, float, float]:
        _, body = admin_get(r.admin_base or "", f"/api/v1/spend?scope=person&id={user}&window=month")
        used = sum(c["used"] for c in body.get("caps") or [] if c["rule_id"] == BUDGET_RULES[0]["id"])
        return int(body.get("requests") or 0), float(body.get("spend_usd") or 0.0), float(used)

    before = snapshot()
    request = request_bytes(r.target, CHAT_BODY, {USER_HEADER: user})
    statuses = [run_interleaved([r.target], {r.target.name: [request]}, 0, 1)[r.target.name][0].status
                for _ in range(n)]
    deadline = time.monotonic() + 15
    while True:
        after = snapshot()
        if after[0] - before[0] >= n or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    d_req, d_spend, d_used = (a - b for a, b in zip(after, before, strict=True))
    exact = d_req == n and abs(d_spend - d_used) <= 1e-9 * max(1.0, abs(d_spend)) and d_spend > 0
    return {"user": user, "calls": n, "ok_answers": sum(1 for s in statuses if s == 200),
            "recorded_requests": d_req, "recorded_spend_usd": round(d_spend, 9),
            "budget_counter_usd": round(d_used, 9), "exact": exact}


def tollhouse_checks(r: Running, enforcing: bool, users: Sequence[str]) -> Json:
    assert r.admin_base is not None
    _, decisions, health = settled_counts(r.admin_base, timeout_s=3.0 if len(r.pids()) > 1 else 15.0)
    out: Json = {"calls_by_decision": decisions, "events_written": health.get("events_written"),
                 "events_pending": health.get("events_pending")}
    if enforcing:
        out["budget_probe"] = budget_exact_probe(r, users[0])
    return out


# --------------------------------------------------------------------------- micro benchmarks


def run_micro(quick: bool, work: Path) -> Json:
    out: Json = {}
    for name, script, result in (("policy", "bench_policy.py", "policy-decision.json"),
                                 ("ledger", "bench_ledger.py", "ledger.json")):
        argv = [sys.executable, str(HERE / script), "--out", str(work / name), *(["--quick"] if quick else [])]
        print(f"  micro: {' '.join(argv[1:])}", flush=True)
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False)
        path = work / name / result
        if proc.returncode != 0 and not path.exists():
            out[name] = {"error": (proc.stderr or proc.stdout)[-2000:]}
            continue
        data = json.loads(path.read_text())
        if name == "policy":
            out[name] = [{"rules": r["rules"], "warm_p50_us": r["warm"]["p50_us"], "warm_p99_us": r["warm"]["p99_us"],
                          "cold_p50_us": r["cold"]["p50_us"]} for r in data["results"]]
        else:
            rows = [{"backend": r["backend"], "variant": r["name"], "p50_us": r["p50_us"], "p99_us": r["p99_us"]}
                    for r in data["reserve_settle"]]
            overspend = [x.get("overspend_usd", 0.0) for key in ("concurrency", "concurrency_redis")
                         for x in (data.get(key) or {}).get("rounds", [])]
            out[name] = {"reserve_settle": rows, "concurrency_max_overspend_usd": max(overspend, default=None),
                         "problems": data.get("problems")}
    return out


# --------------------------------------------------------------------------- run


def run_target(b: Bench, spec: TargetSpec, scenarios: Sequence[str]) -> Json:
    why = spec.available()
    if why is not None:
        print(f"target {spec.name}: not available ({why})", flush=True)
        return {"name": spec.name, "description": spec.description, "available": False, "reason": why}
    print(f"target {spec.name}: {spec.description}", flush=True)
    with contextlib.ExitStack() as stack:
        b.ctx.stack = stack
        started = time.perf_counter()
        r = spec.start(b.ctx, free_port())
        for s in r.services:
            stack.callback(stop_service, s)
        out: Json = {"name": spec.name, "description": spec.description, "available": True,
                     "startup_s": round(time.perf_counter() - started, 2), "notes": r.notes,
                     "processes": [process_label(p) for p in r.pids()],
                     "loadavg_before": round(os.getloadavg()[0], 2), "scenarios": {}}
        for name in scenarios:
            if name not in SCENARIO_RUNNERS:
                continue
            print(f"  {name}", flush=True)
            out["scenarios"][name] = SCENARIO_RUNNERS[name](b, r)
            r.check_alive()
        if spec.tollhouse:
            out["checks"] = tollhouse_checks(r, spec.name != "tollhouse-observe", b.ctx.users)
        out["rss_after_mb"] = {process_label(p): rss_mb(p) for p in r.pids()}
    return out


def figures(results: Json) -> Json:
    """Per target, the figures the report's tables and the issue-8 verdicts use."""
    out: Json = {}
    for t in results["targets"]:
        if not t.get("available"):
            continue
        s = t["scenarios"]
        out[t["name"]] = {
            "c1_p50_added_ms": (s.get("c1") or {}).get("p50_added_ms"),
            "c1_p99_added_ms": (s.get("c1") or {}).get("p99_added_ms"),
            "c32_rps": (s.get("c32") or {}).get("requests_per_s"),
            "c32_machine_cpu_ms": (s.get("c32") or {}).get("machine_cpu_ms_per_request"),
            "c32_machine_busy_pct": (s.get("c32") or {}).get("machine_busy_pct"),
            "mixed_rps": (s.get("mixed") or {}).get("requests_per_s"),
            "ttfb_p50_added_ms": (s.get("stream") or {}).get("ttfb_p50_added_ms"),
            "soak_max_rss_mb": (s.get("soak") or {}).get("max_rss_mb"),
            "soak_grew_mb": (s.get("soak") or {}).get("grew_mb"),
            "soak_flat": (s.get("soak") or {}).get("flat"),
        }
    return out


def issue8_verdicts(results: Json) -> list[Json]:
    f = results["figures"]
    enf, lit, floor, w2, w1 = (f.get(n, {}) for n in ("tollhouse-enforcing", "litellm", "floor",
                                                        "tollhouse-enforcing-workers2", "tollhouse-enforcing-redis"))
    w2_target = next((t for t in results["targets"] if t["name"] == "tollhouse-enforcing-workers2"), {})
    probe = (w2_target.get("checks") or {}).get("budget_probe")
    out = [
        verdict("enforcing c=32 throughput / LiteLLM", ratio(enf.get("c32_rps"), lit.get("c32_rps")), 25, True, "×"),
        verdict("enforcing c=32 throughput / aiohttp floor", ratio(enf.get("c32_rps"), floor.get("c32_rps")), 0.7,
                True, "×"),
        verdict("enforcing c=1 p50 added", enf.get("c1_p50_added_ms"), 0.5, False, " ms"),
        verdict("enforcing c=1 p99 added", enf.get("c1_p99_added_ms"), 2.0, False, " ms"),
        verdict("enforcing stream TTFB p50 added", enf.get("ttfb_p50_added_ms"), 1.0, False, " ms"),
        verdict("workers 2 / 1 throughput (c=32), both on Redis counters", ratio(w2.get("c32_rps"), w1.get("c32_rps")),
                1.6, True, "×"),
        verdict("workers 2 (Redis counters) / 1 (embedded counters) throughput (c=32)",
                ratio(w2.get("c32_rps"), enf.get("c32_rps")), 1.6, True, "×"),
    ]
    exact = {"target": "workers 2: budgets exact (shared counters)", "value": None, "limit": None,
             "pass": None if probe is None else bool(probe["exact"]),
             "shown": "not measured" if probe is None else
             f"{probe['recorded_requests']}/{probe['calls']} recorded, spend ${probe['recorded_spend_usd']:.9f} vs "
             f"counter ${probe['budget_counter_usd']:.9f}"}
    out.append(exact)
    for name in ("tollhouse-enforcing", "tollhouse-enforcing-workers2"):
        target = next((t for t in results["targets"] if t["name"] == name and t.get("available")), None)
        soak = (target or {}).get("scenarios", {}).get("soak")
        per_proc = max((p["max_mb"] for p in (soak or {}).get("processes", []) if p["max_mb"]), default=None)
        out.append(verdict(f"{name}: max RSS per process over the soak", per_proc, RSS_LIMIT_MB, False, " MB"))
        flat = None if soak is None else soak.get("flat")
        out.append({"target": f"{name}: RSS flat over the soak", "value": None if soak is None else soak["grew_mb"],
                    "limit": None, "pass": flat,
                    "shown": "not measured" if soak is None else f"grew by {soak['grew_mb']} MB (all processes)"})
    return out


def run_suite(args: argparse.Namespace, plan: Plan, specs: list[TargetSpec], scenarios: list[str]) -> Json:
    wrk = shutil.which("wrk")
    assert wrk is not None
    before = background_load()
    print(f"background load before: {before}", flush=True)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="tollhouse-suite-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        upstream_port = free_port()
        upstream = start_upstream(work, upstream_port)
        stack.callback(stop_service, upstream)
        print(f"upstream nginx on :{upstream_port}", flush=True)
        enforcing = build_scenarios(["rules-1000+budget"], datetime.datetime.now(datetime.UTC))[0]
        ctx = Ctx(work, upstream_port, enforcing.users, enforcing.config, stack)
        bench = Bench(plan, wrk, ctx, Target("direct", upstream_port, "/v1/chat/completions"),
                      mixed_requests(enforcing.config, enforcing.users))
        targets = [run_target(bench, spec, scenarios) for spec in specs]
        upstream.check_alive()
        micro = run_micro(args.quick, work) if "micro" in scenarios else None
    results: Json = {
        "benchmark": "suite",
        "command": " ".join(["python", "benchmarks/suite.py", *sys.argv[1:]]),
        "quick": args.quick,
        "plan": dataclasses.asdict(plan),
        "scenarios": scenarios,
        "machine": {**machine_info(wrk), "nginx": _version(["/usr/sbin/nginx", "-v"]),
                    "litellm": LITELLM_VERSION if any(s.name == "litellm" for s in specs) else None,
                    "redis": _version(["redis-server", "--version"])},
        "background_load": {"before": before, "after_loadavg_1m": round(os.getloadavg()[0], 2)},
        "elapsed_s": round(time.time() - started, 1),
        "targets": targets,
        "micro": micro,
    }
    results["figures"] = figures(results)
    results["issue8"] = issue8_verdicts(results)
    return results


def _version(argv: list[str]) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        return (proc.stdout + proc.stderr).strip().splitlines()[0]
    return None


# --------------------------------------------------------------------------- report


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    return f"{v:+.{digits}f}" if isinstance(v, float) and digits == 3 else f"{v:.{digits}f}"


def _cell(v: Any, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _ceiling(s: Json) -> float | None:
    per = s.get("machine_cpu_ms_per_request")
    return (os.cpu_count() or 1) * 1000 / per if per else None


def report(results: Json) -> str:
    m, bg = results["machine"], results["background_load"]
    lines = ["# Benchmark suite: Tollhouse side by side with its peers", "",
             f"Command: `{results['command']}` ({'quick' if results['quick'] else 'full'} run, "
             f"{results['elapsed_s']:.0f} s).", "",
             f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), kernel {m['kernel']}; Python {m['python']}, tollhouse "
             f"{m['tollhouse']} ({m['git_commit']}), aiohttp {m['aiohttp']}, uvloop {m['uvloop']}, {m['nginx']}, "
             f"LiteLLM {m['litellm']}, {m['redis']}, {m['wrk']}. Background load: {bg['before'].get('cpu_busy_pct')} "
             f"% CPU busy and load average {bg['before']['loadavg_1m']} before, {bg['after_loadavg_1m']} after. "
             "**Client (wrk / Python), upstream nginx and the target all share these CPUs** (and other engineers' "
             "test runs share the machine).", "",
             "## Issue 8 targets", "", "| target | result | pass |", "|---|---|---|"]
    for v in results["issue8"]:
        mark = "n/a" if v["pass"] is None else "**pass**" if v["pass"] else "**FAIL**"
        lines.append(f"| {v['target']} | {v['shown']} | {mark} |")
    targets = [t for t in results["targets"] if t.get("available")]
    missing = [t for t in results["targets"] if not t.get("available")]
    lines += ["", "## Targets", ""] + [f"- `{t['name']}`: {t['description']} (ready in {t['startup_s']} s; "
                                      f"load average {t['loadavg_before']} before)" for t in targets]
    lines += [f"- `{t['name']}`: **not available**: {t['reason']}" for t in missing]

    def table(title: str, key: str, header: str, row: Callable[[Json], str], notes: str) -> None:
        rows = [f"| {t['name']} | {row(t['scenarios'][key])} |" for t in targets if t["scenarios"].get(key)]
        if rows:
            lines.extend(["", f"## {title}", "", notes, "", header, "|---" + "|---:" * (header.count("|") - 2) + "|",
                          *rows])

    plan = results["plan"]
    table("Non-stream chat, concurrency 1", "c1",
          "| target | direct p50 ms | p50 ms | p90 ms | p99 ms | p50 added | p90 added | p99 added | non-2xx |",
          lambda s: " | ".join([_cell(s["direct"]["p50_ms"], 3), _cell(s["target"]["p50_ms"], 3),
                                _cell(s["target"]["p90_ms"], 3), _cell(s["target"]["p99_ms"], 3),
                                _f(s["p50_added_ms"]), _f(s["p90_added_ms"]), _f(s["p99_added_ms"]),
                                str(s["target"]["non_2xx"])]),
          f"{plan['latency_n']} requests after {plan['latency_warmup']} warm-up, one at a time, alternating with "
          "direct on keep-alive raw sockets (each request names one of the 1,000 people); added = target - direct "
          "of the same run, in ms.")
    table(f"Non-stream chat, concurrency {CONCURRENCY}", "c32",
          "| target | req/s | p50 ms | p90 ms | p99 ms | errors | target CPU ms/req | machine CPU ms/req | "
          "machine busy | ceiling req/s |",
          lambda s: " | ".join([f"{s['requests_per_s']:.0f}", _cell(s.get("p50_ms")), _cell(s.get("p90_ms")),
                                _cell(s.get("p99_ms")), str(s["errors"]),
                                _cell(s.get("target_cpu_ms_per_request"), 3),
                                _cell(s.get("machine_cpu_ms_per_request"), 3),
                                f"{_cell(s.get('machine_busy_pct'), 0)} %", _cell(_ceiling(s), 0)]),
          f"`wrk -t{WRK_THREADS} -c{CONCURRENCY} -d{plan['load_seconds']}s --latency`, requests picked from a pool "
          "of one per person; target CPU = user+system of every process of the target per completed request; "
          "machine CPU = all CPU time spent on the machine (target, wrk, the upstream, Redis) per request; "
          f"ceiling = {os.cpu_count()} CPUs / machine CPU per request: the most this machine could serve at that "
          "cost per call with every CPU busy, whatever the number of gateway processes.")
    table("Streaming chat", "stream",
          "| target | TTFB p50 ms | TTFB p99 ms | TTFB p50 added | TTFB p99 added | total p50 added | non-2xx |",
          lambda s: " | ".join([_cell(s["target"]["ttfb"]["p50_ms"], 3), _cell(s["target"]["ttfb"]["p99_ms"], 3),
                                _f(s["ttfb_p50_added_ms"]), _f(s["ttfb_p99_added_ms"]), _f(s["total_p50_added_ms"]),
                                str(s["target"]["non_2xx"])]),
          f"`\"stream\": true`, {plan['stream_n']} requests after {plan['stream_warmup']} warm-up, alternating with "
          "direct; the upstream answers a canned SSE (5 chunks, a usage chunk, [DONE]) in one write, so total ≈ "
          "TTFB for direct. TTFB = send to the first body byte.")
    table("Mixed workload", "mixed",
          "| target | req/s | p50 ms | p99 ms | errors (incl. non-2xx) | target CPU ms/req |",
          lambda s: " | ".join([f"{s['requests_per_s']:.0f}", _cell(s.get("p50_ms")), _cell(s.get("p99_ms")),
                                str(s["errors"]), _cell(s.get("target_cpu_ms_per_request"), 3)]),
          "wrk c=32 over a pool of one request per person (1,000 people in 50 teams, `X-Tollhouse-User`), models "
          f"{', '.join(MIXED_MODELS)} (each person gets one the enforcing policy allows them), "
          f"{MIXED_STREAM_SHARE:.0%} streaming; the same requests for every target.")
    table("Soak", "soak", "| target | seconds | req/s (target) | requests | errors + non-2xx | max RSS MB "
          "(process) | RSS start → end MB | grew by | flat |",
          lambda s: " | ".join([f"{s['seconds']:.0f}", f"{s['rate_achieved']:.0f} ({s['rate_target']:g})",
                                str(s["requests"]), str(s["errors"] + s["non_2xx"]),
                                _cell(s["max_rss_mb"], 1),
                                "; ".join(f"{p['start_mb']} → {p['end_mb']}" for p in s["processes"]),
                                f"{s['grew_mb']} MB", "yes" if s["flat"] else "**no**"]),
          (f"**Soak shortened to {plan['soak_seconds']} s** (`--soak-seconds`; the default is {FULL.soak_seconds} s). "
           if plan["soak_seconds"] < FULL.soak_seconds else "")
          + f"{SOAK_CONNECTIONS} keep-alive connections sending at a constant total rate; RSS (VmRSS) of every process "
          f"of the target sampled every {plan['rss_every_s']:g} s; start = median of the first 3 samples after the "
          "first tenth of the soak, end = median of the last 3; flat = grew by ≤ max(5 MB, 5 %). 'grew by' sums the "
          "processes.")
    for t in targets:
        checks = t.get("checks")
        if checks:
            scope = " (/metrics and /healthz of the one worker that answered)" if "workers" in t["name"] else ""
            lines.append(f"- `{t['name']}` recorded{scope}: calls by decision {checks['calls_by_decision']}, "
                         f"events written {checks['events_written']}, pending {checks['events_pending']}"
                         + (f"; budget probe {checks['budget_probe']}" if checks.get("budget_probe") else "") + ".")
    micro = results.get("micro")
    if micro:
        lines += ["", "## Micro benchmarks", ""]
        policy = micro.get("policy")
        if isinstance(policy, list):
            lines += ["Policy decision alone (`bench_policy.py`): " + "; ".join(
                f"{r['rules']:,} rules warm p50 {r['warm_p50_us']:.1f} µs (p99 {r['warm_p99_us']:.1f}), cold p50 "
                f"{r['cold_p50_us']:.1f} µs" for r in policy) + "."]
        ledger = micro.get("ledger")
        if isinstance(ledger, dict) and "reserve_settle" in ledger:
            lines += ["", "Ledger reserve + settle (`bench_ledger.py`): " + "; ".join(
                f"{r['backend']} {r['variant']} p50 {r['p50_us']:.1f} µs / p99 {r['p99_us']:.1f} µs"
                for r in ledger["reserve_settle"]) + f"; concurrent burst vs a budget: max overspend "
                f"${ledger['concurrency_max_overspend_usd']}."]
        for name, value in micro.items():
            if isinstance(value, dict) and "error" in value:
                lines.append(f"- {name}: failed: `{value['error'][-300:]}`")
        lines.append(f"({'--quick' if results['quick'] else 'default'} options of those scripts.)")
    return "\n".join(lines) + "\n"


def write_plot(json_path: Path, png_path: Path) -> str:
    """suite.png via suite_plot.py, with matplotlib from this interpreter or a cache venv."""
    try:
        import matplotlib  # noqa: F401

        python = sys.executable
    except ImportError:
        python = str(ensure_venv("plot", ["matplotlib"], "python") / "python")
        if subprocess.run([python, "-c", "import matplotlib"], check=False, capture_output=True).returncode:
            _run([str(Path(python).with_name("pip")), "install", "-q", "matplotlib"])
    proc = subprocess.run([python, str(HERE / "suite_plot.py"), str(json_path), str(png_path)], capture_output=True,
                          text=True, check=False)
    return "ok" if proc.returncode == 0 else f"plot failed: {proc.stderr[-500:]}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, seconds per scenario (a smoke test)")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, of {', '.join(TARGETS)}")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    parser.add_argument("--soak-seconds", type=int, default=None, help="soak length (default 600, quick 10)")
    parser.add_argument("--soak-rate", type=float, default=None, help="soak requests/s (default 100, quick 50)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for suite.{md,json,png}")
    parser.add_argument("--baseline", default=None, metavar="REV",
                        help="also run the tollhouse targets from git revision REV (as baseline-observe, "
                             "baseline-enforcing, ...), each right after its counterpart, in the same run")
    return parser.parse_args(argv)


def add_baseline(rev: str, names: list[str], stack: contextlib.ExitStack) -> list[str]:
    """Check REV out into a temporary worktree and add a `baseline-*` target after each tollhouse target."""
    tree = Path(tempfile.mkdtemp(prefix="tollhouse-baseline-"))
    subprocess.run(["git", "-C", str(HERE.parent), "worktree", "add", "--detach", str(tree), rev], check=True,
                   capture_output=True)
    stack.callback(lambda: subprocess.run(["git", "-C", str(HERE.parent), "worktree", "remove", "--force",
                                           str(tree)], check=False, capture_output=True))
    commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], check=True,
                            capture_output=True, text=True).stdout.strip()
    out: list[str] = []
    for name in names:
        out.append(name)
        spec = TARGETS[name]
        if not spec.tollhouse or not name.startswith("tollhouse-"):
            continue
        twin = "baseline-" + name.removeprefix("tollhouse-")
        redis = name.startswith("tollhouse-enforcing-")
        extra = (lambda ctx: {}) if name == "tollhouse-observe" else (lambda ctx: ctx.enforcing_config)
        args = ("--workers", "2") if name.endswith("workers2") else ()
        TARGETS[twin] = TargetSpec(twin, f"{spec.description}, from commit {commit} ({rev})",
                                   _tollhouse(twin, extra, args, redis=redis, src=tree / "src"), tollhouse=True)
        out.append(twin)
    return out


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    plan = QUICK if args.quick else FULL
    plan = dataclasses.replace(plan, soak_seconds=args.soak_seconds or plan.soak_seconds,
                               soak_rate=args.soak_rate or plan.soak_rate)
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    scenarios = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS] + [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown target(s) or scenario(s): {', '.join(unknown)}")
    if "direct" in names:
        names.remove("direct")
    names.insert(0, "direct")  # the baseline is always measured (and first)
    ensure_debian_tools(need_redis=any(n.startswith("tollhouse-enforcing-") for n in names))
    with contextlib.ExitStack() as stack:
        if args.baseline:
            names = add_baseline(args.baseline, names, stack)
        results = run_suite(args, plan, [TARGETS[n] for n in names], scenarios)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = (args.out / f"suite.{ext}" for ext in ("json", "md", "png"))
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    md = report(results)
    md_path.write_text(md)
    print(md)
    print(f"wrote {md_path}, {json_path}; plot: {write_plot(json_path, png_path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

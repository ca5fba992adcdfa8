#!/usr/bin/env python3
"""Choosing the HTTP stack by measurement: bare pass-throughs (no parsing, no policy, no records) on each
candidate stack, against the suite's nginx upstream (a canned chat completion), one process each.

* ``aiohttp``: aiohttp server + aiohttp client (``floor_aiohttp.py``, the suite's Python floor);
* ``wire``: Tollhouse's own in-loop HTTP/1.1 layer, ``tollhouse.wire`` (``passthrough_wire.py``);
* ``granian``: Granian (RSGI, Rust I/O threads) + pyreqwest (Rust client threads), what Tollhouse ran on
  before (``passthrough_granian.py``; skipped when Granian is not installed).

For each round and stack: ``wrk -c32`` throughput with the CPU the pass-through used per request, and
``wrk -c1`` latency (p50 / p99, minus the same percentiles straight to the upstream in the same round).
Stacks alternate within a round; medians over rounds are reported.

    python benchmarks/bench_stack.py [--rounds 3] [--seconds 8]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_gateway import (
    CHAT_BODY,
    HOST,
    Target,
    cpu_seconds,
    free_port,
    machine_info,
    parse_wrk,
    start_service,
    stop_service,
    wait_ready,
    write_wrk_script,
)
from suite import ensure_debian_tools, process_tree, start_upstream

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
STACKS = {
    "aiohttp": ("aiohttp server + aiohttp client (floor_aiohttp.py)", "floor_aiohttp.py"),
    "wire": ("tollhouse.wire server + client, in the event loop (passthrough_wire.py)", "passthrough_wire.py"),
    "granian": ("Granian RSGI + pyreqwest, Rust I/O threads (passthrough_granian.py)", "passthrough_granian.py"),
}
Json = dict[str, Any]


def _wrk(wrk: str, url: str, script: Path, threads: int, connections: int, seconds: int) -> Json:
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    return parse_wrk(proc.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    ensure_debian_tools(need_redis=False)
    wrk = shutil.which("wrk")
    assert wrk is not None
    stacks = [s for s in STACKS if s != "granian" or importlib.util.find_spec("granian") is not None]
    runs: dict[str, list[Json]] = {s: [] for s in stacks}
    with tempfile.TemporaryDirectory(prefix="tollhouse-stack-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        up_port = free_port()
        upstream = start_upstream(work, up_port)
        stack.callback(stop_service, upstream)
        script = write_wrk_script(work / "chat.lua", CHAT_BODY, ())
        direct = Target("direct", up_port, "/v1/chat/completions")
        for rnd in range(args.rounds):
            for name in stacks:
                port = free_port()
                cmd = [sys.executable, str(HERE / STACKS[name][1]), "--port", str(port), "--upstream",
                       f"http://{HOST}:{up_port}"]
                service = start_service(f"{name}-{rnd}", cmd, dict(os.environ), work)
                try:
                    wait_ready(service, f"http://{HOST}:{port}/_ready")
                    target = Target(name, port, "/v1/chat/completions")
                    _wrk(wrk, target.url, script, 2, 32, 2)  # warm-up
                    pids = process_tree(service.proc.pid)
                    before = {pid: cpu_seconds(pid) for pid in pids}
                    c32 = _wrk(wrk, target.url, script, 2, 32, args.seconds)
                    cpu = sum(cpu_seconds(pid) - before[pid] for pid in pids)
                    base = _wrk(wrk, direct.url, script, 1, 1, max(2, args.seconds // 2))
                    c1 = _wrk(wrk, target.url, script, 1, 1, max(2, args.seconds // 2))
                finally:
                    stop_service(service)
                run = {"c32_rps": c32["requests_per_s"], "c32_errors": c32["errors"],
                       "cpu_ms_per_request": round(cpu * 1000 / max(1, c32.get("requests", 0)), 4),
                       "c1_p50_added_ms": round(c1["p50_ms"] - base["p50_ms"], 3),
                       "c1_p99_added_ms": round(c1["p99_ms"] - base["p99_ms"], 3)}
                runs[name].append(run)
                print(f"round {rnd + 1} {name:8s} {run}", flush=True)
    summary = {name: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for name, rs in runs.items()}
    results = {"when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "machine": machine_info(wrk),
               "rounds": args.rounds, "seconds": args.seconds, "stacks": {n: STACKS[n][0] for n in stacks},
               "summary": summary, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stack.json").write_text(json.dumps(results, indent=1))
    lines = ["# Choosing the HTTP stack: bare pass-throughs", "",
             f"`python benchmarks/bench_stack.py --rounds {args.rounds} --seconds {args.seconds}` "
             f"({results['when']}); medians of {args.rounds} rounds, stacks alternating within each round. nginx "
             "answers a canned chat completion; wrk, nginx and the pass-through share the machine's CPUs.", "",
             "| stack | c=32 req/s | CPU ms/req | c=1 p50 added ms | c=1 p99 added ms |", "|---|---:|---:|---:|---:|"]
    for name in stacks:
        s = summary[name]
        lines.append(f"| {STACKS[name][0]} | {s['c32_rps']:.0f} | {s['cpu_ms_per_request']:.3f} | "
                     f"{s['c1_p50_added_ms']:+.3f} | {s['c1_p99_added_ms']:+.3f} |")
    if "granian" not in stacks:
        lines += ["", "Granian is not installed here: `pip install granian` to measure it too."]
    (args.out / "stack.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

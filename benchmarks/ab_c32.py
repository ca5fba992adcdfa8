#!/usr/bin/env python3
"""Enforcing c=32 throughput of two source trees side by side, finely interleaved.

Both gateways run at once against one nginx upstream (the suite's canned completion, the suite's enforcing
config: 1,000 rules + personal budget + team token window, 1,000 people); wrk's c=32 load then alternates
between them in short windows (A B, B A, A B, ...), so a change in the machine's background load falls on
both alike. Per window pair it prints req/s of each and their ratio; at the end the ratio of the summed
requests, the median of the pair ratios and the gateways' CPU per request; then, for each gateway's event-loop
thread, how busy it was, how long it waited for a CPU, and its voluntary context switches per 1,000 requests (a
thread that blocks on the GIL switches voluntarily: that is how the store thread holding the GIL was found),
and every thread's CPU.

    PYTHONPATH=NEW/src python benchmarks/ab_c32.py --base-src BASE/src [--pairs 12] [--seconds 3]
                                                  [--scenario rules-1000+budget|observe|...]

(BASE/src: e.g. a worktree of the old commit: git worktree add --detach /tmp/old b841367.) Written because
the suite's c32 runs, target then baseline 10 s each, swing 0.6x-1.4x on this shared two-core machine.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench_gateway import (
    CHAT_BODY,
    Scenario,
    Target,
    build_scenarios,
    cpu_seconds,
    free_port,
    gateway_config,
    run_wrk,
    start_gateway,
    stop_service,
    write_wrk_script,
)
from suite import process_tree, start_upstream


@dataclass(frozen=True)
class SideBySide:
    """Two gateways up at once on one upstream: `new` (this tree's sources) and `base` (another tree's)."""

    work: Path
    direct: Target  # the upstream itself
    scenario: Scenario
    gateways: dict[str, Target]  # "new", "base"
    pids: dict[str, list[int]]  # each gateway's processes, the main one first


@contextlib.contextmanager
def side_by_side(base_src: Path, scenario_name: str) -> Iterator[SideBySide]:
    """The suite's nginx upstream and both gateways on the scenario's config, each in its own data dir; all stopped
    on the way out. (Shared by ab_c32.py and ab_c1.py.)"""
    with tempfile.TemporaryDirectory(prefix="tollhouse-ab-") as tmp:
        work = Path(tmp)
        up_port = free_port()
        upstream = start_upstream(work, up_port)
        services = []
        try:
            scenario = build_scenarios([scenario_name], datetime.datetime.now(datetime.UTC))[0]
            gateways: dict[str, Target] = {}
            pids: dict[str, list[int]] = {}
            for name, src in (("new", None), ("base", base_src)):
                port = free_port()
                service = start_gateway(port, gateway_config(up_port, scenario.config), work, name, src=src)
                services.append(service)
                gateways[name] = Target(name, port, "/openai/v1/chat/completions")
                pids[name] = process_tree(service.proc.pid)
            yield SideBySide(work, Target("direct", up_port, "/v1/chat/completions"), scenario, gateways, pids)
        finally:
            for service in services:
                stop_service(service)
            stop_service(upstream)


def thread_sched(pid: int) -> tuple[float, int, int]:
    """The main thread's seconds waiting for a CPU (schedstat run_delay) and its voluntary and involuntary
    context switches: a thread that blocks on the GIL or on I/O switches voluntarily."""
    try:
        run_delay = int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[1]) / 1e9
        status = Path(f"/proc/{pid}/task/{pid}/status").read_text().splitlines()
    except OSError:
        return 0.0, 0, 0
    counts = {line.split(":")[0]: int(line.split()[1]) for line in status if "ctxt_switches" in line}
    return run_delay, counts["voluntary_ctxt_switches"], counts["nonvoluntary_ctxt_switches"]


def thread_table(pid: int) -> str:
    """Each thread of a process with its name and CPU seconds so far, busiest first."""
    rows = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
        except OSError:
            continue  # the thread ended
        rows.append((cpu_seconds(pid, int(task.name)), name, task.name))
    rows.sort(reverse=True)
    return ", ".join(f"{name}[{tid}] {seconds:.1f}" for seconds, name, tid in rows)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-src", type=Path, required=True)
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--scenario", default="rules-1000+budget",
                        help="bench_gateway's scenario: rules-1000+budget (the suite's enforcing config), observe, ...")
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    assert wrk is not None
    with side_by_side(args.base_src, args.scenario) as both:
        targets, pids = both.gateways, both.pids
        script = write_wrk_script(both.work / "c32.lua", CHAT_BODY, both.scenario.users)
        for name in ("new", "base"):  # warm: every subject's counters loaded
            run_wrk(wrk, targets[name], script, 2)
        total = {"new": 0, "base": 0}
        cpu = {"new": 0.0, "base": 0.0}
        loop_cpu = {"new": 0.0, "base": 0.0}  # the gateway's main thread (the event loop) alone
        sched: dict[str, list[float]] = {"new": [0.0, 0, 0], "base": [0.0, 0, 0]}
        ratios = []
        for i in range(args.pairs):
            order = ("new", "base") if i % 2 == 0 else ("base", "new")
            rps = {}
            for name in order:
                before = sum(cpu_seconds(p) for p in pids[name])
                loop_before = cpu_seconds(pids[name][0], pids[name][0])  # the main thread: the event loop
                sched_before = thread_sched(pids[name][0])
                result = run_wrk(wrk, targets[name], script, args.seconds)
                cpu[name] += sum(cpu_seconds(p) for p in pids[name]) - before
                loop_cpu[name] += cpu_seconds(pids[name][0], pids[name][0]) - loop_before
                sched[name] = [a + b - c for a, b, c in zip(sched[name], thread_sched(pids[name][0]),
                                                            sched_before, strict=True)]
                n = int(result.get("requests") or 0)
                total[name] += n
                rps[name] = n / args.seconds
            ratios.append(rps["new"] / rps["base"])
            print(f"pair {i + 1:2d} ({order[0]} first): new {rps['new']:7.0f} req/s, base {rps['base']:7.0f} "
                  f"req/s, ratio {ratios[-1]:.3f}", flush=True)
        print(f"summed requests ratio {total['new'] / total['base']:.3f}; median pair ratio "
              f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}); CPU ms per request "
              f"new {cpu['new'] * 1000 / total['new']:.4f}, base {cpu['base'] * 1000 / total['base']:.4f} "
              f"(ratio {(cpu['new'] / total['new']) / (cpu['base'] / total['base']):.3f}); of which the event loop "
              f"thread new {loop_cpu['new'] * 1000 / total['new']:.4f}, "
              f"base {loop_cpu['base'] * 1000 / total['base']:.4f} "
              f"(ratio {(loop_cpu['new'] / total['new']) / (loop_cpu['base'] / total['base']):.3f})")
        wall = args.pairs * args.seconds
        print(f"event loop thread busy: new {loop_cpu['new'] / wall:.0%}, base {loop_cpu['base'] / wall:.0%} "
              f"of the load windows")
        for name in ("new", "base"):
            delay, voluntary, involuntary = sched[name]
            print(f"{name} event loop thread: waited for a CPU {delay / wall:.0%} of the windows; per 1000 "
                  f"requests {voluntary * 1000 / total[name]:.0f} voluntary and "
                  f"{involuntary * 1000 / total[name]:.0f} involuntary context switches")
        for name in ("new", "base"):
            print(f"{name} threads (CPU s since start): {thread_table(pids[name][0])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Added latency of two source trees side by side, one request at a time, finely interleaved.

Both gateways run at once against one nginx upstream (the suite's canned answers and its enforcing config:
1,000 rules + personal budget + team token window, 1,000 people). Each round sends one request to the upstream
directly, then the same request through each gateway, on one keep-alive connection each, so the machine's
background load falls on all three alike; after `--warmup` untimed rounds, `--requests` timed ones. It prints
the time to the first body byte (p50/p90/p99) of each and what each gateway adds to the direct figure.

    PYTHONPATH=NEW/src python benchmarks/ab_c1.py --base-src BASE/src [--body chat|stream]
                                                 [--warmup 2000] [--requests 5000] [--scenario rules-1000+budget]

Written because the suite's c1 and stream scenarios (200 and 20 warm-up requests, each target started on its
own) differ by ±15 % between sets of runs on this shared two-core machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ab_c32 import side_by_side
from bench_gateway import CHAT_BODY, STREAM_BODY, run_interleaved
from suite import user_pool


def _percentiles(ns: list[int]) -> tuple[float, float, float]:
    ms = sorted(n / 1e6 for n in ns)
    return ms[len(ms) // 2], ms[int(len(ms) * 0.9)], ms[int(len(ms) * 0.99)]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-src", type=Path, required=True)
    parser.add_argument("--body", choices=("chat", "stream"), default="chat")
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--scenario", default="rules-1000+budget")
    args = parser.parse_args()
    body = STREAM_BODY if args.body == "stream" else CHAT_BODY
    with side_by_side(args.base_src, args.scenario) as both:
        targets = [both.direct, both.gateways["new"], both.gateways["base"]]
        pools = {t.name: user_pool(t, body, both.scenario.users) for t in targets}
        runs = run_interleaved(targets, pools, args.warmup, args.requests)
    bad = {t.name: sum(1 for r in runs[t.name] if r.status != 200) for t in targets}
    direct = _percentiles([r.ttfb_ns for r in runs["direct"]])
    print(f"{args.body}, {args.scenario}, {args.requests} requests after {args.warmup} warm-up; time to the "
          f"first body byte, ms (non-200: {bad})")
    added: dict[str, tuple[float, ...]] = {}
    for t in targets:
        p = _percentiles([r.ttfb_ns for r in runs[t.name]])
        added[t.name] = tuple(a - d for a, d in zip(p, direct, strict=True))
        print(f"  {t.name:6s} p50 {p[0]:.3f} p90 {p[1]:.3f} p99 {p[2]:.3f}   added p50 {added[t.name][0]:+.3f} "
              f"p90 {added[t.name][1]:+.3f} p99 {added[t.name][2]:+.3f}")
    print(f"added p50 new/base {added['new'][0] / added['base'][0]:.3f}, "
          f"p90 {added['new'][1] / added['base'][1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Policy backtest benchmark: `tollhouse policy backtest` replaying 1,000,000 stored calls, SQLite and PostgreSQL.

A store is filled with N calls over the last 14 days (plus 50,000 in the 16 days before, which the simulated
monthly and 30-day counters start from): 500 people in 20 teams (two levels), four models on two providers, a
few calls refused and redirected by the policy in force. Then the real command runs, as an operator would:

    tollhouse policy backtest proposed.yaml --days 14 --json --config bench.yaml --until <when the store was filled>

in its own process, timed from start to exit (Python start-up and imports included), its peak RSS read from the
kernel (wait4 rusage). The proposed policy has every kind the replay simulates: an org monthly budget, team
budgets (counting everyone under the team), a per-person monthly cap, a per-person rolling token rate, a
BUDGET_CROSS_PROVIDER 30-day window, a model deny list, a redirect (re-priced at the substitute), a time window,
a CONTENT_DLP rule (not evaluable: no prompts stored) and a shadow rule; the ledger runs in Europe/Paris with
billing day 5. The same command over 1 day (about 1/14 of the calls) shows memory does not grow with the calls.

PostgreSQL 15 is started privately on loopback (initdb into a temp dir, fsync off, as the test suite does) and
filled with COPY.

Writes backtest.json and backtest.md to --out.

    python benchmarks/bench_backtest.py [--calls 1000000] [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gateway import background_load, free_port, machine_info
from tollhouse.events.model import COLUMNS, CallEvent
from tollhouse.events.pg_local import DEFAULT_BIN, LocalPostgres
from tollhouse.events.store import open_store

Json = dict[str, Any]
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
DAY_MS = 86_400_000
TARGET_S = 20.0
EARLIER = ("Earlier runs of this benchmark (1,000,000 calls; wall / CPU s): before the replay's shortcut and slot "
           "counters (commit 11d92c9, 2026-12-07 18:27) SQLite 44.98 / 29.07, PostgreSQL 43.36 / 32.64; with the "
           "first forward-only counter 42 / 36 and 38 / 34; with the embedded ledger's own Counter (commit 692abc0) "
           "62 / 41 and 84 / 42.")
PRE_WINDOW = 50_000
# (provider, model, nano-USD per input token, per output token)
MODELS = (("openai", "gpt-4o-mini", 150, 600), ("openai", "gpt-4o", 2500, 10000),
          ("anthropic", "claude-3-5-sonnet-20241022", 3000, 15000), ("openai", "o1", 15000, 60000))
PARENTS = ("eng", "sales", "ops", "research")
TEAMS = tuple(f"{p}-{i}" for p in PARENTS for i in range(4))  # 16 child teams under 4 parents: 20 teams
PEOPLE = 500

IN_FORCE = [
    {"id": "no-o1", "scope": "org", "condition": {"type": "MODEL_DENYLIST", "models": ["o1"]},
     "action": {"type": "block"}},
]
PROPOSED = [
    {"id": "org-month", "scope": "org", "condition": {"type": "budget", "threshold": 4000, "window": "monthly"},
     "action": {"type": "hard_stop"}},
    {"id": "team-month", "scope": "team", "condition": {"type": "budget", "threshold": 250, "window": "monthly"},
     "action": {"type": "hard_stop"}},
    {"id": "eng-month", "scope": "team", "team": "eng", "condition": {"type": "budget", "threshold": 2500},
     "action": {"type": "soft_cap"}},
    {"id": "person-month", "scope": "individual",
     "condition": {"type": "MONTHLY_SPEND_CAP_PER_SUBJECT", "provider": "openai", "threshold": 8},
     "action": {"type": "hard_stop"}},
    {"id": "person-tph", "scope": "individual",
     "condition": {"type": "usage", "metric": "tokens_per_hour", "threshold": 40000, "window": "1h"},
     "action": {"type": "hard_stop"}},
    {"id": "cross-30d", "scope": "team", "team": "research",
     "condition": {"type": "BUDGET_CROSS_PROVIDER", "providers": ["openai", "anthropic"], "threshold": 1500,
                   "window": "30d"}, "action": {"type": "block"}},
    {"id": "no-o1", "scope": "org", "condition": {"type": "MODEL_DENYLIST", "models": ["o1"]},
     "action": {"type": "block"}},
    {"id": "4o-to-mini", "scope": "team", "team": "sales",
     "condition": {"type": "model", "operator": "in", "models": ["gpt-4o"]},
     "action": {"type": "redirect", "model": "gpt-4o-mini"}},
    {"id": "office-hours", "scope": "team", "team": "ops",
     "condition": {"type": "time", "operator": "outside", "window": {"days": "mon-fri", "hours": "07:00-20:00"},
                   "timezone": "Europe/Paris"}, "severity": "WARN"},
    {"id": "no-keys", "scope": "org", "condition": {"type": "CONTENT_DLP", "detectors": ["aws_access_key"]},
     "action": {"type": "block"}},
    {"id": "try-no-sonnet", "scope": "org", "mode": "shadow",
     "condition": {"type": "MODEL_DENYLIST", "models": ["claude-3-5-sonnet-20241022"]}, "action": {"type": "block"}},
]


def directory() -> Json:
    teams = [{"id": p} for p in PARENTS] + [{"id": t, "parent": t.split("-")[0]} for t in TEAMS]
    people = [{"id": f"p{i:03d}", "team": TEAMS[i % len(TEAMS)]} for i in range(PEOPLE)]
    return {"org": "bench", "teams": teams, "people": people}


def config(store_url: str) -> Json:
    return {"store": {"url": store_url}, "admin_token": "bench-admin-token",
            "providers": {"openai": {"upstream": "https://api.openai.com"},
                          "anthropic": {"upstream": "https://api.anthropic.com"}},
            "ledger": {"timezone": "Europe/Paris", "billing_day": 5},
            "directory": directory(), "policy": {"rules": IN_FORCE}}


def calls(n: int, since_ms: int, until_ms: int, seed: int) -> Iterator[CallEvent]:
    """`n` calls spread over [since, until), in time order."""
    rng = random.Random(seed)
    step = (until_ms - since_ms) / n
    for i in range(n):
        ts = since_ms + int(i * step)
        who = rng.randrange(PEOPLE)
        team = TEAMS[who % len(TEAMS)]
        provider, model, rin, rout = MODELS[rng.choices((0, 1, 2, 3), (60, 25, 13, 2))[0]]
        inp, outp = rng.randint(50, 4000), rng.randint(10, 1500)
        decision, rule, sent, status = "allow", None, model, 200
        if model == "o1":
            decision, rule, status, inp, outp = "block", "no-o1", 403, 0, 0
        cost = None if decision == "block" else inp * rin + outp * rout
        yield CallEvent(f"bt-{seed}-{i}", ts, f"p{who:03d}", "employee", team, None, None, provider, "chat",
                        "/v1/chat/completions", True, sent, model, False, status, inp, outp, 0, 0, cost,
                        "response", decision, rule, None, 100.0, 50.0, False, None, "metered", None)


def fill_sqlite(url: str, data_dir: Path, events: Iterator[CallEvent]) -> None:
    store = open_store(url, data_dir)
    batch: list[CallEvent] = []
    for e in events:
        batch.append(e)
        if len(batch) == 20_000:
            store.insert_events(batch)
            batch = []
    if batch:
        store.insert_events(batch)
    store.db.execute("ANALYZE")
    store.close()


def fill_postgres(url: str, data_dir: Path, events: Iterator[CallEvent]) -> None:
    open_store(url, data_dir).close()  # the schema
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.cursor() as cur, cur.copy(f"COPY events ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for e in events:
                copy.write_row(e)
        conn.execute("VACUUM ANALYZE events")


def peak_rss_mb(cfg_path: Path, rules_path: Path, data_dir: Path, days: int, until_ms: int) -> tuple[Json, float]:
    """Run the command with its peak RSS measured (the child's rusage, via a wrapper that reports it)."""
    wrapper = ("import resource, subprocess, sys, time, json\n"
               "t = time.perf_counter(); p = subprocess.run(sys.argv[1:], capture_output=True)\n"
               "e = time.perf_counter() - t\n"
               "sys.stderr.write(p.stderr.decode())\n"
               "sys.stdout.write(json.dumps({'rc': p.returncode, 's': e, "
               "'rss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
               "'cpu_s': resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime "
               "+ resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime, 'out': p.stdout.decode()}))\n")
    argv = [sys.executable, "-c", wrapper, sys.executable, "-m", "tollhouse", "policy", "backtest", str(rules_path),
            "--days", str(days), "--json", "--config", str(cfg_path), "--data-dir", str(data_dir),
            "--until", datetime.fromtimestamp(until_ms / 1000, UTC).isoformat()]
    done = subprocess.run(argv, capture_output=True, env={**os.environ, "TOLLHOUSE_LOG_LEVEL": "warning"},
                          check=False)
    got = json.loads(done.stdout)
    if got["rc"] != 0:
        raise SystemExit(f"backtest failed ({got['rc']}): {done.stderr.decode()}")
    return ({"seconds": round(got["s"], 2), "cpu_seconds": round(got["cpu_s"], 2), "report": json.loads(got["out"])},
            round(got["rss_kb"] / 1024, 1))


def bench_backend(name: str, url: str, work: Path, n: int, now_ms: int) -> Json:
    data_dir = work / name
    data_dir.mkdir()
    since = now_ms - 14 * DAY_MS
    pre = calls(PRE_WINDOW, since - 16 * DAY_MS, since, seed=1)
    window = calls(n, since + 60_000, now_ms - 60_000, seed=2)
    t0 = time.perf_counter()

    def both() -> Iterator[CallEvent]:
        yield from pre
        yield from window

    (fill_sqlite if name == "sqlite" else fill_postgres)(url, data_dir, both())
    load_s = time.perf_counter() - t0
    cfg_path, rules_path = work / f"{name}.yaml", work / "proposed.yaml"
    cfg_path.write_text(yaml.safe_dump(config(url)))
    rules_path.write_text(yaml.safe_dump({"rules": PROPOSED}))
    full, rss = peak_rss_mb(cfg_path, rules_path, data_dir, 14, now_ms)
    one_day, rss_1d = peak_rss_mb(cfg_path, rules_path, data_dir, 1, now_ms)
    r = full["report"]
    return {"backend": name, "calls_stored": n + PRE_WINDOW, "load_s": round(load_s, 1),
            "replayed": r["calls"], "seconds": full["seconds"], "cpu_seconds": full["cpu_seconds"],
            "calls_per_s": round(r["calls"] / full["seconds"]), "peak_rss_mb": rss,
            "one_day": {"replayed": one_day["report"]["calls"], "seconds": one_day["seconds"],
                        "cpu_seconds": one_day["cpu_seconds"], "peak_rss_mb": rss_1d},
            "target_met": full["seconds"] <= TARGET_S, "report": {k: v for k, v in r.items() if k != "rules"},
            "rules": r["rules"]}


def markdown(results: Json) -> str:
    lines = ["# Policy backtest benchmark", "",
             "`tollhouse policy backtest proposed.yaml --days 14 --json` in its own process (start-up included), "
             f"over a store of {results['calls']:,} calls in the window plus {PRE_WINDOW:,} before it. "
             f"Target: {TARGET_S:g} s.", "",
             "| backend | calls replayed | seconds (wall) | CPU s | calls/s | peak RSS MB | 1 day: calls | 1 day: s "
             "| 1 day: peak RSS MB | target met (wall) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for b in results["backends"]:
        d = b["one_day"]
        lines.append(f"| {b['backend']} | {b['replayed']:,} | {b['seconds']} | {b['cpu_seconds']} | "
                     f"{b['calls_per_s']:,} | "
                     f"{b['peak_rss_mb']} | {d['replayed']:,} | {d['seconds']} | {d['peak_rss_mb']} | "
                     f"{'yes' if b['target_met'] else 'NO'} |")
    first = results["backends"][0]
    rep = first["report"]
    lines += ["", f"What the replay found ({first['backend']}; both backends agree: {results['agree']}): "
              f"{rep['changed']:,} calls decided differently from the policy in force "
              f"({', '.join(f'{k} {v:,}' for k, v in rep['changes'].items())}); "
              f"not evaluable (content rule, no prompt stored): {rep['not_evaluable']:,}.", "",
              "| rule | mode | block | warn | redirect | cost blocked USD | subjects | teams |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for t in first["rules"]:
        lines.append(f"| {t['id']} | {t['mode']} | {t['would_block']:,} | {t['would_warn']:,} | "
                     f"{t['would_redirect']:,} | {t['cost_usd_blocked']:,.2f} | {t['subjects_count']} | "
                     f"{t['teams_count']} |")
    m = results["machine"]
    lines += ["", "- Memory: the calls are streamed from the store a page (20,000 rows) at a time in (ts_ms, seq) "
              "order (on PostgreSQL a thread reads the next page while the replay works on one); the replay keeps "
              "only counters, tallies and per-shape caches of bounded size, so peak RSS over 14 days is about the "
              "same as over 1 day.",
              "- PostgreSQL: private server on 127.0.0.1, fsync off (the test suite's); SQLite: a file, WAL.",
              "", f"Run {m['date']}: tollhouse {m.get('tollhouse')} ({m.get('commit')}), Python {m['python']}, "
              f"{m['nproc']} CPUs ({m.get('cpu_model')}), shared with other work: before the run "
              f"{results['load_before']}, "
              f"after it {results['load_after']}. CPU s is the command's own user + system time: what it costs on an "
              "idle core; the wall time includes waiting for the CPU on this shared machine.", "", EARLIER, ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="100,000 calls")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    n = 100_000 if args.quick else args.calls
    load = background_load()
    load["loadavg_1m"] = os.getloadavg()[0]
    now_ms = int(time.time() * 1000)
    out: list[Json] = []
    with tempfile.TemporaryDirectory(prefix="tollhouse-bt-") as tmp:
        work = Path(tmp)
        for name in args.backends.split(","):
            if name == "sqlite":
                out.append(bench_backend(name, f"sqlite:///{work / 'bt.db'}", work, n, now_ms))
            else:
                pg = LocalPostgres(free_port(), Path(os.environ.get("TOLLHOUSE_PG_BIN") or DEFAULT_BIN))
                pg.start()
                try:
                    with psycopg.connect(pg.url, autocommit=True) as conn:
                        conn.execute("CREATE DATABASE bt")
                    out.append(bench_backend(name, pg.url_for("bt"), work, n, now_ms))
                finally:
                    pg.stop()
            print(json.dumps({k: v for k, v in out[-1].items() if k not in ("rules", "report")}), flush=True)
    agree = all(b["rules"] == out[0]["rules"] and b["report"]["changed"] == out[0]["report"]["changed"]
                for b in out)
    machine = machine_info(None)
    machine["commit"] = machine.get("commit") or os.environ.get("TOLLHOUSE_COMMIT")
    results = {"calls": n, "backends": out, "agree": agree, "machine": machine, "load_before": load,
               "load_after": {"loadavg_1m": round(os.getloadavg()[0], 2)}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "backtest.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "backtest.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()

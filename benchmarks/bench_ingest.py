#!/usr/bin/env python3
"""Store ingest benchmark: events per second through ``Store.insert_events``, on SQLite and PostgreSQL.

What the event writer and agent telemetry ingest do: batches of 500 call events (distinct ids, a
realistic mix of people, teams, providers and models), each batch one transaction. Per backend:

- **new**: N batches of new events into an empty store (each batch's returned count must be 500);
- **re-insert**: the same N batches sent again (an agent re-sending its spool after a lost answer):
  every row is a duplicate id, skipped by ``ON CONFLICT (id) DO NOTHING`` (returned count must be 0,
  and the table must still hold N x 500 rows).

Backends: SQLite (a file in a temp dir; WAL, ``synchronous=NORMAL``, as the gateway opens it) and
PostgreSQL 15 started privately on loopback (``initdb`` into a temp dir, as the test suite does), once
with fsync off (``-F``, as in the tests) and once with fsync on (durable commits). One connection, the
client on the same machine. Each batch is timed with ``time.perf_counter``.

Writes ``ingest.json`` and ``ingest.md`` to ``--out`` and prints the table.

    python benchmarks/bench_ingest.py [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench_gateway import background_load, free_port, machine_info, write_results
from tollhouse.events.model import CallEvent
from tollhouse.events.pg_local import DEFAULT_BIN, LocalPostgres
from tollhouse.events.store import Store, open_store

Json = dict[str, Any]
RESULT_NAME = "ingest"
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
BATCH = 500
BATCHES = 100
QUICK_BATCHES = 10
T0 = 1_767_225_600_000
MODELS = (("openai", "gpt-4o-mini"), ("openai", "gpt-4o"), ("anthropic", "claude-3-5-sonnet-20241022"),
          ("gemini", "gemini-2.0-flash"))


def make_batches(n_batches: int) -> list[list[CallEvent]]:
    batches = []
    for b in range(n_batches):
        batch = []
        for i in range(BATCH):
            n = b * BATCH + i
            provider, model = MODELS[n % len(MODELS)]
            ts = T0 + n * 37
            blocked = n % 23 == 0
            batch.append(CallEvent(
                f"{ts:012x}bench000{n:08x}", ts, f"person-{n % 400}", "employee", f"team-{n % 12}",
                f"project-{n % 30}" if n % 3 else None, f"CC-{n % 12}", provider, "chat", "/v1/chat/completions",
                True, model, model, n % 2 == 0, 403 if blocked else 200, 0 if blocked else 200 + n % 900,
                0 if blocked else 16 + n % 300, 0, 0, None if blocked else 1000 * (n % 5000), "response",
                "block" if blocked else "allow", "approved-models" if blocked else None, None, 120.5 + n % 50,
                40.25 if n % 2 == 0 else None, False, None))
        batches.append(batch)
    return batches


def _pass(store: Store, batches: list[list[CallEvent]]) -> Json:
    times: list[float] = []
    inserted = 0
    for batch in batches:
        t = time.perf_counter()
        inserted += store.insert_events(batch)
        times.append(time.perf_counter() - t)
    total = sum(times)
    events = len(batches) * BATCH
    ordered = sorted(times)
    return {"events": events, "rows_new": inserted, "seconds": round(total, 4),
            "events_per_s": round(events / total), "batch_p50_ms": round(statistics.median(times) * 1000, 2),
            "batch_p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2)}


def measure(name: str, url: str, work_dir: Path, batches: list[list[CallEvent]]) -> Json:
    store = open_store(url, work_dir)
    try:
        store.insert_events([e._replace(id=f"warm-up-{i}") for i, e in enumerate(batches[0][:10])])  # not timed
        new = _pass(store, batches)
        again = _pass(store, batches)
        stored = len(store.list_events(10**7))
    finally:
        store.close()
    expected = len(batches) * BATCH
    problems = [f"{name}: {what}" for what, bad in (
        (f"new pass stored {new['rows_new']} rows, expected {expected}", new["rows_new"] != expected),
        (f"re-insert reported {again['rows_new']} new rows, expected 0", again["rows_new"] != 0),
        (f"table holds {stored} rows, expected {expected + 10}", stored != expected + 10)) if bad]
    return {"backend": name, "new": new, "reinsert": again, "rows_stored": stored, "problems": problems}


@contextmanager
def private_postgres(fsync: bool) -> Iterator[str]:
    pg = LocalPostgres(free_port(), fsync=fsync).start()
    try:
        yield pg.url
    finally:
        pg.stop()


def postgres_version() -> str:
    out = subprocess.run([str(DEFAULT_BIN / "postgres"), "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown"


def markdown_report(results: Json) -> str:
    m, bg = results["machine"], results["background_load"]
    lines = [
        "# Store ingest benchmark",
        "",
        f"`Store.insert_events` in batches of {BATCH} events (one transaction each), {results['batches']} "
        f"batches ({results['batches'] * BATCH:,} events) per pass.",
        "",
        "| backend | pass | events | new rows | events/s | batch p50 ms | batch p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results["runs"]:
        for label, p in (("new", r["new"]), ("re-insert (all duplicates)", r["reinsert"])):
            lines.append(f"| {r['backend']} | {label} | {p['events']:,} | {p['rows_new']:,} | {p['events_per_s']:,} "
                         f"| {p['batch_p50_ms']} | {p['batch_p99_ms']} |")
    problems = [p for r in results["runs"] for p in r["problems"]]
    lines += [
        "",
        "- **new**: events with fresh ids into an empty store; **re-insert**: the same batches again, as an agent "
        "re-sending its spool: every id is already stored, `ON CONFLICT (id) DO NOTHING` skips it, "
        "`insert_events` returns 0.",
        f"- SQLite: a file in a temp dir, WAL, `synchronous=NORMAL` (the gateway's settings). PostgreSQL: "
        f"{results['postgres_version']}, private server on 127.0.0.1 (`initdb` into a temp dir), one connection; "
        "psycopg 3 `executemany` (pipeline mode). 'fsync off' is the test suite's server (`-F`); 'fsync on' makes "
        "every commit durable.",
        "- Checks: " + ("all passed (every new row stored once, re-inserts added nothing, row counts exact)."
                        if not problems else "**FAILED**: " + "; ".join(problems)),
        "",
        f"Run {m['date']} ({'quick' if results['quick'] else 'full'}): tollhouse {m['tollhouse']} "
        f"({m['git_commit']}), Python {m['python']}, kernel {m['kernel']}; {m['nproc']} CPUs ({m['cpu_model']}), "
        f"shared by the client and the database. Before the run: {bg.get('cpu_busy_pct', '?')} % CPU busy, load "
        f"average {bg['loadavg_1m']}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_BATCHES} batches per pass")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for ingest.{json,md}")
    args = parser.parse_args(argv)
    n = QUICK_BATCHES if args.quick else BATCHES
    before = background_load()
    batches = make_batches(n)
    runs = []
    with tempfile.TemporaryDirectory(prefix="tollhouse-ingest-") as tmp:
        runs.append(measure("sqlite", f"sqlite:///{tmp}/ingest.db", Path(tmp), batches))
        for fsync in (False, True):
            with private_postgres(fsync) as url:
                runs.append(measure(f"postgresql, fsync {'on' if fsync else 'off'}", url, Path(tmp), batches))
    results: Json = {"benchmark": RESULT_NAME, "batch_size": BATCH, "batches": n, "quick": args.quick,
                     "postgres_version": postgres_version(), "machine": machine_info(None),
                     "background_load": before, "runs": runs}
    json_path, md_path = write_results(results, args.out, RESULT_NAME, markdown_report)
    print(markdown_report(results))
    print(f"wrote {json_path} and {md_path}")
    return 1 if any(r["problems"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())

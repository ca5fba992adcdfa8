#!/usr/bin/env python3
"""Agent telemetry spool benchmark: how fast calls are spooled, and how fast a spool drains when the
control plane comes back.

1. **Spool**: N call events recorded through the agent's path, ``EventWriter.record`` (journal line, then
   batched into the local SQLite store, the gateway's settings: batches of 500, 0.2 s flush interval),
   until all are committed: events/s, and the cost of one ``record`` call on the request path.
2. **Drain**: the same N events are the backlog of a ``Shipper`` (batches of 1,000, enrollment token)
   whose control plane is down (it retries with backoff). A ``tollhouse serve`` (SQLite, loopback) is then
   started; timed from the moment it answers ``/healthz`` until the shipper's backlog is 0, split into
   the wait for the shipper's next retry and the drain itself. Checked afterwards in the control plane's
   store: exactly N rows, N distinct ids.

Writes ``spool.json`` and ``spool.md`` to ``--out``.

    python benchmarks/bench_spool.py [--events 100000] [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_gateway import background_load, free_port, machine_info, write_results
from tollhouse.agent.shipper import Shipper
from tollhouse.events import spool
from tollhouse.events.journal import Journal
from tollhouse.events.model import CallEvent
from tollhouse.events.store import open_store
from tollhouse.events.writer import EventWriter, StoreRunner

Json = dict[str, Any]
RESULT_NAME = "spool"
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
HOST = "127.0.0.1"
ADMIN = "bench-admin-token"
T0 = 1_767_225_600_000
MODELS = (("openai", "gpt-4o-mini"), ("openai", "gpt-4o"), ("anthropic", "claude-3-5-sonnet-20241022"),
          ("gemini", "gemini-2.0-flash"))


def make_event(writer: EventWriter, n: int) -> CallEvent:
    provider, model = MODELS[n % len(MODELS)]
    ts = T0 + n * 37
    return CallEvent(writer.new_id(ts), ts, f"person-{n % 400}", "employee", f"team-{n % 12}",
                     f"project-{n % 30}" if n % 3 else None, f"CC-{n % 12}", provider, "chat", "/v1/chat/completions",
                     True, model, model, n % 2 == 0, 200, 200 + n % 900, 16 + n % 300, 0, 0, 1000 * (n % 5000),
                     "response", "allow", None, None, 120.5 + n % 50, 40.25 if n % 2 == 0 else None, False, None)


async def spool_events(writer: EventWriter, total: int) -> Json:
    """Record `total` events in bursts of 100 (yielding between bursts, as a busy event loop does)."""
    record_s = 0.0
    start = time.perf_counter()
    for base in range(0, total, 100):
        events = [make_event(writer, n) for n in range(base, min(base + 100, total))]
        t = time.perf_counter()
        for e in events:
            writer.record(e)
        record_s += time.perf_counter() - t
        await asyncio.sleep(0)
    await writer.flush()
    wall = time.perf_counter() - start
    return {"events": total, "seconds": round(wall, 3), "events_per_s": round(total / wall),
            "record_us_per_event": round(record_s / total * 1e6, 2), "written": writer.written}


class ControlPlane:
    """`tollhouse serve` on loopback with the embedded SQLite store."""

    def __init__(self, work: Path, port: int) -> None:
        self.work = work
        self.port = port
        self.url = f"http://{HOST}:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start it; returns the perf_counter time it first answered /healthz."""
        config = self.work / "cp.json"
        config.write_text(json.dumps({"admin_token": ADMIN}))
        with (self.work / "cp.log").open("w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "tollhouse", "serve", "--config", str(config),
                                          "--host", HOST, "--port", str(self.port), "--data-dir",
                                          str(self.work / "cp")], stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter()
            except OSError:
                time.sleep(0.01)
        raise SystemExit(f"the control plane did not start; see {self.work / 'cp.log'}")

    def enroll(self) -> str:
        req = urllib.request.Request(self.url + "/api/v1/agent/tokens", data=b'{"label": "bench"}', method="POST",
                                     headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            token: str = json.loads(r.read())["token"]
            return token

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)

    def stored(self) -> tuple[int, int]:
        db = sqlite3.connect(self.work / "cp" / "tollhouse.db")
        rows, ids = db.execute("SELECT COUNT(*), COUNT(DISTINCT id) FROM events").fetchone()
        db.close()
        return int(rows), int(ids)


async def until(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("the benchmark timed out waiting")
        await asyncio.sleep(0.005)


async def drain(runner: StoreRunner, work: Path, total: int, batch: int) -> Json:
    cp = ControlPlane(work, free_port())
    # first the token (the control plane up once, as when the agent enrolled), then the outage
    cp.start()
    token = cp.enroll()
    cp.stop()
    shipper = Shipper(runner, cp.url, token, batch=batch, interval_s=0.2, retry_base_s=0.5, retry_max_s=2.0)
    shipper.start()
    loop = asyncio.get_running_loop()
    await until(lambda: shipper.metrics.registry.get_sample_value("tollhouse_spool_ship_failures_total",
                                                                  {"kind": "unreachable"}) is not None)
    await asyncio.sleep(2.0)  # down for a while: the shipper is backing off
    backlog_before = shipper.backlog
    ready = await loop.run_in_executor(None, cp.start)
    first_ack: float | None = None
    while shipper.backlog:
        if first_ack is None and (shipper.metrics.registry.get_sample_value("tollhouse_spool_shipped_total") or 0):
            first_ack = time.perf_counter()
        await asyncio.sleep(0.005)
    done = time.perf_counter()
    await shipper.stop()
    cp.stop()
    rows, ids = cp.stored()
    first_ack = first_ack or done
    drain_s = done - first_ack
    return {"events": total, "batch": batch, "backlog_when_back": backlog_before,
            "until_empty_s": round(done - ready, 3), "retry_wait_s": round(first_ack - ready, 3),
            "drain_s": round(drain_s, 3), "events_per_s": round(total / max(done - ready, 1e-9)),
            "drain_events_per_s": round(total / max(drain_s, 1e-9)),
            "control_plane_rows": rows, "control_plane_distinct_ids": ids,
            "watermark": await runner.run(spool.watermark)}


async def run(total: int, work: Path) -> Json:
    runner = StoreRunner(open_store("", work / "agent"))
    writer = EventWriter(runner, 0.2, 500, journal=Journal(work / "agent" / "journal"))
    writer.start()
    try:
        spooled = await spool_events(writer, total)
        drained = await drain(runner, work, total, 1000)
    finally:
        await writer.close()
        runner.close()
    return {"spool": spooled, "drain": drained}


def report(results: Json) -> str:
    s, d, m = results["spool"], results["drain"], results["machine"]
    ok = d["control_plane_rows"] == d["control_plane_distinct_ids"] == d["events"]
    return "\n".join([
        "# Agent telemetry spool benchmark", "",
        "| figure | result |", "|---|---|",
        f"| spool: events recorded through `EventWriter` (journal + batched SQLite writes), {s['events']:,} "
        f"events | **{s['events_per_s']:,} events/s** ({s['seconds']} s); `record()` {s['record_us_per_event']} "
        "µs per call on the request path |",
        f"| drain: {d['events']:,} spooled events to a control plane that comes back (batches of {d['batch']:,}) "
        f"| **{d['until_empty_s']} s** from its first `/healthz` 200 to an empty spool "
        f"({d['events_per_s']:,} events/s overall) |",
        f"| ... of which waiting for the shipper's next retry (backoff 0.5 s doubling, capped at 2 s here) "
        f"| {d['retry_wait_s']} s |",
        f"| ... of which shipping | {d['drain_s']} s (**{d['drain_events_per_s']:,} events/s**) |",
        f"| control plane's store afterwards | {d['control_plane_rows']:,} rows, {d['control_plane_distinct_ids']:,} "
        f"distinct ids ({'exactly once' if ok else 'MISMATCH'}) |", "",
        "- Agent side: a local SQLite store (WAL, `synchronous=NORMAL`) with its journal, as the agent runs it; "
        "the shipper reads 1,000 events after its watermark, POSTs them (one request, enrollment token) and "
        "moves the watermark after the 200, one batch after another.",
        "- Control plane: `tollhouse serve` (embedded SQLite) as a subprocess on loopback; it validates every "
        "event (strict wire model) and stores each batch in one transaction. Client, control plane and both "
        "databases share the machine's CPUs.",
        "- The retry wait depends on where the backoff was when the control plane returned (the agent's "
        "default caps it at 30 s; 2 s here), not on the backlog.",
        "",
        f"Run {m['date']}: tollhouse {m['tollhouse']} ({m['git_commit']}), Python {m['python']}, kernel "
        f"{m['kernel']}; {m['nproc']} CPUs ({m['cpu_model']}). Before the run: "
        f"{results['load'].get('cpu_busy_pct', '?')} % CPU busy, load average {results['load']['loadavg_1m']}. "
        f"Command: `python benchmarks/bench_spool.py {results['argv']}`.",
    ]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="10,000 events")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    total = 10_000 if args.quick else args.events
    load = background_load()
    with tempfile.TemporaryDirectory(prefix="tollhouse-spool-") as tmp:
        results = asyncio.run(run(total, Path(tmp)))
    results.update(machine=machine_info(None), load=load, argv=" ".join(sys.argv[1:]))
    json_path, md_path = write_results(results, args.out, RESULT_NAME, report)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()

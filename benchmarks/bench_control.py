"""Control-plane benchmark: how fast does a policy edit reach connected agents, how many agent events per
second does ingest store, and how long does `tollhouse audit verify` take over a million entries?

    python benchmarks/bench_control.py [--agents 50] [--edits 20] [--events 200000] [--audit 1000000]

Everything runs on loopback against a `tollhouse serve` this script starts (SQLite store in a temporary
data dir). Writes benchmarks/results/control.{md,json}.

* Propagation: N agents long-poll `GET /api/v1/agent/bundle` with `If-None-Match` (enrollment token);
  the script PUTs a policy edit and times, per agent, from just before the PUT is sent to the moment the
  agent has the new bundle (version checked). Repeated for each edit.
* Ingest: C concurrent clients POST batches of B events to `/api/v1/agent/events`; events stored per
  second over the whole run (each response says how many were new); then the same batches again
  (a retried upload: all duplicates, nothing stored twice).
* Audit verify: a store with M chained entries (written directly, then checked by the real command);
  wall time and peak RSS of `tollhouse audit verify`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import resource
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tollhouse import __version__
from tollhouse.audit.chain import GENESIS, canonical, entry_hash
from tollhouse.events.pg_local import LocalPostgres, PostgresUnavailable
from tollhouse.events.store import open_store

HOST = "127.0.0.1"
ADMIN = "bench-admin-token"
RESULTS = Path(__file__).parent / "results"
Json = dict[str, Any]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class Gateway:
    def __init__(self, data: Path, store_url: str = "") -> None:
        self.port = free_port()
        data.mkdir(parents=True, exist_ok=True)
        config = data / "config.json"
        config.write_text(json.dumps({
            "admin_token": ADMIN, "enforcement": "on", "store": {"url": store_url},
            "directory": {"org": "bench", "teams": [{"id": "platform"}],
                          "people": [{"id": f"p{i}", "team": "platform"} for i in range(100)]},
        }))
        with (data / "gateway.log").open("w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "tollhouse", "serve", "--config", str(config), "--host",
                                          HOST, "--port", str(self.port), "--data-dir", str(data / "gw")],
                                         stdout=subprocess.DEVNULL, stderr=log)
        self.url = f"http://{HOST}:{self.port}"

    async def ready(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                async with session.get(self.url + "/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        raise SystemExit("the gateway did not start; see gateway.log")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN}"}


async def _agent(session: aiohttp.ClientSession, gw: Gateway, auth: dict[str, str], n: int, etag: str,
                 expect: str, got: list[float]) -> None:
    """One agent's held bundle request; records when the new policy arrived."""
    headers = {**auth, "If-None-Match": etag, "X-Tollhouse-Agent-Id": f"bench-{n}"}
    async with session.get(gw.url + "/api/v1/agent/bundle?wait=30", headers=headers) as r:
        body = await r.json()
        assert r.status == 200 and body["policy"]["rules"][0]["id"] == expect, (r.status, body)
        got.append(time.perf_counter())


async def propagation(gw: Gateway, session: aiohttp.ClientSession, agents: int, edits: int) -> Json:
    async with session.post(gw.url + "/api/v1/agent/tokens", json={"label": "bench"}, headers=admin_headers()) as r:
        token = (await r.json())["token"]
    auth = {"Authorization": f"Bearer {token}"}
    async with session.get(gw.url + "/api/v1/agent/bundle", headers=auth) as r:
        etag = r.headers["etag"]
    delays: list[float] = []
    for edit in range(1, edits + 1):
        got: list[float] = []
        pollers = [asyncio.create_task(_agent(session, gw, auth, n, etag, f"edit-{edit}", got))
                   for n in range(agents)]
        await asyncio.sleep(0.3)  # every agent is waiting
        rule = {"id": f"edit-{edit}", "scope": "org", "condition": {"type": "MODEL_DENYLIST", "models": [f"m{edit}"]}}
        sent = time.perf_counter()
        async with session.put(gw.url + "/api/v1/policy", json={"rules": [rule]}, headers=admin_headers()) as r:
            assert r.status == 200, await r.text()
        await asyncio.wait_for(asyncio.gather(*pollers), 30)
        delays += [(t - sent) * 1000 for t in got]
        async with session.get(gw.url + "/api/v1/agent/bundle", headers=auth) as r:
            etag = r.headers["etag"]
    return {"agents": agents, "edits": edits, "samples": len(delays),
            "p50_ms": round(pct(delays, 50), 2), "p99_ms": round(pct(delays, 99), 2),
            "max_ms": round(max(delays), 2), "mean_ms": round(statistics.mean(delays), 2)}


def make_events(n: int, prefix: str) -> list[Json]:
    t0 = 1_795_000_000_000
    return [{"id": f"{prefix}-{i:08d}", "ts_ms": t0 + i, "subject": f"p{i % 100}", "team": "platform",
             "provider": "openai", "model": "gpt-4o-mini", "requested_model": "gpt-4o-mini", "status": 200,
             "input_tokens": 25, "output_tokens": 16, "cost_nusd": 13_350, "decision": "allow",
             "latency_ms": 412.5, "ttfb_ms": 380.0} for i in range(n)]


async def ingest(gw: Gateway, session: aiohttp.ClientSession, total: int, batch: int, clients: int) -> Json:
    async with session.post(gw.url + "/api/v1/agent/tokens", json={"label": "ingest"}, headers=admin_headers()) as r:
        token = (await r.json())["token"]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    events = make_events(total, "ing")
    bodies = [orjson.dumps({"events": events[i:i + batch]}) for i in range(0, total, batch)]

    async def run() -> tuple[float, int, int]:
        queue = list(reversed(bodies))
        stored = dupes = 0

        async def client() -> None:
            nonlocal stored, dupes
            while queue:
                body = queue.pop()
                async with session.post(gw.url + "/api/v1/agent/events", data=body, headers=headers) as r:
                    out = await r.json()
                    assert r.status == 200, out
                    stored += out["stored"]
                    dupes += out["duplicates"]

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return time.perf_counter() - start, stored, dupes

    first_s, stored, _ = await run()
    again_s, stored_again, dupes = await run()
    return {"events": total, "batch": batch, "clients": clients,
            "stored": stored, "events_per_s": round(total / first_s),
            "retry_stored": stored_again, "retry_duplicates": dupes, "retry_events_per_s": round(total / again_s)}


def audit_verify(entries: int, workdir: Path) -> Json:
    data = workdir / "audit-data"
    data.mkdir()
    open_store("", data).close()  # the schema
    db = sqlite3.connect(data / "tollhouse.db")
    prev = GENESIS
    rows = []
    t0 = 1_795_000_000_000
    build = time.perf_counter()
    for seq in range(1, entries + 1):
        payload = {"event_id": f"ev-{seq:09d}", "rule_id": "approved-models", "rule_type": "MODEL_ALLOWLIST",
                   "reason": "model o1 is not on the approved list", "subject": f"p{seq % 100}",
                   "team": "platform", "project": None, "provider": "openai", "model": "o1", "status": 403}
        digest = entry_hash(prev, canonical(seq, t0 + seq, "call.blocked", "gateway", payload))
        rows.append((seq, t0 + seq, "call.blocked", "gateway", orjson.dumps(payload).decode(), prev, digest))
        prev = digest
        if len(rows) == 50_000:
            db.executemany("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            rows.clear()
    db.executemany("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    db.commit()
    db.close()
    build_s = time.perf_counter() - build
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tollhouse", "audit", "verify", "--data-dir", str(data)],
                          capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - start
    peak_mb = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 1024
    if done.returncode != 0:
        raise SystemExit(f"audit verify failed: {done.stderr}")
    return {"entries": entries, "verify_s": round(wall, 2), "entries_per_s": round(entries / wall),
            "peak_rss_mb": round(peak_mb), "output": done.stdout.strip(), "build_s": round(build_s, 1),
            "db_mb": round((data / "tollhouse.db").stat().st_size / 2**20)}


def report(results: Json) -> str:
    p, i, a = results["propagation"], results["ingest"], results["audit_verify"]
    return "\n".join([
        "# Control-plane benchmark", "",
        f"Run {results['run']}: tollhouse {results['version']}, Python {results['python']}, "
        f"{results['cpus']} CPUs; gateway `tollhouse serve` with the embedded SQLite store, on loopback. "
        f"Command: `python benchmarks/bench_control.py {results['argv']}`.", "",
        "| figure | result |", "|---|---|",
        f"| policy edit → connected agents ({p['agents']} long-polling, {p['edits']} edits, {p['samples']} "
        f"deliveries) | p50 {p['p50_ms']} ms, p99 {p['p99_ms']} ms, max {p['max_ms']} ms |",
        f"| agent telemetry ingest, SQLite ({i['events']:,} events, batches of {i['batch']}, {i['clients']} "
        f"clients) | {i['events_per_s']:,} events/s stored ({i['stored']:,} stored) |",
        f"| the same batches retried | {i['retry_events_per_s']:,} events/s, {i['retry_stored']} stored again, "
        f"{i['retry_duplicates']:,} recognised as duplicates |",
        *([f"| agent telemetry ingest, PostgreSQL 15 (fsync on, same load) | {g['events_per_s']:,} events/s "
           f"stored; retried: {g['retry_events_per_s']:,} events/s, {g['retry_stored']} stored again |"]
          if (g := results.get("ingest_postgres")) else []),
        f"| `tollhouse audit verify`, {a['entries']:,} entries ({a['db_mb']} MB store) | {a['verify_s']} s "
        f"({a['entries_per_s']:,} entries/s), peak RSS {a['peak_rss_mb']} MB |", "",
        "- Propagation: time from just before the `PUT /api/v1/policy` is sent until each agent's held "
        "`GET /api/v1/agent/bundle` (If-None-Match, wait=30) has returned the new bundle, rules checked. "
        "All agents are aiohttp clients in this script's one event loop, so the figures include the client "
        "reading N responses in turn.",
        "- Ingest: HTTP `POST /api/v1/agent/events`, enrollment token, each batch validated whole (strict "
        "types) and written in one transaction; stored = the responses' `stored` counts.",
        f"- Audit verify: entries written straight into the store with a correct chain ({a['build_s']} s), then "
        f"the real command run once: `{a['output'][:120]}`.",
    ]) + "\n"


async def main_async(args: argparse.Namespace, work: Path) -> Json:
    gw = Gateway(work / "sqlite")
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            await gw.ready(session)
            prop = await propagation(gw, session, args.agents, args.edits)
            print("propagation", prop, flush=True)
            ing = await ingest(gw, session, args.events, args.batch, args.clients)
            print("ingest sqlite", ing, flush=True)
    finally:
        gw.stop()
    out: Json = {"propagation": prop, "ingest": ing}
    try:
        pg = LocalPostgres(free_port(), fsync=True).start()
    except PostgresUnavailable as exc:
        print(f"PostgreSQL ingest skipped: {exc}", flush=True)
        return out
    gw = Gateway(work / "postgres", pg.url)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            await gw.ready(session)
            out["ingest_postgres"] = await ingest(gw, session, args.events, args.batch, args.clients)
            print("ingest postgres", out["ingest_postgres"], flush=True)
    finally:
        gw.stop()
        pg.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--audit", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tollhouse-bench-control-"))
    try:
        results: Json = asyncio.run(main_async(args, work))
        results["audit_verify"] = audit_verify(args.audit, work)
        print("audit verify", results["audit_verify"], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results.update({"run": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                    "version": __version__, "python": platform.python_version(), "cpus": os.cpu_count(),
                    "argv": " ".join(sys.argv[1:])})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "control.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "control.md").write_text(report(results))
    print(report(results))


if __name__ == "__main__":
    main()

"""Usage views at real size: p50/p95 of /api/v1/usage, /api/v1/baseline and /api/v1/reports/spend.csv, and of the
console's pages (overview, usage explorer, team pages, policy, audit), over a store seeded with a 500-engineer
organisation's quarter of calls, on SQLite and on PostgreSQL.

    python benchmarks/bench_usage.py [--events 200000] [--stores sqlite,postgresql] [--reps 20] [--out DIR]

The full run (the figures in benchmarks/results/usage.md) is `--events 10000000`.

* Seeding: events are generated (seeded RNG: the same org and calls every run) and written straight into the
  events table in bulk (SQLite: executemany in large transactions; PostgreSQL: COPY), the events' secondary
  indexes built after the load, then the rollups built in SQL by the same statement migration 10 backfills them
  with (`tollhouse.events.rollup.backfill_sql`). Not through the API: 10 million HTTP calls would measure the
  ingest path, which bench_ingest.py and bench_control.py do.
* The org: 500 engineers in 48 teams under 8 departments, 60 projects, 8 + 6 cost centres, 3 providers and 9
  models with a realistic skew (a few cheap models take most calls, a few people make most of them), calls on
  weekdays in working hours of America/New_York, the quarter ending now (so the default range, the current
  billing month, has data).
* Policy: a model rule (claude-opus-4, observe: the seeded would-be blocks), a monthly budget per department and
  one for the org, so the overview's budgets at risk and a team page's caps and burn-down have work to do.
* Timing: a real `tollhouse serve` (subprocess) over the seeded store; each query is sent `--reps` times after
  one warm-up, one at a time, over HTTP on loopback; wall time per response (the body read whole). API queries
  carry the admin token; pages a console session cookie (signed in once through POST /console/login). The
  warm-up's time is kept as `first_ms` (a page's first view after start loads the budgets' counters).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gateway import background_load, free_port, machine_info, write_results
from tollhouse.events import rollup
from tollhouse.events.model import COLUMNS
from tollhouse.events.pg_local import DEFAULT_BIN, LocalPostgres
from tollhouse.events.store import open_store

HOST = "127.0.0.1"
ADMIN = "bench-admin-token"
TZ = ZoneInfo("America/New_York")
Json = dict[str, Any]
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
RESULT_NAME = "usage"
CHUNK = 100_000

# (provider, model, share of calls, nano-USD per input token, per output token)
MODELS = [
    ("openai", "gpt-4o-mini", 30, 150, 600), ("anthropic", "claude-sonnet-4", 25, 3000, 15000),
    ("openai", "gpt-4o", 15, 2500, 10000), ("gemini", "gemini-2.0-flash", 10, 100, 400),
    ("anthropic", "claude-haiku-3.5", 8, 800, 4000), ("openai", "o3", 4, 2000, 8000),
    ("anthropic", "claude-opus-4", 3, 15000, 75000), ("gemini", "gemini-2.5-pro", 3, 1250, 10000),
    ("openai", "gpt-4.1", 2, 2000, 8000),
]
_HOUR_WEIGHT = {7: 0.15, 8: 0.4, 9: 1.0, 10: 1.0, 11: 1.0, 12: 0.6, 13: 1.0, 14: 1.0, 15: 1.0, 16: 1.0, 17: 0.8,
                18: 0.4, 19: 0.15, 20: 0.15, 21: 0.1, 22: 0.05}


class Org:
    """The seeded organisation: departments, teams, projects, people and who uses what."""

    def __init__(self, rng: random.Random) -> None:
        self.departments = [f"dept-{d}" for d in range(8)]
        self.teams = [(f"team-{t:02d}", self.departments[t % 8]) for t in range(48)]
        self.projects = [(f"proj-{p:02d}", self.teams[p % 48][0], f"CC-P{p % 6}" if p % 10 == 0 else None)
                         for p in range(60)]
        team_projects: dict[str, list[str]] = {}
        for pid, team, _ in self.projects:
            team_projects.setdefault(team, []).append(pid)
        self.project_cc = {pid: cc for pid, _, cc in self.projects}
        self.people = []
        for i in range(500):
            team, dept = self.teams[i % 48]
            choices = team_projects.get(team, [])
            self.people.append((f"eng-{i:03d}", team, choices, f"CC-{self.departments.index(dept)}"))
        self.person_weights = [rng.lognormvariate(0, 1.2) for _ in self.people]
        # each person leans to some models: a per-person multiplier on the global shares
        self.model_bias = [[m[2] * rng.lognormvariate(0, 0.8) for m in MODELS] for _ in self.people]

    def directory(self) -> Json:
        return {
            "org": "bench-org",
            "teams": [{"id": d, "cost_centre": f"CC-{i}"} for i, d in enumerate(self.departments)]
            + [{"id": t, "parent": d} for t, d in self.teams],
            "projects": [{"id": p, "team": t, **({"cost_centre": cc} if cc else {})} for p, t, cc in self.projects],
            "people": [{"id": p, "team": t} for p, t, _, _ in self.people],
        }

    def rules(self) -> list[Json]:
        """The model rule the seeded blocks name, a monthly budget per department ($) and one for the org."""
        budgets = [{"id": f"{d}-budget", "scope": "team", "team": d, "action": {"type": "hard_stop"},
                    "condition": {"type": "budget", "threshold": 2500 + 1000 * i, "window": "monthly"}}
                   for i, d in enumerate(self.departments)]
        return [{"id": "block-frontier", "scope": "org", "action": {"type": "hard_stop"},
                 "condition": {"type": "model", "operator": "in", "models": ["claude-opus-4"]}},
                *budgets,
                {"id": "org-budget", "scope": "org", "action": {"type": "hard_stop"},
                 "condition": {"type": "budget", "threshold": 60000, "window": "monthly"}}]


def hours(start_ms: int, end_ms: int) -> tuple[list[int], list[float]]:
    """Every hour of the range and its weight (weekday working hours in New York)."""
    out, weights = [], []
    h = start_ms // 3_600_000 * 3_600_000
    while h < end_ms:
        local = dt.datetime.fromtimestamp(h / 1000, TZ)
        w = _HOUR_WEIGHT.get(local.hour, 0.02) * (1.0 if local.weekday() < 5 else 0.08)
        out.append(h)
        weights.append(w)
        h += 3_600_000
    return out, weights


def cumulative(weights: list[float]) -> list[float]:
    total, out = 0.0, []
    for w in weights:
        total += w
        out.append(total)
    return out


def generate(n: int, start_ms: int, end_ms: int, seed: int = 18) -> Iterator[list[tuple[Any, ...]]]:
    """Event rows (in events column order) in chunks."""
    rng = random.Random(seed)
    org = Org(rng)
    hour_list, hour_w = hours(start_ms, end_ms)
    hour_cum = cumulative(hour_w)
    person_cum = cumulative(org.person_weights)
    model_cums = [cumulative(b) for b in org.model_bias]
    people_idx = range(len(org.people))
    model_idx = range(len(MODELS))
    made = 0
    while made < n:
        k = min(CHUNK, n - made)
        who = rng.choices(people_idx, cum_weights=person_cum, k=k)
        when = rng.choices(hour_list, cum_weights=hour_cum, k=k)
        rows = []
        for j in range(k):
            p = who[j]
            subject, team, projects, cc = org.people[p]
            pick = rng.choices(model_idx, cum_weights=model_cums[p])[0]
            provider, model, _, rate_in, rate_out = MODELS[pick]
            project = projects[j % len(projects)] if projects and j % 5 else None
            in_tok = int(rng.expovariate(1 / 1500)) + 20
            out_tok = int(rng.expovariate(1 / 400)) + 5
            roll = rng.random()
            decision, would, status = "allow", None, 200
            if roll < 0.005:
                decision, status = "block", 403
            elif roll < 0.025:
                would = "block"
            elif roll < 0.035:
                status = 429
            cost = 0 if decision == "block" else in_tok * rate_in + out_tok * rate_out
            ts = when[j] + rng.randrange(3_600_000)
            rows.append((f"b{made + j:09d}", ts, subject, "employee", team, project,
                         (org.project_cc.get(project) if project else None) or cc, provider, "chat",
                         "/v1/chat/completions", True, model, model, False, status, in_tok, out_tok, 0, 0, cost,
                         "response", decision, "block-frontier" if decision == "block" or would else None, would,
                         800.0, None, False, None, "metered", None))
        made += k
        yield rows


_SECONDARY = {"events_ts": "events (ts_ms)", "events_subject_ts": "events (subject, ts_ms)",
              "events_team_ts": "events (team, ts_ms)", "events_project_ts": "events (project, ts_ms)"}


def seed_sqlite(path: Path, n: int, start_ms: int, end_ms: int) -> Json:
    open_store(f"sqlite:///{path}", path.parent).close()  # the schema, every migration
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-1000000")
    t0 = time.perf_counter()
    for name in _SECONDARY:
        db.execute(f"DROP INDEX {name}")
    sql = f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"
    for rows in generate(n, start_ms, end_ms):
        db.execute("BEGIN")
        db.executemany(sql, rows)
        db.execute("COMMIT")
    t1 = time.perf_counter()
    for name, on in _SECONDARY.items():
        db.execute(f"CREATE INDEX {name} ON {on}")
    t2 = time.perf_counter()
    db.execute("BEGIN")
    for table in rollup.HOUR_TABLES:
        db.execute(rollup.backfill_sql(table))
    db.execute("COMMIT")
    t3 = time.perf_counter()
    days_s = local_days(f"sqlite:///{path}")
    db.execute("ANALYZE")
    counts = {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("events", *rollup.TABLES)}
    db.close()
    return {"load_s": round(t1 - t0, 1), "index_s": round(t2 - t1, 1), "rollup_s": round(t3 - t2, 1),
            "days_s": days_s, "rows": counts, "bytes": path.stat().st_size}


def local_days(url: str) -> float:
    """Build the day rollups in the org's timezone as a gateway does at start (from the hours); seconds taken."""
    t0 = time.perf_counter()
    store = open_store(url, Path(tempfile.gettempdir()))
    store.use_day_zone(str(TZ.key))
    store.close()
    return round(time.perf_counter() - t0, 1)


def seed_postgres(url: str, n: int, start_ms: int, end_ms: int) -> Json:
    open_store(url, Path(tempfile.gettempdir())).close()
    with psycopg.connect(url, autocommit=True) as conn:
        t0 = time.perf_counter()
        for name in _SECONDARY:
            conn.execute(f"DROP INDEX {name}")
        with conn.cursor() as cur:
            for rows in generate(n, start_ms, end_ms):
                with cur.copy(f"COPY events ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
        t1 = time.perf_counter()
        for name, on in _SECONDARY.items():
            conn.execute(f"CREATE INDEX {name} ON {on}")
        t2 = time.perf_counter()
        with conn.transaction():
            for table in rollup.HOUR_TABLES:
                conn.execute(rollup.backfill_sql(table))  # type: ignore[arg-type]
        t3 = time.perf_counter()
        days_s = local_days(url)
        conn.execute("VACUUM ANALYZE")
        counts = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]  # type: ignore[index]
                  for t in ("events", *rollup.TABLES)}
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]  # type: ignore[index]
    return {"load_s": round(t1 - t0, 1), "index_s": round(t2 - t1, 1), "rollup_s": round(t3 - t2, 1),
            "days_s": days_s, "rows": counts, "bytes": size}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Server:
    """`tollhouse serve` over the seeded store."""

    def __init__(self, work: Path, store_url: str, org: Org) -> None:
        self.port = free_port()
        work.mkdir(parents=True, exist_ok=True)
        config = work / "config.json"
        config.write_text(json.dumps({"admin_token": ADMIN, "store": {"url": store_url},
                                      "ledger": {"timezone": "America/New_York"}, "directory": org.directory(),
                                      "policy": {"rules": org.rules()}}))
        self.log = (work / "gateway.log").open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "tollhouse", "serve", "--config", str(config), "--host",
                                      HOST, "--port", str(self.port), "--data-dir", str(work / "gw")],
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        self.url = f"http://{HOST}:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit(f"the gateway did not start; see {work / 'gateway.log'}")
        self.cookie = self.sign_in()

    def sign_in(self) -> str:
        """A console session: the admin token's sign-in form, its cookie kept (the redirect not followed)."""
        body = urllib.parse.urlencode({"token": ADMIN, "name": "bench", "next": "/console/"}).encode()
        req = urllib.request.Request(self.url + "/console/login", data=body, method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            opener.open(req, timeout=30)
        except urllib.error.HTTPError as err:
            if err.code == 303:
                cookie = err.headers.get("set-cookie", "")
                if cookie.startswith("tollhouse_console="):
                    return cookie.split(";", 1)[0]
            raise SystemExit(f"console sign-in answered {err.code}") from None
        raise SystemExit("console sign-in set no session cookie")

    def get(self, path: str) -> tuple[int, int, float]:
        auth = ("Cookie", self.cookie) if path.startswith("/console/") else ("Authorization", f"Bearer {ADMIN}")
        req = urllib.request.Request(self.url + path, headers=dict([auth]))
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=120) as r:
            body = r.read()
            status = r.status
        return status, len(body), (time.perf_counter() - t0) * 1000

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def queries(now: dt.datetime) -> list[tuple[str, str, str]]:
    """(kind, label, path)"""
    quarter = (now - dt.timedelta(days=90)).date().isoformat()
    week = (now - dt.timedelta(days=7)).date().isoformat()
    return [
        ("usage", "month by team, per day (the default range)", "/api/v1/usage?group_by=team"),
        ("usage", "month by model, per day", "/api/v1/usage?group_by=model"),
        ("usage", "month by person, per day (500 series)", "/api/v1/usage?group_by=person"),
        ("usage", "month by cost centre, per day", "/api/v1/usage?group_by=cost_centre"),
        ("usage", "quarter by provider, per day", f"/api/v1/usage?group_by=provider&from={quarter}"),
        ("usage", "quarter by team, per day", f"/api/v1/usage?group_by=team&from={quarter}"),
        ("usage", "quarter by person, per day", f"/api/v1/usage?group_by=person&from={quarter}"),
        ("usage", "week by project, per hour", f"/api/v1/usage?group_by=project&interval=hour&from={week}"),
        ("usage", "month, one department by person", "/api/v1/usage?group_by=person&team=dept-3"),
        ("usage", "month, one model by team", "/api/v1/usage?group_by=team&model=claude-opus-4"),
        ("baseline", "baseline, one team, 14 days", "/api/v1/baseline?team=team-07&days=14"),
        ("baseline", "baseline, a department, 14 days", "/api/v1/baseline?team=dept-2&days=14"),
        ("baseline", "baseline, a department, 90 days", "/api/v1/baseline?team=dept-2&days=90"),
        ("report", "spend.csv month by team and model, per day", "/api/v1/reports/spend.csv?group_by=team,model"),
        ("report", "spend.csv quarter by cost centre, per month",
         f"/api/v1/reports/spend.csv?group_by=cost_centre&interval=month&from={quarter}"),
        ("report", "spend.csv month, FOCUS by team", "/api/v1/reports/spend.csv?group_by=team&format=focus"),
        ("report", "spend.csv month by person and model, per day",
         "/api/v1/reports/spend.csv?group_by=person,model"),
        ("page", "overview /console/", "/console/"),
        ("page", "usage explorer, default (month, no grouping)", "/console/usage"),
        ("page", "usage explorer, month by team", "/console/usage?group_by=team"),
        ("page", "usage explorer, quarter by person", f"/console/usage?group_by=person&from={quarter}"),
        ("page", "teams index", "/console/teams"),
        ("page", "team page, a department (6 teams, ~60 people)", "/console/teams/dept-3"),
        ("page", "team page, a small team", "/console/teams/team-07"),
        ("page", "policy", "/console/policy"),
        ("page", "audit", "/console/audit"),
    ]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def measure(server: Server, reps: int, now: dt.datetime, kinds: set[str]) -> list[Json]:
    out = []
    for kind, label, path in queries(now):
        if kind not in kinds:
            continue
        status, size, first = server.get(path)  # warm-up
        if status != 200:
            raise SystemExit(f"{path} answered {status}")
        times = [server.get(path)[2] for _ in range(reps)]
        out.append({"kind": kind, "query": label, "path": path, "bytes": size, "first_ms": round(first, 1),
                    "p50_ms": round(pct(times, 50), 1),
                    "p95_ms": round(pct(times, 95), 1), "max_ms": round(max(times), 1),
                    "mean_ms": round(statistics.fmean(times), 1)})
        print(f"  {label}: p50 {out[-1]['p50_ms']} ms, p95 {out[-1]['p95_ms']} ms ({size} bytes)", flush=True)
    return out


def markdown(results: Json) -> str:
    m, bg = results["machine"], results["background_load"]
    lines = [
        "# Usage views at real size", "",
        f"{results['events']:,} events: a 500-engineer org over a quarter (48 teams in 8 departments, 60 projects, 9 "
        "models of 3 providers, skewed), seeded straight into the store; queries through a real `tollhouse serve` "
        f"over HTTP on loopback, each sent {results['reps']} times after a warm-up, one at a time. Times in ms "
        "(wall, whole body read); \"first\" is the warm-up (the first view after the gateway started). Targets: p95 "
        "<= 200 ms for usage queries, <= 300 ms for pages.", "",
    ]
    for store in results["stores"]:
        seed = store["seed"]
        rows = ", ".join(f"{k} {v:,}" for k, v in seed["rows"].items())
        lines += [f"## {store['store']}", "",
                  f"Seeding: load {seed['load_s']} s, indexes {seed['index_s']} s, hourly rollups (SQL, the "
                  f"migration's backfill) {seed['rollup_s']} s, day rollups in America/New_York from the hours (what "
                  f"a gateway does at start when the zone changed) {seed['days_s']} s; rows {rows}; "
                  f"{seed['bytes'] / 1e9:.2f} GB. The first overview after the gateway started (it waits for the "
                  f"budget counters loaded at start): {seed.get('first_overview_ms', '-')} ms.", "",
                  "| kind | query | p50 | p95 | max | first | body bytes |", "|---|---|---:|---:|---:|---:|---:|"]
        for q in store["queries"]:
            lines.append(f"| {q['kind']} | {q['query']} | {q['p50_ms']} | {q['p95_ms']} | {q.get('max_ms', '-')} | "
                         f"{q.get('first_ms', '-')} | {q['bytes']:,} |")
        lines.append("")
        for kind, target in (("usage", 200), ("page", 300)):
            p95s = [q["p95_ms"] for q in store["queries"] if q["kind"] == kind]
            if p95s:
                worst = max(p95s)
                lines.append(f"Worst {kind} p95: {worst} ms ({'meets' if worst <= target else 'MISSES'} the "
                             f"{target} ms target).")
        lines.append("")
    lines += [f"Run {m['date']}: tollhouse {m['tollhouse']} ({m['git_commit']}), Python {m['python']}, "
              f"{m['nproc']} CPUs ({m['cpu_model']}), background load before start: {bg}. "
              f"PostgreSQL: {results.get('postgres_version')}, private server (fsync off) on loopback.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=200_000, help="events to seed (the full run: 10000000)")
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--kinds", default="usage,baseline,report,page", help="which kinds of query to time")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--name", default=RESULT_NAME, help="results file name (without extension)")
    args = parser.parse_args(argv)
    now = dt.datetime.now(dt.UTC)
    end_ms = int(now.timestamp() * 1000)
    start_ms = end_ms - 91 * 86_400_000
    org = Org(random.Random(18))
    results: Json = {"benchmark": RESULT_NAME, "events": args.events, "reps": args.reps,
                     "background_load": background_load(), "machine": machine_info(None), "stores": []}
    work = Path(tempfile.mkdtemp(prefix="tollhouse-bench-usage-"))
    for store in args.stores.split(","):
        print(f"{store}: seeding {args.events:,} events", flush=True)
        pg: LocalPostgres | None = None
        try:
            if store == "sqlite":
                path = work / "sqlite" / "tollhouse.db"
                path.parent.mkdir(parents=True)
                seed = seed_sqlite(path, args.events, start_ms, end_ms)
                url = f"sqlite:///{path}"
            else:
                pg = LocalPostgres(free_port(), Path(os.environ.get("TOLLHOUSE_PG_BIN") or DEFAULT_BIN)).start()
                with psycopg.connect(pg.url, autocommit=True) as conn:
                    conn.execute("CREATE DATABASE bench")
                    results["postgres_version"] = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
                url = pg.url_for("bench")
                seed = seed_postgres(url, args.events, start_ms, end_ms)
            print(f"  seeded: {seed}", flush=True)
            server = Server(work / f"gw-{store}", url, org)
            try:
                # the overview waits for the budget counters the gateway loads from the store at start: timed once,
                # then every query runs with them loaded
                seed["first_overview_ms"] = round(server.get("/console/")[2], 1)
                print(f"  first overview after start: {seed['first_overview_ms']} ms", flush=True)
                found = measure(server, args.reps, now, set(args.kinds.split(",")))
                results["stores"].append({"store": store, "seed": seed, "queries": found})
            finally:
                server.stop()
            write_results(results, args.out, args.name, markdown)  # each store's figures as soon as they are in
        finally:
            if pg is not None:
                pg.stop()
            shutil.rmtree(work / store, ignore_errors=True)  # the next store's seeding needs the disk
    shutil.rmtree(work, ignore_errors=True)
    json_path, md_path = write_results(results, args.out, args.name, markdown)
    print(markdown(results))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

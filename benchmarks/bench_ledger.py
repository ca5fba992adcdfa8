#!/usr/bin/env python3
"""Ledger benchmark: what a budget check costs per call, and whether concurrent calls can overspend.

Both backends: the embedded ledger (``counters.url: local://``, in-process counters) and the Redis
ledger (``counters.url: redis://...``, counters shared by every gateway, checked and reserved by one Lua
script). The Redis parts start a private ``redis-server`` (``--save '' --appendonly no``) on a free
loopback port and always stop it at the end.

(a) Reserve + settle cost. Pure code, no server: caps come from
``CompiledPolicy(parse_rules([...])).evaluate(...)`` for one person with three caps -- a personal
monthly budget (an untargeted individual ``budget`` rule), a team token window (``usage`` at team
scope) and an org monthly budget. The counters are loaded first with ``ensure_loaded`` (a loader that
returns no history), then ``reserve(...)`` + ``settle(...)`` pairs are timed one by one with
``time.perf_counter_ns`` (the call's worst case reserved, its actual usage settled, as the gateway
does). The clock passed in advances per call, as in a gateway serving a steady rate, so rolling
windows fill up: their counters keep one bucket per 1/600 of the window (at least 1 s), and a
reserve sums every bucket still in the window. Variants: the brief's case (team tokens per minute,
1,000 calls/s, 60 buckets), the same with a frozen clock (everything in one bucket: the floor), and a
team tokens-per-hour window kept full (600 buckets). The same three variants are then run on a
``RedisLedger`` (same caps, loader with no history, a key prefix of its own per variant): ``await
reserve(...)`` + ``await _settle_now(...)`` (``settle`` only schedules a task; ``_settle_now`` is the
coroutine it schedules, awaited here so the pair's time includes both round trips to Redis).

(b) Concurrency. Starts ``tollhouse mock-provider`` and ``tollhouse serve`` (as bench_gateway does)
with enforcement on, ``X-Tollhouse-User`` trusted, a model priced on output only
(``budget-model``: $6,250 per million output tokens, so a call with ``max_tokens: 16`` costs exactly
$0.10 and its worst case is exactly $0.10) and an untargeted individual ``budget`` rule of $1 a month.
For each of 10 people (fresh budgets) it opens 40 keep-alive sockets, then writes 40 requests at once
and reads the answers: at most 10 may be admitted. Each request asks the mock for 100 ms of latency
(``X-Mock-Latency-Ms``), so admitted calls hold their reservations unsettled while the others are
judged (the report shows the refusals were all answered before any admitted call could settle, and
that the admitted calls overlapped). The recorded spend comes from
``GET /api/v1/spend?scope=person&id=NAME&window=month``; overspend = spend - $1 (must be <= 0).
The same burst is then sent to two gateways sharing the Redis counters and one SQLite store
(``store.url: sqlite:///.../shared.db``, separate ``--data-dir``s): connection i goes to gateway A if i is
even, else B (20 each); the spend API is asked on both (B first, then A, then B again, so each has
flushed its event writer before the other reads the shared store).

Writes ``ledger.json`` and ``ledger.md`` to ``--out`` and prints the tables.

    python benchmarks/bench_ledger.py [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gc
import inspect
import json
import os
import re
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import redis
import redis.asyncio as aioredis

from bench_gateway import (
    ADMIN_TOKEN,
    HOST,
    USER_HEADER,
    Service,
    Target,
    _exit_on_sigterm,
    admin_get,
    background_load,
    free_port,
    gateway_config,
    log_problems,
    machine_info,
    request_bytes,
    start_gateway,
    start_mock,
    start_service,
    stop_service,
)
from bench_gateway import write_results as write_results_named
from bench_policy import timer_overhead_ns
from tollhouse.config import DirectoryConfig, Person, Team
from tollhouse.directory import Directory
from tollhouse.ledger.local import Charge, LocalLedger
from tollhouse.ledger.redis import RedisLedger, RedisReservation
from tollhouse.policy.engine import CallFacts, Cap, CompiledPolicy
from tollhouse.policy.rules import parse_rules

Json = dict[str, Any]

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
RESULT_NAME = "ledger"
BACKEND = ("embedded (local:// in-process counters) and Redis (redis:// counters shared by the gateways; "
           "a private redis-server on loopback)")

# --------------------------------------------------------------------------- (a) reserve + settle

# A gpt-4o-mini call: ~30 prompt tokens estimated, max_tokens 16 ($0.15 / $0.60 per million tokens).
WORST = Charge("openai", spend_nusd=30 * 150 + 16 * 600, input_tokens=30, output_tokens=16)
ACTUAL = Charge("openai", spend_nusd=25 * 150 + 16 * 600, input_tokens=25, output_tokens=16)


@dataclass(frozen=True)
class Variant:
    """One reserve+settle measurement: the team window's metric and how the clock moves."""

    name: str
    team_metric: str  # usage metric of the team cap: tokens_per_minute / tokens_per_hour
    fill_step_ms: int  # clock step while filling the rolling window (one call per bucket)
    fill_calls: int  # calls made at fill_step_ms before the steady phase (untimed)
    step_ms: int  # clock step per call in the steady phase
    warmup: int  # untimed steady-phase calls
    iterations: int  # timed calls
    description: str


FULL_VARIANTS = (
    Variant("3 caps, team tokens/min", "tokens_per_minute", 1000, 60, 1, 5_000, 100_000,
            "clock +1 ms per call (1,000 calls/s); the team's 1-minute window full (about 60 one-second buckets)"),
    Variant("3 caps, frozen clock", "tokens_per_minute", 0, 0, 0, 5_000, 100_000,
            "every call at the same instant: one bucket (the floor)"),
    Variant("3 caps, team tokens/hour", "tokens_per_hour", 6000, 600, 36, 2_000, 20_000,
            "clock +36 ms per call; the team's 1-hour window full (about 600 six-second buckets)"),
)
QUICK_VARIANTS = tuple(
    Variant(v.name, v.team_metric, v.fill_step_ms, v.fill_calls, v.step_ms, v.warmup // 5, v.iterations // 10,
            v.description) for v in FULL_VARIANTS)
# Redis: fewer pairs (each is two round trips to the server).
REDIS_VARIANTS = tuple(replace(v, warmup=1_000, iterations=20_000) for v in FULL_VARIANTS)
REDIS_QUICK_VARIANTS = tuple(replace(v, warmup=200, iterations=2_000) for v in FULL_VARIANTS)


def cap_rules(team_metric: str) -> list[Json]:
    return [
        {"id": "personal-monthly", "scope": "individual",
         "condition": {"type": "budget", "threshold": 1_000_000, "window": "monthly"}, "action": {"type": "hard_stop"}},
        {"id": "team-tokens", "scope": "team",
         "condition": {"type": "usage", "metric": team_metric, "threshold": 10**12}, "action": {"type": "hard_stop"}},
        {"id": "org-monthly", "scope": "org",
         "condition": {"type": "budget", "threshold": 1_000_000_000, "window": "monthly"},
         "action": {"type": "hard_stop"}},
    ]


def build_caps(team_metric: str, now: datetime.datetime) -> tuple[Cap, ...]:
    """The caps the policy engine hands the ledger for alice (team platform, under engineering)."""
    directory = Directory(DirectoryConfig(
        org="bench", teams=(Team(id="engineering", cost_centre="CC-1"), Team(id="platform", parent="engineering")),
        people=(Person(id="alice", team="platform"),)))
    policy = CompiledPolicy(parse_rules(cap_rules(team_metric)))
    call = CallFacts(provider="openai", provider_host="api.openai.com", model="gpt-4o-mini")
    caps = policy.evaluate(call, directory.subject("alice"), now).caps
    if len(caps) != 3:
        raise SystemExit(f"expected 3 caps for alice, the policy gave {len(caps)}")
    return caps


HistoryRow = tuple[int, str, int, int, int, int]  # (bucket start ms, provider, spend, input, output, requests)


async def no_history(scope: str, ident: str, start_ms: int, bucket_ms: int) -> list[HistoryRow]:
    return []


def _hard(caps: tuple[Cap, ...]) -> list[int | None]:
    """The ceilings an enforcing gateway passes: each hard cap's limit."""
    return [cap.units if cap.hard else None for cap in caps]


async def _pair(ledger: LocalLedger, caps: tuple[Cap, ...], ceilings: list[int | None], now_ms: int) -> None:
    """One reserve + settle, as the gateway makes them (reserve is awaited if it is a coroutine)."""
    result: Any = ledger.reserve(caps, WORST, now_ms, ceilings)
    if inspect.isawaitable(result):
        result = await result
    if result.reservation is None:
        raise RuntimeError(f"reserve refused a call: caps {result.over} would go over: {result.usage}")
    ledger.settle(result.reservation, ACTUAL)


async def _redis_pair(ledger: RedisLedger, caps: tuple[Cap, ...], ceilings: list[int | None], now_ms: int) -> None:
    """One reserve + settle on Redis, the settle awaited (``settle`` would only schedule it)."""
    result = await ledger.reserve(caps, WORST, now_ms, ceilings)
    if result.reservation is None:
        raise RuntimeError(f"reserve refused a call: caps {result.over} would go over: {result.usage}")
    assert isinstance(result.reservation, RedisReservation)
    await ledger._settle_now(result.reservation, ACTUAL)  # the coroutine settle() schedules


async def time_variant(variant: Variant, redis_url: str | None = None) -> Json:
    now = datetime.datetime.now(datetime.UTC)
    caps = build_caps(variant.team_metric, now)
    ledger: LocalLedger | RedisLedger
    if redis_url is None:
        ledger = LocalLedger(no_history, billing_day=1, tz=ZoneInfo("UTC"), reservation_ttl_s=900)
        pair: Any = _pair
    else:
        prefix = "bench-" + re.sub(r"[^a-z0-9]+", "-", variant.name.lower()).strip("-")
        ledger = RedisLedger(redis_url, no_history, billing_day=1, tz=ZoneInfo("UTC"), reservation_ttl_s=900,
                             prefix=prefix)
        pair = _redis_pair
    try:
        return await _time_pairs(variant, ledger, pair, caps, int(now.timestamp() * 1000))
    finally:
        if isinstance(ledger, RedisLedger):
            await ledger.close()


async def _time_pairs(variant: Variant, ledger: LocalLedger | RedisLedger, pair: Any, caps: tuple[Cap, ...],
                      now_ms: int) -> Json:
    if isinstance(ledger, LocalLedger):  # Redis loads a counter from the store on its first use
        await ledger.ensure_loaded(caps, now_ms)
    ceilings = _hard(caps)  # the caller's part, made once (as `enforce=True` was passed before)
    for _ in range(variant.fill_calls):
        now_ms += variant.fill_step_ms
        await pair(ledger, caps, ceilings, now_ms)
    for _ in range(variant.warmup):
        now_ms += variant.step_ms
        await pair(ledger, caps, ceilings, now_ms)
    samples: list[int] = []
    append, clock = samples.append, time.perf_counter_ns
    if isinstance(ledger, RedisLedger):
        _redis_admin(ledger.url, lambda c: c.config_resetstat())  # server-side stats of the timed pairs only
    gc_before = [s["collections"] for s in gc.get_stats()]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(variant.iterations):
        now_ms += variant.step_ms
        t0 = clock()
        await pair(ledger, caps, ceilings, now_ms)
        append(clock() - t0)
    cpu_share = (time.process_time() - cpu0) / max(time.perf_counter() - wall0, 1e-9)
    team = next(c for c in caps if c.counter[0] == "team")
    extra: Json = {}
    if isinstance(ledger, LocalLedger):
        backend = "embedded"
        buckets = len(ledger.counter((team.counter[0], team.counter[1], team.window.label), team.window).buckets)
        open_reservations = ledger.open_reservations
    else:
        backend = "redis"
        stats = _redis_admin(ledger.url, lambda c: c.info("commandstats"))
        client = redis.Redis.from_url(ledger.url, socket_timeout=5.0)
        try:
            keys = {ledger._key(cap, now_ms) for cap in caps}  # the counters' key prefixes
            buckets = int(client.zcard(ledger._key(team, now_ms) + ":z"))
            open_reservations = sum(int(client.zcard(k + ":r")) for k in keys)
        finally:
            client.close()
        # time Redis itself spent running the scripts (EVALSHA), per call: the rest of a pair is the round
        # trips and the client's Python
        evalsha = stats.get("cmdstat_evalsha", {})
        extra = {"server_evalsha_calls": evalsha.get("calls"),
                 "server_evalsha_us_per_call": evalsha.get("usec_per_call")}
    return {
        "backend": backend,
        **asdict(variant),
        **percentiles_us(samples),
        "team_window": team.window.label,
        "team_buckets_at_end": buckets,
        "open_reservations_at_end": open_reservations,
        "cpu_share": round(cpu_share, 3),
        "gc_collections": [s["collections"] - b for s, b in zip(gc.get_stats(), gc_before, strict=True)],
        "reserve_is_coroutine": inspect.iscoroutinefunction(ledger.reserve),
        **extra,
    }


def _redis_admin(url: str, op: Any) -> Any:
    client = redis.Redis.from_url(url, socket_timeout=5.0)
    try:
        return op(client)
    finally:
        client.close()


async def redis_ping_us(url: str, n: int) -> Json:
    """Round trip of a PING on the same kind of client the ledger uses (redis.asyncio): the floor of one call."""
    client = aioredis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        for _ in range(200):
            await client.ping()
        samples = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            await client.ping()
            samples.append(time.perf_counter_ns() - t0)
    finally:
        await client.aclose()
    return percentiles_us(samples)


def percentiles_us(values_ns: list[int]) -> Json:
    cuts = statistics.quantiles(values_ns, n=100, method="inclusive")
    return {"n": len(values_ns), "p50_us": round(cuts[49] / 1000, 2), "p90_us": round(cuts[89] / 1000, 2),
            "p99_us": round(cuts[98] / 1000, 2), "mean_us": round(statistics.fmean(values_ns) / 1000, 2),
            "max_us": round(max(values_ns) / 1000, 1)}


def measure_reserve_settle(variants: tuple[Variant, ...], redis_url: str | None = None) -> list[Json]:
    out = []
    label = "embedded" if redis_url is None else "redis"
    for variant in variants:
        print(f"  reserve+settle {label} {variant.name}: {variant.iterations:,} timed pairs", flush=True)
        out.append(asyncio.run(time_variant(variant, redis_url)))
    return out


@contextlib.contextmanager
def private_redis(work_dir: Path) -> Iterator[tuple[str, str]]:
    """A redis-server of our own on a free loopback port, no persistence; stopped on the way out, always.
    Yields its URL and version."""
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    argv = [server, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no", "--dir", str(work_dir)]
    service: Service = start_service("redis", argv, dict(os.environ), work_dir)
    try:
        url = f"redis://{HOST}:{port}/0"
        client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        deadline = time.monotonic() + 10
        while True:
            service.check_alive()
            try:
                version = str(client.info("server")["redis_version"])
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server not ready; last output:\n{service.log_tail()}") from None
                time.sleep(0.05)
        client.close()
        print(f"  redis-server {version} on :{port}", flush=True)
        yield url, version
    finally:
        stop_service(service)


# --------------------------------------------------------------------------- (b) concurrency

BURST = 40
ROUNDS = 10
BUDGET_USD = Decimal(1)
CALL_COST_USD = Decimal("0.10")
BUDGET_MODEL = "budget-model"
BUDGET_BODY: Json = {"model": BUDGET_MODEL, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 16}
DOLLAR_RULE: Json = {"id": "dollar", "scope": "individual",
                     "condition": {"type": "budget", "threshold": 1, "window": "monthly"},
                     "action": {"type": "hard_stop"}}
IO_TIMEOUT_S = 30.0
UPSTREAM_LATENCY_MS = 100  # X-Mock-Latency-Ms: every admitted call stays in flight (reserved, unsettled) this long


def burst_config(people: list[str]) -> Json:
    return {
        "enforcement": "on",
        "admin_token": ADMIN_TOKEN,
        "identity": {"trust_user_header": True},
        "directory": {"org": "bench", "teams": [{"id": "burst", "cost_centre": "CC-burst"}],
                      "people": [{"id": p, "team": "burst"} for p in people]},
        "pricing": {"overrides": [{"provider": "openai", "model": BUDGET_MODEL, "input_mtok": 0,
                                   "output_mtok": 6250}]},
        "policy": {"rules": [DOLLAR_RULE]},
    }


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    done_ns: int


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """One HTTP/1.1 response (Content-Length or chunked)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    headers = {}
    for line in head[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while size := int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16):
            body += (await reader.readexactly(size + 2))[:-2]
        while await reader.readuntil(b"\r\n") != b"\r\n":
            pass
        return Answer(status, headers, bytes(body), time.perf_counter_ns())
    body_bytes = await reader.readexactly(int(headers.get("content-length", "0")))
    return Answer(status, headers, body_bytes, time.perf_counter_ns())


async def fire_burst(targets: list[Target], user: str) -> tuple[list[Answer], int]:
    """Open BURST keep-alive sockets (socket i to targets[i % len(targets)]), then write one request on each
    back to back (no await in between) and read every answer. Returns the answers (in socket order) and
    the perf_counter_ns of the first write."""
    conn_targets = [targets[i % len(targets)] for i in range(BURST)]
    conns = await asyncio.gather(*(asyncio.open_connection(HOST, t.port) for t in conn_targets))
    try:
        for _, writer in conns:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.sleep(0.2)  # let the gateway accept every connection before the burst
        headers = {USER_HEADER: user, "X-Mock-Latency-Ms": str(UPSTREAM_LATENCY_MS)}
        requests = [request_bytes(t, BUDGET_BODY, headers) for t in conn_targets]
        start = time.perf_counter_ns()
        for (_, writer), request in zip(conns, requests, strict=True):
            writer.write(request)
        answers = await asyncio.wait_for(asyncio.gather(*(read_answer(r) for r, _ in conns)), IO_TIMEOUT_S)
        return list(answers), start
    finally:
        for _, writer in conns:
            writer.close()
        for _, writer in conns:
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def _error_code(answer: Answer) -> str | None:
    with contextlib.suppress(ValueError, AttributeError):
        error = json.loads(answer.body).get("error", {})
        return str(error.get("code") or error.get("type"))
    return None


def run_round(targets: list[Target], bases: list[str], user: str) -> Json:
    answers, start_ns = asyncio.run(fire_burst(targets, user))
    statuses = Counter(a.status for a in answers)
    admitted_by_gateway = [sum(1 for i, a in enumerate(answers) if a.status == 200 and i % len(targets) == g)
                           for g in range(len(targets))]
    admitted_ms = [(a.done_ns - start_ns) / 1e6 for a in answers if a.status == 200]
    refused_ms = [(a.done_ns - start_ns) / 1e6 for a in answers if a.status != 200]
    refused_codes = Counter(_error_code(a) for a in answers if a.status != 200)
    path = f"/api/v1/spend?scope=person&id={user}&window=month"
    for base in reversed(bases[1:]):
        admin_get(base, path)  # the spend API flushes that gateway's event writer into the shared store
    answers_by_gateway = [admin_get(base, path) for base in bases]
    status, spend = answers_by_gateway[0]
    caps = spend.get("caps") or []
    dollar: Json = next((c for c in caps if c.get("rule_id") == DOLLAR_RULE["id"]), {})
    spend_usd = Decimal(str(spend.get("spend_usd", "nan")))
    by_gateway = []
    for g_status, g_spend in answers_by_gateway:
        g_dollar: Json = next((c for c in g_spend.get("caps") or [] if c.get("rule_id") == DOLLAR_RULE["id"]), {})
        g_usd = float(Decimal(str(g_spend.get("spend_usd", "nan"))))
        by_gateway.append({"spend_api_status": g_status, "spend_usd": g_usd,
                           "recorded_requests": g_spend.get("requests"), "ledger_used_usd": g_dollar.get("used")})
    return {
        "person": user,
        "admitted": statuses.get(200, 0),
        "admitted_by_gateway": admitted_by_gateway,
        "refused": sum(n for s, n in statuses.items() if s != 200),
        "statuses": {str(s): n for s, n in sorted(statuses.items())},
        "refusal_codes": {str(c): n for c, n in refused_codes.items()},
        "burst_ms": round(max(a.done_ns for a in answers) / 1e6 - start_ns / 1e6, 2),
        "first_admitted_answer_ms": round(min(admitted_ms), 2) if admitted_ms else None,
        "last_admitted_answer_ms": round(max(admitted_ms), 2) if admitted_ms else None,
        "last_refusal_ms": round(max(refused_ms), 2) if refused_ms else None,
        # every refusal answered before the first admitted call could settle: the refusals were decided
        # against open reservations, not against settled spend
        "refused_while_reserved": bool(refused_ms and admitted_ms and max(refused_ms) < min(admitted_ms)),
        # serialised, 10 admitted calls would take >= 10 x the upstream latency
        "admitted_overlapped": bool(admitted_ms and max(admitted_ms) < 2 * UPSTREAM_LATENCY_MS),
        "spend_api_status": status,
        "spend_usd": float(spend_usd),
        "recorded_requests": spend.get("requests"),
        "ledger_used_usd": dollar.get("used"),
        "overspend_usd": float(spend_usd - BUDGET_USD),
        "by_gateway": by_gateway,
    }


def measure_concurrency(rounds: int, work_dir: Path, redis_url: str | None = None) -> Json:
    """One gateway on the embedded ledger, or (redis_url) two gateways sharing those Redis counters and one
    SQLite store, each with its own data directory."""
    people = [f"burst-{i:02d}" for i in range(rounds)]
    work_dir.mkdir(parents=True, exist_ok=True)
    config = burst_config(people)
    names = ["gateway"]
    if redis_url is not None:
        config |= {"counters": {"url": redis_url}, "store": {"url": f"sqlite:///{work_dir / 'shared.db'}"}}
        names = ["gateway-a", "gateway-b"]
    with contextlib.ExitStack() as stack:
        mock_port = free_port()
        mock = start_mock(mock_port, work_dir)
        stack.callback(stop_service, mock)
        gateways, targets = [], []
        for name in names:
            port = free_port()
            gateway = start_gateway(port, gateway_config(mock_port, config), work_dir, name)
            stack.callback(stop_service, gateway)
            gateways.append(gateway)
            targets.append(Target(name, port, "/openai/v1/chat/completions"))
        ports = ", ".join(f"{t.name} on :{t.port}" for t in targets)
        print(f"  mock on :{mock_port}, {ports}; {rounds} rounds of {BURST} simultaneous calls", flush=True)
        bases = [f"http://{HOST}:{t.port}" for t in targets]
        results = [run_round(targets, bases, person) for person in people]
        health = []
        for gateway, base in zip(gateways, bases, strict=True):
            gateway.check_alive()
            _, h = admin_get(base, "/healthz")
            health.append({"gateway": gateway.name, **{k: h.get(k) for k in ("events_written", "events_pending")}})
        found = [(g.name, log_problems(g)) for g in gateways]
    return {"counters": redis_url or "local://", "store": "shared sqlite" if redis_url else "gateway data dir",
            "gateways": names, "rounds": results, "gateway_health": health,
            "gateway_log_problems": {"count": sum(f["count"] for _, f in found),
                                     "first": [f"{n}: {ln}" for n, f in found for ln in f["first"]]}}


def concurrency_problems(conc: Json, label: str) -> list[str]:
    expected = int(BUDGET_USD / CALL_COST_USD)
    out = []
    for r in conc["rounds"]:
        spends = {(g["spend_usd"], g["recorded_requests"]) for g in r["by_gateway"]}
        if len(spends) > 1:
            out.append(f"{label} {r['person']}: the gateways' spend APIs disagree (spend $, requests): "
                       f"{sorted(spends)}")
        if r["overspend_usd"] > 0:
            out.append(f"{label} {r['person']}: overspend ${r['overspend_usd']:.2f}")
        if r["admitted"] != expected:
            out.append(f"{label} {r['person']}: {r['admitted']} admitted, expected {expected}")
        if set(r["statuses"]) - {"200", "403"}:
            out.append(f"{label} {r['person']}: unexpected statuses {r['statuses']}")
        if not r["admitted_overlapped"]:
            out.append(f"{label} {r['person']}: the admitted calls did not overlap (answered "
                       f"{r['first_admitted_answer_ms']}-"
                       f"{r['last_admitted_answer_ms']} ms with a {UPSTREAM_LATENCY_MS} ms upstream)")
        if r["recorded_requests"] != r["admitted"]:
            out.append(f"{label} {r['person']}: spend API counts {r['recorded_requests']} requests, "
                       f"{r['admitted']} admitted")
    return out


# --------------------------------------------------------------------------- report


def micro_table(rows: list[Json]) -> str:
    out = ["| backend | variant | team window | buckets | pairs timed | p50 µs | p99 µs | mean µs |",
           "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['backend']} | {r['name']} | {r['team_window']} | {r['team_buckets_at_end']} | {r['n']:,} | "
                   f"{r['p50_us']:.2f} | {r['p99_us']:.2f} | {r['mean_us']:.2f} |")
    return "\n".join(out)


def concurrency_table(conc: Json) -> str:
    split = len(conc["gateways"]) > 1
    admitted_head = "admitted (A / B)" if split else "admitted"
    spend_head = "recorded spend $ (A / B)" if split else "recorded spend $"
    out = [f"| round | person | {admitted_head} | refused (403) | refusal code | last refusal ms | "
           f"admitted answered ms | {spend_head} | ledger used $ | overspend $ |",
           "|---:|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for i, r in enumerate(conc["rounds"], 1):
        used = "n/a" if r["ledger_used_usd"] is None else f"{r['ledger_used_usd']:.2f}"
        codes = ", ".join(f"{c} ×{n}" for c, n in r["refusal_codes"].items()) or "-"
        admitted = (f"{r['first_admitted_answer_ms']:.0f}-{r['last_admitted_answer_ms']:.0f}"
                    if r["first_admitted_answer_ms"] is not None else "-")
        last_refusal = "-" if r["last_refusal_ms"] is None else f"{r['last_refusal_ms']:.1f}"
        count = str(r["admitted"])
        spend = f"{r['spend_usd']:.2f}"
        if split:
            count += " (" + " / ".join(str(n) for n in r["admitted_by_gateway"]) + ")"
            spend = " / ".join(f"{g['spend_usd']:.2f}" for g in r["by_gateway"])
        out.append(f"| {i} | {r['person']} | {count} | {r['statuses'].get('403', 0)} | {codes} | "
                   f"{last_refusal} | {admitted} | {spend} | {used} | {r['overspend_usd']:+.2f} |")
    return "\n".join(out)


def _concurrency_notes(conc: Json) -> list[str]:
    rounds = conc["rounds"]
    health = "; ".join(f"{h['gateway']} wrote {h.get('events_written')} events (pending {h.get('events_pending')})"
                       for h in conc["gateway_health"])
    return [
        f"- 'last refusal' earlier than the first admitted answer in "
        f"{sum(r['refused_while_reserved'] for r in rounds)} of {len(rounds)} rounds "
        "(every refusal decided against open reservations). "
        f"Totals: {sum(r['admitted'] for r in rounds)} admitted, {sum(r['refused'] for r in rounds)} refused, "
        f"worst overspend ${max(r['overspend_usd'] for r in rounds):+.2f}.",
        f"- {health}; gateway log warnings/errors: {conc['gateway_log_problems']['count']}.",
    ]


def markdown_report(results: Json) -> str:
    m, bg = results["machine"], results["background_load"]
    conc, shared, micro = results["concurrency"], results["concurrency_redis"], results["reserve_settle"]
    problems = results["problems"]
    local = [r for r in micro if r["backend"] == "embedded"]
    coroutine = local[0]["reserve_is_coroutine"] if local else False
    lines = [
        "# Ledger benchmark", "",
        f"Backend: **{BACKEND}**. Redis: redis-server {results['redis']['version']} on loopback, same machine, "
        "`--save '' --appendonly no`.", "",
        "## Reserve + settle per call", "",
        micro_table(micro), "",
        f"- 3 caps per call (as the policy engine builds them for one person): personal monthly budget "
        "($1,000,000, untargeted individual `budget`), team token window (`usage` at team scope, 10^12 tokens), "
        "org monthly budget ($10^9); embedded: `LocalLedger.reserve(...)` "
        f"({'a coroutine, awaited' if coroutine else 'synchronous'}) + `settle(...)` timed as a pair with "
        "`perf_counter_ns`, one pair per sample, after `ensure_loaded` (loader with no history) and untimed "
        "warm-up. Worst case reserved: 30 input + 16 output tokens of gpt-4o-mini; settled: 25 + 16.",
        "- redis: `RedisLedger` with the same caps and a loader with no history (a key prefix per variant, so "
        "each starts empty); `await reserve(...)` + `await _settle_now(...)` timed as a pair (`settle` itself "
        "only schedules `_settle_now` as a task; awaiting it puts the settle's round trip in the sample). Each "
        "pair is two Lua script calls (EVALSHA) over one loopback connection from one asyncio client; the "
        "client's Python time is included. 'buckets' for redis = members of the team counter's `:z` set.",
        "- Where a redis pair's time goes: one `PING` on the same kind of client (`redis.asyncio`, one "
        f"connection) takes p50 {results['redis']['asyncio_ping']['p50_us']:.0f} µs / p99 "
        f"{results['redis']['asyncio_ping']['p99_us']:.0f} µs, so two round trips cost about twice that before any "
        "script runs; Redis's own time per script call (`INFO commandstats`, EVALSHA `usec_per_call`, reserve "
        "and settle averaged): " + ", ".join(f"{r['name']} {r['server_evalsha_us_per_call']} µs" for r in micro
                                            if r["backend"] == "redis") + ".",
        "- Variants: " + "; ".join(f"**{r['name']}**: {r['description']}" for r in local) + ". A rolling "
        "window's counter keeps one bucket per 1/600 of the window (at least 1 s) and every reserve sums the "
        "buckets in the window, so the cost grows with the number of live buckets.",
        f"- Timer overhead {results['timer_overhead_ns']} ns per sample, included. GC on. The timed loops got "
        + ", ".join(f"{r['cpu_share'] * 100:.0f} %" for r in micro) + " of a CPU (embedded: below ~95 % means "
        "other processes preempted the benchmark; redis: the rest of the time the client waits on the server).",
        "", "## Concurrent calls against one budget: one gateway, embedded ledger", "",
        concurrency_table(conc), "",
        f"- Gateway: enforcement on, `X-Tollhouse-User` trusted, `{BUDGET_MODEL}` priced $0 input / $6,250 per "
        "million output tokens (`pricing.overrides`), so `max_tokens: 16` costs exactly $0.10 (worst case and "
        "actual: the mock answers 16 tokens); rule `dollar`: untargeted individual `budget` of $1 monthly, "
        f"hard_stop. Each round: a fresh person, {BURST} keep-alive sockets opened first, then {BURST} requests "
        "written back to back from one event loop; at most 10 can fit in $1. Each request asks the mock for "
        f"{UPSTREAM_LATENCY_MS} ms of upstream latency (`X-Mock-Latency-Ms`), so an admitted call holds its "
        "reservation unsettled that long: 'admitted answered ms' (from the first write) below "
        f"{2 * UPSTREAM_LATENCY_MS} ms means the admitted calls were in flight together (serialised, 10 would "
        f"take ≥ {10 * UPSTREAM_LATENCY_MS} ms), and a 'last refusal' earlier than the first admitted answer "
        "means every refusal was decided against open reservations, before any call had settled.",
        "- Recorded spend: `GET /api/v1/spend?scope=person&id=NAME&window=month` (`spend_usd` from the event "
        "store; 'ledger used' = the `dollar` cap's `used` in the same answer); overspend = spend - $1.",
        *_concurrency_notes(conc),
        "", "## Concurrent calls against one budget: two gateways, one Redis", "",
        concurrency_table(shared), "",
        f"- Same config, burst and checks, plus `counters.url: {shared['counters']}` and one shared "
        "`store.url: sqlite:///.../shared.db`; two `tollhouse serve` processes (A and B, own `--data-dir`s). "
        f"Socket i of the {BURST} goes to A if i is even, else B ({BURST // 2} each), all written back to back. "
        "'admitted (A / B)' = 200s answered by each gateway. Spend asked on both gateways (B, then A, then B "
        "again: each call flushes that gateway's event writer into the shared store); 'recorded spend' shows A's "
        "and B's answers, 'ledger used' and 'overspend' are from A's.",
        *_concurrency_notes(shared),
        "",
        "- Checks: " + ("all passed (no overspend, exactly 10 admitted per round, only 200/403 answers, the "
                        "admitted calls overlapped, the spend API counts every admitted call, both gateways' spend "
                        "APIs agree)." if not problems else "**FAILED**: " + "; ".join(problems)),
        "",
        f"Run {m['date']} ({'quick' if results['quick'] else 'full'}): tollhouse {m['tollhouse']} ({m['git_commit']}), "
        f"Python {m['python']}, kernel {m['kernel']}; {m['nproc']} CPUs ({m['cpu_model']}), shared by the client, "
        f"redis-server, the mock and the gateway(s). Before the run: {bg.get('cpu_busy_pct', '?')} % CPU busy, load "
        f"average {bg['loadavg_1m']}.",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short smoke run (a tenth of the timed pairs, 3 rounds)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for ledger.{json,md}")
    return parser.parse_args(argv)


def write_results_as(results: Json, out_dir: Path) -> tuple[Path, Path]:
    return write_results_named(results, out_dir, RESULT_NAME, markdown_report)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print(f"ledger benchmark, backends: {BACKEND}", flush=True)
    before = background_load()
    rounds = 3 if args.quick else ROUNDS
    try:
        overhead = timer_overhead_ns()
        micro = measure_reserve_settle(QUICK_VARIANTS if args.quick else FULL_VARIANTS)
        with tempfile.TemporaryDirectory(prefix="tollhouse-ledger-") as tmp:
            conc = measure_concurrency(rounds, Path(tmp) / "embedded")
            with private_redis(Path(tmp)) as (redis_url, redis_version):
                ping = asyncio.run(redis_ping_us(redis_url, 2_000 if args.quick else 20_000))
                micro += measure_reserve_settle(REDIS_QUICK_VARIANTS if args.quick else REDIS_VARIANTS, redis_url)
                shared = measure_concurrency(rounds, Path(tmp) / "redis", redis_url)
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    problems = concurrency_problems(conc, "one gateway:") + concurrency_problems(shared, "two gateways, one Redis:")
    results: Json = {
        "benchmark": RESULT_NAME,
        "backend": BACKEND,
        "redis": {"version": redis_version, "server": "private redis-server on 127.0.0.1, --save '' --appendonly no",
                  "asyncio_ping": ping},
        "quick": args.quick,
        "machine": machine_info(None),
        "background_load": before,
        "loadavg_after_1m": round(os.getloadavg()[0], 2),
        "timer_overhead_ns": overhead,
        "reserve_settle": micro,
        "concurrency": conc,
        "concurrency_redis": shared,
        "problems": problems,
    }
    json_path, md_path = write_results_as(results, args.out)
    print(f"\nbackends: {BACKEND}\n\nreserve + settle per call\n{micro_table(micro)}")
    print(f"redis.asyncio PING round trip: p50 {ping['p50_us']:.0f} µs, p99 {ping['p99_us']:.0f} µs; Redis time per "
          "script call (EVALSHA usec_per_call): " + ", ".join(f"{r['name']} {r['server_evalsha_us_per_call']} µs"
                                                             for r in micro if r["backend"] == "redis"))
    print(f"\n{BURST} simultaneous calls per person against a $1 budget ($0.10 per call): one gateway, embedded "
          f"ledger\n{concurrency_table(conc)}")
    print(f"\nthe same burst on two gateways, one Redis (alternating, {BURST // 2} each)\n{concurrency_table(shared)}")
    for problem in problems:
        print(f"CHECK FAILED: {problem}")
    for label, c in (("one gateway", conc), ("two gateways", shared)):
        if c["gateway_log_problems"]["count"]:
            first = c["gateway_log_problems"]["first"]
            print(f"gateway log ({label}): " + " | ".join(re.sub(r"\s+", " ", ln)[:200] for ln in first))
    print(f"\nwrote {json_path} and {md_path}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

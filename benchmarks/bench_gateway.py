#!/usr/bin/env python3
"""Gateway core benchmark: what does routing a call through tollhouse cost, and what do policy and budgets add?

Starts one ``tollhouse mock-provider`` and, one after the other (never two at once, so they do not
compete), a ``tollhouse serve`` per scenario, each pointed at the same mock on free loopback ports:

* ``observe`` -- no rules, observe mode (the default config);
* ``rules-1000`` -- ``enforcement: on`` and 1,000 rules over a directory of 1,000 people in 50 teams
  and 40 projects: org / team / project / individual model allow- and denylists, provider lists,
  redirects that do not fire for the benchmark's model, COST_CENTRE_REQUIRED (satisfied by the
  directory) and time windows that allow the call; ``identity.trust_user_header: true`` and every
  request names a random person in ``X-Tollhouse-User``, so every call is judged, ALLOWED and forwarded;
* ``rules-1000+budget`` -- the same plus a personal monthly budget of $1,000,000 per person
  (an untargeted individual ``budget`` rule) and a per-team token window (``usage``
  tokens_per_minute at team scope, far too large to refuse): every call is reserved in and settled
  to the embedded ledger.

For every scenario it measures the same small chat completion:

* latency at concurrency 1: sequential requests alternating between DIRECT (client -> mock) and the
  GATEWAY (client -> gateway -> mock), each on its own persistent keep-alive HTTP/1.1 connection over a
  raw socket, timed with ``time.perf_counter_ns``; "added" is gateway minus direct of the same run.
  Scenarios with a directory first send one untimed-for-the-table call per person (reported apart
  as the "first call per person" figure: cold per-subject caches, ledger counters loaded from the store);
* throughput at concurrency 32 via the gateway: ``wrk -t2 -c32`` with a Lua script that picks each
  request from a pre-built pool (one request per person), or an asyncio raw-socket client with 32
  connections when wrk is not installed; the ratio to the ``observe`` throughput is reported.

Scenarios alternate over ``--rounds`` rounds (default 3), a fresh gateway process each time: round 1
measures everything, later rounds repeat the throughput run (after the first call per person), and the
report gives the median throughput and the median per-round ratio to ``observe``, since the machine's
background load drifts. ``directory-1000`` (the directory and the trusted header, no rules) can be
added with ``--scenarios`` as a diagnostic.

The ``observe`` scenario also keeps the direct-to-mock throughput baseline and the streaming time to
first byte (a streamed chat completion, from sending the request to the first byte of the first SSE
event, and to the end of the stream). The mock runs with ``--chunk-delay-ms 2``, which only delays the
stream chunks after the first one, so the non-stream measurements are unaffected. Everything (client,
wrk, mock, gateway) shares the machine's CPUs; the report says so.

After each scenario it checks what the gateway recorded: ``tollhouse_calls_total`` and the events
written match the calls answered (wrk does not count the up to 32 requests in flight when it stops),
no call was blocked (``tollhouse_calls_total{decision="block"}`` absent or 0), no non-2xx answer,
and, with budgets, that the ledger counted the calls (``/api/v1/spend``). It writes
``gateway-core.json`` and ``gateway-core.md`` to ``--out`` and exits 1 if a check failed.

    python benchmarks/bench_gateway.py [--quick] [--out benchmarks/results] [--no-wrk]
                                       [--scenarios observe,rules-1000,rules-1000+budget] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from tollhouse.config import ConfigError, Settings, parse_settings
from tollhouse.directory import Directory
from tollhouse.policy.engine import CallFacts, CompiledPolicy
from tollhouse.policy.rules import parse_rules

HOST = "127.0.0.1"
API_KEY = "sk-bench"
ADMIN_TOKEN = "bench-token"
CHUNK_DELAY_MS = 2.0
CONCURRENCY = 32
WRK_THREADS = 2
READY_TIMEOUT_S = 60.0
IO_TIMEOUT_S = 30.0
BENCH_MODEL = "gpt-4o-mini"
CHAT_BODY: dict[str, Any] = {
    "model": BENCH_MODEL,
    "messages": [{"role": "user", "content": "hello there"}],
    "max_tokens": 16,
}
STREAM_BODY: dict[str, Any] = {**CHAT_BODY, "stream": True}
USER_HEADER = "X-Tollhouse-User"
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
RESULT_NAME = "gateway-core"
THROUGHPUT_TARGET = 0.85  # a scenario should keep at least this share of the observe throughput
SEED = 20_260_101

Json = dict[str, Any]


# --------------------------------------------------------------------------- plan & targets


@dataclass(frozen=True)
class Plan:
    """How much of each measurement to do."""

    latency_warmup: int
    latency_n: int
    load_seconds: int
    stream_warmup: int
    stream_n: int


FULL_PLAN = Plan(latency_warmup=200, latency_n=2000, load_seconds=10, stream_warmup=20, stream_n=300)
QUICK_PLAN = Plan(latency_warmup=50, latency_n=300, load_seconds=2, stream_warmup=5, stream_n=40)


@dataclass(frozen=True)
class Target:
    """Where a chat completion is sent: the mock itself or the gateway's OpenAI route."""

    name: str
    port: int
    path: str

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{self.path}"


def request_bytes(target: Target, body: Json, extra_headers: dict[str, str] | None = None) -> bytes:
    """The exact bytes of one keep-alive POST of ``body`` to ``target``."""
    payload = json.dumps(body, separators=(",", ":")).encode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in (extra_headers or {}).items())
    head = (
        f"POST {target.path} HTTP/1.1\r\n"
        f"Host: {HOST}:{target.port}\r\n"
        f"Authorization: Bearer {API_KEY}\r\n"
        "Content-Type: application/json\r\n"
        f"{extra}"
        f"Content-Length: {len(payload)}\r\n"
        "Connection: keep-alive\r\n"
        "\r\n"
    )
    return head.encode() + payload


def request_pool(target: Target, body: Json, users: Sequence[str]) -> list[bytes]:
    """One request per user (naming them in X-Tollhouse-User), or one plain request without users."""
    if not users:
        return [request_bytes(target, body)]
    return [request_bytes(target, body, {USER_HEADER: user}) for user in users]


# --------------------------------------------------------------------------- scenarios: org and rules

N_PEOPLE = 1_000
N_PROJECTS = 40
TOP_TEAMS = 5  # each with 3 children, each of those with 2: 5 + 15 + 30 = 50 teams
MID_PER_TOP = 3
LEAF_PER_MID = 2
N_RULES = 1_000
TEAM_RULES_PER_TEAM = 3
PROJECT_RULES_PER_PROJECT = 2
PERSONAL_BUDGET_USD = 1_000_000
TEAM_TOKENS_PER_MINUTE = 10**12
MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o3", "o4-mini", "gpt-4", "o1",
          "claude-sonnet-4-20250514", "claude-opus-4-20250514", "claude-3-5-haiku-latest",
          "claude-3-opus-20240229", "gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.0-flash", "gemini-1.5-pro")
LEGACY = ("gpt-4", "o1", "claude-3-opus-20240229", "gemini-1.5-pro")
SUBSTITUTES = {"gpt-4": "gpt-4.1-mini", "o1": "o4-mini", "o3": "o4-mini", "claude-3-opus-20240229":
               "claude-sonnet-4-20250514", "claude-opus-4-20250514": "claude-sonnet-4-20250514",
               "gemini-2.5-pro": "gemini-2.5-flash", "gemini-1.5-pro": "gemini-2.0-flash"}
TIMEZONES = ("UTC", "Europe/London", "America/New_York", "Asia/Kolkata", "America/Los_Angeles")
ACTIONS = ("hard_stop", "soft_cap", "alert", "log")
ACTION_WEIGHTS = (40, 15, 30, 15)
TEAM_MIX = {"MODEL_ALLOWLIST": 20, "MODEL_DENYLIST": 15, "redirect": 12, "PROVIDER_ALLOWLIST": 10,
            "PROVIDER_DENYLIST": 8, "allowed_hours": 15, "blackout": 5, "COST_CENTRE_REQUIRED": 15}
PROJECT_MIX = {"MODEL_ALLOWLIST": 30, "MODEL_DENYLIST": 20, "redirect": 15, "PROVIDER_DENYLIST": 10,
               "allowed_hours": 10, "COST_CENTRE_REQUIRED": 15}
PERSON_MIX = {"MODEL_ALLOWLIST": 30, "MODEL_DENYLIST": 30, "redirect": 15, "PROVIDER_DENYLIST": 10,
              "allowed_hours": 10, "blackout": 5}


@dataclass(frozen=True)
class Scenario:
    """One gateway configuration, measured in its own gateway process."""

    name: str
    description: str
    config: Json  # everything but `providers`
    users: tuple[str, ...]  # rotated over in X-Tollhouse-User; () = no header
    baseline: bool  # also measure direct throughput and streaming (observe only)
    without_budgets: str | None = None  # the same configuration minus the budget rules (issue 5's comparison)

    @property
    def rule_count(self) -> int:
        return len(self.config.get("policy", {}).get("rules", ()))


def build_directory(rng: random.Random) -> Json:
    """50 teams in a tree three deep (every top-level team has a cost centre, so everyone below has
    one too), 40 projects, 1,000 people each in a team, some with projects."""
    teams: list[Json] = []
    for i in range(TOP_TEAMS):
        top = f"t{i}"
        teams.append({"id": top, "cost_centre": f"CC-{top}"})
        for j in range(MID_PER_TOP):
            mid = f"{top}.{j}"
            teams.append({"id": mid, "parent": top, **({"cost_centre": f"CC-{mid}"} if rng.random() < 0.5 else {})})
            for k in range(LEAF_PER_MID):
                leaf = f"{mid}.{k}"
                teams.append({"id": leaf, "parent": mid,
                              **({"cost_centre": f"CC-{leaf}"} if rng.random() < 0.3 else {})})
    below_top = [t["id"] for t in teams if "parent" in t]
    projects = [{"id": f"p{i:02d}", "team": rng.choice(below_top),
                 **({"cost_centre": f"CC-p{i:02d}"} if rng.random() < 0.6 else {})} for i in range(N_PROJECTS)]
    project_ids = [p["id"] for p in projects]
    people = []
    for i in range(N_PEOPLE):
        n_projects = rng.choices((0, 1, 2), weights=(40, 45, 15))[0]
        people.append({"id": f"u{i:04d}", "team": rng.choice(below_top),
                       "projects": rng.sample(project_ids, n_projects),
                       "kind": "contractor" if rng.random() < 0.1 else "employee"})
    return {"org": "bench", "teams": teams, "projects": projects, "people": people}


def _action(rng: random.Random) -> Json:
    return {"type": rng.choices(ACTIONS, weights=ACTION_WEIGHTS)[0], "message": "benchmark rule"}


def _hours(zone_name: str, now: datetime.datetime, start_h: int, end_h: int) -> str:
    """An hour range relative to the current local hour in a zone, e.g. now-6h .. now+6h."""
    hour = now.astimezone(ZoneInfo(zone_name)).hour
    return f"{(hour + start_h) % 24:02d}:00-{(hour + end_h) % 24:02d}:00"


def _rule_body(kind: str, rng: random.Random, now: datetime.datetime) -> tuple[Json, Json]:
    """(condition, action) of a rule that does NOT fire for BENCH_MODEL on openai at `now`."""
    if kind == "MODEL_ALLOWLIST":  # the benchmark's model is always approved
        others = [m for m in MODELS if m != BENCH_MODEL and m not in LEGACY and rng.random() < 0.6]
        return {"type": "MODEL_ALLOWLIST", "models": [BENCH_MODEL, *others]}, _action(rng)
    if kind == "MODEL_DENYLIST":
        denied = rng.sample([m for m in MODELS if m != BENCH_MODEL], rng.randint(1, 4))
        return {"type": "MODEL_DENYLIST", "models": denied}, _action(rng)
    if kind == "redirect":
        replaced = rng.sample(sorted(SUBSTITUTES), rng.randint(1, 2))
        substitute = SUBSTITUTES[replaced[0]]
        replaced = [m for m in replaced if m != substitute]
        return {"type": "model", "operator": "in", "models": replaced}, {"type": "redirect", "model": substitute}
    if kind == "PROVIDER_ALLOWLIST":
        return {"type": "PROVIDER_ALLOWLIST",
                "providers": ["openai", "anthropic", *(["gemini"] if rng.random() < 0.7 else [])]}, _action(rng)
    if kind == "PROVIDER_DENYLIST":
        return {"type": "PROVIDER_DENYLIST", "providers": [rng.choice(["mistral", "api.mistral.ai", "groq"])]}, \
            _action(rng)
    if kind == "allowed_hours":  # AI use allowed from 6 h before now to 6 h after, in some zone
        tz = rng.choice(TIMEZONES)
        return ({"type": "time", "operator": "outside",
                 "window": {"days": "mon-sun", "hours": _hours(tz, now, -6, 6), "timezone": tz}}, _action(rng))
    if kind == "blackout":  # a maintenance slot 8 to 10 hours from now
        tz = rng.choice(TIMEZONES)
        return ({"type": "time", "operator": "inside",
                 "window": {"days": "mon-sun", "hours": _hours(tz, now, 8, 10), "timezone": tz}},
                {"type": "hard_stop", "message": "maintenance window"})
    if kind == "COST_CENTRE_REQUIRED":
        return {"type": "COST_CENTRE_REQUIRED"}, {"type": "hard_stop"}
    raise ValueError(f"unknown rule kind {kind!r}")


def _pick(mix: dict[str, int], rng: random.Random) -> str:
    return rng.choices(list(mix), weights=list(mix.values()))[0]


def build_rules(directory: Json, rng: random.Random, now: datetime.datetime) -> list[Json]:
    """N_RULES rules: a few org rules, 3 per team, 2 per project, one each for most people."""
    rules: list[Json] = []

    def add(scope: str, target_key: str | None, target: str | None, kind: str) -> None:
        condition, action = _rule_body(kind, rng, now)
        rule: Json = {"id": f"r{len(rules):04d}-{scope}-{kind.lower()}", "scope": scope, "condition": condition,
                      "action": action}
        if target_key is not None:
            rule[target_key] = target
        rules.append(rule)

    for kind in ("MODEL_ALLOWLIST", "MODEL_DENYLIST", "redirect", "PROVIDER_ALLOWLIST", "PROVIDER_DENYLIST",
                 "allowed_hours", "blackout", "COST_CENTRE_REQUIRED"):
        add("org", None, None, kind)
    for team in directory["teams"]:
        for _ in range(TEAM_RULES_PER_TEAM):
            add("team", "team", team["id"], _pick(TEAM_MIX, rng))
    for project in directory["projects"]:
        for _ in range(PROJECT_RULES_PER_PROJECT):
            add("project", "project", project["id"], _pick(PROJECT_MIX, rng))
    people = rng.sample([p["id"] for p in directory["people"]], N_RULES - len(rules))
    for person in people:
        add("individual", "subject", person, _pick(PERSON_MIX, rng))
    return rules


BUDGET_RULES: list[Json] = [
    {"id": "personal-monthly", "scope": "individual",
     "condition": {"type": "budget", "threshold": PERSONAL_BUDGET_USD, "window": "monthly"},
     "action": {"type": "hard_stop", "message": "personal monthly budget"}},
    {"id": "team-tokens", "scope": "team",
     "condition": {"type": "usage", "metric": "tokens_per_minute", "threshold": TEAM_TOKENS_PER_MINUTE},
     "action": {"type": "hard_stop", "message": "team token window"}},
]


def build_scenarios(names: Sequence[str], now: datetime.datetime) -> list[Scenario]:
    rng = random.Random(SEED)
    directory = build_directory(rng)
    rules = build_rules(directory, rng, now)
    users = tuple(p["id"] for p in directory["people"])
    governed: Json = {"enforcement": "on", "identity": {"trust_user_header": True}, "directory": directory}
    all_scenarios = {
        "observe": Scenario("observe", "no rules, observe mode (the default config)", {}, (), baseline=True),
        "directory-1000": Scenario(
            "directory-1000", f"diagnostic: X-Tollhouse-User trusted and the {len(users):,}-person directory, "
            "enforcement on, no rules", governed, users, baseline=False),
        "rules-1000": Scenario(
            "rules-1000", f"enforcement on, {len(rules):,} rules, {len(users):,} people in "
            f"{len(directory['teams'])} teams, X-Tollhouse-User trusted",
            {**governed, "policy": {"rules": rules}}, users, baseline=False),
        "rules-1000+budget": Scenario(
            "rules-1000+budget", f"rules-1000 plus a ${PERSONAL_BUDGET_USD:,} personal monthly budget and a "
            f"{TEAM_TOKENS_PER_MINUTE:.0e} tokens/minute team window (reserved and settled every call)",
            {**governed, "policy": {"rules": [*rules, *BUDGET_RULES]}}, users, baseline=False,
            without_budgets="rules-1000"),
        "budget-only": Scenario(
            "budget-only", f"the personal budget and team token window alone (compare with directory-1000: "
            f"the same {len(users):,}-person directory, enforcing, no rules)",
            {**governed, "policy": {"rules": list(BUDGET_RULES)}}, users, baseline=False,
            without_budgets="directory-1000"),
    }
    unknown = [n for n in names if n not in all_scenarios]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(all_scenarios)}")
    return [all_scenarios[n] for n in names]


def rule_mix(scenario: Scenario) -> dict[str, int]:
    """How many rules of each scope and condition type a scenario has."""
    out: dict[str, int] = {}
    for rule in scenario.config.get("policy", {}).get("rules", ()):
        key = f"{rule['scope']}:{rule['condition']['type']}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def preflight(scenario: Scenario, config: Json, now: datetime.datetime) -> Json:
    """Validate the config as the gateway will, and judge a call for every person offline: each must be
    allowed with no violation at all (else the benchmark would measure blocks or warnings)."""
    try:
        settings: Settings = parse_settings(config, f"scenario {scenario.name}")
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    if not scenario.users:
        return {"subjects_checked": 0, "caps_per_call": 0}
    policy = CompiledPolicy(parse_rules(list(settings.policy.rules), settings.policy.timezone))
    directory = Directory(settings.directory)
    call = CallFacts(provider="openai", provider_host=HOST, model=BENCH_MODEL)
    caps = 0
    for user in scenario.users:
        decision = policy.evaluate(call, directory.subject(user), now)
        if decision.action != "allow" or decision.violations:
            reasons = "; ".join(f"{v.rule.id}: {v.reason}" for v in decision.violations)
            raise SystemExit(f"scenario {scenario.name}: {user} would get {decision.action} ({reasons})")
        caps += len(decision.caps)
    return {"subjects_checked": len(scenario.users), "caps_per_call": round(caps / len(scenario.users), 2)}


# --------------------------------------------------------------------------- subprocesses


@dataclass
class Service:
    """A server subprocess and the file its output goes to."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise RuntimeError(f"{self.name} exited with code {code}; last output:\n{self.log_tail()}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def tollhouse_command() -> list[str]:
    exe = Path(sys.executable).with_name("tollhouse")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("tollhouse")
    return [found] if found else [sys.executable, "-m", "tollhouse"]


def start_service(name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> Service:
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return Service(name, proc, log_path)


def stop_service(service: Service) -> None:
    """SIGTERM (both servers shut down cleanly on it), then SIGKILL if it lingers."""
    if service.proc.poll() is not None:
        return
    service.proc.terminate()
    try:
        service.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        service.proc.kill()
        service.proc.wait(timeout=5)


def http_get(url: str, headers: dict[str, str] | None = None, timeout_s: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def admin_get(base: str, path: str) -> tuple[int, Json]:
    status, body = http_get(f"{base}{path}", {"Authorization": f"Bearer {ADMIN_TOKEN}"})
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = {"raw": body[:200].decode(errors="replace")}
    return status, parsed if isinstance(parsed, dict) else {"value": parsed}


def wait_ready(service: Service, url: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Poll ``url`` until it answers 200; fail early if the process dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        service.check_alive()
        with contextlib.suppress(OSError):
            if http_get(url, timeout_s=1.0)[0] == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{service.name} not ready after {timeout_s:.0f} s; last output:\n{service.log_tail()}")


def start_mock(port: int, log_dir: Path) -> Service:
    argv = [*tollhouse_command(), "mock-provider", "--port", str(port), "--chunk-delay-ms", str(CHUNK_DELAY_MS)]
    service = start_service("mock", argv, dict(os.environ), log_dir)
    wait_ready(service, f"http://{HOST}:{port}/v1/models")
    return service


def gateway_config(mock_port: int, extra: Json) -> Json:
    """`extra` plus the three well-known providers pointed at the mock."""
    upstream = f"http://{HOST}:{mock_port}"
    return {"providers": {pid: {"upstream": upstream} for pid in ("openai", "anthropic", "gemini")}, **extra}


def start_gateway(port: int, config: Json, work_dir: Path, name: str = "gateway",
                  extra_args: Sequence[str] = (), src: Path | None = None) -> Service:
    """`tollhouse serve` with `config` (written as JSON), its own data directory and `extra_args`; `src`: run the
    package from this source tree instead (another commit's `src/`, for side-by-side comparisons)."""
    config_path = work_dir / f"{name}.json"
    config_path.write_text(json.dumps(config, indent=1))
    env = {**os.environ, "TOLLHOUSE_LOG_LEVEL": "warning", "TOLLHOUSE_ADMIN_TOKEN": ADMIN_TOKEN}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    argv = [*tollhouse_command(), "serve", "--config", str(config_path), "--host", HOST, "--port", str(port),
            "--data-dir", str(work_dir / f"{name}-data"), *extra_args]
    service = start_service(name, argv, env, work_dir)
    wait_ready(service, f"http://{HOST}:{port}/healthz")
    return service


# --------------------------------------------------------------------------- raw keep-alive client


@dataclass(frozen=True)
class Timing:
    """One request/response: status, time to the first body byte and to the last one."""

    status: int
    ttfb_ns: int
    total_ns: int
    body_bytes: int


class RawHttpConnection:
    """A persistent HTTP/1.1 connection over a plain socket, with just enough parsing to find
    where each response ends (Content-Length or chunked framing)."""

    def __init__(self, host: str, port: int) -> None:
        self._address = (host, port)
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._last_recv_ns = 0

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf.clear()

    def roundtrip(self, request: bytes) -> Timing:
        sock = self._connected()
        start = time.perf_counter_ns()
        sock.sendall(request)
        status, headers = self._read_head()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            first_ns, size = self._read_chunked()
        else:
            first_ns, size = self._read_sized(int(headers.get("content-length", "0")))
        end = time.perf_counter_ns()
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Timing(status, (first_ns or end) - start, end - start, size)

    def _connected(self) -> socket.socket:
        if self._sock is None:
            sock = socket.create_connection(self._address, timeout=IO_TIMEOUT_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock
        return self._sock

    def _fill(self) -> None:
        assert self._sock is not None
        data = self._sock.recv(65536)
        if not data:
            self.close()
            raise ConnectionError("server closed the connection mid-response")
        self._last_recv_ns = time.perf_counter_ns()
        self._buf += data

    def _take(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._fill()
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _read_until(self, marker: bytes) -> bytes:
        while (at := self._buf.find(marker)) < 0:
            self._fill()
        return self._take(at + len(marker))

    def _read_head(self) -> tuple[int, dict[str, str]]:
        lines = self._read_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return status, headers

    def _first_byte_ns(self) -> int:
        """When the next body byte arrived: the recv() that brought it is the latest one, since
        the buffer is only refilled when the parser has consumed everything before it."""
        if not self._buf:
            self._fill()
        return self._last_recv_ns

    def _read_sized(self, length: int) -> tuple[int, int]:
        first = self._first_byte_ns() if length else 0
        self._take(length)
        return first, length

    def _read_chunked(self) -> tuple[int, int]:
        first, total = 0, 0
        while True:
            size = int(self._read_until(b"\r\n").split(b";", 1)[0].strip(), 16)
            if size == 0:
                while self._read_until(b"\r\n") != b"\r\n":  # trailers, then the blank line
                    pass
                return first, total
            if not first:
                first = self._first_byte_ns()
            self._take(size + 2)  # chunk data and its CRLF
            total += size


def run_interleaved(targets: list[Target], pools: dict[str, list[bytes]], warmup: int, n: int,
                    seed: int = SEED) -> dict[str, list[Timing]]:
    """``warmup`` untimed then ``n`` timed requests per target, one at a time, alternating between
    the targets (one keep-alive connection each) so background noise hits them alike. Each request
    is drawn at random from the target's pool (the same draw for every target)."""
    rng = random.Random(seed)
    conns = {t.name: RawHttpConnection(HOST, t.port) for t in targets}
    timings: dict[str, list[Timing]] = {t.name: [] for t in targets}
    try:
        for i in range(warmup + n):
            draw = rng.random()
            for name, conn in conns.items():
                pool = pools[name]
                timing = conn.roundtrip(pool[int(draw * len(pool))])
                if i >= warmup:
                    timings[name].append(timing)
        return timings
    finally:
        for conn in conns.values():
            conn.close()


def run_sequential(target: Target, requests: list[bytes]) -> list[Timing]:
    """Each request once, in order, on one keep-alive connection."""
    conn = RawHttpConnection(HOST, target.port)
    try:
        return [conn.roundtrip(request) for request in requests]
    finally:
        conn.close()


# --------------------------------------------------------------------------- statistics


def ms(ns: float) -> float:
    return round(ns / 1e6, 3)


def percentiles_ms(values_ns: list[int]) -> Json:
    cuts = statistics.quantiles(values_ns, n=100, method="inclusive")
    return {
        "n": len(values_ns),
        "p50_ms": ms(cuts[49]),
        "p90_ms": ms(cuts[89]),
        "p99_ms": ms(cuts[98]),
        "mean_ms": ms(statistics.fmean(values_ns)),
        "min_ms": ms(min(values_ns)),
        "max_ms": ms(max(values_ns)),
    }


def non_2xx(timings: list[Timing]) -> int:
    return sum(1 for t in timings if not 200 <= t.status < 300)


def latency_summary(timings: list[Timing]) -> Json:
    return {**percentiles_ms([t.total_ns for t in timings]), "non_2xx": non_2xx(timings)}


def stream_summary(timings: list[Timing]) -> Json:
    return {
        "ttfb": percentiles_ms([t.ttfb_ns for t in timings]),
        "total": percentiles_ms([t.total_ns for t in timings]),
        "non_2xx": non_2xx(timings),
        "body_bytes": timings[-1].body_bytes if timings else 0,
    }


# --------------------------------------------------------------------------- throughput: wrk


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal of ASCII names is a valid Lua string literal


def write_wrk_script(path: Path, body: Json, users: Sequence[str]) -> Path:
    """A wrk script whose requests are pre-built per thread (one per user, or one without a user
    header) and picked at random per request, so the Lua cost is the same for every target."""
    payload = json.dumps(body, separators=(",", ":"))
    names = ",\n".join(f"  {_lua_string(u)}" for u in users)
    path.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = [[{payload}]]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {API_KEY}"\n'
        f"local users = {{\n{names}\n}}\n"
        "local pool = {}\n"
        "local threads = 0\n"
        "function setup(thread)\n"
        "  threads = threads + 1\n"
        '  thread:set("tid", threads)\n'
        "end\n"
        "function init(args)\n"
        "  math.randomseed(7919 * (tid or 1))\n"
        "  if #users == 0 then\n"
        "    pool[1] = wrk.format()\n"
        "  end\n"
        "  for i, user in ipairs(users) do\n"
        "    local headers = {}\n"
        "    for k, v in pairs(wrk.headers) do headers[k] = v end\n"
        f'    headers["{USER_HEADER}"] = user\n'
        "    pool[i] = wrk.format(nil, nil, headers)\n"
        "  end\n"
        "end\n"
        "function request()\n"
        "  return pool[math.random(#pool)]\n"
        "end\n"
    )
    return path


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def wrk_duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if match is None:
        raise ValueError(f"unexpected wrk duration {text!r}")
    return round(float(match.group(1)) * _UNIT_MS[match.group(2)], 3)


def parse_wrk(output: str) -> Json:
    """Requests/s, latency percentiles and error counts from ``wrk --latency`` output."""
    rps = re.search(r"Requests/sec:\s*([\d.]+)", output)
    if rps is None:
        raise ValueError(f"no Requests/sec in wrk output:\n{output}")
    result: Json = {"requests_per_s": float(rps.group(1))}
    done = re.search(r"(\d+) requests in ([\d.]+\w+)", output)
    if done:
        result["requests"] = int(done.group(1))
        result["duration_ms"] = wrk_duration_ms(done.group(2))
    for pct, value in re.findall(r"^\s+(50|90|99)(?:\.0+)?%\s+(\S+)", output, re.MULTILINE):
        result[f"p{pct}_ms"] = wrk_duration_ms(value)
    stats = re.search(r"^\s+Latency\s+(\S+)\s+(\S+)\s+(\S+)", output, re.MULTILINE)
    if stats:
        result["mean_ms"] = wrk_duration_ms(stats.group(1))
        result["max_ms"] = wrk_duration_ms(stats.group(3))
    bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", output)
    result["non_2xx"] = int(bad.group(1)) if bad else 0
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    keys = ("connect", "read", "write", "timeout")
    errors = dict(zip(keys, map(int, socket_errors.groups()), strict=True)) if socket_errors else dict.fromkeys(keys, 0)
    result["socket_errors"] = errors
    result["errors"] = result["non_2xx"] + sum(errors.values())
    return result


def run_wrk(wrk: str, target: Target, script: Path, seconds: int) -> Json:
    argv = [wrk, f"-t{WRK_THREADS}", f"-c{CONCURRENCY}", f"-d{seconds}s", "--latency", "-s", str(script), target.url]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    return {**parse_wrk(proc.stdout), "raw": proc.stdout}


def wrk_version(wrk: str) -> str:
    proc = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10, check=False)
    return (proc.stdout or proc.stderr).splitlines()[0].strip() if (proc.stdout or proc.stderr) else "unknown"


# --------------------------------------------------------------------------- throughput: asyncio fallback


@dataclass
class LoadTally:
    latencies_ns: list[int]
    statuses: list[int]
    errors: int = 0


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status = int(head.split(" ", 2)[1])
    match = re.search(r"(?im)^content-length:\s*(\d+)", head)
    if match is None:
        raise ValueError("response without Content-Length")
    await reader.readexactly(int(match.group(1)))
    return status


async def _load_worker(target: Target, pool: list[bytes], seed: int, deadline: float, tally: LoadTally) -> None:
    rng = random.Random(seed)
    reader, writer = await asyncio.open_connection(HOST, target.port)
    try:
        while time.perf_counter() < deadline:
            request = pool[rng.randrange(len(pool))]
            start = time.perf_counter_ns()
            writer.write(request)
            tally.statuses.append(await _read_response(reader))
            tally.latencies_ns.append(time.perf_counter_ns() - start)
    except (OSError, ValueError, asyncio.IncompleteReadError):
        tally.errors += 1
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _async_load(target: Target, pool: list[bytes], seconds: int) -> tuple[LoadTally, float]:
    tally = LoadTally([], [])
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(*(_load_worker(target, pool, SEED + i, deadline, tally) for i in range(CONCURRENCY)))
    return tally, time.perf_counter() - start


def run_async_load(target: Target, pool: list[bytes], seconds: int) -> Json:
    """The wrk stand-in: CONCURRENCY keep-alive connections in one asyncio loop."""
    tally, elapsed = asyncio.run(_async_load(target, pool, seconds))
    summary = percentiles_ms(tally.latencies_ns) if tally.latencies_ns else {}
    bad = sum(1 for s in tally.statuses if not 200 <= s < 300)
    return {
        **summary,
        "requests": len(tally.statuses),
        "duration_ms": round(elapsed * 1000, 1),
        "requests_per_s": round(len(tally.statuses) / elapsed, 2),
        "non_2xx": bad,
        "errors": bad + tally.errors,
    }


# --------------------------------------------------------------------------- process CPU


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU time of a process, or of one of its threads, from /proc (0.0 where that is
    unavailable)."""
    path = Path(f"/proc/{pid}/stat") if thread is None else Path(f"/proc/{pid}/task/{thread}/stat")
    try:
        fields = path.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuUsage:
    """CPU seconds each service used inside a ``cpu_meter`` block, and the block's wall time."""

    cpu_s: dict[str, float]
    wall_s: float = 0.0


@contextlib.contextmanager
def cpu_meter(services: dict[str, Service]) -> Iterator[CpuUsage]:
    """Yields a CpuUsage (per role: "mock", "gateway") that is filled in when the block ends."""
    before = {role: cpu_seconds(s.proc.pid) for role, s in services.items()}
    start = time.perf_counter()
    usage = CpuUsage({})
    yield usage
    usage.wall_s = time.perf_counter() - start
    usage.cpu_s = {role: round(cpu_seconds(s.proc.pid) - before[role], 3) for role, s in services.items()}


# --------------------------------------------------------------------------- measurements


@dataclass
class Bench:
    """What every scenario shares: the plan, the load client, the mock and the work directory."""

    plan: Plan
    wrk: str | None
    mock: Service
    direct: Target
    work_dir: Path


def measure_cold(gateway: Target, users: Sequence[str]) -> Json:
    """One call per person, in order: the first call of each subject (cold caches, counters loaded)."""
    print(f"  first calls    {len(users)} people, one call each", flush=True)
    timings = run_sequential(gateway, request_pool(gateway, CHAT_BODY, users))
    return latency_summary(timings)


def measure_latency(targets: list[Target], plan: Plan, users: Sequence[str]) -> dict[str, Json]:
    print(f"  latency c=1    {plan.latency_n} requests per target, interleaved", flush=True)
    pools = {t.name: request_pool(t, CHAT_BODY, users if t.name == "gateway" else ()) for t in targets}
    runs = run_interleaved(targets, pools, plan.latency_warmup, plan.latency_n)
    return {name: latency_summary(timings) for name, timings in runs.items()}


def cpu_figures(usage: CpuUsage, requests: int) -> Json:
    """CPU per completed request and, over the run, as a percentage of one core, per process."""
    cpu = usage.cpu_s
    return {
        "cpu_s": cpu,
        "cpu_ms_per_request": {k: round(v * 1000 / requests, 4) if requests else None for k, v in cpu.items()},
        "cpu_pct_of_one_core": {k: round(100 * v / usage.wall_s, 1) for k, v in cpu.items()},
    }


def measure_throughput(bench: Bench, targets: list[Target], services: dict[str, Service],
                       users: Sequence[str]) -> dict[str, Json]:
    out: dict[str, Json] = {}
    for target in targets:
        target_users = users if target.name == "gateway" else ()
        client = "wrk" if bench.wrk else "asyncio client"
        print(f"  load c={CONCURRENCY}    {target.name:<8} {bench.plan.load_seconds} s ({client})", flush=True)
        if bench.wrk is not None:
            script = write_wrk_script(bench.work_dir / f"post-{len(target_users)}.lua", CHAT_BODY, target_users)
            with cpu_meter(services) as usage:
                result = run_wrk(bench.wrk, target, script, bench.plan.load_seconds)
        else:
            pool = request_pool(target, CHAT_BODY, target_users)
            with cpu_meter(services) as usage:
                result = run_async_load(target, pool, bench.plan.load_seconds)
        out[target.name] = {**result, **cpu_figures(usage, int(result.get("requests") or 0))}
        for service in services.values():
            service.check_alive()
    return out


def measure_streaming(targets: list[Target], plan: Plan) -> dict[str, Json]:
    print(f"  stream TTFB    {plan.stream_n} requests per target, interleaved", flush=True)
    pools = {t.name: request_pool(t, STREAM_BODY, ()) for t in targets}
    runs = run_interleaved(targets, pools, plan.stream_warmup, plan.stream_n)
    return {name: stream_summary(timings) for name, timings in runs.items()}


# --------------------------------------------------------------------------- what the gateway recorded


def calls_by_decision(metrics_text: str) -> dict[str, float]:
    """tollhouse_calls_total summed per decision label."""
    out: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if not line.startswith(("tollhouse_calls_total{", "tollhouse_calls_total ")):
            continue
        match = re.search(r'decision="([^"]*)"', line)
        decision = match.group(1) if match else ""
        out[decision] = out.get(decision, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def settled_counts(base: str, timeout_s: float = 15.0) -> tuple[int, dict[str, float], Json]:
    """/metrics call counts and /healthz once they agree: nothing pending and every recorded call
    written. (`events_pending` does not count a batch the store thread is committing, so pending 0
    alone is not enough; and a call still in flight when the load stopped may be recorded late.)"""
    deadline = time.monotonic() + timeout_s
    while True:
        metrics_status, metrics_body = http_get(f"{base}/metrics")
        decisions = calls_by_decision(metrics_body.decode()) if metrics_status == 200 else {}
        health: Json = json.loads(http_get(f"{base}/healthz")[1])
        recorded = sum(decisions.values())
        done = health.get("events_pending") == 0 and health.get("events_written") == round(recorded)
        if metrics_status != 200 or done or time.monotonic() > deadline:
            return metrics_status, decisions, health
        time.sleep(0.1)


def log_problems(service: Service, keep: int = 10) -> Json:
    """Warnings, errors and tracebacks the gateway logged (it runs at log level warning)."""
    lines = service.log_path.read_text(errors="replace").splitlines() if service.log_path.exists() else []
    bad = [ln for ln in lines if re.search(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback", ln)]
    return {"count": len(bad), "first": bad[:keep]}


def check_events(gateway: Service, base: str, sent: int) -> Json:
    """What the gateway recorded, compared with what was sent through it."""
    metrics_status, decisions, health = settled_counts(base)
    events_status, events_body = admin_get(base, "/api/v1/events?limit=5")
    events = events_body.get("events", []) if events_status == 200 else []
    return {
        "requests_sent_via_gateway": sent,
        "metrics_calls_total": sum(decisions.values()) if metrics_status == 200 else None,
        "metrics_calls_by_decision": decisions,
        "events_written": health.get("events_written"),
        "events_pending": health.get("events_pending"),
        "events_api_status": events_status,
        "events_api_returned": len(events),
        "latest_event": events[0] if events else None,
        "gateway_log_problems": log_problems(gateway),
    }


def ledger_probe(base: str, scenario: Scenario) -> Json | None:
    """With caps: the spend API for one person and their team shows the ledger counted the calls."""
    if "team-tokens" not in json.dumps(scenario.config.get("policy", {})):
        return None
    person = scenario.config["directory"]["people"][0]
    out: Json = {}
    for label, scope, ident, window in (("person", "person", person["id"], "month"),
                                        ("team", "team", person["team"], "1m")):
        status, body = admin_get(base, f"/api/v1/spend?scope={scope}&id={ident}&window={window}")
        out[label] = {"id": ident, "status": status, "spend_usd": body.get("spend_usd"),
                      "requests": body.get("requests"), "caps": body.get("caps")}
    return out


def verify(events: Json, non_2xx_total: int, ledger: Json | None) -> list[str]:
    """Problems with what was recorded; [] when everything matches."""
    problems: list[str] = []
    sent, total = events["requests_sent_via_gateway"], events["metrics_calls_total"]
    if total is None:
        problems.append("GET /metrics failed")
    elif not sent <= total <= sent + CONCURRENCY:
        problems.append(f"tollhouse_calls_total {total:.0f} is not between the {sent} calls answered and "
                        f"{sent + CONCURRENCY} (answered + wrk's in-flight requests)")
    if total is not None and events["events_written"] != round(total):
        problems.append(f"events written {events['events_written']} != tollhouse_calls_total {total:.0f}")
    if events["events_pending"] != 0:
        problems.append(f"{events['events_pending']} events still pending")
    blocked = events["metrics_calls_by_decision"].get("block", 0.0)
    if blocked:
        problems.append(f'tollhouse_calls_total{{decision="block"}} = {blocked:.0f}')
    if non_2xx_total:
        problems.append(f"{non_2xx_total} non-2xx answers or socket errors via the gateway")
    if events["events_api_status"] != 200 or not events["events_api_returned"]:
        problems.append(f"GET /api/v1/events -> {events['events_api_status']}, {events['events_api_returned']} events")
    if events["gateway_log_problems"]["count"]:
        problems.append(f"gateway logged {events['gateway_log_problems']['count']} warnings/errors")
    if ledger is not None:
        for label, row in ledger.items():
            caps = row.get("caps") or []
            if row["status"] != 200 or not caps or not all(c.get("used", 0) > 0 for c in caps):
                problems.append(f"spend API for {label} {row['id']}: HTTP {row['status']}, caps {caps}")
    return problems


# --------------------------------------------------------------------------- one scenario


def run_scenario(bench: Bench, scenario: Scenario, label: str, now: datetime.datetime, full: bool) -> Json:
    """One gateway process for `scenario`. `full`: every measurement; otherwise (a repeat round) the
    first call per person (warming the caches) and the throughput run only."""
    print(f"scenario {scenario.name} ({label}): {scenario.description}", flush=True)
    config = gateway_config(bench.direct.port, scenario.config)
    pre = preflight(scenario, config, now)
    loadavg_before = round(os.getloadavg()[0], 2)
    port = free_port()
    name = f"gateway-{label}-{re.sub(r'[^a-z0-9]+', '-', scenario.name)}"
    started = time.perf_counter()
    gateway = start_gateway(port, config, bench.work_dir, name)
    startup_s = round(time.perf_counter() - started, 2)
    try:
        print(f"  gateway on :{port} (ready in {startup_s} s)", flush=True)
        via = Target("gateway", port, "/openai/v1/chat/completions")
        targets = [bench.direct, via]
        plan = bench.plan
        cold = measure_cold(via, scenario.users) if scenario.users else None
        latency = measure_latency(targets, plan, scenario.users) if full else None
        load_targets = targets if scenario.baseline and full else [via]
        throughput = measure_throughput(bench, load_targets, {"mock": bench.mock, "gateway": gateway},
                                        scenario.users)
        streaming = measure_streaming(targets, plan) if scenario.baseline and full else None
        gateway.check_alive()
        sent = (len(scenario.users) + int(throughput["gateway"].get("requests") or 0)
                + (plan.latency_warmup + plan.latency_n if latency else 0)
                + (plan.stream_warmup + plan.stream_n if streaming else 0))
        base = f"http://{HOST}:{port}"
        events = check_events(gateway, base, sent)
        ledger = ledger_probe(base, scenario)
    finally:
        stop_service(gateway)
    non2xx = (throughput["gateway"]["errors"] + (latency["gateway"]["non_2xx"] if latency else 0)
              + (cold["non_2xx"] if cold else 0) + (streaming["gateway"]["non_2xx"] if streaming else 0))
    problems = verify(events, non2xx, ledger)
    for problem in problems:
        print(f"  CHECK FAILED: {problem}", flush=True)
    return {
        "round": label,
        "gateway_startup_s": startup_s,
        "loadavg_before": loadavg_before,
        "preflight": pre,
        "first_call_per_person": cold,
        "latency_c1": latency,
        "throughput": throughput,
        "streaming": streaming,
        "events": events,
        "ledger_probe": ledger,
        "checks": {"ok": not problems, "problems": problems},
    }


def combine_rounds(scenario: Scenario, rounds: list[Json]) -> Json:
    """A scenario's result: round 1 in full, the throughput of every round, the median of them."""
    first = rounds[0]
    per_round = [{
        "round": r["round"],
        "requests_per_s": r["throughput"]["gateway"]["requests_per_s"],
        "gateway_cpu_ms_per_request": r["throughput"]["gateway"]["cpu_ms_per_request"].get("gateway"),
        "loadavg_before": r["loadavg_before"],
        "calls_answered": r["events"]["requests_sent_via_gateway"],
        "calls_recorded": r["events"]["metrics_calls_total"],
        "calls_by_decision": r["events"]["metrics_calls_by_decision"],
        "checks": r["checks"],
    } for r in rounds]
    for r in rounds[1:]:
        r["throughput"]["gateway"].pop("raw", None)
    problems = [f"round {r['round']}: {p}" for r in rounds for p in r["checks"]["problems"]]
    cpu = [r["gateway_cpu_ms_per_request"] for r in per_round if r["gateway_cpu_ms_per_request"] is not None]
    return {
        "name": scenario.name,
        "description": scenario.description,
        "rules": scenario.rule_count,
        "rule_mix": rule_mix(scenario),
        "people": len(scenario.users),
        "without_budgets": scenario.without_budgets,
        **{k: v for k, v in first.items() if k not in ("round", "checks")},
        "rounds": per_round,
        "repeat_rounds": rounds[1:],
        "median_requests_per_s": round(statistics.median(r["requests_per_s"] for r in per_round), 2),
        "median_gateway_cpu_ms_per_request": round(statistics.median(cpu), 4) if cpu else None,
        "checks": {"ok": not problems, "problems": problems},
    }


# --------------------------------------------------------------------------- machine & report


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def background_load(sample_s: float = 1.0) -> Json:
    """How busy the machine is before the benchmark starts anything (other work skews results)."""
    try:
        busy0, total0 = cpu_jiffies()
        time.sleep(sample_s)
        busy1, total1 = cpu_jiffies()
    except (OSError, ValueError, IndexError):
        return {"loadavg_1m": os.getloadavg()[0]}
    busy_pct = 100.0 * (busy1 - busy0) / max(1, total1 - total0)
    return {"cpu_busy_pct": round(busy_pct, 1), "loadavg_1m": round(os.getloadavg()[0], 2)}


def _command_output(argv: list[str]) -> str | None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info(wrk: str | None) -> Json:
    repo = Path(__file__).resolve().parent.parent
    commit = _command_output(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    dirty = _command_output(["git", "-C", str(repo), "status", "--porcelain"])
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "tollhouse": package_version("tollhouse"),
        "aiohttp": package_version("aiohttp"),
        "uvloop": package_version("uvloop"),
        "wrk": wrk_version(wrk) if wrk else None,
        "git_commit": f"{commit}{'-dirty' if dirty else ''}" if commit else None,
    }


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _added_ms(direct: float | None, gateway: float | None) -> str:
    return "" if direct is None or gateway is None else f"{gateway - direct:+.3f} ms"


def _row(metric: str, direct: Json | None, gateway: Json, key: str) -> str:
    d, g = (direct or {}).get(key), gateway.get(key)
    return f"| {metric} | {_fmt(d) if direct is not None else '-'} | {_fmt(g)} | {_added_ms(d, g)} |"


def _throughput_rows(load: dict[str, Json], client: str, observe_rps: float | None) -> list[str]:
    d, g = load.get("direct"), load["gateway"]
    grps = g["requests_per_s"]
    if d is not None:
        drps = d["requests_per_s"]
        rows = [f"| throughput c={CONCURRENCY} ({client}), req/s | {drps:.0f} | {grps:.0f} | "
                f"{grps - drps:+.0f} ({(grps / drps - 1) * 100:+.1f} %) |"]
    else:
        vs = f"{grps / observe_rps:.3f} × observe ({(grps / observe_rps - 1) * 100:+.1f} %)" if observe_rps else ""
        rows = [f"| throughput c={CONCURRENCY} ({client}), req/s | - | {grps:.0f} | {vs} |"]
    rows += [_row(f"latency c={CONCURRENCY} {p}, ms", d, g, f"{p}_ms") for p in ("p50", "p90", "p99")]
    rows.append(f"| errors + non-2xx c={CONCURRENCY} | {d['errors'] if d else '-'} | {g['errors']} | |")
    cpu_rows = (("cpu_ms_per_request", "CPU ms per request", 3), ("cpu_pct_of_one_core", "CPU % of one core", 0))
    for key, label, digits in cpu_rows:
        direct_cell = f"{_fmt(d[key].get('mock'), digits)} / -" if d else "-"
        rows.append(f"| {label} c={CONCURRENCY}, mock / gateway process | {direct_cell} "
                    f"| {_fmt(g[key].get('mock'), digits)} / {_fmt(g[key].get('gateway'), digits)} | |")
    return rows


def scenario_table(s: Json, client: str, observe_rps: float | None) -> str:
    lat, cold = s["latency_c1"], s["first_call_per_person"]
    rows = ["| metric | direct | via gateway | added |", "|---|---:|---:|---:|"]
    rows += [_row(f"latency c=1 {p}, ms", lat["direct"], lat["gateway"], f"{p}_ms") for p in ("p50", "p90", "p99")]
    rows.append(f"| non-2xx c=1 | {lat['direct']['non_2xx']} | {lat['gateway']['non_2xx']} | |")
    if cold is not None:
        rows += [f"| first call per person c=1 {p}, ms ({cold['n']} people) | - | {_fmt(cold[f'{p}_ms'])} | "
                 f"{_added_ms(lat['direct'][f'{p}_ms'], cold[f'{p}_ms'])} |" for p in ("p50", "p99")]
    rows += _throughput_rows(s["throughput"], client, observe_rps)
    stream = s["streaming"]
    if stream is not None:
        for part in ("ttfb", "total"):
            rows += [_row(f"stream {part} {p}, ms", stream["direct"][part], stream["gateway"][part], f"{p}_ms")
                     for p in ("p50", "p99")]
        rows.append(f"| non-2xx stream | {stream['direct']['non_2xx']} | {stream['gateway']['non_2xx']} | |")
    return "\n".join(rows)


def summary_rows(results: Json) -> list[Json]:
    """Per scenario: median throughput over the rounds, the median of the per-round ratios to the observe
    scenario of the same round, the round-1 c=1 added latency and the median gateway CPU per request."""
    scenarios = results["scenarios"]
    observe = next((s for s in scenarios if s["name"] == "observe"), None)
    out = []
    for s in scenarios:
        lat = s["latency_c1"]
        ratios = []
        if observe is not None:
            ratios = [r["requests_per_s"] / o["requests_per_s"] for r, o in zip(s["rounds"], observe["rounds"],
                                                                                 strict=True)]
        ratio = round(statistics.median(ratios), 3) if ratios else None
        plain = next((p for p in scenarios if p["name"] == s.get("without_budgets")), None)
        budget_ratio = None
        if plain is not None:  # budgets on vs the same configuration without them, round by round
            budget_ratio = round(statistics.median(r["requests_per_s"] / p["requests_per_s"] for r, p in zip(
                s["rounds"], plain["rounds"], strict=True)), 3)
        cpu, observe_cpu = s["median_gateway_cpu_ms_per_request"], (observe or {}).get(
            "median_gateway_cpu_ms_per_request")
        out.append({
            "scenario": s["name"],
            "requests_per_s": s["median_requests_per_s"],
            "vs_observe": ratio,
            "vs_observe_per_round": [round(r, 3) for r in ratios],
            "within_target": None if ratio is None else ratio >= THROUGHPUT_TARGET,
            "vs_without_budgets": budget_ratio,
            "budgets_within_target": None if budget_ratio is None else budget_ratio >= THROUGHPUT_TARGET,
            "p50_added_ms": round(lat["gateway"]["p50_ms"] - lat["direct"]["p50_ms"], 3),
            "p99_added_ms": round(lat["gateway"]["p99_ms"] - lat["direct"]["p99_ms"], 3),
            "gateway_cpu_ms_per_request": cpu,
            "gateway_cpu_vs_observe": round(cpu / observe_cpu, 3) if cpu and observe_cpu else None,
            "checks_ok": s["checks"]["ok"],
        })
    return out


def summary_table(results: Json) -> str:
    rows = ["| scenario | req/s (c=32) | vs observe | within 15 % | vs same without budgets | p50 added (c=1) "
            "| p99 added (c=1) | gateway CPU ms/req (c=32) | checks |", "|---|---:|---:|---|---:|---:|---:|---:|---|"]
    for r in results["summary"]:
        ratio = r["vs_observe"]
        vs = "n/a" if ratio is None else f"{ratio:.3f} ({(ratio - 1) * 100:+.1f} %)"
        within = "n/a" if r["within_target"] is None else "yes" if r["within_target"] else "**no**"
        cpu = _fmt(r["gateway_cpu_ms_per_request"])
        if r["gateway_cpu_vs_observe"] is not None:
            cpu += f" ({r['gateway_cpu_vs_observe']:.2f}×)"
        b = r.get("vs_without_budgets")
        verdict = "" if b is None else "within" if b >= THROUGHPUT_TARGET else "**not within**"
        budgets = "" if b is None else f"{b:.3f} ({(b - 1) * 100:+.1f} %, {verdict} 15 %)"
        rows.append(f"| {r['scenario']} | {r['requests_per_s']:.0f} | {vs} | {within} | {budgets} "
                    f"| {r['p50_added_ms']:+.3f} ms "
                    f"| {r['p99_added_ms']:+.3f} ms | {cpu} | {'ok' if r['checks_ok'] else 'FAILED'} |")
    return "\n".join(rows)


def load_description(results: Json) -> str:
    seconds = results["plan"]["load_seconds"]
    if results["load_client"] == "wrk":
        return (f"`wrk -t{WRK_THREADS} -c{CONCURRENCY} -d{seconds}s --latency` with a Lua script that picks each "
                "request at random from a pool built per thread (one request per person, or one request without "
                "a user header for direct and observe)")
    return f"an asyncio raw-socket client ({CONCURRENCY} keep-alive connections, one event loop), {seconds} s"


def scenario_notes(s: Json) -> list[str]:
    ev = s["events"]
    decisions = ", ".join(f"{k} {v:.0f}" for k, v in sorted(ev["metrics_calls_by_decision"].items())) or "none"
    latest = ev["latest_event"] or {}
    notes = [
        f"{s['description']}. Gateway ready {s['gateway_startup_s']} s after start; load average "
        f"{s['loadavg_before']} before the scenario.",
        f"Recorded: {ev['requests_sent_via_gateway']} calls answered via the gateway as counted by the clients; "
        f"`tollhouse_calls_total` = {ev['metrics_calls_total']:.0f} by decision: {decisions}; events written "
        f"{ev['events_written']} (pending {ev['events_pending']}); latest event: subject "
        f"`{latest.get('subject')}`, decision `{latest.get('decision')}`, rule `{latest.get('rule_id')}`; gateway "
        f"log warnings/errors: {ev['gateway_log_problems']['count']} (round 1).",
        "Throughput per round (fresh gateway each, scenarios alternating): " + ", ".join(
            f"{r['round']} {r['requests_per_s']:.0f} req/s, gateway CPU {_fmt(r['gateway_cpu_ms_per_request'])} "
            f"ms/req, {r['calls_answered']} answered / {r['calls_recorded']:.0f} recorded"
            for r in s["rounds"]) + f"; median {s['median_requests_per_s']:.0f} req/s.",
    ]
    if s["rules"]:
        mix = ", ".join(f"{k} {v}" for k, v in s["rule_mix"].items())
        notes.append(f"Rules ({s['rules']:,}): {mix}. Pre-flight: a `{BENCH_MODEL}` call judged offline for each "
                     f"of the {s['preflight']['subjects_checked']} people is allowed with no violation; "
                     f"{s['preflight']['caps_per_call']} caps per call.")
    if s["ledger_probe"]:
        parts = []
        for label, row in s["ledger_probe"].items():
            caps = "; ".join(f"{c['rule_id']} used {c['used']:g} of {c['limit']:g}" for c in row.get("caps") or [])
            parts.append(f"{label} `{row['id']}`: {row['requests']} requests, ${row['spend_usd']} ({caps})")
        notes.append("Ledger (`GET /api/v1/spend` after the run): " + "; ".join(parts) + ".")
    problems = s["checks"]["problems"]
    notes.append("Checks: " + ("all passed." if not problems else "**FAILED**: " + "; ".join(problems) + "."))
    return notes


def markdown_notes(results: Json) -> list[str]:
    m, plan, bg = results["machine"], results["plan"], results["background_load"]
    body = json.dumps(CHAT_BODY, separators=(",", ":"))
    return [
        f"Run {m['date']} ({'quick' if results['quick'] else 'full'}): tollhouse {m['tollhouse']} "
        f"({m['git_commit']}), Python {m['python']}, aiohttp {m['aiohttp']}, uvloop {m['uvloop']}, "
        f"kernel {m['kernel']}, {m['wrk'] or 'no wrk'}.",
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}). **The load client, the mock provider and the gateway all "
        f"share these {m['nproc']} CPUs**, so the c={CONCURRENCY} figures describe a saturated box where the gateway "
        "competes with the mock and the client for CPU, not the gateway alone. Other work on the machine before "
        f"the run: {bg['before'].get('cpu_busy_pct', '?')} % CPU busy, load average {bg['before']['loadavg_1m']} "
        f"({bg['after_loadavg_1m']} after).",
        "Scenarios run one after the other against one mock, each in a fresh gateway process with its own data "
        f"directory (never two gateways at once), in {plan['rounds']} round(s): round 1 measures everything, "
        "later rounds start a fresh gateway per scenario again and repeat only the first call per person and the "
        "c=32 throughput run, the scenarios alternating so slow drift in background load hits them alike. "
        "req/s = median over the rounds; 'vs observe' = median over the rounds of (the scenario's req/s / the "
        f"observe scenario's req/s in the same round); target ≥ {THROUGHPUT_TARGET:.2f}, i.e. within "
        f"{100 - THROUGHPUT_TARGET * 100:.0f} %. Gateway CPU ms/req = the gateway process's user+system CPU "
        "during the c=32 run per completed request (median over the rounds), less sensitive to other load on "
        "the machine than req/s.",
        f"Request: `{body}` with `Authorization: Bearer {API_KEY}`; in the rules scenarios also "
        f"`{USER_HEADER}: <a random one of the 1,000 people>`. Direct = `POST mock/v1/chat/completions`; "
        "via gateway = `POST gateway/openai/v1/chat/completions`, which the gateway forwards to the same mock.",
        f"Latency c=1: {plan['latency_n']} requests per target after {plan['latency_warmup']} warm-up, one at a "
        "time, alternating between direct and the gateway (so background noise hits both alike; the direct "
        "figures are re-measured in every scenario and 'added' is against that scenario's own direct run), each "
        "on its own keep-alive HTTP/1.1 connection over a raw socket; `perf_counter_ns` from sending to the end "
        "of the body. In the rules scenarios the c=1 run comes after one call per person ('first call per "
        "person': each subject's first call, which resolves and caches its applicable rules and, with budgets, "
        "loads its ledger counters from the store), so the c=1 figures are the steady state.",
        f"Throughput c={CONCURRENCY}: {load_description(results)}. CPU figures are each process's user+system "
        "time during the run, per completed request and as a share of one core. Direct throughput and streaming "
        "are measured in the observe scenario only.",
        f"Streaming (observe): the same body with `\"stream\": true`, {plan['stream_n']} requests per target after "
        f"{plan['stream_warmup']} warm-up, alternating, keep-alive raw sockets with chunked framing parsed. One mock "
        f"instance serves everything, run with `--chunk-delay-ms {CHUNK_DELAY_MS:g}` (it delays only the stream "
        "chunks after the first, so non-stream calls are unaffected). TTFB = send -> first byte of the first SSE "
        "event; total = send -> end of the stream. The gateway adds `stream_options.include_usage` upstream (to "
        "meter tokens) and strips the extra usage chunk from the client's stream, so via the gateway the mock sends "
        f"one more chunk, {CHUNK_DELAY_MS:g} ms later, before `[DONE]`: that one chunk interval is part of the "
        "stream-total 'added' figure (TTFB is unaffected).",
        f"Checks per scenario: `tollhouse_calls_total` between the calls answered and that plus {CONCURRENCY} (wrk "
        "does not count the requests in flight when it stops), events written = `tollhouse_calls_total`, none "
        "pending, no `decision=\"block\"`, no non-2xx or socket error, `/api/v1/events` answers, no gateway "
        "warning/error log line; with budgets, the spend API shows every cap of one person and their team counted.",
    ]


def markdown_report(results: Json) -> str:
    observe = next((s for s in results["scenarios"] if s["name"] == "observe"), None)
    observe_rps = observe["throughput"]["gateway"]["requests_per_s"] if observe else None
    parts = ["# Gateway core benchmark", "", summary_table(results), ""]
    parts += [f"- {note}" for note in markdown_notes(results)]
    for s in results["scenarios"]:
        parts += ["", f"## {s['name']}", "", scenario_table(s, results["load_client"], observe_rps), ""]
        parts += [f"- {note}" for note in scenario_notes(s)]
    return "\n".join(parts) + "\n"


def write_results(results: Json, out_dir: Path, name: str = RESULT_NAME,
                  render: Callable[[Json], str] | None = None) -> tuple[Path, Path]:
    """`name`.json and `name`.md (rendered by `render`, this benchmark's report by default)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    md_path.write_text((render or markdown_report)(results))
    return json_path, md_path


def observe_added(scenario: Json) -> Json:
    """The direct-vs-gateway differences of the observe scenario (the gateway's own cost)."""
    lat, stream, load = scenario["latency_c1"], scenario["streaming"], scenario["throughput"]
    return {
        "latency_c1_p50_ms": round(lat["gateway"]["p50_ms"] - lat["direct"]["p50_ms"], 3),
        "latency_c1_p99_ms": round(lat["gateway"]["p99_ms"] - lat["direct"]["p99_ms"], 3),
        "stream_ttfb_p50_ms": round(stream["gateway"]["ttfb"]["p50_ms"] - stream["direct"]["ttfb"]["p50_ms"], 3),
        "stream_ttfb_p99_ms": round(stream["gateway"]["ttfb"]["p99_ms"] - stream["direct"]["ttfb"]["p99_ms"], 3),
        "throughput_ratio": round(load["gateway"]["requests_per_s"] / load["direct"]["requests_per_s"], 3),
    }


# --------------------------------------------------------------------------- main


def run_benchmark(plan: Plan, quick: bool, wrk: str | None, names: Sequence[str], rounds: int) -> Json:
    now = datetime.datetime.now(datetime.UTC)
    scenarios = build_scenarios(names, now)
    before = background_load()
    print(f"background load before start: {before}", flush=True)
    runs: dict[str, list[Json]] = {s.name: [] for s in scenarios}
    with contextlib.ExitStack() as stack:
        work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tollhouse-bench-")))
        mock_port = free_port()
        mock = stack.enter_context(running(start_mock(mock_port, work_dir)))
        print(f"mock on :{mock_port} (data in {work_dir})", flush=True)
        bench = Bench(plan, wrk, mock, Target("direct", mock_port, "/v1/chat/completions"), work_dir)
        for round_no in range(1, rounds + 1):
            for scenario in scenarios:
                runs[scenario.name].append(run_scenario(bench, scenario, f"r{round_no}", now, full=round_no == 1))
                mock.check_alive()

    measured = [combine_rounds(s, runs[s.name]) for s in scenarios]
    results: Json = {
        "benchmark": RESULT_NAME,
        "quick": quick,
        "plan": {**dataclasses.asdict(plan), "rounds": rounds},
        "load_client": "wrk" if wrk else "asyncio raw-socket client",
        "machine": machine_info(wrk),
        "background_load": {"before": before, "after_loadavg_1m": round(os.getloadavg()[0], 2)},
        "scenarios": measured,
    }
    results["summary"] = summary_rows(results)
    observe = next((s for s in measured if s["name"] == "observe"), None)
    if observe is not None:
        results["observe_added"] = observe_added(observe)
    return results


@contextlib.contextmanager
def running(service: Service) -> Iterator[Service]:
    try:
        yield service
    finally:
        stop_service(service)


SCENARIO_NAMES = ("observe", "rules-1000", "rules-1000+budget")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short smoke run (about 40 s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for gateway-core.{json,md}")
    parser.add_argument("--no-wrk", action="store_true", help="use the asyncio client even if wrk is installed")
    parser.add_argument("--scenarios", default=",".join(SCENARIO_NAMES),
                        help=f"comma-separated, run in this order (default: {','.join(SCENARIO_NAMES)}; also "
                        "directory-1000: the directory and trusted user header without rules, a diagnostic; "
                        "budget-only: just the two budget rules, to compare with directory-1000)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="throughput rounds per scenario, scenarios alternating (default 3, quick 1)")
    return parser.parse_args(argv)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the ExitStack, which stops the servers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    wrk = None if args.no_wrk else shutil.which("wrk")
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    try:
        rounds = args.rounds if args.rounds is not None else 1 if args.quick else 3
        results = run_benchmark(plan, args.quick, wrk, names, max(rounds, 1))
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    json_path, md_path = write_results(results, args.out)
    observe = next((s for s in results["scenarios"] if s["name"] == "observe"), None)
    observe_rps = observe["throughput"]["gateway"]["requests_per_s"] if observe else None
    print()
    print(summary_table(results))
    for s in results["scenarios"]:
        ev = s["events"]
        print(f"\n{s['name']}\n{scenario_table(s, results['load_client'], observe_rps)}")
        print(f"via gateway: {ev['requests_sent_via_gateway']} calls answered, tollhouse_calls_total "
              f"{ev['metrics_calls_total']} {ev['metrics_calls_by_decision']}, events written {ev['events_written']}, "
              f"checks {'ok' if s['checks']['ok'] else 'FAILED: ' + '; '.join(s['checks']['problems'])}")
    print(f"\nwrote {json_path} and {md_path}")
    return 0 if all(s["checks"]["ok"] for s in results["scenarios"]) else 1


if __name__ == "__main__":
    sys.exit(main())

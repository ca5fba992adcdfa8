#!/usr/bin/env python3
"""Gateway core benchmark: what does routing a call through tollhouse cost?

Starts ``tollhouse mock-provider`` and ``tollhouse serve`` (pointed at the mock) on free
loopback ports, then measures the same small chat completion sent DIRECT (client -> mock)
and via the GATEWAY (client -> gateway -> mock):

* latency at concurrency 1: sequential requests, alternating between the two targets, each on
  its own persistent keep-alive HTTP/1.1 connection over a raw socket, timed with
  ``time.perf_counter_ns`` (the client overhead is tiny and identical for both targets);
* throughput at concurrency 32: ``wrk -t2 -c32`` with a Lua script for the POST, or an
  asyncio raw-socket client with 32 connections when wrk is not installed;
* streaming time to first byte: a streamed chat completion (chunked SSE), timed from sending
  the request to the first byte of the first SSE event, and to the end of the stream.

One mock instance serves both kinds of call. It runs with ``--chunk-delay-ms 2``, which only
delays the stream chunks after the first one, so the non-stream measurements are unaffected.
Everything (client, wrk, mock, gateway) shares the machine's CPUs; the report says so.

Then it checks that the gateway recorded an event per call (``/metrics``, ``/healthz`` and
``/api/v1/events``) and writes ``gateway-core.json`` and ``gateway-core.md`` to ``--out``.

    python benchmarks/bench_gateway.py [--quick] [--out benchmarks/results] [--no-wrk]
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
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
API_KEY = "sk-bench"
ADMIN_TOKEN = "bench-token"
CHUNK_DELAY_MS = 2.0
CONCURRENCY = 32
WRK_THREADS = 2
READY_TIMEOUT_S = 30.0
IO_TIMEOUT_S = 30.0
CHAT_BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "hello there"}],
    "max_tokens": 16,
}
STREAM_BODY: dict[str, Any] = {**CHAT_BODY, "stream": True}
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
RESULT_NAME = "gateway-core"

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


def request_bytes(target: Target, body: Json) -> bytes:
    """The exact bytes of one keep-alive POST of ``body`` to ``target``."""
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"POST {target.path} HTTP/1.1\r\n"
        f"Host: {HOST}:{target.port}\r\n"
        f"Authorization: Bearer {API_KEY}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n"
        "Connection: keep-alive\r\n"
        "\r\n"
    )
    return head.encode() + payload


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


def start_gateway(port: int, mock_port: int, work_dir: Path) -> Service:
    upstream = f"http://{HOST}:{mock_port}"
    config = work_dir / "gateway.yaml"
    config.write_text(
        "providers:\n"
        + "".join(f'  {pid}: {{upstream: "{upstream}"}}\n' for pid in ("openai", "anthropic", "gemini"))
    )
    env = {**os.environ, "TOLLHOUSE_LOG_LEVEL": "warning", "TOLLHOUSE_ADMIN_TOKEN": ADMIN_TOKEN}
    argv = [*tollhouse_command(), "serve", "--config", str(config), "--host", HOST, "--port", str(port),
            "--data-dir", str(work_dir / "data")]
    service = start_service("gateway", argv, env, work_dir)
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


def run_interleaved(targets: list[Target], body: Json, warmup: int, n: int) -> dict[str, list[Timing]]:
    """``warmup`` untimed then ``n`` timed requests per target, one at a time, alternating between
    the targets (one keep-alive connection each) so background noise hits them alike."""
    conns = {t.name: (RawHttpConnection(HOST, t.port), request_bytes(t, body)) for t in targets}
    timings: dict[str, list[Timing]] = {t.name: [] for t in targets}
    try:
        for i in range(warmup + n):
            for name, (conn, request) in conns.items():
                timing = conn.roundtrip(request)
                if i >= warmup:
                    timings[name].append(timing)
        return timings
    finally:
        for conn, _request in conns.values():
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


def write_wrk_script(path: Path, body: Json) -> Path:
    payload = json.dumps(body, separators=(",", ":"))
    path.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = [[{payload}]]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {API_KEY}"\n'
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


async def _load_worker(target: Target, request: bytes, deadline: float, tally: LoadTally) -> None:
    reader, writer = await asyncio.open_connection(HOST, target.port)
    try:
        while time.perf_counter() < deadline:
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


async def _async_load(target: Target, body: Json, seconds: int) -> tuple[LoadTally, float]:
    request = request_bytes(target, body)
    tally = LoadTally([], [])
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(*(_load_worker(target, request, deadline, tally) for _ in range(CONCURRENCY)))
    return tally, time.perf_counter() - start


def run_async_load(target: Target, body: Json, seconds: int) -> Json:
    """The wrk stand-in: CONCURRENCY keep-alive connections in one asyncio loop."""
    tally, elapsed = asyncio.run(_async_load(target, body, seconds))
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (0.0 where that is unavailable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuUsage:
    """CPU seconds each service used inside a ``cpu_meter`` block, and the block's wall time."""

    cpu_s: dict[str, float]
    wall_s: float = 0.0


@contextlib.contextmanager
def cpu_meter(services: list[Service]) -> Iterator[CpuUsage]:
    """Yields a CpuUsage that is filled in when the block ends."""
    before = {s.name: cpu_seconds(s.proc.pid) for s in services}
    start = time.perf_counter()
    usage = CpuUsage({})
    yield usage
    usage.wall_s = time.perf_counter() - start
    usage.cpu_s = {s.name: round(cpu_seconds(s.proc.pid) - before[s.name], 3) for s in services}


# --------------------------------------------------------------------------- measurements


def measure_latency(targets: list[Target], plan: Plan) -> dict[str, Json]:
    print(f"  latency c=1    {plan.latency_n} requests per target, interleaved", flush=True)
    runs = run_interleaved(targets, CHAT_BODY, plan.latency_warmup, plan.latency_n)
    return {name: latency_summary(timings) for name, timings in runs.items()}


def run_load(target: Target, plan: Plan, wrk: str | None, script: Path) -> Json:
    if wrk is not None:
        return run_wrk(wrk, target, script, plan.load_seconds)
    return run_async_load(target, CHAT_BODY, plan.load_seconds)


def cpu_figures(usage: CpuUsage, requests: int) -> Json:
    """CPU per completed request and, over the run, as a percentage of one core, per process."""
    cpu = usage.cpu_s
    return {
        "cpu_s": cpu,
        "cpu_ms_per_request": {k: round(v * 1000 / requests, 4) if requests else None for k, v in cpu.items()},
        "cpu_pct_of_one_core": {k: round(100 * v / usage.wall_s, 1) for k, v in cpu.items()},
    }


def measure_throughput(targets: list[Target], plan: Plan, wrk: str | None, services: list[Service],
                       work_dir: Path) -> dict[str, Json]:
    script = write_wrk_script(work_dir / "post.lua", CHAT_BODY)
    out: dict[str, Json] = {}
    for target in targets:
        client = "wrk" if wrk else "asyncio client"
        print(f"  load c={CONCURRENCY}    {target.name:<8} {plan.load_seconds} s ({client})", flush=True)
        with cpu_meter(services) as usage:
            result = run_load(target, plan, wrk, script)
        out[target.name] = {**result, **cpu_figures(usage, int(result.get("requests") or 0))}
        for service in services:
            service.check_alive()
    return out


def measure_streaming(targets: list[Target], plan: Plan) -> dict[str, Json]:
    print(f"  stream TTFB    {plan.stream_n} requests per target, interleaved", flush=True)
    runs = run_interleaved(targets, STREAM_BODY, plan.stream_warmup, plan.stream_n)
    return {name: stream_summary(timings) for name, timings in runs.items()}


def gateway_requests_sent(plan: Plan, throughput: Json) -> int:
    """Calls the client side saw complete through the gateway (wrk does not count the requests
    still in flight when it stops, so the gateway may record up to CONCURRENCY more)."""
    load = int(throughput.get("requests") or 0)
    return plan.latency_warmup + plan.latency_n + load + plan.stream_warmup + plan.stream_n


def calls_total(metrics_text: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics_text.splitlines()
        if line.startswith(("tollhouse_calls_total{", "tollhouse_calls_total "))
    )


def wait_events_flushed(base: str, timeout_s: float = 15.0) -> Json:
    deadline = time.monotonic() + timeout_s
    health: Json = {}
    while time.monotonic() < deadline:
        health = json.loads(http_get(f"{base}/healthz")[1])
        if health.get("events_pending") == 0:
            break
        time.sleep(0.1)
    return health


def check_events(gateway: Service, base: str, sent: int) -> Json:
    """What the gateway recorded, compared with what was sent through it."""
    health = wait_events_flushed(base)
    metrics_status, metrics_body = http_get(f"{base}/metrics")
    events_status, events_body = http_get(f"{base}/api/v1/events?limit=5",
                                          {"Authorization": f"Bearer {ADMIN_TOKEN}"})
    events = json.loads(events_body).get("events", []) if events_status == 200 else []
    return {
        "requests_sent_via_gateway": sent,
        "metrics_calls_total": calls_total(metrics_body.decode()) if metrics_status == 200 else None,
        "events_written": health.get("events_written"),
        "events_pending": health.get("events_pending"),
        "events_api_status": events_status,
        "events_api_returned": len(events),
        "latest_event": events[0] if events else None,
        "gateway_log_problems": log_problems(gateway),
    }


def log_problems(service: Service, keep: int = 10) -> Json:
    """Warnings, errors and tracebacks the gateway logged (it runs at log level warning)."""
    lines = service.log_path.read_text(errors="replace").splitlines() if service.log_path.exists() else []
    bad = [ln for ln in lines if re.search(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback", ln)]
    return {"count": len(bad), "first": bad[:keep]}


# --------------------------------------------------------------------------- machine & report


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def background_load(sample_s: float = 1.0) -> Json:
    """How busy the machine is before the benchmark starts anything (other work skews results)."""
    try:
        busy0, total0 = _cpu_jiffies()
        time.sleep(sample_s)
        busy1, total1 = _cpu_jiffies()
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


def _added_ms(direct: float | None, gateway: float | None) -> str:
    return "" if direct is None or gateway is None else f"{gateway - direct:+.3f} ms"


def _row(metric: str, direct: Json, gateway: Json, key: str) -> str:
    d, g = direct.get(key), gateway.get(key)
    return f"| {metric} | {_fmt(d)} | {_fmt(g)} | {_added_ms(d, g)} |"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _throughput_rows(load: dict[str, Json], client: str) -> list[str]:
    d, g = load["direct"], load["gateway"]
    drps, grps = d["requests_per_s"], g["requests_per_s"]
    rows = [f"| throughput c={CONCURRENCY} ({client}), req/s | {drps:.0f} | {grps:.0f} | "
            f"{grps - drps:+.0f} ({(grps / drps - 1) * 100:+.1f} %) |"]
    rows += [_row(f"latency c={CONCURRENCY} {p}, ms", d, g, f"{p}_ms") for p in ("p50", "p90", "p99")]
    rows.append(f"| errors + non-2xx c={CONCURRENCY} | {d['errors']} | {g['errors']} | |")
    cpu_rows = (("cpu_ms_per_request", "CPU ms per request", 3), ("cpu_pct_of_one_core", "CPU % of one core", 0))
    for key, label, digits in cpu_rows:
        rows.append(f"| {label} c={CONCURRENCY}, mock / gateway process | {_fmt(d[key].get('mock'), digits)} / - "
                    f"| {_fmt(g[key].get('mock'), digits)} / {_fmt(g[key].get('gateway'), digits)} | |")
    return rows


def markdown_table(results: Json) -> str:
    lat, load, stream = results["latency_c1"], results["throughput"], results["streaming"]
    rows = ["| metric | direct | via gateway | added |", "|---|---:|---:|---:|"]
    rows += [_row(f"latency c=1 {p}, ms", lat["direct"], lat["gateway"], f"{p}_ms") for p in ("p50", "p90", "p99")]
    rows.append(f"| non-2xx c=1 | {lat['direct']['non_2xx']} | {lat['gateway']['non_2xx']} | |")
    rows += _throughput_rows(load, results["load_client"])
    for part in ("ttfb", "total"):
        rows += [_row(f"stream {part} {p}, ms", stream["direct"][part], stream["gateway"][part], f"{p}_ms")
                 for p in ("p50", "p99")]
    rows.append(f"| non-2xx stream | {stream['direct']['non_2xx']} | {stream['gateway']['non_2xx']} | |")
    return "\n".join(rows)


def load_description(results: Json) -> str:
    seconds = results["plan"]["load_seconds"]
    if results["load_client"] == "wrk":
        return f"`wrk -t{WRK_THREADS} -c{CONCURRENCY} -d{seconds}s --latency` with a Lua script for the POST"
    return f"an asyncio raw-socket client ({CONCURRENCY} keep-alive connections, one event loop), {seconds} s"


def markdown_notes(results: Json) -> list[str]:
    m, ev, plan, bg = results["machine"], results["events"], results["plan"], results["background_load"]
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
        f"Request: `{body}` with `Authorization: Bearer {API_KEY}`. Direct = `POST mock/v1/chat/completions`; "
        "via gateway = `POST gateway/openai/v1/chat/completions`, which the gateway forwards to the same mock.",
        f"Latency c=1: {plan['latency_n']} requests per target after {plan['latency_warmup']} warm-up, one at a "
        "time, alternating between the targets (so background noise hits both alike), each target on its own "
        "keep-alive HTTP/1.1 connection over a raw socket; `perf_counter_ns` from sending to the end of the body.",
        f"Throughput c={CONCURRENCY}: {load_description(results)}, per target. CPU figures are each process's "
        "user+system time during the run, per completed request and as a share of one core.",
        f"Streaming: the same body with `\"stream\": true`, {plan['stream_n']} requests per target after "
        f"{plan['stream_warmup']} warm-up, alternating, keep-alive raw sockets with chunked framing parsed. One mock "
        f"instance serves everything, run with `--chunk-delay-ms {CHUNK_DELAY_MS:g}` (it delays only the stream "
        "chunks after the first, so non-stream calls are unaffected). TTFB = send -> first byte of the first SSE "
        "event; total = send -> end of the stream. The gateway adds `stream_options.include_usage` upstream (to "
        "meter tokens) and strips the extra usage chunk from the client's stream, so via the gateway the mock sends "
        f"one more chunk, {CHUNK_DELAY_MS:g} ms later, before `[DONE]`: that one chunk interval is part of the "
        "stream-total 'added' figure (TTFB is unaffected).",
        f"Events: {ev['requests_sent_via_gateway']} requests completed via the gateway as counted by the clients "
        f"(wrk does not count the up to {CONCURRENCY} requests in flight when it stops); the gateway's "
        f"`tollhouse_calls_total` = {ev['metrics_calls_total']:.0f}, events written = {ev['events_written']} "
        f"(pending {ev['events_pending']}); `GET /api/v1/events?limit=5` -> HTTP {ev['events_api_status']}, "
        f"{ev['events_api_returned']} events; gateway log warnings/errors: {ev['gateway_log_problems']['count']}.",
    ]


def markdown_report(results: Json) -> str:
    notes = "\n".join(f"- {note}" for note in markdown_notes(results))
    return f"# Gateway core benchmark\n\n{markdown_table(results)}\n\n{notes}\n"


def write_results(results: Json, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{RESULT_NAME}.json", out_dir / f"{RESULT_NAME}.md"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    md_path.write_text(markdown_report(results))
    return json_path, md_path


def added_summary(results: Json) -> Json:
    lat, stream = results["latency_c1"], results["streaming"]
    load = results["throughput"]
    return {
        "latency_c1_p50_ms": round(lat["gateway"]["p50_ms"] - lat["direct"]["p50_ms"], 3),
        "latency_c1_p99_ms": round(lat["gateway"]["p99_ms"] - lat["direct"]["p99_ms"], 3),
        "stream_ttfb_p50_ms": round(stream["gateway"]["ttfb"]["p50_ms"] - stream["direct"]["ttfb"]["p50_ms"], 3),
        "stream_ttfb_p99_ms": round(stream["gateway"]["ttfb"]["p99_ms"] - stream["direct"]["ttfb"]["p99_ms"], 3),
        "throughput_ratio": round(load["gateway"]["requests_per_s"] / load["direct"]["requests_per_s"], 3),
    }


# --------------------------------------------------------------------------- main


def run_benchmark(plan: Plan, quick: bool, wrk: str | None) -> Json:
    before = background_load()
    print(f"background load before start: {before}", flush=True)
    with contextlib.ExitStack() as stack:
        work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tollhouse-bench-")))
        mock_port, gateway_port = free_port(), free_port()
        mock = start_mock(mock_port, work_dir)
        stack.callback(stop_service, mock)
        gateway = start_gateway(gateway_port, mock_port, work_dir)
        stack.callback(stop_service, gateway)
        print(f"mock on :{mock_port}, gateway on :{gateway_port} (data in {work_dir})", flush=True)

        targets = [Target("direct", mock_port, "/v1/chat/completions"),
                   Target("gateway", gateway_port, "/openai/v1/chat/completions")]
        latency = measure_latency(targets, plan)
        throughput = measure_throughput(targets, plan, wrk, [mock, gateway], work_dir)
        streaming = measure_streaming(targets, plan)
        gateway.check_alive()
        sent = gateway_requests_sent(plan, throughput["gateway"])
        events = check_events(gateway, f"http://{HOST}:{gateway_port}", sent)

    results: Json = {
        "benchmark": RESULT_NAME,
        "quick": quick,
        "plan": dataclasses.asdict(plan),
        "load_client": "wrk" if wrk else "asyncio raw-socket client",
        "machine": machine_info(wrk),
        "background_load": {"before": before, "after_loadavg_1m": round(os.getloadavg()[0], 2)},
        "latency_c1": latency,
        "throughput": throughput,
        "streaming": streaming,
        "events": events,
    }
    results["added"] = added_summary(results)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short smoke run (about 20 s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for gateway-core.{json,md}")
    parser.add_argument("--no-wrk", action="store_true", help="use the asyncio client even if wrk is installed")
    return parser.parse_args(argv)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the ExitStack, which stops the servers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    wrk = None if args.no_wrk else shutil.which("wrk")
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    try:
        results = run_benchmark(plan, args.quick, wrk)
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    json_path, md_path = write_results(results, args.out)
    print()
    print(markdown_table(results))
    ev = results["events"]
    print(f"\nload client: {results['load_client']}; via gateway: {ev['requests_sent_via_gateway']} requests sent, "
          f"tollhouse_calls_total {ev['metrics_calls_total']}, events written {ev['events_written']}, "
          f"/api/v1/events -> {ev['events_api_status']} ({ev['events_api_returned']} events), "
          f"gateway log warnings/errors {ev['gateway_log_problems']['count']}")
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

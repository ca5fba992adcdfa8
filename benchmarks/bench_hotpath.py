#!/usr/bin/env python3
"""The gateway's own Python cost per call, without the network: the app driven in-process.

The real `GatewayApp` over the real state (policy, directory, ledger, event writer with its journal and
store thread, metrics) handles calls whose transport is faked on both sides: a fake of the server's
exchange hands the request body in and takes the response, and a fake of the upstream client answers
the canned completion the suite's nginx upstream answers. What is left is exactly the Python work the
gateway does per call on its event-loop thread, measured with `time.thread_time_ns()` (CPU of that
thread only) over many calls. A bare handler (read the body, copy headers, answer) gives the floor.

    python benchmarks/bench_hotpath.py [--calls 20000] [--scenarios observe,rules-1000,rules-1000+budget]

Why it exists: the event-loop thread does all of a call's work (parsing, policy, ledger, forwarding), so
a microsecond saved here is throughput; this measures the gateway's part without the noise of a loaded
two-core machine (the HTTP parsing and socket I/O are not in it).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime
import gc
import json
import pstats
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson
import uvloop

from bench_gateway import API_KEY, CHAT_BODY, HOST, USER_HEADER, build_scenarios, gateway_config
from tollhouse.config import parse_settings
from tollhouse.gateway.app import GatewayApp
from tollhouse.gateway.state import build_state
from tollhouse.wire.server import Head, Headers

HERE = Path(__file__).resolve().parent
CANNED = orjson.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 25, "completion_tokens": 16, "total_tokens": 41}})
UPSTREAM_HEADERS = [("server", "nginx/1.22.1"), ("date", "Mon, 23 Nov 2026 20:28:36 GMT"),
                    ("content-type", "application/json"), ("content-length", str(len(CANNED))),
                    ("connection", "keep-alive")]


class _Response:
    """What the upstream client's response offers the gateway."""

    status = 200
    headers = UPSTREAM_HEADERS

    async def read(self) -> bytes:
        return CANNED

    def close(self) -> None:
        return None


class FakeClient:
    """The upstream, answered in-process (the provider is the one thing outside us)."""

    async def send(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> _Response:
        return _Response()

    def close(self) -> None:
        return None


class FakeProto:
    """The server's exchange, as far as a non-stream call uses it."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.status = 0

    async def __call__(self) -> bytes:
        return self.body

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status


class BareApp:
    """The floor: what any pass-through does in Python (read, copy headers, forward, answer)."""

    def __init__(self) -> None:
        self.client = FakeClient()

    async def __call__(self, head: Head, proto: FakeProto) -> None:
        body = await proto()
        headers = [(k, v) for k, v in head.headers.items() if k != "host"]
        resp = await self.client.send(head.method, head.raw_path, headers, body)
        data = await resp.read()
        proto.response_bytes(resp.status, [(k, v) for k, v in resp.headers if k != "connection"], data)


def _requests(users: tuple[str, ...]) -> list[tuple[Head, bytes]]:
    body = json.dumps(CHAT_BODY, separators=(",", ":")).encode()
    base = {"host": f"{HOST}:8787", "content-type": "application/json", "authorization": f"Bearer {API_KEY}",
            "content-length": str(len(body)), "user-agent": "wrk"}
    who = users or ("",)
    return [(Head("POST", "/openai/v1/chat/completions", "",
                  Headers(list(({**base, USER_HEADER.lower(): u} if u else base).items()))), body) for u in who]


async def _time(app: Any, requests: list[tuple[Head, bytes]], calls: int) -> list[float]:
    """µs of this thread's CPU per call, in rounds of 1,000 calls (the median round is reported)."""
    rounds: list[float] = []
    n = len(requests)
    done = 0
    while done < calls:
        t0 = time.thread_time_ns()
        for i in range(done, done + 1000):
            head, body = requests[i % n]
            proto = FakeProto(body)
            await app(head, proto)
            if proto.status != 200:
                raise SystemExit(f"call {i} answered {proto.status}")
        rounds.append((time.thread_time_ns() - t0) / 1000 / 1000)
        done += 1000
        await asyncio.sleep(0)  # let the writer hand its batch to the store thread
    return rounds


async def measure(name: str, calls: int, work: Path, profile: bool = False) -> dict[str, Any]:
    if name == "bare":
        app: Any = BareApp()
        requests = _requests(())
        await _time(app, requests, 2000)
        rounds = await _time(app, requests, calls)
        return {"scenario": "bare", "description": "bare pass-through handler (the floor)", **_summary(rounds)}
    scenario = build_scenarios([name], datetime.datetime.now(datetime.UTC))[0]
    settings = parse_settings(gateway_config(1, scenario.config), name)
    state = await build_state(settings, work / name, "http://127.0.0.1:8787")
    routes = state.providers.current
    for route in routes.values():
        route.client.close()
    state.providers.publish(MappingProxyType({pid: replace(route, client=FakeClient())  # type: ignore[arg-type]
                                              for pid, route in routes.items()}))
    await state.lifespan.start()
    try:
        app = GatewayApp(state)
        requests = _requests(scenario.users)
        await _time(app, requests, min(len(requests), 2000) + 2000)  # every subject's counters loaded, warm
        gc.collect()
        gc.freeze()
        prof = cProfile.Profile()
        if profile:
            prof.enable()
        rounds = await _time(app, requests, calls)
        if profile:
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(45)
    finally:
        await state.close()
    return {"scenario": name, "description": scenario.description, **_summary(rounds)}


def _summary(rounds: list[float]) -> dict[str, Any]:
    return {"rounds": len(rounds), "us_per_call_median": round(statistics.median(rounds), 2),
            "us_per_call_min": round(min(rounds), 2), "us_per_call_max": round(max(rounds), 2)}


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    with tempfile.TemporaryDirectory(prefix="tollhouse-hotpath-") as tmp:
        for name in args.scenarios.split(","):
            row = await measure(name, args.calls, Path(tmp), args.profile)
            print(f"{row['scenario']:20} {row['us_per_call_median']:8.2f} µs/call "
                  f"(min {row['us_per_call_min']}, max {row['us_per_call_max']})", flush=True)
            out.append(row)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--scenarios", default="bare,observe,rules-1000,rules-1000+budget")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of each scenario's timed calls")
    args = parser.parse_args()
    rows = uvloop.run(main_async(args))
    if args.json:
        args.json.write_text(json.dumps({"benchmark": "hotpath", "python": sys.version.split()[0], "rows": rows},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

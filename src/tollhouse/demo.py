"""`tollhouse demo`: the mock provider, a gateway in front of it, and realistic traffic.

Everything runs on loopback with no provider key, so a newcomer sees real events, metrics and
costs in a minute.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from tollhouse.config import Settings, parse_settings
from tollhouse.demo_history import history, seed_history
from tollhouse.events.store import StoreError
from tollhouse.gateway.app import serve
from tollhouse.gateway.state import GatewayState, admin_token_hint, admin_token_shell
from tollhouse.mock.provider import MockSettings, build_mock_app

TEAMS: list[dict[str, str]] = [
    {"id": "engineering", "cost_centre": "CC-100"},
    {"id": "platform", "parent": "engineering"},
    {"id": "ml", "parent": "engineering", "cost_centre": "CC-300"},
    {"id": "support", "cost_centre": "CC-400"},
]
PROJECTS: list[dict[str, str]] = [
    {"id": "checkout", "team": "platform", "cost_centre": "CC-200"},
    {"id": "search", "team": "ml"},
    {"id": "helpdesk", "team": "support"},
]
PEOPLE: list[dict[str, Any]] = [
    {"id": "alice", "team": "platform", "projects": ["checkout"]},
    {"id": "bob", "team": "platform"},
    {"id": "carol", "team": "ml", "projects": ["search"]},
    {"id": "dan", "team": "ml", "kind": "contractor"},
    {"id": "erin", "team": "support", "projects": ["helpdesk"]},
    {"id": "frank", "team": "engineering"},
]
SERVICES: list[dict[str, str]] = [{"id": "support-bot", "team": "support", "project": "helpdesk"}]

# (family route, model, weight)
WORKLOAD: list[tuple[str, str, int]] = [
    ("openai", "gpt-4o-mini", 30),
    ("openai", "gpt-4o", 12),
    ("openai-embeddings", "text-embedding-3-small", 8),
    ("openai-responses", "gpt-4.1-mini", 6),
    ("anthropic", "claude-3-5-haiku-20241022", 18),
    ("anthropic", "claude-3-5-sonnet-20241022", 12),
    ("gemini", "gemini-2.0-flash", 10),
    ("openai", "my-finetune-unpriced", 2),
]


# monthly team budgets that alert (the console's budgets at risk); small, as the demo's calls are cheap
BUDGETS: list[dict[str, Any]] = [
    {"id": f"{team}-budget", "scope": "team", "team": team, "action": {"type": "alert"},
     "condition": {"type": "budget", "threshold": threshold, "window": "monthly"}}
    for team, threshold in (("support", 1), ("ml", 5), ("platform", 10))
]


def demo_settings(mock_url: str) -> Settings:
    upstream = {"upstream": mock_url}
    return parse_settings({
        "enforcement": "off",
        "identity": {"trust_user_header": True},
        "providers": {"openai": upstream, "anthropic": upstream, "gemini": upstream},
        "directory": {"org": "demo-corp", "teams": TEAMS, "projects": PROJECTS, "people": PEOPLE,
                      "services": SERVICES},
        "policy": {"rules": BUDGETS},
    }, "(demo)")


def _request(kind: str, model: str, stream: bool, rng: random.Random) -> tuple[str, dict[str, Any]]:
    prompt = " ".join(rng.choice(["explain", "refactor", "this", "function", "summarise", "the", "ticket",
                                  "write", "tests", "for", "module"]) for _ in range(rng.randint(5, 60)))
    max_tokens = rng.choice([64, 128, 256, 512])
    if kind == "openai":
        return "/openai/v1/chat/completions", {"model": model, "stream": stream, "max_tokens": max_tokens,
                                               "messages": [{"role": "user", "content": prompt}]}
    if kind == "openai-embeddings":
        return "/openai/v1/embeddings", {"model": model, "input": prompt}
    if kind == "openai-responses":
        return "/openai/v1/responses", {"model": model, "input": prompt, "stream": stream}
    if kind == "anthropic":
        return "/anthropic/v1/messages", {"model": model, "max_tokens": max_tokens, "stream": stream,
                                          "messages": [{"role": "user", "content": prompt}]}
    action = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return f"/gemini/v1beta/models/{model}:{action}", {"contents": [{"parts": [{"text": prompt}]}]}


async def drive_traffic(base_url: str, calls: int, seed: int = 7, concurrency: int = 4) -> int:
    """Send `calls` requests from several people and teams; return how many got a 2xx."""
    rng = random.Random(seed)
    subjects = [p["id"] for p in PEOPLE] + [s["id"] for s in SERVICES]
    kinds = [w for w in WORKLOAD for _ in range(w[2])]
    ok = 0
    sem = asyncio.Semaphore(concurrency)

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        nonlocal ok
        kind, model, _ = rng.choice(kinds)
        stream = rng.random() < 0.4 and kind != "openai-embeddings"
        path, body = _request(kind, model, stream, rng)
        headers = {"X-Tollhouse-User": rng.choice(subjects), "Authorization": "Bearer sk-demo",
                   "x-api-key": "sk-ant-demo", "Content-Type": "application/json"}
        if rng.random() < 0.2:
            headers["X-Tollhouse-Project"] = rng.choice(PROJECTS)["id"]
        async with sem, session.post(base_url + path, data=orjson.dumps(body), headers=headers) as resp:
            await resp.read()
            if resp.status < 300:
                ok += 1

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session, i) for i in range(calls)))
    return ok


async def run_demo(data_dir: Path, port: int, mock_port: int, calls: int, stop: asyncio.Event,
                   exit_after: bool = False) -> None:
    mock_runner = web.AppRunner(build_mock_app(MockSettings(latency_ms=20, chunk_delay_ms=5)), access_log=None)
    await mock_runner.setup()
    try:
        await web.TCPSite(mock_runner, "127.0.0.1", mock_port).start()
    except OSError as exc:
        await mock_runner.cleanup()
        raise OSError(f"the mock provider cannot listen on 127.0.0.1:{mock_port}: {exc.strerror or exc}; pass "
                      "--mock-port with a free port, or stop what uses it") from None
    mock_url = f"http://127.0.0.1:{mock_port}"
    settings = demo_settings(mock_url)
    past = history(int(time.time() * 1000), [*PEOPLE, *SERVICES], WORKLOAD)
    try:
        await asyncio.to_thread(seed_history, settings.store.url, data_dir, past)
    except StoreError as exc:
        await mock_runner.cleanup()
        raise OSError(f"the demo cannot write its history into the store in {data_dir}: {exc}") from None
    started: asyncio.Future[tuple[GatewayState, int]] = asyncio.get_running_loop().create_future()
    gateway = asyncio.create_task(serve(settings, data_dir, "127.0.0.1", port,
                                        lambda st, p: started.set_result((st, p)), stop))
    try:
        # the gateway either starts or fails to (its port taken, its store unusable): never wait on it forever
        waiting: list[asyncio.Future[Any]] = [started, gateway]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if not started.done():
            await gateway  # raises why it did not start
            return  # stopped (Ctrl-C) before it was up
        state, bound = started.result()
        base = f"http://127.0.0.1:{bound}"
        print(f"Tollhouse demo: mock provider {mock_url}, gateway {base}, data in {data_dir}")
        print(f"Wrote two weeks of past calls ({len(past)}) so the console has a baseline.")
        print(f"Driving {calls} calls from {len(PEOPLE)} people and a service in {len(TEAMS)} teams...")
        ok = await drive_traffic(base, calls)
        print(f"Done: {ok}/{calls} calls answered 2xx.")
        print(f"  Admin token: {admin_token_hint(state.settings, data_dir)}")
        print(f"  Events:  curl -H \"Authorization: Bearer {admin_token_shell(state.settings, data_dir)}\" "
              f"'{base}/api/v1/events?limit=5'")
        print(f"  Metrics: {base}/metrics    Console: {base}/console/")
        print(f"  Try:     OpenAI(base_url='{base}/openai/v1', api_key='sk-x', "
              "default_headers={'X-Tollhouse-User': 'alice'})")
        if exit_after:
            stop.set()
        else:
            print("Running; Ctrl-C to stop.")
        await gateway
    finally:
        stop.set()
        await mock_runner.cleanup()

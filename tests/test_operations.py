"""Running it: commands, health, metrics, shutdown, config errors, custom providers, egress proxy."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from conftest import Gateway, Mock, upstreams
from test_gateway_sdks import oai
from tollhouse.gateway.app import routes


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tollhouse", *args], capture_output=True, text=True, timeout=90,
                          env={**os.environ, **(env or {})})


def test_healthz_metrics_and_console(gateway: Gateway) -> None:
    oai(gateway).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    status, body, _ = gateway.get("/healthz", token=None)
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, body, headers = gateway.get("/metrics", token=None)
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert 'tollhouse_calls_total{decision="allow",model="gpt-4o-mini",provider="openai",status="200"} 1.0' in text
    assert 'tollhouse_tokens_total{direction="output",model="gpt-4o-mini",provider="openai"} 16.0' in text
    assert 'tollhouse_cost_usd_total{model="gpt-4o-mini",provider="openai"}' in text
    assert "tollhouse_request_duration_seconds_bucket" in text
    status, body, headers = gateway.get("/console/", token=None)  # the console needs a signed-in user
    assert status == 200 and b"Sign in" in body and b"alice" not in body  # (the redirect to the sign-in, followed)
    status, body, _ = gateway.get("/console/")  # the admin token as a bearer token
    assert status == 200 and b"gpt-4o-mini" in body and b"alice" in body
    status, body, _ = gateway.get("/api/v1/openapi.json", token=None)
    assert status == 200 and "/api/v1/events" in json.loads(body)["paths"]


def test_events_page_newest_first(gateway: Gateway) -> None:
    client = oai(gateway)
    for model in ("gpt-4o-mini", "gpt-4o", "gpt-4.1"):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    _, body, _ = gateway.get("/api/v1/events?limit=2")
    page = json.loads(body)
    assert [e["requested_model"] for e in page["events"]] == ["gpt-4.1", "gpt-4o"]
    _, body, _ = gateway.get(page["next"])
    assert [e["requested_model"] for e in json.loads(body)["events"]] == ["gpt-4o-mini"]
    required = {"id", "ts", "subject", "team", "project", "provider", "model", "requested_model", "stream",
                "status", "input_tokens", "output_tokens", "cost_usd", "decision", "rule_id"}
    assert required <= set(page["events"][0])


def test_events_are_flushed_on_shutdown(mock: Mock, tmp_path: Path) -> None:
    gw = Gateway({"providers": upstreams(mock.url), "events": {"flush_interval_s": 30, "batch_size": 10_000}},
                 tmp_path / "d").start()
    client = oai(gw)
    for _ in range(25):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    gw.stop()  # nothing was written yet (30 s interval): shutdown must drain
    db = sqlite3.connect(tmp_path / "d" / "tollhouse.db")
    assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 25


def test_openai_compatible_provider_is_just_config(mock: Mock, gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory({"providers": {"groq": {"upstream": mock.url, "family": "openai"},
                                                 "azure": {"upstream": mock.url, "family": "openai",
                                                           "price_provider": "azure"}}})
    client = openai.OpenAI(base_url=gw.url + "/groq/v1", api_key="gsk-x", max_retries=0)
    client.chat.completions.create(model="llama-3.3-70b-versatile", messages=[{"role": "user", "content": "x"}])
    azure = openai.AzureOpenAI(azure_endpoint=gw.url + "/azure", api_key="az-x", api_version="2024-10-21",
                               max_retries=0)
    azure.chat.completions.create(model="my-gpt4o-deployment", messages=[{"role": "user", "content": "x"}])
    by_provider = {e["provider"]: e for e in gw.events()}
    assert by_provider["groq"]["model"] == "llama-3.3-70b-versatile" and by_provider["groq"]["cost_usd"] > 0
    assert by_provider["azure"]["requested_model"] == "my-gpt4o-deployment"
    assert by_provider["azure"]["output_tokens"] == 16
    assert mock.stats.last_path is not None and mock.stats.last_path.startswith(
        "/openai/deployments/my-gpt4o-deployment/chat/completions")


def test_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("providers:\n  openai:\n    upstream: ftp://nope\nenforcment: on\n")
    result = _cli("serve", "--config", str(cfg), "--port", "0", "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2
    assert str(cfg) in result.stderr
    assert "providers.openai.upstream" in result.stderr and "enforcment: unknown key" in result.stderr
    assert "Traceback" not in result.stderr
    missing = _cli("serve", "--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_serve_command_runs_and_stops_cleanly(mock: Mock, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"providers": upstreams(mock.url), "admin_token": "tok"}))
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tollhouse", "serve", "--config", str(cfg), "--port", str(port),
                             "--data-dir", str(tmp_path / "d")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/openai/v1", api_key="sk-x", max_retries=0)
        for _ in range(3):
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert f"listening on http://127.0.0.1:{port}" in out
    db = sqlite3.connect(tmp_path / "d" / "tollhouse.db")
    assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 3


def test_demo_drives_traffic_from_several_people(tmp_path: Path) -> None:
    result = _cli("demo", "--port", str(_free_port()), "--mock-port", str(_free_port()), "--calls", "40",
                  "--data-dir", str(tmp_path / "demo"), "--exit")
    assert result.returncode == 0, result.stderr
    assert "Done: 40/40" in result.stdout
    db = sqlite3.connect(tmp_path / "demo" / "tollhouse.db")
    subjects, teams, providers = db.execute(
        "SELECT COUNT(DISTINCT subject), COUNT(DISTINCT team), COUNT(DISTINCT provider) FROM events").fetchone()
    assert subjects >= 4 and teams >= 3 and providers == 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str) -> None:
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not become healthy")


class ForwardProxy:
    """A minimal HTTP forward proxy (absolute-form requests), recording what it was asked."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ForwardProxy:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        method, target, version = lines[0].split(" ")
        auth = next((line.split(":", 1)[1].strip() for line in lines[1:]
                     if line.lower().startswith("proxy-authorization:")), None)
        self.requests.append((target, auth))
        rest = target.split("://", 1)[1]
        hostport, _, path = rest.partition("/")
        host, port = hostport.split(":")
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        kept = [line for line in lines[1:] if line and not line.lower().startswith("proxy-")]
        up_writer.write(f"{method} /{path} {version}\r\n".encode() + "\r\n".join(kept).encode() + b"\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)


@pytest.fixture
def forward_proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy() as proxy:
        yield proxy


def test_outbound_calls_go_through_the_corporate_proxy(mock: Mock, gateway_factory: Any,
                                                       forward_proxy: ForwardProxy) -> None:
    gw: Gateway = gateway_factory({"providers": upstreams(mock.url),
                                   "upstream_proxy": f"http://corp:s3cret@127.0.0.1:{forward_proxy.port}"})
    oai(gw).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "via proxy"}])
    assert forward_proxy.requests, "the gateway did not dial through the proxy"
    target, auth = forward_proxy.requests[0]
    assert target == mock.url + "/v1/chat/completions"
    assert auth == "Basic Y29ycDpzM2NyZXQ="  # corp:s3cret
    ev = gw.events()[0]
    assert ev["status"] == 200 and ev["output_tokens"] == 16
    assert b"s3cret" not in gw.get("/api/v1/events")[1]


def test_every_api_route_is_in_the_openapi_document(gateway: Gateway) -> None:
    _, body, _ = gateway.get("/api/v1/openapi.json", token=None)
    paths = json.loads(body)["paths"]
    missing = [f"{method} {path}" for method, path in routes()
               if path.startswith("/api/v1/") and path != "/api/v1/openapi.json"
               and method.lower() not in paths.get(path, {})]
    assert missing == []

"""The forward proxy on an agent (issue 21): `TOLLHOUSE_FORWARD_PROXY_PORT` in the managed file runs it, calls
through it are the machine user's, and the hosts it saw reach the control plane's GET /api/v1/hosts."""

from __future__ import annotations

import dataclasses
import json
import ssl
import time
from pathlib import Path
from typing import Any

import openai

from conftest import Gateway, Mock, free_port, upstreams
from forward_helpers import EchoTLSServer, connect, read_head, self_signed
from test_agent import DIRECTORY, Agent, _until

DAY_MS = 86_400_000


def _hosts(gw: Gateway) -> dict[str, dict[str, Any]]:
    status, body, _ = gw.get("/api/v1/hosts")
    assert status == 200, body
    return {h["host"]: h for h in json.loads(body)["hosts"]}


def test_the_agents_proxy_governs_and_reports_its_hosts(gateway_factory: Any, mock: Mock, tmp_path: Path) -> None:
    control: Gateway = gateway_factory({"providers": upstreams(mock.url), "directory": DIRECTORY})
    status, body, _ = control.request("POST", "/api/v1/agent/tokens", {"label": "laptops"})
    assert status == 201
    port = free_port()
    agent = Agent(control.url, json.loads(body)["token"], tmp_path / "agent", mock,
                  managed={"TOLLHOUSE_FORWARD_PROXY_PORT": str(port)})
    agent.opts = dataclasses.replace(agent.opts, hosts_interval_s=0.1)
    chain, cert = self_signed(tmp_path)
    server = EchoTLSServer(chain)
    agent.start()
    try:
        info = agent.health()["forward_proxy"]
        assert info["port"] == port
        http = openai.DefaultHttpxClient(proxy=f"http://127.0.0.1:{port}",
                                         verify=ssl.create_default_context(cafile=info["ca_bundle"]))
        client = openai.OpenAI(api_key="sk-laptop", http_client=http, max_retries=0, timeout=20)
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        events = agent.api("/api/v1/events")["events"]
        assert [(e["subject"], e["provider"]) for e in events] == [("alice", "openai")]
        sock = connect(port, f"CONNECT localhost:{server.port} HTTP/1.1\r\n\r\n".encode())
        assert read_head(sock).startswith(b"HTTP/1.1 200")
        tls = ssl.create_default_context(cafile=str(cert)).wrap_socket(sock, server_hostname="localhost")
        tls.sendall(b"hello\n")
        assert tls.recv(100) == b"echo: hello\n"
        tls.close()
        _until(lambda: _hosts(control).get("localhost", {}).get("bytes_down", 0) > 0, timeout_s=10)
        seen = _hosts(control)
        assert seen["localhost"]["agents"] == 1 and seen["localhost"]["people"] == ["alice"]
        assert seen["localhost"]["connections"] == 1 and seen["localhost"]["known_ai"] is False
        assert seen["api.openai.com"]["managed"] and seen["api.openai.com"]["intercepted"] == 1
        assert agent.health()["forward_proxy_hosts"]["last_error"] is None
    finally:
        agent.stop()
        server.close()


def test_agent_host_reports_are_checked_and_replace_the_last(gateway_factory: Any, mock: Mock) -> None:
    control: Gateway = gateway_factory({"providers": upstreams(mock.url), "directory": DIRECTORY})
    status, body, _ = control.request("POST", "/api/v1/agent/tokens", {"label": "laptops"})
    token = json.loads(body)["token"]
    row = {"host": "api.mistral.ai", "person": "bob", "connections": 3, "intercepted": 0, "denied": 0,
           "bytes_up": 10, "bytes_down": 20, "first_ms": 1000, "last_ms": 2000}
    headers = {"X-Tollhouse-Agent-Id": "laptop-1"}
    assert control.request("POST", "/api/v1/agent/hosts", {"hosts": [row]}, token=None)[0] == 401
    for bad in ({"hosts": [{**row, "connections": -1}]}, {"hosts": [{**row, "host": 7}]}, {"rows": []}):
        status, answer, _ = control.request("POST", "/api/v1/agent/hosts", bad, token=token, headers=headers)
        assert status == 400 and b"hosts" in answer, answer
    for _ in range(2):  # a report sent twice counts once
        assert control.request("POST", "/api/v1/agent/hosts", {"hosts": [row]}, token=token, headers=headers)[0] == 200
    later = {**row, "connections": 5, "last_ms": 3000}
    assert control.request("POST", "/api/v1/agent/hosts", {"hosts": [later]}, token=token, headers=headers)[0] == 200
    # an older report arriving late does not roll the totals back
    assert control.request("POST", "/api/v1/agent/hosts", {"hosts": [row]}, token=token, headers=headers)[0] == 200
    seen = _hosts(control)["api.mistral.ai"]
    assert seen["connections"] == 5 and seen["vendor"] == "Mistral" and seen["known_ai"] and not seen["managed"]
    status, body, _ = control.get("/api/v1/hosts?known_ai=true&managed=false")
    assert [h["host"] for h in json.loads(body)["hosts"]] == ["api.mistral.ai"]


def test_hosts_not_seen_for_the_retention_are_deleted(gateway_factory: Any, mock: Mock, tmp_path: Path) -> None:
    """forward_proxy.hosts_retention_days: a gateway deletes host rows (its own and agents' reports) not seen for
    that long, at start and hourly, so names a client made up long ago do not pile up in the store."""
    config = {"providers": upstreams(mock.url), "directory": DIRECTORY,
              "forward_proxy": {"hosts_retention_days": 1}}
    control: Gateway = gateway_factory(config, tmp_path / "control")
    token = json.loads(control.request("POST", "/api/v1/agent/tokens", {"label": "laptops"})[1])["token"]
    now_ms = int(time.time() * 1000)
    old = {"host": "made-up-3-days-ago.example", "person": "bob", "connections": 1, "intercepted": 0,
           "denied": 1, "bytes_up": 0, "bytes_down": 0, "first_ms": now_ms - 3 * DAY_MS,
           "last_ms": now_ms - 3 * DAY_MS}
    recent = {**old, "host": "api.mistral.ai", "denied": 0, "first_ms": now_ms - 3 * DAY_MS, "last_ms": now_ms}
    status, body, _ = control.request("POST", "/api/v1/agent/hosts", {"hosts": [old, recent]}, token=token,
                                      headers={"X-Tollhouse-Agent-Id": "laptop-1"})
    assert status == 200, body
    assert set(_hosts(control)) == {"made-up-3-days-ago.example", "api.mistral.ai"}  # until the next prune
    control.stop()
    again: Gateway = gateway_factory(config, tmp_path / "control")  # the same store; prunes as it starts
    _until(lambda: set(_hosts(again)) == {"api.mistral.ai"}, 10)

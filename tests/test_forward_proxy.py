"""Forward-proxy mode (issue 21): the SDKs with their default base URLs, through HTTPS_PROXY and the local CA, reach
the mock provider standing in for api.openai.com / api.anthropic.com, governed and recorded exactly as on the
base-URL path; other hosts are tunnelled untouched and listed at /api/v1/hosts."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from cryptography.hazmat.primitives import serialization

from conftest import Gateway, Mock
from connect_proxy import ConnectProxy
from forward_helpers import (
    EchoTLSServer,
    connect,
    proxy_config,
    proxy_info,
    proxy_url,
    read_all,
    read_head,
    self_signed,
)
from tollhouse.forward.ca import CAError, load_or_create

BLOCK_GPT4O = [{"id": "no-big-models", "scope": "org", "enabled": True,
                "condition": {"type": "model", "operator": "in", "models": ["gpt-4o", "claude-opus-4-1-20250805"]},
                "action": {"type": "hard_stop", "message": "Use an approved model"}}]


@pytest.fixture(autouse=True)
def _no_base_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                 "ALL_PROXY", "all_proxy", "SSL_CERT_FILE"):
        monkeypatch.delenv(name, raising=False)


def _trusting(gw: Gateway) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=proxy_info(gw)["ca_bundle"])


def _oai(gw: Gateway, verify: ssl.SSLContext | None = None) -> openai.OpenAI:
    http = openai.DefaultHttpxClient(proxy=proxy_url(gw), verify=verify or _trusting(gw))
    return openai.OpenAI(api_key="sk-client", http_client=http, max_retries=0, timeout=20)


def _claude(gw: Gateway) -> anthropic.Anthropic:
    http = anthropic.DefaultHttpxClient(proxy=proxy_url(gw), verify=_trusting(gw))
    return anthropic.Anthropic(api_key="sk-ant-client", http_client=http, max_retries=0, timeout=20)


def _hosts(gw: Gateway, query: str = "") -> dict[str, dict[str, Any]]:
    status, body, _ = gw.get(f"/api/v1/hosts{query}")
    assert status == 200, body
    return {h["host"]: h for h in json.loads(body)["hosts"]}


def test_openai_and_anthropic_sdks_with_default_base_urls_are_recorded(mock: Mock, gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory(proxy_config(mock))
    resp = _oai(gw).chat.completions.create(model="gpt-4o-mini", max_tokens=7,
                                            messages=[{"role": "user", "content": "hello through the proxy"}])
    assert resp.usage is not None and resp.usage.completion_tokens == 7
    msg = _claude(gw).messages.create(model="claude-3-5-haiku-20241022", max_tokens=5,
                                      messages=[{"role": "user", "content": "hello"}])
    assert msg.usage.output_tokens == 5
    events = {e["provider"]: e for e in gw.events()}
    assert set(events) == {"openai", "anthropic"}
    oa = events["openai"]
    assert oa["subject"] == "alice" and oa["model"] == resp.model and oa["output_tokens"] == 7
    assert oa["input_tokens"] == resp.usage.prompt_tokens and oa["cost_usd"] > 0 and oa["decision"] == "allow"
    assert events["anthropic"]["output_tokens"] == 5 and events["anthropic"]["cost_usd"] > 0
    # the mock got the provider's own path; the upstream is the configured one, not the request's host
    assert mock.stats.last_path == "/v1/messages"
    assert mock.stats.last_headers["Host"] == mock.url.removeprefix("http://")
    hosts = _hosts(gw)
    assert hosts["api.openai.com"]["managed"] and hosts["api.openai.com"]["known_ai"]
    assert hosts["api.openai.com"]["vendor"] == "OpenAI" and hosts["api.openai.com"]["intercepted"] >= 1
    assert hosts["api.anthropic.com"]["people"] == ["alice"]
    metrics = gw.get("/metrics")[1]
    assert b'tollhouse_forward_connections_total{outcome="intercepted"} 2.0' in metrics, metrics


def test_a_blocking_rule_blocks_an_intercepted_call_in_the_provider_shape(mock: Mock, gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory({**proxy_config(mock), "enforcement": "on", "policy": {"rules": BLOCK_GPT4O}})
    before = mock.stats.total
    with pytest.raises(openai.PermissionDeniedError) as caught:
        _oai(gw).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    err = caught.value
    assert err.status_code == 403
    assert isinstance(err.body, dict) and err.body["type"] == "policy_violation"
    assert err.body["rule_id"] == "no-big-models" and "Use an approved model" in err.body["message"]
    assert err.response.headers["x-tollhouse-decision"] == "block"
    with pytest.raises(anthropic.PermissionDeniedError):
        _claude(gw).messages.create(model="claude-opus-4-1-20250805", max_tokens=5,
                                    messages=[{"role": "user", "content": "hi"}])
    events = gw.events()
    assert [e["decision"] for e in events] == ["block", "block"]
    assert all(not e["cost_usd"] and e["output_tokens"] == 0 and e["rule_id"] == "no-big-models" for e in events)
    assert mock.stats.total == before  # a blocked call reaches no upstream


def test_a_client_that_does_not_trust_the_ca_fails_closed(mock: Mock, gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory(proxy_config(mock))
    with pytest.raises(openai.APIConnectionError) as caught:
        _oai(gw, verify=ssl.create_default_context()).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert "CERTIFICATE_VERIFY_FAILED" in repr(caught.value.__cause__) or \
        "certificate verify failed" in str(caught.value.__cause__).lower()
    assert gw.events() == []


def test_the_ca_cannot_vouch_for_other_hosts(mock: Mock, gateway_factory: Any, tmp_path: Path) -> None:
    """The CA's name constraints: a leaf it signed for a host it does not intercept fails verification."""
    gw: Gateway = gateway_factory(proxy_config(mock))
    ca = load_or_create(gw.data_dir, gw.settings.forward_proxy.intercept)
    stray = ca._leaf("www.example.com")
    chain = tmp_path / "stray.pem"
    chain.write_bytes(stray.public_bytes(serialization.Encoding.PEM) + ca._leaf_key_pem)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(chain)
    client_ctx = ssl.create_default_context(cafile=str(ca.files.cert))
    a, b = socket.socketpair()
    threading.Thread(target=lambda: _quiet_handshake(server_ctx, b), daemon=True).start()
    with pytest.raises(ssl.SSLCertVerificationError) as caught:
        client_ctx.wrap_socket(a, server_hostname="www.example.com")
    assert "name constraint" in str(caught.value).lower() or "permitted" in str(caught.value).lower()
    with pytest.raises(CAError, match=r"not in forward_proxy\.intercept"):
        ca.mint("www.example.com")


def _quiet_handshake(ctx: ssl.SSLContext, sock: socket.socket) -> None:
    try:
        ctx.wrap_socket(sock, server_side=True).close()
    except (OSError, ssl.SSLError):
        sock.close()


def test_other_hosts_are_tunnelled_untouched_and_listed(mock: Mock, gateway_factory: Any, tmp_path: Path) -> None:
    chain, cert = self_signed(tmp_path)
    server = EchoTLSServer(chain)
    gw: Gateway = gateway_factory(proxy_config(mock))
    port = proxy_info(gw)["port"]
    try:
        sock = connect(port, f"CONNECT localhost:{server.port} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        assert read_head(sock).startswith(b"HTTP/1.1 200")
        # the client verifies the server's OWN certificate (the proxy did not touch the TLS session)
        tls = ssl.create_default_context(cafile=str(cert)).wrap_socket(sock, server_hostname="localhost")
        tls.sendall(b"hello\nbig 300000\n")
        reader = tls.makefile("rb")
        assert reader.readline() == b"echo: hello\n"
        assert len(reader.read(300000)) == 300000
        reader.close()
        tls.close()
        hosts = _hosts(gw)
        # the tally is added when the tunnel closes: wait for the proxy to see the close
        deadline = time.monotonic() + 10
        while hosts.get("localhost", {}).get("bytes_down", 0) < 300000 and time.monotonic() < deadline:
            time.sleep(0.05)
            hosts = _hosts(gw)
        seen = hosts["localhost"]
        assert seen["connections"] == 1 and seen["managed"] is False and seen["known_ai"] is False
        assert seen["bytes_down"] >= 300000 and seen["bytes_up"] > 0 and seen["people"] == ["alice"]
        assert _hosts(gw, "?known_ai=true").get("localhost") is None
        metrics = gw.get("/metrics")[1]
        assert b'tollhouse_forward_connections_total{outcome="tunnelled"} 1.0' in metrics
        assert b'tollhouse_forward_tunnel_bytes_total{direction="down"}' in metrics
    finally:
        server.close()


def test_deny_list_refuses_by_name_wildcard_and_cidr(mock: Mock, gateway_factory: Any, tmp_path: Path) -> None:
    chain, _ = self_signed(tmp_path)
    server = EchoTLSServer(chain)
    gw: Gateway = gateway_factory(proxy_config(mock, deny=["*.evil.example", "blocked.example", "127.0.0.0/8"]))
    port = proxy_info(gw)["port"]
    try:
        for target in ("api.evil.example:443", "blocked.example:443", f"localhost:{server.port}",
                       f"127.0.0.1:{server.port}"):
            sock = connect(port, f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
            answer = read_all(sock)
            assert answer.startswith(b"HTTP/1.1 403"), (target, answer)
            assert b"forward_proxy.deny" in answer
        hosts = _hosts(gw)
        assert hosts["api.evil.example"]["denied"] == 1 and hosts["localhost"]["denied"] == 1
    finally:
        server.close()


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"CONNECT " + b"a" * 40000 + b":443 HTTP/1.1\r\n\r\n", b"431"),
    (b"CONNECT api.openai.com HTTP/1.1\r\n\r\n", b"400"),
    (b"CONNECT :443 HTTP/1.1\r\n\r\n", b"400"),
    (b"CONNECT bad_host!:443 HTTP/1.1\r\n\r\n", b"400"),
    (b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n", b"405"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"405"),
    (b"CONNECT\r\n\r\n", b"400"),
])
def test_hostile_heads_are_refused_with_a_reason(mock: Mock, gateway_factory: Any, request_bytes: bytes,
                                                status: bytes) -> None:
    gw: Gateway = gateway_factory(proxy_config(mock))
    answer = read_all(connect(proxy_info(gw)["port"], request_bytes))
    assert answer.split(b" ")[1] == status, answer
    assert b'"message"' in answer


def test_slowloris_and_a_missing_handshake_time_out(mock: Mock, gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory(proxy_config(mock, head_timeout_s=0.5, handshake_timeout_s=0.5))
    port = proxy_info(gw)["port"]
    started = time.monotonic()
    slow = connect(port, b"CONNECT api.openai.com:443 HTTP/1.1\r\n")
    assert read_all(slow).startswith(b"HTTP/1.1 408")
    # an intercepted CONNECT whose TLS handshake never comes: answered 200, then dropped, the connection freed
    silent = connect(port, b"CONNECT api.openai.com:443 HTTP/1.1\r\n\r\n")
    assert read_all(silent) == b"HTTP/1.1 200 Connection established\r\n\r\n"
    assert time.monotonic() - started < 8
    # the client sees the connection go before the proxy's handshake task ends: give it its turn
    deadline = time.monotonic() + 5
    while proxy_info(gw)["open"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proxy_info(gw)["open"] == 0


def test_connection_cap(mock: Mock, gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory(proxy_config(mock, max_connections=2))
    port = proxy_info(gw)["port"]
    held = [connect(port, b"CONNECT api.openai.com:443 HTTP/1.1\r\n") for _ in range(2)]
    deadline = time.monotonic() + 5
    while proxy_info(gw)["open"] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert read_all(connect(port, b"")).startswith(b"HTTP/1.1 503")
    for sock in held:
        sock.close()


def test_http2_only_clients_get_no_h2(mock: Mock, gateway_factory: Any) -> None:
    """ALPN offers http/1.1 only: a client asking for h2 alone gets no protocol, and an h2 preface is refused."""
    gw: Gateway = gateway_factory(proxy_config(mock))
    sock = connect(proxy_info(gw)["port"], b"CONNECT api.openai.com:443 HTTP/1.1\r\n\r\n")
    assert read_head(sock).startswith(b"HTTP/1.1 200")
    ctx = _trusting(gw)
    ctx.set_alpn_protocols(["h2"])
    tls = ctx.wrap_socket(sock, server_hostname="api.openai.com")
    assert tls.selected_alpn_protocol() is None
    tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    answer = read_all(tls)  # the HTTP/1.1 server refuses the HTTP/2 preface and closes
    assert answer.startswith(b"HTTP/1.1 505") and b"HTTP/2 is not served here" in answer, answer


_WEBSOCKET = (b"GET /v1/responses HTTP/1.1\r\nHost: api.openai.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
              b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Authorization: Bearer sk-client\r\nOpenAI-Beta: responses_websockets=2026-02-06\r\n\r\n")


def test_a_websocket_to_a_provider_gets_426_in_its_error_shape_so_codex_switches_to_https_at_once(
        mock: Mock, gateway_factory: Any) -> None:
    """Codex's built-in openai provider first opens a Responses WebSocket. Only an HTTP 426 makes it switch to
    HTTPS at once (anything else costs it five attempts, ~8 s): through the proxy and on the base-URL path alike,
    the upgrade gets a 426 saying why, leaves an event, and never reaches the provider."""
    gw: Gateway = gateway_factory(proxy_config(mock))
    sock = connect(proxy_info(gw)["port"], b"CONNECT api.openai.com:443 HTTP/1.1\r\n\r\n")
    assert read_head(sock).startswith(b"HTTP/1.1 200")
    tls = _trusting(gw).wrap_socket(sock, server_hostname="api.openai.com")
    tls.sendall(_WEBSOCKET)
    proxied = read_all(tls)  # answered, then closed
    direct = connect(gw.port, _WEBSOCKET.replace(b"GET /v1/", b"GET /openai/v1/"))
    base_url = read_all(direct)
    for answer in (proxied, base_url):
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 426 ") and b"connection: close" in head.lower(), answer
        error = json.loads(body)["error"]
        assert error["code"] == "websocket_not_carried" and "over HTTP(S)" in error["message"], error
    events = gw.events()
    assert [(e["status"], e["decision"], e["path"], e["subject"]) for e in events] == \
        [(426, "block", "/v1/responses", "alice")] * 2, events
    assert mock.stats.total == 0


def test_proxy_authorization_with_a_gateway_key_names_the_person(mock: Mock, gateway_factory: Any,
                                                                 tmp_path: Path) -> None:
    config = proxy_config(mock)
    config["identity"] = {}
    gw: Gateway = gateway_factory(config)
    status, body, _ = gw.request("POST", "/api/v1/keys", {"user": "alice"})
    assert status in (200, 201), body
    key = json.loads(body)["key"]

    port = proxy_info(gw)["port"]
    good = base64.b64encode(f"x:{key}".encode()).decode()
    sock = connect(port, f"CONNECT nowhere.invalid:443 HTTP/1.1\r\nProxy-Authorization: Basic {good}\r\n\r\n".encode())
    assert read_all(sock).startswith(b"HTTP/1.1 502")
    bad = base64.b64encode(b"x:th-wrong").decode()
    sock = connect(port, f"CONNECT nowhere.invalid:443 HTTP/1.1\r\nProxy-Authorization: Basic {bad}\r\n\r\n".encode())
    assert read_all(sock).startswith(b"HTTP/1.1 407")
    sock = connect(port, b"CONNECT nowhere.invalid:443 HTTP/1.1\r\n\r\n")
    assert read_all(sock).startswith(b"HTTP/1.1 502")
    assert sorted(_hosts(gw)["nowhere.invalid"]["people"]) == ["127.0.0.1", "alice"]


def _tool_env(gw: Gateway) -> dict[str, str]:
    """A process environment as `tollhouse install --forward-proxy` writes it (nothing else proxy-related)."""
    info = proxy_info(gw)
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.endswith("_BASE_URL")}
    env.update({"HTTPS_PROXY": proxy_url(gw), "NO_PROXY": "127.0.0.1,localhost,::1",
                "NODE_EXTRA_CA_CERTS": info["ca"], "SSL_CERT_FILE": info["ca_bundle"],
                "REQUESTS_CA_BUNDLE": info["ca_bundle"], "CURL_CA_BUNDLE": info["ca_bundle"]})
    return env


def test_the_environment_alone_sends_the_sdk_and_curl_through(mock: Mock, gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory(proxy_config(mock))
    env = _tool_env(gw)
    script = ("import openai; c = openai.OpenAI(api_key='sk-x', max_retries=0); print(c.chat.completions.create("
              "model='gpt-4o-mini', max_tokens=3, messages=[{'role': 'user', 'content': 'hi'}])"
              ".usage.completion_tokens)")
    sdk = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert sdk.returncode == 0 and sdk.stdout.strip() == "3", sdk.stderr
    if shutil.which("curl"):
        out = subprocess.run(["curl", "-sS", "https://api.anthropic.com/v1/messages", "-H", "x-api-key: k",
                              "-H", "anthropic-version: 2023-06-01", "-H", "content-type: application/json", "-d",
                              '{"model": "claude-3-5-haiku-20241022", "max_tokens": 4, "messages": '
                              '[{"role": "user", "content": "hi"}]}'], env=env, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0 and json.loads(out.stdout)["usage"]["output_tokens"] == 4, out.stderr
    assert {e["provider"] for e in gw.events()} == ({"openai", "anthropic"} if shutil.which("curl") else {"openai"})


def test_a_proxy_that_requires_a_key_refuses_connections_without_one(mock: Mock, gateway_factory: Any) -> None:
    """(The default when the proxy binds other than a loopback address: it must not be an open proxy.)"""
    gw: Gateway = gateway_factory(proxy_config(mock, require_auth=True))
    assert proxy_info(gw)["require_auth"] is True
    status, body, _ = gw.request("POST", "/api/v1/keys", {"user": "alice"})
    assert status == 201, body
    key = json.loads(body)["key"]
    port = proxy_info(gw)["port"]
    refused = read_all(connect(port, b"CONNECT api.openai.com:443 HTTP/1.1\r\n\r\n"))
    assert refused.startswith(b"HTTP/1.1 407") and b"proxy-authenticate: Basic" in refused
    assert b"forward_proxy.require_auth" in refused
    token = base64.b64encode(f"alice:{key}".encode()).decode()
    sock = connect(port, f"CONNECT api.openai.com:443 HTTP/1.1\r\nProxy-Authorization: Basic {token}\r\n\r\n".encode())
    assert read_head(sock).startswith(b"HTTP/1.1 200")
    sock.close()
    assert proxy_info(gateway_factory(proxy_config(mock)))["require_auth"] is False  # bound to 127.0.0.1


def test_tunnels_go_through_the_upstream_proxy_when_one_is_set(mock: Mock, gateway_factory: Any,
                                                               tmp_path: Path) -> None:
    chain, cert = self_signed(tmp_path)
    server = EchoTLSServer(chain)
    with ConnectProxy(auth=("svc", "s3cret")) as corporate:
        gw: Gateway = gateway_factory({**proxy_config(mock), "upstream_proxy": corporate.url_with_auth})
        port = proxy_info(gw)["port"]
        try:
            sock = connect(port, f"CONNECT localhost:{server.port} HTTP/1.1\r\n\r\n".encode())
            assert read_head(sock).startswith(b"HTTP/1.1 200")
            tls = ssl.create_default_context(cafile=str(cert)).wrap_socket(sock, server_hostname="localhost")
            tls.sendall(b"through two proxies\n")
            assert tls.recv(100) == b"echo: through two proxies\n"
            tls.close()
            assert corporate.tunnels == [f"localhost:{server.port}"] and corporate.refused == 0
            # a tunnel the upstream proxy refuses is a 502 that says so
            answer = read_all(connect(port, b"CONNECT 127.0.0.1:9 HTTP/1.1\r\n\r\n"))
            assert answer.startswith(b"HTTP/1.1 502") and b"upstream proxy" in answer, answer
        finally:
            server.close()

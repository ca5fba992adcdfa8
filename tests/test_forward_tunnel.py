"""Tunnels (issue 21): half-close both ways, bounded buffers against a client that stops reading, the idle
timeout; and the pieces the proxy decides with (CONNECT parsing, host lists, the catalogue, the leaf cache)."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import Mock
from forward_helpers import EchoTLSServer, connect, proxy_config, proxy_info, read_all, self_signed
from tollhouse.forward.ca import LeafCache, load_or_create
from tollhouse.forward.catalogue import vendor_of
from tollhouse.forward.connect import _Refused, parse_connect
from tollhouse.forward.hostmatch import HostList
from tollhouse.forward.sni import server_name


class TcpServer:
    """Plain TCP on 127.0.0.1. mode 'count': reads to EOF, answers how many bytes, closes. mode 'flood': sends
    `flood` bytes, counting what the kernel took in `sent`."""

    def __init__(self, mode: str, flood: int = 0) -> None:
        self.mode, self.flood, self.sent = mode, flood, 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            try:
                if self.mode == "count":
                    total = 0
                    while chunk := conn.recv(65536):
                        total += len(chunk)
                    conn.sendall(f"got {total}\n".encode())
                else:
                    block = b"z" * 65536
                    while self.sent < self.flood:
                        self.sent += conn.send(block)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


def _tunnel(port: int, target_port: int) -> socket.socket:
    sock = connect(port, f"CONNECT 127.0.0.1:{target_port} HTTP/1.1\r\n\r\n".encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):  # a byte at a time: what follows the head is the host's
        head += sock.recv(1)
    assert head == b"HTTP/1.1 200 Connection established\r\n\r\n"
    return sock


def test_half_close_is_carried_through(mock: Mock, gateway_factory: Any) -> None:
    server = TcpServer("count")
    gw = gateway_factory(proxy_config(mock))
    try:
        sock = _tunnel(proxy_info(gw)["port"], server.port)
        sock.sendall(b"a" * 100_000)
        sock.shutdown(socket.SHUT_WR)  # our end of stream reaches the server, which still answers
        assert read_all(sock) == b"got 100000\n"
    finally:
        server.close()


def test_a_client_that_stops_reading_holds_the_host_back(mock: Mock, gateway_factory: Any) -> None:
    """Flow control: the proxy stops reading the host while the client's side is backed up, so what it buffers
    stays bounded (the host's sends block) instead of growing with what the host sends."""
    server = TcpServer("flood", flood=256 << 20)
    gw = gateway_factory(proxy_config(mock))
    try:
        sock = _tunnel(proxy_info(gw)["port"], server.port)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        last, stable_since = -1, time.monotonic()
        deadline = time.monotonic() + 20
        while time.monotonic() - stable_since < 0.5:  # until the host has been stuck for half a second
            assert time.monotonic() < deadline, "the host never stopped sending"
            if server.sent != last:
                last, stable_since = server.sent, time.monotonic()
            time.sleep(0.02)
        assert server.sent < 32 << 20, server.sent  # socket buffers and the tunnel's 256 KiB high-water mark
        received = 0
        while received < server.sent - (8 << 20):  # and it flows again once the client reads
            received += len(sock.recv(1 << 20))
        sock.close()
    finally:
        server.close()


def test_an_idle_tunnel_is_closed(mock: Mock, gateway_factory: Any) -> None:
    server = TcpServer("count")
    gw = gateway_factory(proxy_config(mock, idle_timeout_s=0.3))
    try:
        sock = _tunnel(proxy_info(gw)["port"], server.port)
        started = time.monotonic()
        assert sock.recv(10) == b""  # closed by the proxy, nothing sent either way
        assert 0.25 < time.monotonic() - started < 5
    finally:
        server.close()


@pytest.mark.parametrize(("head", "host", "port"), [
    (b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443", "api.openai.com", 443),
    (b"CONNECT [::1]:8443 HTTP/1.1", "::1", 8443),
    (b"CONNECT API.OpenAI.com.:443 HTTP/1.0", "api.openai.com", 443),
])
def test_connect_heads_parse(head: bytes, host: str, port: int) -> None:
    target = parse_connect(head)
    assert (target.host, target.port) == (host, port)


@pytest.mark.parametrize("head", [b"CONNECT api.openai.com:0 HTTP/1.1", b"CONNECT api.openai.com:99999 HTTP/1.1",
                                  b"CONNECT [nope]:443 HTTP/1.1", b"CONNECT a..b:443 HTTP/1.1",
                                  b"CONNECT x:443 HTTP/2", b"CONNECT x:443 HTTP/1.1\r\nbad header",
                                  b"CONNECT x:443 HTTP/1.1\r\n" + b"a: b\r\n" * 101])
def test_bad_connect_heads_are_refused(head: bytes) -> None:
    with pytest.raises(_Refused):
        parse_connect(head)


def test_host_lists_match_names_wildcards_and_networks() -> None:
    deny = HostList.of(["*.evil.example", "blocked.example", "10.0.0.0/8", "2001:db8::/32"])
    assert deny.name_match("a.b.evil.example") == "*.evil.example"
    assert deny.name_match("evil.example") is None  # a wildcard covers the names under it, not itself
    assert deny.name_match("BLOCKED.example.") == "blocked.example"
    assert deny.name_match("10.1.2.3") == "10.0.0.0/8" and deny.address_match("2001:db8::1") == "2001:db8::/32"
    assert deny.name_match("notblocked.example") is None and deny.address_match("11.0.0.1") is None


def test_the_catalogue_knows_the_ai_vendors() -> None:
    assert vendor_of("api.openai.com") == "OpenAI" and vendor_of("myco.openai.azure.com") == "Azure OpenAI"
    assert vendor_of("bedrock-runtime.eu-west-1.amazonaws.com") == "AWS Bedrock"
    assert vendor_of("us-central1-aiplatform.googleapis.com") == "Google Vertex AI"
    assert vendor_of("api.groq.com") == "Groq" and vendor_of("openrouter.ai") == "OpenRouter"
    assert vendor_of("s3.eu-west-1.amazonaws.com") is None and vendor_of("openai.com.evil.example") is None


def test_the_leaf_cache_keeps_the_most_recent(tmp_path: Path) -> None:
    ca = load_or_create(tmp_path, ["*.openai.azure.com"])
    cache = LeafCache(ca, 2)
    first = cache.context("a.openai.azure.com")
    assert cache.context("a.openai.azure.com") is first and cache.minted == 1
    cache.context("b.openai.azure.com")
    cache.context("c.openai.azure.com")  # evicts a (least recently used)
    assert len(cache) == 2 and cache.context("a.openai.azure.com") is not first and cache.minted == 4


def test_a_tunnel_whose_tls_asks_for_an_intercepted_host_is_closed(mock: Mock, gateway_factory: Any,
                                                                   tmp_path: Path) -> None:
    """CONNECT to an address (or another name) with SNI api.openai.com would reach the provider ungoverned: closed,
    and listed under the name it asked for; an SNI that is nobody's business goes through, listed too."""
    chain, cert = self_signed(tmp_path)
    server = EchoTLSServer(chain)
    gw = gateway_factory(proxy_config(mock))
    port = proxy_info(gw)["port"]
    try:
        sock = _tunnel(port, server.port)
        with pytest.raises((ssl.SSLError, OSError)):
            ssl.create_default_context(cafile=str(cert)).wrap_socket(sock, server_hostname="api.openai.com")
        sock = _tunnel(port, server.port)
        tls = ssl.create_default_context(cafile=str(cert)).wrap_socket(sock, server_hostname="localhost")
        tls.sendall(b"hi\n")
        assert tls.recv(100) == b"echo: hi\n"
        tls.close()
        hosts = {h["host"]: h for h in json.loads(gw.get("/api/v1/hosts")[1])["hosts"]}
        assert hosts["api.openai.com"]["denied"] == 1 and hosts["127.0.0.1"]["connections"] == 2
        assert hosts["localhost"]["connections"] == 1 and hosts["localhost"]["denied"] == 0
    finally:
        server.close()


def test_server_names_are_read_from_client_hellos() -> None:
    hello_bio, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ssl.create_default_context().wrap_bio(hello_bio, out, server_hostname="API.Anthropic.com")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    hello = out.read()
    assert server_name(hello) == "api.anthropic.com"
    assert server_name(hello[:60]) is None and server_name(b"GET / HTTP/1.1\r\n") is None and server_name(b"") is None


def test_a_head_sent_a_byte_at_a_time_is_read(mock: Mock, gateway_factory: Any) -> None:
    gw = gateway_factory(proxy_config(mock, deny=["blocked.example"]))
    sock = connect(proxy_info(gw)["port"], b"")
    for byte in b"CONNECT blocked.example:443 HTTP/1.1\r\nUser-Agent: slow\r\n\r\n":
        sock.sendall(bytes([byte]))
    assert read_all(sock).startswith(b"HTTP/1.1 403")

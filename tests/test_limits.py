"""Bounded resources in Tollhouse's own HTTP layer (`tollhouse.wire`) and the `limits:` config section.

Each test is one finding of the security review: a peer (client or upstream) that sends too much, too slowly,
or reads nothing, over real loopback sockets: first at the wire server and client, then through a gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import ADMIN, Gateway, Mock, upstreams
from test_wire import Upstream, at_eof, connection, read_reply, read_request, run, upstream
from tollhouse.agent.service_files import ServiceSpec, systemd_unit
from tollhouse.config import ConfigError, parse_settings
from tollhouse.wire.client import Client, ClientLimits, RequestTimeoutError, UpstreamLimitError
from tollhouse.wire.limits import default_max_connections, raise_fd_limit
from tollhouse.wire.server import Exchange, Head, HttpServer, ProtocolClosed, ServerLimits

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024
CHAT = "/openai/v1/chat/completions"


@contextlib.asynccontextmanager
async def serving(handler: Callable[[Head, Exchange], Awaitable[None]], limits: ServerLimits,
                  refused: list[int] | None = None) -> AsyncIterator[tuple[int, HttpServer]]:
    server = HttpServer(handler, limits=limits, on_refused=(lambda: refused.append(1)) if refused is not None
                        else None)
    port = await server.start("127.0.0.1", 0)
    try:
        yield port, server
    finally:
        await server.stop(0.5)


async def echo(head: Head, exchange: Exchange) -> None:
    body = await exchange()
    exchange.response_bytes(200, [], f"{head.method} {head.path}\n".encode() + body)


OK_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"


# --- 1. the upstream's response head is bounded (bytes and count) ---


async def one_huge_header(up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(OK_HEAD + b"x-huge: ")
    for _ in range(100):  # 100 MiB in one header line
        writer.write(b"a" * MiB)
        await writer.drain()
        up.requests.append(("sent", {}, b""))
    writer.write(b"\r\ncontent-length: 0\r\n\r\n")
    await writer.drain()


async def many_headers(up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(OK_HEAD + b"".join(b"x-h%d: v\r\n" % i for i in range(300_000)) + b"content-length: 0\r\n\r\n")
    await writer.drain()


def test_a_100_mib_upstream_header_is_refused_naming_the_key() -> None:
    async def main() -> None:
        async with upstream(one_huge_header) as up:
            client = Client(up.url, read_timeout_s=5)
            with pytest.raises(UpstreamLimitError, match=r"exceed 65536 bytes \(limits\.max_header_bytes"):
                await client.send("GET", "/", [], b"")
            sent_mib = len(up.requests)
            assert sent_mib < 100  # cut off, not read to the end
            client.close()

    run(main(), timeout=20)


def test_300000_upstream_headers_are_refused_naming_the_key() -> None:
    async def main() -> None:
        async with upstream(many_headers) as up:
            client = Client(up.url, read_timeout_s=5, limits=ClientLimits(max_header_bytes=16 * MiB))
            with pytest.raises(UpstreamLimitError, match=r"more than 100 headers \(limits\.max_headers"):
                await client.send("GET", "/", [], b"")
            client.close()

    run(main(), timeout=20)


# --- 2. a whole (non-stream) upstream body is bounded; a stream is not, but each read is ---


async def endless_body(up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Declares 1 GiB, then sends until the other side goes away (`up.requests` counts the MiB sent)."""
    await read_request(reader)
    writer.write(OK_HEAD + b"content-length: %d\r\n\r\n" % (1024 * MiB))
    while True:
        writer.write(b"a" * MiB)
        await writer.drain()
        up.requests.append(("sent", {}, b""))


async def endless_chunked(up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(OK_HEAD + b"transfer-encoding: chunked\r\n\r\n")
    while True:
        writer.write(b"%x\r\n%b\r\n" % (MiB, b"a" * MiB))
        await writer.drain()
        up.requests.append(("sent", {}, b""))


@pytest.mark.parametrize("script", [endless_body, endless_chunked], ids=["content-length", "chunked"])
def test_an_endless_whole_body_is_cut_at_max_response_bytes(script: Any) -> None:
    async def main() -> None:
        async with upstream(script) as up:
            client = Client(up.url, read_timeout_s=5, limits=ClientLimits(max_response_bytes=4 * MiB))
            resp = await client.send("GET", "/", [], b"")
            with pytest.raises(UpstreamLimitError, match=r"exceeds 4194304 bytes \(limits\.max_response_bytes"):
                await resp.read()
            assert len(up.requests) < 64  # the upstream was cut off, not drained
            client.close()

    run(main(), timeout=20)


def test_a_stream_has_no_total_cap_and_arrives_in_bounded_pieces() -> None:
    async def giant_chunk(up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)  # one chunk that says 1 GiB: its pieces must be handed on as they arrive
        writer.write(OK_HEAD + b"transfer-encoding: chunked\r\n\r\n%x\r\n" % (1024 * MiB))
        for _ in range(12):
            writer.write(b"a" * MiB)
            await writer.drain()

    async def main() -> None:
        async with upstream(giant_chunk) as up:
            client = Client(up.url, read_timeout_s=5, limits=ClientLimits(max_response_bytes=MiB))
            resp = await client.send("GET", "/", [], b"")
            got, biggest = 0, 0
            while got < 12 * MiB:
                piece = await resp.next_chunk()
                assert piece is not None
                got += len(piece)
                biggest = max(biggest, len(piece))
            assert biggest <= MiB
            resp.close()
            client.close()

    run(main(), timeout=20)


# --- 3. total deadlines: a trickling upstream cannot hold a call forever ---


async def trickle_body(up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(OK_HEAD + b"content-length: 1000\r\n\r\n")
    for _ in range(1000):  # a byte every 50 ms: never silent for the read timeout, 50 s in all
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"a")


def test_a_trickling_whole_body_hits_the_total_timeout() -> None:
    async def main() -> None:
        async with upstream(trickle_body) as up:
            client = Client(up.url, read_timeout_s=0.5, limits=ClientLimits(total_timeout_s=1.0))
            loop = asyncio.get_running_loop()
            started = loop.time()
            resp = await client.send("GET", "/", [], b"")
            with pytest.raises(RequestTimeoutError, match=r"1 s in all \(limits\.upstream_total_timeout_s"):
                await resp.read()
            assert 0.9 <= loop.time() - started < 2.0
            client.close()

    run(main())


def test_a_trickling_stream_hits_its_total_timeout_and_a_silent_one_its_idle_timeout() -> None:
    async def script(up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (request := await read_request(reader)) is not None:
            writer.write(OK_HEAD + b"transfer-encoding: chunked\r\n\r\n")
            for _ in range(1000):
                await writer.drain()
                if request[0].startswith("GET /silent"):
                    await asyncio.sleep(30)
                await asyncio.sleep(0.05)
                writer.write(b"1\r\na\r\n")

    async def main() -> None:
        async with upstream(script) as up:
            client = Client(up.url, read_timeout_s=0.5,
                            limits=ClientLimits(total_timeout_s=10.0, stream_total_timeout_s=1.0))
            loop = asyncio.get_running_loop()
            started = loop.time()
            resp = await client.send("GET", "/trickle", [], b"")
            with pytest.raises(RequestTimeoutError, match=r"1 s in all \(limits\.stream_total_timeout_s"):
                while await resp.next_chunk() is not None:
                    pass
            assert 0.9 <= loop.time() - started < 2.0
            started = loop.time()
            resp = await client.send("GET", "/silent", [], b"")
            with pytest.raises(RequestTimeoutError, match=r"no data from the upstream for 0\.5 s"):
                while await resp.next_chunk() is not None:
                    pass
            assert 0.4 <= loop.time() - started < 1.0
            client.close()

    run(main())


# --- 4. the server's head and body deadlines are absolute ---


def test_a_head_sent_a_byte_at_a_time_gets_408_at_the_head_deadline() -> None:
    async def main() -> None:
        limits = ServerLimits(head_timeout_s=0.5)
        async with serving(echo, limits) as (port, _), connection(port) as (reader, writer):
            loop = asyncio.get_running_loop()
            started = loop.time()
            reply = asyncio.create_task(read_reply(reader))
            head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
            with contextlib.suppress(ConnectionError):
                for byte in head:  # a byte every 20 ms: each well inside the deadline
                    if reply.done():
                        break
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.02)
            got = await asyncio.wait_for(reply, 2)
            assert got.status == 408 and got.headers["connection"] == "close"
            assert "limits.head_timeout_s" in json.loads(got.body)["error"]["message"]
            assert 0.45 <= loop.time() - started < 1.2
            assert await at_eof(reader)

    run(main())


def test_the_head_deadline_of_a_later_request_counts_from_its_first_byte() -> None:
    async def main() -> None:
        async with serving(echo, ServerLimits(head_timeout_s=0.5)) as (port, _), \
                connection(port) as (reader, writer):
            for n in range(3):  # keep-alive requests spread past the deadline: each has its own
                writer.write(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % n)
                assert (await read_reply(reader)).status == 200
                await asyncio.sleep(0.3)

    run(main())


@pytest.mark.parametrize("pace", ["stalled", "trickling"])
def test_a_body_that_stops_or_trickles_gets_408_and_the_handler_sees_the_client_gone(pace: str) -> None:
    seen: list[str] = []

    async def handler(head: Head, exchange: Exchange) -> None:
        try:
            await exchange()
        except ProtocolClosed:
            seen.append("closed")
            raise
        exchange.response_bytes(200, [], b"whole")

    async def main() -> None:
        async with serving(handler, ServerLimits(body_timeout_s=0.5)) as (port, _), \
                connection(port) as (reader, writer):
            loop = asyncio.get_running_loop()
            started = loop.time()
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nonly ten..")
            reply = asyncio.create_task(read_reply(reader))
            with contextlib.suppress(ConnectionError):
                while pace == "trickling" and not reply.done():
                    await asyncio.sleep(0.02)
                    writer.write(b"a")
                    await writer.drain()
            got = await asyncio.wait_for(reply, 2)
            assert got.status == 408
            assert "limits.body_timeout_s" in json.loads(got.body)["error"]["message"]
            assert 0.45 <= loop.time() - started < 1.2
            assert await at_eof(reader)

    run(main())
    assert seen == ["closed"]


# --- 5. a client that reads nothing is cut off at the write deadline ---


def test_a_client_that_stops_reading_a_stream_is_cut_off_and_the_handler_sees_it() -> None:
    outcome: list[str] = []
    seen = asyncio.Event()

    async def endless(head: Head, exchange: Exchange) -> None:
        stream = exchange.response_stream(200, [("content-type", "text/event-stream")])
        try:
            while True:
                await stream.send_bytes(b"data: " + b"x" * 16384 + b"\n\n")
        except ProtocolClosed:
            outcome.append("disconnect seen")
            seen.set()
            raise

    async def main() -> None:
        async with serving(endless, ServerLimits(write_timeout_s=0.5)) as (port, _):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")  # ... and never read
            try:
                await seen.wait()
            finally:
                sock.close()

    run(main(), timeout=10)
    assert outcome == ["disconnect seen"]


def test_a_slow_reader_of_a_large_answer_is_not_cut_off() -> None:
    """The write deadline is for clients that read nothing, not for slow ones still reading."""
    body = bytes(range(256)) * (64 * 1024)  # 16 MiB

    async def large(head: Head, exchange: Exchange) -> None:
        exchange.response_bytes(200, [], body)

    async def main() -> None:
        async with serving(large, ServerLimits(write_timeout_s=0.5)) as (port, _):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.connect(("127.0.0.1", port))
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            await loop.sock_sendall(sock, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            received = bytearray()
            started = loop.time()
            try:
                while not received.endswith(body[-1024:]):
                    piece = await loop.sock_recv(sock, MiB)
                    assert piece, f"cut off after {len(received)} bytes"
                    received += piece
                    await asyncio.sleep(0.01)  # a slow client: about 6 MiB/s at most with this buffer
            finally:
                sock.close()
            assert loop.time() - started > 1.0  # slower in all than the write deadline
            assert received.endswith(body)

    run(main(), timeout=20)


# --- 6. connections: a cap, refused at once; idle ones closed ---


def test_connections_over_max_connections_are_refused_at_once_and_counted() -> None:
    refused: list[int] = []

    async def main() -> None:
        async with serving(echo, ServerLimits(max_connections=3), refused) as (port, server):
            async with contextlib.AsyncExitStack() as stack:
                open_ = [await stack.enter_async_context(connection(port)) for _ in range(3)]
                for reader, writer in open_:  # an answer on each: all three are accepted
                    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    assert (await read_reply(reader)).status == 200
                extra_reader, _ = await stack.enter_async_context(connection(port))
                got = await asyncio.wait_for(read_reply(extra_reader), 2)
                assert got.status == 503 and got.headers["connection"] == "close"
                assert "limits.max_connections" in json.loads(got.body)["error"]["message"]
                assert await at_eof(extra_reader)
                reader, writer = open_[0]  # those already open keep working
                writer.write(b"GET /still-here HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (await read_reply(reader)).body == b"GET /still-here\n"
            assert server.refused == 1 and refused == [1]

    run(main())


def test_an_idle_keep_alive_connection_is_closed_after_idle_timeout() -> None:
    async def main() -> None:
        async with serving(echo, ServerLimits(idle_timeout_s=0.4)) as (port, _), \
                connection(port) as (reader, writer):
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await read_reply(reader)).status == 200
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert await reader.read(1) == b""
            assert 0.35 <= loop.time() - started < 1.0

    run(main())


def test_a_connection_that_never_sends_a_byte_is_closed_at_the_head_deadline() -> None:
    async def main() -> None:
        async with serving(echo, ServerLimits(head_timeout_s=0.3, idle_timeout_s=60)) as (port, _), \
                connection(port) as (reader, _writer):
            assert await asyncio.wait_for(reader.read(1), 2) == b""

    run(main())


def test_max_connections_defaults_to_the_raised_fd_limit() -> None:
    assert default_max_connections(1024) == 960
    assert default_max_connections(1 << 20) == 10_000
    assert default_max_connections(10) == 1
    soft = raise_fd_limit()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert soft == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert hard == resource.RLIM_INFINITY or soft == hard

    async def main() -> None:
        async with serving(echo, ServerLimits()) as (_, server):
            assert server.max_connections == default_max_connections(soft)

    run(main())


def test_the_systemd_unit_raises_the_fd_limit(tmp_path: Path) -> None:
    unit = systemd_unit(ServiceSpec(sys.executable, tmp_path / "managed.env", tmp_path, None))
    assert "\nLimitNOFILE=65536\n" in unit


# --- 7. RFC 9112: Host and the HTTP version ---


@pytest.mark.parametrize("request_bytes", [
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET /\r\nHost: x\r\n\r\n",
    b"GET /\r\n\r\n",
    b"GET /\r\n",  # HTTP/0.9 as such a client sends it: answered at once, not at the head deadline
], ids=["no-host", "two-hosts", "two-hosts-http10", "no-version-with-headers", "no-version", "http09"])
def test_requests_without_one_host_or_without_a_version_get_400_and_close(request_bytes: bytes) -> None:
    called: list[str] = []

    async def handler(head: Head, exchange: Exchange) -> None:
        called.append(head.path)
        exchange.response_bytes(200, [], b"")

    async def main() -> None:
        async with serving(handler, ServerLimits(head_timeout_s=30)) as (port, _), \
                connection(port) as (reader, writer):
            writer.write(request_bytes)
            got = await asyncio.wait_for(read_reply(reader), 2)
            assert got.status == 400 and got.headers["connection"] == "close"
            assert "Host" in got.body.decode() or "HTTP version" in got.body.decode()
            assert await at_eof(reader)

    run(main())
    assert called == []


def test_an_http10_request_without_host_is_still_served() -> None:
    async def main() -> None:
        async with serving(echo, ServerLimits()) as (port, _), connection(port) as (reader, writer):
            writer.write(b"GET /old HTTP/1.0\r\n\r\n")
            assert (await read_reply(reader)).body == b"GET /old\n"

    run(main())


def test_too_many_request_headers_get_431_naming_the_key() -> None:
    async def main() -> None:
        async with serving(echo, ServerLimits(max_headers=20)) as (port, _), connection(port) as (reader, writer):
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(25)) + b"\r\n")
            got = await read_reply(reader)
            assert got.status == 431 and "limits.max_headers" in got.body.decode()

    run(main())


# --- the configuration ---


def test_limits_config_keys_are_validated_naming_the_key() -> None:
    settings = parse_settings({}, "(test)")
    assert settings.limits.max_body_bytes == 32 * MiB  # kept
    assert settings.limits.max_response_bytes == 64 * MiB and settings.limits.max_headers == 100
    assert settings.limits.max_header_bytes == 64 * 1024 and settings.limits.max_connections is None
    assert settings.limits.upstream_total_timeout_s == 600
    for key, bad in [("head_timeout_s", 0), ("body_timeout_s", -1), ("write_timeout_s", "soon"),
                     ("max_connections", 0), ("max_response_bytes", 0), ("max_headers", 5),
                     ("max_header_bytes", 100), ("upstream_total_timeout_s", 0), ("idle_timeout_s", 0)]:
        with pytest.raises(ConfigError, match=rf"limits\.{key}: "):
            parse_settings({"limits": {key: bad}}, "(test)")
    with pytest.raises(ConfigError, match=r"limits\.max_conections: unknown key"):
        parse_settings({"limits": {"max_conections": 10}}, "(test)")


# --- through a gateway ---


class ThreadedUpstream:
    """A raw upstream (`script` per connection, as in test_wire) on its own loop in a background thread.
    `cut` is set when the gateway drops a connection the script was still writing to."""

    def __init__(self, script: Callable[[ThreadedUpstream, asyncio.StreamReader, asyncio.StreamWriter],
                                        Awaitable[None]]) -> None:
        self._script = script
        self.port = 0
        self.sent = 0  # bytes the scripts wrote
        self.cut = threading.Event()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        writers: list[asyncio.StreamWriter] = []

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            try:
                await self._script(self, reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                self.cut.set()
            finally:
                writer.close()

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        server.close()
        for writer in writers:
            writer.close()

    def __enter__(self) -> ThreadedUpstream:
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)

    async def write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await writer.drain()
        self.sent += len(data)


def chat(gw: Gateway, stream: bool = False) -> tuple[int, bytes, dict[str, str]]:
    return gw.request("POST", CHAT, {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}],
                                     "stream": stream}, token=None)


def wait_for_event(gw: Gateway) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while not (events := gw.events()):
        assert time.monotonic() < deadline, "no event recorded"
        time.sleep(0.05)
    return events[0]


async def _300k_headers(up: ThreadedUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    await up.write(writer, OK_HEAD + b"".join(b"x-h%d: v\r\n" % i for i in range(300_000)) + b"content-length: 2\r\n"
                   b"\r\n{}")


async def _huge_header(up: ThreadedUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    await up.write(writer, OK_HEAD + b"x-huge: ")
    for _ in range(100):
        await up.write(writer, b"a" * MiB)
    await up.write(writer, b"\r\ncontent-length: 2\r\n\r\n{}")


@pytest.mark.parametrize("script", [_300k_headers, _huge_header], ids=["300k-headers", "100-MiB-header"])
def test_gateway_an_oversize_upstream_head_is_a_provider_shaped_502(gateway_factory: Any, script: Any) -> None:
    with ThreadedUpstream(script) as up:
        gw: Gateway = gateway_factory({"providers": upstreams(up.url, timeout_s=5)})
        status, body, _ = chat(gw)
        assert status == 502
        error = json.loads(body)["error"]
        assert error["code"] == "upstream_answer_too_large" and "limits.max_header" in error["message"]
        assert up.sent < 64 * MiB  # the gateway stopped reading long before the end
        ev = wait_for_event(gw)
        assert ev["status"] == 502 and "limits.max_header" in ev["error"]


async def _endless_json(up: ThreadedUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Declares 1 GiB, sends up to 96 MiB of it, then holds the connection open."""
    await read_request(reader)
    await up.write(writer, OK_HEAD + b"content-length: %d\r\n\r\n" % (1024 * MiB))
    for _ in range(96):
        await up.write(writer, b" " * MiB)
    await asyncio.sleep(30)


def test_gateway_a_1_gib_upstream_body_is_cut_at_max_response_bytes(gateway_factory: Any) -> None:
    with ThreadedUpstream(_endless_json) as up:
        gw: Gateway = gateway_factory({"providers": upstreams(up.url, timeout_s=3),
                                       "limits": {"max_response_bytes": 4 * MiB}})
        status, body, _ = chat(gw)
        assert status == 502, body  # not a read timeout after buffering all it got
        assert up.sent < 64 * MiB
        assert up.cut.wait(5)
        assert "limits.max_response_bytes" in wait_for_event(gw)["error"]


async def _trickle(up: ThreadedUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A whole response, or a stream, a few bytes every 50 ms for ever."""
    request = await read_request(reader)
    assert request is not None
    if b'"stream": true' in request[2]:
        await up.write(writer, b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                               b"transfer-encoding: chunked\r\n\r\n")
        piece = b'data: {"choices": [{"index": 0, "delta": {"content": "x"}}]}\n\n'
        while True:
            await up.write(writer, b"%x\r\n%b\r\n" % (len(piece), piece))
            await asyncio.sleep(0.05)
    await up.write(writer, OK_HEAD + b"content-length: 100000\r\n\r\n")
    while True:
        await up.write(writer, b" ")
        await asyncio.sleep(0.05)


def test_gateway_a_trickling_upstream_hits_the_total_deadlines(gateway_factory: Any) -> None:
    with ThreadedUpstream(_trickle) as up:
        gw: Gateway = gateway_factory({"providers": upstreams(up.url, timeout_s=1),
                                       "limits": {"upstream_total_timeout_s": 1.5, "stream_total_timeout_s": 1.5}})
        started = time.monotonic()
        status, body, _ = chat(gw)
        assert status == 504 and json.loads(body)["error"]["code"] == "upstream_timeout"
        assert time.monotonic() - started < 4
        started = time.monotonic()
        status, body, _ = chat(gw, stream=True)
        assert status == 200 and b"ended abnormally" in body  # the in-band error event, then the end
        assert time.monotonic() - started < 4
        events = gw.events()
        assert events[0]["error"] and "ended abnormally" in events[0]["error"]


async def _endless_stream(up: ThreadedUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    await up.write(writer, b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
    piece = b'data: {"choices": [{"index": 0, "delta": {"content": "' + b"x" * 8000 + b'"}}]}\n\n'
    while True:
        await up.write(writer, b"%x\r\n%b\r\n" % (len(piece), piece))


def test_gateway_a_client_that_stops_reading_is_cut_off_and_the_upstream_released(gateway_factory: Any) -> None:
    with ThreadedUpstream(_endless_stream) as up:
        gw: Gateway = gateway_factory({"providers": upstreams(up.url, timeout_s=5),
                                       "limits": {"write_timeout_s": 0.5}})
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", gw.port))
        body = json.dumps({"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
        sock.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n{body}".encode())  # ... and never read the answer
        try:
            assert up.cut.wait(15), "the upstream call is still pinned by a client that reads nothing"
        finally:
            sock.close()
        ev = wait_for_event(gw)
        assert ev["client_disconnected"] is True and ev["stream"] is True


def test_gateway_a_stalled_request_body_gets_408(gateway_factory: Any, mock: Mock) -> None:
    gw: Gateway = gateway_factory({"providers": upstreams(mock.url), "limits": {"body_timeout_s": 0.5}})
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{{\"model\"".encode())
        reply = sock.makefile("rb").read()  # to EOF: the gateway closes after answering
    assert reply.startswith(b"HTTP/1.1 408 ") and b"limits.body_timeout_s" in reply
    assert mock.stats.total == 0


def test_gateway_a_request_without_host_gets_400(gateway_factory: Any, mock: Mock) -> None:
    gw: Gateway = gateway_factory({"providers": upstreams(mock.url)})
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        reply = sock.makefile("rb").read()
    assert reply.startswith(b"HTTP/1.1 400 ") and b"Host" in reply


# --- 6. 1,100 silent connections against a 1,024-fd gateway (a real `tollhouse serve` process) ---


def _limit_fds(n: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    return apply


@pytest.fixture
def fd_limited_gateway(tmp_path: Path, mock: Mock) -> Iterator[str]:
    config = tmp_path / "tollhouse.yaml"
    config.write_text(yaml.safe_dump({"admin_token": ADMIN, "providers": upstreams(mock.url)}))
    proc = subprocess.Popen([sys.executable, "-m", "tollhouse", "serve", "--config", str(config), "--port", "0",
                             "--data-dir", str(tmp_path / "data")], stdout=subprocess.PIPE,
                            preexec_fn=_limit_fds(1024), env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
    try:
        assert found, f"the gateway did not start: {line!r}"
        yield found.group(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        proc.stdout.close()


def test_1100_silent_connections_do_not_take_a_1024_fd_gateway_down(fd_limited_gateway: str, mock: Mock) -> None:
    raise_fd_limit()  # this test process holds 1,100 sockets too
    port = int(fd_limited_gateway.rsplit(":", 1)[1])
    first = socket.create_connection(("127.0.0.1", port), timeout=5)
    silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(1099)]
    try:
        # Refused connections are answered and closed at once: wait until 1100 - 960 have been.
        selector = selectors.DefaultSelector()
        for sock in silent:
            selector.register(sock, selectors.EVENT_READ, sock)
        closed: set[socket.socket] = set()
        deadline = time.monotonic() + 20
        while len(closed) < 1100 - default_max_connections(1024) and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.5):
                sock = key.data
                with contextlib.suppress(ConnectionError):
                    data = sock.recv(4096)
                    assert data == b"" or data.startswith(b"HTTP/1.1 503 ")
                selector.unregister(sock)
                closed.add(sock)
        assert len(closed) == 1100 - default_max_connections(1024)
        # An open connection still gets its call through (the gateway kept descriptors for the upstream).
        body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()
        first.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        assert first.recv(12) == b"HTTP/1.1 200"
    finally:
        for sock in silent:
            sock.close()
        first.close()
    req = urllib.request.Request(fd_limited_gateway + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"})
    deadline = time.monotonic() + 10
    while True:  # the silent connections' slots free up as the gateway sees them close
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                metrics = resp.read().decode()
            break
        except (urllib.error.URLError, ConnectionError):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    counted = re.search(r"^tollhouse_connections_refused_total (\d+)\.0$", metrics, re.M)
    assert counted is not None and int(counted.group(1)) == 1100 - default_max_connections(1024)

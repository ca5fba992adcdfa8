"""The in-loop HTTP/1.1 server and upstream client (`tollhouse.wire`), over real loopback sockets.

Server tests speak raw HTTP at `HttpServer` so the bytes on the wire are what is checked; client tests put
`Client` in front of small asyncio upstreams (or the wire server itself) that behave the way real ones do.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import free_port
from connect_proxy import ConnectProxy
from tls_front import TlsFront
from tollhouse.wire.client import (
    Client,
    ConnectError,
    RequestError,
    RequestTimeoutError,
    UpstreamResponse,
)
from tollhouse.wire.server import DISCONNECT_GRACE_S, Exchange, Head, HttpServer, ProtocolClosed

pytestmark = pytest.mark.timeout(20)

Handler = Callable[[Head, Exchange], Awaitable[None]]


def run(coro: Coroutine[Any, Any, Any], timeout: float = 5.0) -> Any:
    """Run one test's coroutine on a fresh loop, failing (not hanging) past `timeout`."""
    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await coro
    return asyncio.run(bounded())


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[int]:
    """The wire server on a free loopback port, stopped on exit."""
    server = HttpServer(handler)
    port = await server.start("127.0.0.1", 0)
    try:
        yield port
    finally:
        await server.stop(0.5)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    raw_body: bytes = b""  # the body as framed on the wire (chunked encoding included)
    version: str = ""


async def read_reply(reader: asyncio.StreamReader, head_request: bool = False) -> Reply:
    """One response from a raw connection, framed the way its headers say."""
    raw_head = await reader.readuntil(b"\r\n\r\n")
    lines = raw_head[:-4].decode("latin-1").split("\r\n")
    version, status, _ = [*lines[0].split(" ", 2), ""][:3]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    code = int(status)
    if head_request or code < 200 or code in (204, 304):
        return Reply(code, headers, b"", b"", version)
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
        return Reply(code, headers, body, body, version)
    if headers.get("transfer-encoding") == "chunked":
        raw, parts = b"", list[bytes]()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            raw += size_line + data
            assert data.endswith(b"\r\n")
            if size == 0:
                return Reply(code, headers, b"".join(parts), raw, version)
            parts.append(data[:-2])
    body = await reader.read()  # no framing: the body ends where the connection does
    return Reply(code, headers, body, body, version)


async def at_eof(reader: asyncio.StreamReader) -> bool:
    """True once the peer has closed (within a second)."""
    try:
        return await asyncio.wait_for(reader.read(1), 1.0) == b""
    except ConnectionResetError:
        return True


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()


async def echo(head: Head, exchange: Exchange) -> None:
    """Answers with the method, path and query, then the request body."""
    body = await exchange()
    exchange.response_bytes(200, [("content-type", "text/plain")],
                            f"{head.method} {head.path}?{head.query_string}\n".encode() + body)


# --- server: connections ---


def test_keep_alive_answers_sequential_requests_on_one_connection() -> None:
    async def main() -> None:
        async with serving(echo) as port, connection(port) as (reader, writer):
            for n in range(3):
                writer.write(f"POST /call/{n}?n={n} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody".encode())
                reply = await read_reply(reader)
                assert reply.status == 200 and "connection" not in reply.headers
                assert reply.body == f"POST /call/{n}?n={n}\nbody".encode()

    run(main())


def test_pipelined_requests_in_one_write_are_answered_in_order() -> None:
    async def handler(head: Head, exchange: Exchange) -> None:
        body = await exchange()
        if head.path == "/slow":
            await asyncio.sleep(0.05)  # a later, quicker request must still wait its turn
        if head.path == "/stream":
            stream = exchange.response_stream(200, [])
            await stream.send_bytes(b"streamed")
            return
        exchange.response_bytes(200, [], head.path.encode() + b":" + body)

    async def main() -> None:
        async with serving(handler) as port, connection(port) as (reader, writer):
            writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"POST /post HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                         b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
                         b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
            bodies = [(await read_reply(reader)).body for _ in range(5)]
            assert bodies == [b"/slow:", b"/post:abc", b"streamed", b"/chunked:hi", b"/fast:"]

    run(main())


def test_a_pipelined_http10_request_gets_an_http10_answer() -> None:
    """Each pipelined request is answered in its own HTTP version, not that of the last one parsed."""
    async def handler(head: Head, exchange: Exchange) -> None:
        await exchange()
        if head.path == "/slow":
            await asyncio.sleep(0.05)
        stream = exchange.response_stream(200, [])
        await stream.send_bytes(head.path.encode())

    async def main() -> None:
        async with serving(handler) as port, connection(port) as (reader, writer):
            writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                         b"GET /new HTTP/1.1\r\nHost: x\r\n\r\n")
            first = await read_reply(reader)
            assert first.body == b"/slow" and first.headers["transfer-encoding"] == "chunked"
            second = await read_reply(reader)  # read to EOF: an HTTP/1.0 client cannot de-chunk
            assert "transfer-encoding" not in second.headers and second.body == b"/old"
            assert await at_eof(reader)

    run(main())


def test_head_requests_get_headers_only_and_keep_the_connection() -> None:
    async def handler(head: Head, exchange: Exchange) -> None:
        exchange.response_bytes(200, [], b"twelve bytes")

    async def main() -> None:
        async with serving(handler) as port, connection(port) as (reader, writer):
            writer.write(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = await read_reply(reader, head_request=True)
            assert reply.headers["content-length"] == "12"
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await read_reply(reader)).body == b"twelve bytes"  # no stray body in between

    run(main())


# --- server: request bodies ---


def test_a_chunked_request_body_reaches_the_handler_whole() -> None:
    async def main() -> None:
        async with serving(echo) as port, connection(port) as (reader, writer):
            writer.write(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            for piece in (b"5\r\nhello\r\n", b"1;ext=1\r\n \r\n", b"5\r\nwor", b"ld\r\n", b"0\r\n\r\n"):
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.01)  # arrives in separate reads
            assert (await read_reply(reader)).body == b"POST /c?\nhello world"

    run(main())


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_5_mb_request_body_arrives_intact(framing: str) -> None:
    body = hashlib.sha256(b"seed").digest() * (5 * 1024 * 1024 // 32)

    async def handler(head: Head, exchange: Exchange) -> None:
        digest, size = hashlib.sha256(), 0
        async for chunk in exchange:
            digest.update(chunk)
            size += len(chunk)
        exchange.response_bytes(200, [], f"{size} {digest.hexdigest()}".encode())

    async def main() -> None:
        async with serving(handler) as port, connection(port) as (reader, writer):
            if framing == "chunked":
                writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
                for start in range(0, len(body), 100_000):
                    piece = body[start:start + 100_000]
                    writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                writer.write(b"0\r\n\r\n")
            else:
                writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()
            reply = await read_reply(reader)
            assert reply.body == f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()

    run(main())


def test_expect_100_continue_is_answered_before_the_body_is_sent() -> None:
    async def main() -> None:
        async with serving(echo) as port, connection(port) as (reader, writer):
            writer.write(b"POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
            interim = await read_reply(reader)  # the body has not been sent yet
            assert interim.status == 100 and interim.version == "HTTP/1.1"
            writer.write(b"data")
            final = await read_reply(reader)
            assert final.status == 200 and final.body == b"POST /e?\ndata"

    run(main())


def test_no_100_continue_when_the_handler_answers_without_reading_the_body() -> None:
    async def handler(head: Head, exchange: Exchange) -> None:
        exchange.response_bytes(413, [], b"too large")

    async def main() -> None:
        async with serving(handler) as port, connection(port) as (reader, writer):
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 999999\r\n\r\n")
            reply = await read_reply(reader)
            assert reply.status == 413 and reply.body == b"too large"
            assert reply.headers["connection"] == "close"  # the unsent body cannot be skipped
            assert await at_eof(reader)

    run(main())


@pytest.mark.parametrize("request_bytes", [
    b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # TLS spoken at a plain-HTTP port
], ids=["header-without-colon", "bad-content-length", "length-and-chunked", "tls-hello"])
def test_a_malformed_request_gets_400_and_the_connection_closes(request_bytes: bytes) -> None:
    called: list[str] = []

    async def handler(head: Head, exchange: Exchange) -> None:
        called.append(head.path)
        exchange.response_bytes(200, [], b"")

    async def main() -> None:
        async with serving(handler) as port, connection(port) as (reader, writer):
            writer.write(request_bytes)
            reply = await read_reply(reader)
            assert reply.status == 400 and reply.headers["connection"] == "close"
            assert await at_eof(reader)

    run(main())
    assert called == []


def test_a_70_kib_header_gets_431() -> None:
    async def main() -> None:
        async with serving(echo) as port:
            async with connection(port) as (reader, writer):
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70 * 1024 + b"\r\n\r\n")
                reply = await read_reply(reader)
                assert reply.status == 431
                assert await at_eof(reader)
            async with connection(port) as (reader, writer):  # a head just under the limit is fine
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 60 * 1024 + b"\r\n\r\n")
                assert (await read_reply(reader)).status == 200

    run(main())


def test_a_header_that_never_ends_is_refused_rather_than_buffered() -> None:
    async def main() -> None:
        async with serving(echo) as port, connection(port) as (reader, writer):
            reply = asyncio.create_task(read_reply(reader))
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: ")
            with contextlib.suppress(ConnectionError):
                for _ in range(16):  # up to 1 MiB, and never an end of line
                    if reply.done():
                        break
                    writer.write(b"a" * 65536)
                    await writer.drain()
                    await asyncio.sleep(0.01)
            assert (await asyncio.wait_for(reply, 2)).status == 431

    run(main())


# --- server: streamed responses and disconnects ---


def test_a_streamed_response_is_chunked_and_ends_with_a_zero_chunk() -> None:
    async def handler(head: Head, exchange: Exchange) -> None:
        stream = exchange.response_stream(200, [("content-type", "text/event-stream")])
        for piece in (b"hello", b"", b" world", b"x" * 300):  # an empty write must not end the stream
            await stream.send_bytes(piece)
            await asyncio.sleep(0.005)

    async def main() -> None:
        async with serving(handler) as port, connection(port) as (reader, writer):
            for _ in range(2):  # and the connection carries on afterwards
                writer.write(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n")
                reply = await read_reply(reader)
                assert reply.headers["transfer-encoding"] == "chunked" and "content-length" not in reply.headers
                assert reply.raw_body == b"5\r\nhello\r\n6\r\n world\r\n12c\r\n" + b"x" * 300 + b"\r\n0\r\n\r\n"

    run(main())


def test_an_ended_stream_reaches_its_client_whole_while_the_handler_finishes_and_a_hang_up_does_not_cancel_it(
        ) -> None:
    """`end()`: the client has the body's end at once; the handler's remaining work (recording the call) is
    neither waited for by the client nor cancelled when it hangs up; the connection then carries on."""
    async def main() -> None:
        release, hung_up = asyncio.Event(), asyncio.Event()
        finished: asyncio.Queue[str] = asyncio.Queue()

        async def handler(head: Head, exchange: Exchange) -> None:
            stream = exchange.response_stream(200, [])
            await stream.send_bytes(b"all of it")
            stream.end()
            stream.end()  # once only
            with pytest.raises(RuntimeError, match="already ended"):
                await stream.send_bytes(b"more")
            if head.path == "/hang-up":
                await hung_up.wait()
                await asyncio.sleep(DISCONNECT_GRACE_S * 2)  # past the grace for clients that hang up mid-stream
            else:
                await release.wait()
            finished.put_nowait(head.path)

        async with serving(handler) as port:
            async with connection(port) as (reader, writer):
                writer.write(b"GET /keep HTTP/1.1\r\nHost: x\r\n\r\n")
                reply = await read_reply(reader)  # while the handler still waits
                assert reply.raw_body == b"9\r\nall of it\r\n0\r\n\r\n" and finished.empty()
                writer.write(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")  # queued behind the first
                release.set()
                assert await asyncio.wait_for(finished.get(), 2) == "/keep"
                assert (await read_reply(reader)).raw_body == b"9\r\nall of it\r\n0\r\n\r\n"
                assert await asyncio.wait_for(finished.get(), 2) == "/next"
            async with connection(port) as (reader, writer):
                writer.write(b"GET /hang-up HTTP/1.1\r\nHost: x\r\n\r\n")
                await read_reply(reader)
            hung_up.set()
            assert await asyncio.wait_for(finished.get(), 3) == "/hang-up"  # not cancelled

    run(main())


_WEBSOCKET = (b"GET /v1/responses HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
              b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")


def test_a_websocket_upgrade_is_answered_in_http_by_its_handler_and_the_connection_then_closes() -> None:
    """No protocol is switched: the handler answers the upgrade request like any other (the gateway says why
    in the provider's error shape) and the connection closes; what follows the head is never parsed as HTTP."""
    async def main() -> None:
        seen: list[tuple[str, str, bytes]] = []

        async def handler(head: Head, exchange: Exchange) -> None:
            seen.append((head.method, head.path, await exchange()))
            exchange.response_bytes(426, [("content-type", "text/plain")], b"use HTTP")

        async with serving(handler) as port, connection(port) as (reader, writer):
            smuggled = b"POST /spend HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
            writer.write(_WEBSOCKET + b"\x81\x85frame" + smuggled)
            reply = await read_reply(reader)
            assert (reply.status, reply.body, reply.headers["connection"]) == (426, b"use HTTP", "close")
            assert await at_eof(reader)
        assert seen == [("GET", "/v1/responses", b"")]

    run(main())


def test_an_upgrade_request_with_a_body_is_refused_before_any_handler_runs() -> None:
    """llhttp hands the body of an upgrade request to the next protocol: the handler would see none. So such a
    request is refused (400, saying why) and never handled on a body it did not get."""
    async def main() -> None:
        handled: list[str] = []

        async def handler(head: Head, exchange: Exchange) -> None:
            handled.append(head.path)
            exchange.response_bytes(200, [], b"")

        async with serving(handler) as port, connection(port) as (reader, writer):
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                         b"Upgrade: h2c\r\nContent-Length: 13\r\n\r\n{\"model\": \"x\"}")
            reply = await read_reply(reader)
            assert reply.status == 400 and b"cannot carry a body" in reply.body
            assert await at_eof(reader)
        assert handled == []

    run(main())


def test_an_http10_client_gets_the_raw_streamed_body_and_then_the_connection_closes() -> None:
    async def handler(head: Head, exchange: Exchange) -> None:
        stream = exchange.response_stream(200, [("content-type", "text/plain")])
        await stream.send_bytes(b"first ")
        await asyncio.sleep(0.01)
        await stream.send_bytes(b"second")

    async def main() -> None:
        async with serving(handler) as port, connection(port) as (reader, writer):
            writer.write(b"GET / HTTP/1.0\r\n\r\n")
            raw = await asyncio.wait_for(reader.read(-1), 2)  # everything, up to the close
            head, _, body = raw.partition(b"\r\n\r\n")
            assert b"transfer-encoding" not in head.lower() and b"connection: close" in head.lower()
            assert body == b"first second"

    run(main())


def test_send_bytes_raises_protocol_closed_once_the_client_is_gone() -> None:
    async def main() -> None:
        outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def handler(head: Head, exchange: Exchange) -> None:
            stream = exchange.response_stream(200, [])
            try:
                for _ in range(500):
                    await stream.send_bytes(b"tick\n")
                    await asyncio.sleep(0.01)
            except ProtocolClosed:
                outcome.set_result("closed")
                raise
            outcome.set_result("never noticed")

        async with serving(handler) as port:
            async with connection(port) as (reader, writer):
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                await reader.readuntil(b"tick\n")
            assert await asyncio.wait_for(outcome, 2) == "closed"

    run(main())


def test_client_disconnect_resolves_when_the_client_hangs_up() -> None:
    async def main() -> None:
        hung_up = asyncio.Event()

        async def handler(head: Head, exchange: Exchange) -> None:
            await exchange()
            await exchange.client_disconnect()
            hung_up.set()

        async with serving(handler) as port:
            async with connection(port) as (_, writer):
                writer.write(b"GET /long-poll HTTP/1.1\r\nHost: x\r\n\r\n")
                await asyncio.sleep(0.05)
                assert not hung_up.is_set()
            await asyncio.wait_for(hung_up.wait(), 2)

    run(main())


def test_reading_a_body_the_client_abandons_raises_protocol_closed() -> None:
    async def main() -> None:
        outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def handler(head: Head, exchange: Exchange) -> None:
            try:
                await exchange()
            except ProtocolClosed:
                outcome.set_result("closed")
                raise
            outcome.set_result("got a body")

        async with serving(handler) as port:
            async with connection(port) as (_, writer):
                writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten..")
                await writer.drain()
                await asyncio.sleep(0.02)
            assert await asyncio.wait_for(outcome, 2) == "closed"

    run(main())


def test_stop_lets_a_call_in_flight_finish_then_closes_and_stops_listening() -> None:
    async def handler(head: Head, exchange: Exchange) -> None:
        await asyncio.sleep(0.1)
        exchange.response_bytes(200, [], b"finished")

    async def main() -> None:
        server = HttpServer(handler)
        port = await server.start("127.0.0.1", 0)
        async with connection(port) as (reader, writer), connection(port) as (idle_reader, _):
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await asyncio.sleep(0.02)
            stopping = asyncio.create_task(server.stop(2))
            assert await at_eof(idle_reader)  # an idle keep-alive connection is closed at once
            assert (await read_reply(reader)).body == b"finished"
            assert await at_eof(reader)
            await stopping
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)

    run(main())


# --- client ---


@dataclass
class Upstream:
    port: int
    accepted: list[asyncio.StreamWriter] = field(default_factory=list)
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes] | None:
    """One request with a Content-Length (or no) body; None when the client has closed."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = raw[:-4].decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return lines[0], headers, body


Script = Callable[[Upstream, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def upstream(script: Script) -> AsyncIterator[Upstream]:
    """A raw asyncio upstream: `script` runs for each accepted connection (each is recorded)."""
    up = Upstream(0)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up.accepted.append(writer)
        try:
            await script(up, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    up.port = server.sockets[0].getsockname()[1]
    try:
        yield up
    finally:
        server.close()
        for writer in up.accepted:
            writer.close()


async def keep_alive_echo(up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers every request on the connection with its request line and body, Content-Length framed."""
    while (request := await read_request(reader)) is not None:
        up.requests.append(request)
        body = request[0].encode() + b"|" + request[2]
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))


def test_sequential_calls_reuse_one_connection() -> None:
    async def main() -> None:
        async with upstream(keep_alive_echo) as up:
            client = Client(up.url + "/base/", read_timeout_s=5)
            answers = []
            for method, path, body in [("GET", "/a?x=1", b""), ("POST", "/b", b"payload"), ("GET", "/c", b"")]:
                resp = await client.send(method, path, [("X-Test", "1")], body)
                answers.append((resp.status, await resp.read()))
            client.close()
            assert answers == [(200, b"GET /base/a?x=1 HTTP/1.1|"), (200, b"POST /base/b HTTP/1.1|payload"),
                               (200, b"GET /base/c HTTP/1.1|")]
            assert len(up.accepted) == 1
            assert [r[1]["host"] for r in up.requests] == [f"127.0.0.1:{up.port}"] * 3
            assert "content-length" not in up.requests[0][1] and up.requests[1][1]["content-length"] == "7"

    run(main())


def test_a_response_abandoned_mid_body_does_not_poison_the_next_call() -> None:
    async def script(up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (request := await read_request(reader)) is not None:
            body = b"big " * 50_000 if request[0].startswith("GET /big") else b"small"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
            await writer.drain()

    async def main() -> None:
        async with upstream(script) as up:
            client = Client(up.url, read_timeout_s=5)
            resp = await client.send("GET", "/big", [], b"")
            assert (await resp.next_chunk() or b"").startswith(b"big ")
            resp.close()
            resp = await client.send("GET", "/small", [], b"")
            assert await resp.read() == b"small"  # not the rest of /big
            assert len(up.accepted) == 2
            client.close()

    run(main())


def test_an_idle_connection_past_the_idle_timeout_is_not_reused() -> None:
    async def main() -> None:
        async with upstream(keep_alive_echo) as up:
            client = Client(up.url, read_timeout_s=5, idle_timeout_s=0.2)
            assert await (await client.send("GET", "/1", [], b"")).read() == b"GET /1 HTTP/1.1|"
            assert await (await client.send("GET", "/2", [], b"")).read() == b"GET /2 HTTP/1.1|"
            assert len(up.accepted) == 1
            await asyncio.sleep(0.4)
            assert await (await client.send("GET", "/3", [], b"")).read() == b"GET /3 HTTP/1.1|"
            assert len(up.accepted) == 2
            client.close()

    run(main())


def test_a_chunked_upstream_response_is_dechunked_as_it_arrives() -> None:
    async def main() -> None:
        go_on = asyncio.Event()

        async def script(up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while await read_request(reader) is not None:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
                await writer.drain()
                await go_on.wait()  # the client has the first piece before the rest is sent
                go_on.clear()
                for piece in (b"8\r\n, secon", b"d\r\n", b"1;ext=y\r\n!\r\n", b"0\r\n\r\n"):
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.005)

        async with upstream(script) as up:
            client = Client(up.url, read_timeout_s=5)
            resp = await client.send("GET", "/", [], b"")
            assert ("transfer-encoding", "chunked") in resp.headers
            first = await resp.next_chunk()
            assert first == b"first"
            go_on.set()
            rest = []
            while (chunk := await resp.next_chunk()) is not None:
                rest.append(chunk)
            assert b"".join(rest) == b", second!"
            go_on.set()
            again = await client.send("GET", "/", [], b"")
            assert await again.read() == b"first, second!"  # read() de-chunks too, on the same connection
            assert len(up.accepted) == 1
            client.close()

    run(main())


@pytest.mark.parametrize("reader", ["read", "next_chunk"])
def test_a_body_arriving_in_hundreds_of_pieces_is_read_whole(reader: str) -> None:
    pieces = [b"%05d" % n * 100 for n in range(300)]

    async def origin(head: Head, exchange: Exchange) -> None:
        stream = exchange.response_stream(200, [])
        for piece in pieces:
            await stream.send_bytes(piece)
            await asyncio.sleep(0)  # each its own read at the client

    async def main() -> None:
        async with serving(origin) as port:
            client = Client(f"http://127.0.0.1:{port}", read_timeout_s=1)
            for _ in range(2):
                resp = await client.send("GET", "/", [], b"")
                if reader == "read":
                    body = await resp.read()
                else:
                    parts = []
                    while (chunk := await resp.next_chunk()) is not None:
                        parts.append(chunk)
                        await asyncio.sleep(0)  # a reader slower than the upstream
                    body = b"".join(parts)
                assert body == b"".join(pieces)
            client.close()

    run(main())


def test_an_interim_100_continue_from_the_upstream_is_skipped() -> None:
    async def script(up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader) is not None:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)
            writer.write(b"HTTP/1.1 201 Created\r\nX-Final: yes\r\nContent-Length: 4\r\n\r\ndone")

    async def main() -> None:
        async with upstream(script) as up:
            client = Client(up.url, read_timeout_s=5)
            for _ in range(2):
                resp = await client.send("POST", "/", [("expect", "100-continue")], b"body")
                assert resp.status == 201 and resp.headers == [("x-final", "yes"), ("content-length", "4")]
                assert await resp.read() == b"done"
            assert len(up.accepted) == 1
            client.close()

    run(main())


def test_responses_without_a_body_do_not_wait_for_one() -> None:
    async def origin(head: Head, exchange: Exchange) -> None:
        if head.path == "/empty":
            exchange.response_bytes(204, [], b"")
        else:
            exchange.response_bytes(200, [], b"hello")  # to HEAD: the length, without the body

    async def main() -> None:
        async with serving(origin) as port:
            client = Client(f"http://127.0.0.1:{port}", read_timeout_s=0.5)
            head = await client.send("HEAD", "/", [], b"")
            assert head.status == 200 and ("content-length", "5") in head.headers
            assert await head.read() == b""
            empty = await client.send("DELETE", "/empty", [], b"")
            assert empty.status == 204 and await empty.read() == b""
            assert await (await client.send("GET", "/", [], b"")).read() == b"hello"
            client.close()

    run(main())


def test_a_body_delimited_by_the_connection_closing_is_read_whole() -> None:
    body = bytes(range(256)) * 400

    async def script(up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
        for start in range(0, len(body), 30_000):
            writer.write(body[start:start + 30_000])
            await writer.drain()
            await asyncio.sleep(0.002)
        writer.close()

    async def main() -> None:
        async with upstream(script) as up:
            client = Client(up.url, read_timeout_s=5)
            for _ in range(2):  # the closed connection is not pooled: the second call dials again
                resp = await client.send("GET", "/", [], b"")
                assert resp.status == 200 and await resp.read() == body
            assert len(up.accepted) == 2
            client.close()

    run(main())


def test_a_silent_upstream_times_out_after_about_the_read_timeout() -> None:
    async def silent(up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(10)

    async def main() -> None:
        async with upstream(silent) as up:
            client = Client(up.url, read_timeout_s=0.3)
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(RequestTimeoutError):
                await client.send("GET", "/", [], b"")
            assert 0.28 <= loop.time() - started < 1.0
            client.close()

    run(main())


def test_an_upstream_that_stalls_mid_body_times_out_but_a_slow_one_does_not() -> None:
    async def script(up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (request := await read_request(reader)) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nab")
            await writer.drain()
            if not request[0].startswith("GET /slow"):
                await asyncio.sleep(10)  # stalls
            for piece in (b"c", b"d", b"e", b"f"):  # every gap shorter than the read timeout, the whole call longer
                await asyncio.sleep(0.2)
                writer.write(piece)
                await writer.drain()

    async def main() -> None:
        async with upstream(script) as up:
            client = Client(up.url, read_timeout_s=0.5)
            slow = await client.send("GET", "/slow", [], b"")
            assert await slow.read() == b"abcdef"
            stalled = await client.send("GET", "/stall", [], b"")
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(RequestTimeoutError):
                await stalled.read()
            assert 0.45 <= loop.time() - started < 1.5
            client.close()

    run(main())


def test_a_closed_port_raises_connect_error() -> None:
    async def main() -> None:
        client = Client(f"http://127.0.0.1:{free_port()}", read_timeout_s=5, connect_timeout_s=2)
        with pytest.raises(ConnectError):
            await client.send("GET", "/", [], b"")

    run(main())


async def close_before_answering(up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)


async def close_mid_head(up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")


async def close_mid_length(up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..")


async def close_mid_chunks(up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")


@pytest.mark.parametrize("script", [close_before_answering, close_mid_head, close_mid_length, close_mid_chunks])
def test_an_upstream_that_closes_mid_response_raises_request_error(script: Script) -> None:
    async def main() -> None:
        async with upstream(script) as up:
            client = Client(up.url, read_timeout_s=5)
            with pytest.raises(RequestError) as caught:
                resp = await client.send("GET", "/", [], b"")
                await resp.read()
            assert not isinstance(caught.value, RequestTimeoutError)
            client.close()

    run(main())


def test_after_the_upstream_closes_an_idle_pooled_connection_the_next_call_succeeds() -> None:
    async def answer_once_then_hang_up(up: Upstream, reader: asyncio.StreamReader,
                                       writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        assert request is not None
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(0.02)  # then, idle, the upstream's keep-alive timeout closes it

    async def main() -> None:
        async with upstream(answer_once_then_hang_up) as up:
            client = Client(up.url, read_timeout_s=5)
            for _ in range(3):
                resp = await client.send("GET", "/", [], b"")
                assert await resp.read() == b"ok"
                await asyncio.sleep(0.1)
            assert len(up.accepted) == 3
            client.close()

    run(main())


def test_a_client_closed_for_reconfiguration_refuses_new_calls() -> None:
    async def main() -> None:
        async with upstream(keep_alive_echo) as up:
            client = Client(up.url, read_timeout_s=5)
            await (await client.send("GET", "/", [], b"")).read()
            client.close()
            with pytest.raises(RequestError):
                await client.send("GET", "/", [], b"")

    run(main())


# --- client through proxies ---


def test_calls_through_an_http_proxy_use_the_absolute_url_and_the_proxy_credentials() -> None:
    seen: list[tuple[str, str, list[tuple[str, str]], bytes]] = []

    async def origin(head: Head, exchange: Exchange) -> None:
        body = await exchange()
        seen.append((head.raw_path, head.query_string, head.headers.items(), body))
        exchange.response_bytes(201, [("x-origin", "yes")], b"created")

    # credentials with characters that must be percent-encoded in the proxy URL
    with ConnectProxy(auth=("svc", "p@ss:w/rd")) as proxy:
        async def main() -> int:
            async with serving(origin) as port:
                proxy_url = f"http://svc:p%40ss%3Aw%2Frd@127.0.0.1:{proxy.port}"
                client = Client(f"http://127.0.0.1:{port}/v1", read_timeout_s=5, proxy=proxy_url)
                for _ in range(2):
                    resp = await client.send("POST", "/chat?stream=false", [("content-type", "text/plain")], b"hi")
                    assert resp.status == 201 and ("x-origin", "yes") in resp.headers
                    assert await resp.read() == b"created"
                client.close()

                wrong = Client(f"http://127.0.0.1:{port}", read_timeout_s=5,
                               proxy=f"http://svc:nope@127.0.0.1:{proxy.port}")
                resp = await wrong.send("GET", "/", [], b"")
                assert resp.status == 407
                await resp.read()
                wrong.close()
                return port

        port = run(main())
        assert proxy.requests == [f"POST http://127.0.0.1:{port}/v1/chat?stream=false"] * 2
        assert proxy.refused == 1  # only the client with the wrong password
    assert [(path, query, body) for path, query, _, body in seen] == [("/v1/chat", "stream=false", b"hi")] * 2
    assert all(dict(headers)["host"] == f"127.0.0.1:{port}" for _, _, headers, _ in seen)


def test_an_https_upstream_is_reached_through_a_connect_tunnel() -> None:
    seen: list[list[tuple[str, str]]] = []

    async def origin(head: Head, exchange: Exchange) -> None:
        seen.append(head.headers.items())
        exchange.response_bytes(200, [], head.path.encode() + b" " + await exchange())

    port = free_port()
    with ConnectProxy(auth=("svc", "s3cret")) as proxy, TlsFront(port) as front:
        async def main() -> None:
            server = HttpServer(origin)
            await server.start("127.0.0.1", port)
            try:
                trust = ssl.create_default_context(cadata=front.cert_pem.decode())
                client = Client(front.url + "/api", read_timeout_s=5, proxy=proxy.url_with_auth, ssl_context=trust)
                for n in range(3):
                    resp = await client.send("POST", f"/{n}", [], b"over tls")
                    assert await resp.read() == f"/api/{n} over tls".encode()
                client.close()

                untrusting = Client(front.url, read_timeout_s=5, proxy=proxy.url_with_auth,
                                    ssl_context=ssl.create_default_context())
                with pytest.raises(ConnectError):  # the tunnel is TLS end to end: the front's cert is checked
                    await untrusting.send("GET", "/", [], b"")
            finally:
                await server.stop(0.5)

        run(main())
        assert proxy.tunnels == [f"127.0.0.1:{front.port}"] * 2 and proxy.requests == [] and proxy.refused == 0
    assert len(seen) == 3
    for headers in seen:  # the proxy's credentials stay with the proxy
        names = [name for name, _ in headers]
        assert "proxy-authorization" not in names and dict(headers)["host"] == f"127.0.0.1:{front.port}"


# --- property: what the upstream sends is what the client reads, and vice versa ---


class LoopThread:
    """An event loop in a background thread, so one server and one pooled client serve many examples."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 5.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


_RESERVED = {"content-length", "transfer-encoding", "connection", "host", "expect", "te", "trailer", "upgrade",
             "keep-alive", "proxy-connection", "proxy-authorization"}
header_names = st.from_regex(r"[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,20}", fullmatch=True).filter(
    lambda name: name.lower() not in _RESERVED)
# values as they survive HTTP/1.1: no CR/LF, no surrounding whitespace; latin-1 obs-text allowed
header_values = st.text(alphabet=st.characters(codec="latin-1", min_codepoint=0x20,
                                               blacklist_characters="\x7f"), max_size=40).map(
    lambda value: value.strip(" "))
header_lists = st.lists(st.tuples(header_names, header_values), max_size=8)
bodies = st.binary(max_size=20_000)
paths = st.from_regex(r"/[A-Za-z0-9._~/%-]{0,30}(\?[A-Za-z0-9=&%]{0,20})?", fullmatch=True)


@dataclass
class Example:
    method: str
    path: str
    req_headers: list[tuple[str, str]]
    req_body: bytes
    status: int
    resp_headers: list[tuple[str, str]]
    resp_body: bytes
    splits: list[int]  # where a streamed body is cut into chunks
    streamed: bool  # chunked (else one Content-Length body)
    handler_streams_body: bool
    client_streams_body: bool
    seen: list[Any] = field(default_factory=list)


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    try:
        yield lt
    finally:
        lt.close()


@pytest.fixture(scope="module")
def wire_pair(loop_thread: LoopThread) -> Iterator[dict[str, Any]]:
    """The wire server (answering as the current example says) and a client pointed at it."""
    current: dict[str, Any] = {}

    async def handler(head: Head, exchange: Exchange) -> None:
        ex: Example = current["example"]
        if ex.handler_streams_body:
            body = b"".join([chunk async for chunk in exchange])
        else:
            body = await exchange()
        ex.seen.append((head.method, head.raw_path, head.path, head.query_string, head.headers.items(), body))
        if not ex.streamed:
            exchange.response_bytes(ex.status, ex.resp_headers, ex.resp_body)
            return
        stream = exchange.response_stream(ex.status, ex.resp_headers)
        edges = [0, *sorted(set(ex.splits)), len(ex.resp_body)]
        for start, end in itertools.pairwise(edges):
            await stream.send_bytes(ex.resp_body[start:end])
            await asyncio.sleep(0)  # let the pieces reach the client in separate reads

    async def setup() -> tuple[HttpServer, Client]:
        server = HttpServer(handler)
        port = await server.start("127.0.0.1", 0)
        return server, Client(f"http://127.0.0.1:{port}", read_timeout_s=5)

    server, client = loop_thread.call(setup())
    current["client"] = client
    try:
        yield current
    finally:
        client.close()
        loop_thread.call(server.stop(0.5))


examples = st.builds(
    Example,
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    path=paths,
    req_headers=header_lists,
    req_body=bodies,
    status=st.sampled_from([200, 201, 400, 404, 429, 500, 503]),
    resp_headers=header_lists,
    resp_body=bodies,
    splits=st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=6),
    streamed=st.booleans(),
    handler_streams_body=st.booleans(),
    client_streams_body=st.booleans(),
)


async def read_all(resp: UpstreamResponse, piece_by_piece: bool) -> bytes:
    if not piece_by_piece:
        return await resp.read()
    parts = []
    while (chunk := await resp.next_chunk()) is not None:
        parts.append(chunk)
    return b"".join(parts)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ex=examples)
def test_property_the_client_reads_what_the_wire_server_sent_and_the_server_what_the_client_sent(
        loop_thread: LoopThread, wire_pair: dict[str, Any], ex: Example) -> None:
    ex.splits = [s % (len(ex.resp_body) + 1) for s in ex.splits]
    wire_pair["example"] = ex
    client: Client = wire_pair["client"]

    async def call() -> tuple[int, list[tuple[str, str]], bytes]:
        resp = await client.send(ex.method, ex.path, ex.req_headers, ex.req_body)
        return resp.status, resp.headers, await read_all(resp, ex.client_streams_body)

    status, headers, body = loop_thread.call(call())

    # the server saw the request as sent
    assert len(ex.seen) == 1
    method, raw_path, path, query, req_headers, req_body = ex.seen[0]
    sent_path, _, sent_query = ex.path.partition("?")
    assert (method, raw_path, path, query) == (ex.method, sent_path, unquote(sent_path), sent_query)
    assert [(n, v) for n, v in req_headers if n not in ("host", "content-length")] == [
        (n.lower(), v) for n, v in ex.req_headers]
    assert req_body == ex.req_body

    # and the client read the response as sent
    assert status == ex.status
    assert [(n, v) for n, v in headers if n not in ("content-length", "transfer-encoding")] == [
        (n.lower(), v) for n, v in ex.resp_headers]
    assert body == ex.resp_body


@dataclass
class RawExample:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    framing: str  # content-length, chunked or eof (the body ends where the connection does)
    chunk_sizes: list[int]
    extensions: bool
    cuts: list[int]  # where the response's bytes are cut into separate writes

    def wire(self) -> bytes:
        lines = [f"HTTP/1.1 {self.status} Whatever\r\n", *(f"{n}: {v}\r\n" for n, v in self.headers)]
        if self.framing == "content-length":
            lines.append(f"Content-Length: {len(self.body)}\r\n")
        elif self.framing == "chunked":
            lines.append("Transfer-Encoding: chunked\r\n")
        head = ("".join(lines) + "\r\n").encode("latin-1")
        if self.framing != "chunked":
            return head + self.body
        out, at, sizes = [head], 0, itertools.cycle(self.chunk_sizes or [len(self.body) or 1])
        while at < len(self.body):
            piece = self.body[at:at + next(sizes)]
            at += len(piece)
            out.append(b"%x%b\r\n%b\r\n" % (len(piece), b";x=1" if self.extensions else b"", piece))
        out.append(b"0\r\n\r\n")
        return b"".join(out)


@pytest.fixture(scope="module")
def raw_pair(loop_thread: LoopThread) -> Iterator[dict[str, Any]]:
    """A raw upstream writing the current example's bytes in pieces, and a client pointed at it."""
    current: dict[str, Any] = {"accepted": 0}

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        current["accepted"] += 1
        try:
            while await read_request(reader) is not None:
                ex: RawExample = current["example"]
                data = ex.wire()
                edges = [0, *sorted({c % (len(data) + 1) for c in ex.cuts}), len(data)]
                for start, end in itertools.pairwise(edges):
                    writer.write(data[start:end])
                    await writer.drain()
                    await asyncio.sleep(0)  # let the pieces reach the client in separate reads
                if ex.framing == "eof":
                    break
        finally:
            writer.close()

    async def setup() -> tuple[asyncio.Server, Client]:
        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        return server, Client(f"http://127.0.0.1:{port}", read_timeout_s=5)

    server, client = loop_thread.call(setup())
    current["client"] = client
    try:
        yield current
    finally:
        client.close()
        server.close()


raw_examples = st.builds(
    RawExample,
    status=st.sampled_from([200, 201, 400, 404, 500, 503]),
    headers=header_lists,
    body=bodies,
    framing=st.sampled_from(["content-length", "chunked", "eof"]),
    chunk_sizes=st.lists(st.integers(min_value=1, max_value=5000), max_size=5),
    extensions=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=12),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ex=raw_examples, piece_by_piece=st.booleans())
def test_property_the_client_reads_what_a_raw_upstream_sent_however_it_is_cut(
        loop_thread: LoopThread, raw_pair: dict[str, Any], ex: RawExample, piece_by_piece: bool) -> None:
    raw_pair["example"] = ex
    client: Client = raw_pair["client"]
    accepted = raw_pair["accepted"]

    async def call() -> tuple[int, list[tuple[str, str]], bytes]:
        resp = await client.send("GET", "/", [], b"")
        return resp.status, resp.headers, await read_all(resp, piece_by_piece)

    status, headers, body = loop_thread.call(call())
    assert status == ex.status and body == ex.body
    assert [(n, v) for n, v in headers if n not in ("content-length", "transfer-encoding")] == [
        (n.lower(), v) for n, v in ex.headers]
    assert raw_pair["accepted"] <= accepted + 1  # a connection that stayed open was reused

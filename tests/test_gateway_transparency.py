"""Byte-for-byte transparency and no buffering, checked against a hand-written upstream."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from aiohttp import web

from conftest import Gateway
from tollhouse.mock.serve_thread import ThreadedServer

# Odd but valid JSON: spacing, key order, unicode escapes and raw UTF-8 must survive untouched.
ODD_BODY = (b'{ "id" :"chatcmpl-1","object":"chat.completion", "model":"gpt-4o-mini",\n'
            b' "choices":[{"index":0,"message":{"role":"assistant","content":"caf\\u00e9 \xe2\x98\x95"},'
            b'"finish_reason":"stop"}],\n "usage":{"prompt_tokens":11,"completion_tokens":2,"total_tokens":13} }')

SSE_PARTS = [
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,'
    b'"delta":{"content":"one"}}]}\n\n',
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,'
    b'"delta":{"content":" two"}}]}\n\n: a comment the client should see too\n\n',
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[],'
    b'"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}\n\ndata: [DONE]\n\n',
]


def _upstream_app(gap_s: float) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.Response(body=ODD_BODY, content_type="application/json",
                                headers={"x-request-id": "req-123", "openai-processing-ms": "7"})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "x-request-id": "req-456"})
        await resp.prepare(request)
        for part in SSE_PARTS:
            await resp.write(part)
            await asyncio.sleep(gap_s)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


def _raw_post(port: int, path: str, body: bytes) -> tuple[bytes, bytes, float, float]:
    """POST over a raw socket; return (head, body, time to first body byte, total)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    req = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           f"Authorization: Bearer sk-test\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    t0 = time.perf_counter()
    sock.sendall(req + body)
    data = b""
    first_body: float | None = None
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if first_body is None and b"\r\n\r\n" in data and len(data) > data.index(b"\r\n\r\n") + 4:
            first_body = time.perf_counter() - t0
    total = time.perf_counter() - t0
    sock.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        rest = _dechunk(rest)
    return head, rest, first_body or total, total


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2:]
    return out


def _gateway_on(factory: Any, url: str) -> Gateway:
    gw: Gateway = factory({"providers": {"openai": {"upstream": url}}})
    return gw


def test_non_stream_body_and_headers_are_forwarded_unchanged(gateway_factory: Any) -> None:
    with ThreadedServer(lambda: _upstream_app(0)) as up:
        gw = _gateway_on(gateway_factory, up.url)
        head, body, _, _ = _raw_post(gw.port, "/openai/v1/chat/completions",
                                     b'{"model":"gpt-4o-mini","messages":[]}')
        assert body == ODD_BODY
        assert b"x-request-id: req-123" in head.lower() and b"openai-processing-ms: 7" in head.lower()
        assert b"x-tollhouse-decision: allow" in head.lower()
        ev = gw.events()[0]
        assert (ev["input_tokens"], ev["output_tokens"]) == (11, 2)


def test_stream_is_byte_identical_when_client_asked_for_usage(gateway_factory: Any) -> None:
    with ThreadedServer(lambda: _upstream_app(0)) as up:
        gw = _gateway_on(gateway_factory, up.url)
        _, body, _, _ = _raw_post(gw.port, "/openai/v1/chat/completions",
                                  b'{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true}}')
        assert body == b"".join(SSE_PARTS)
        ev = gw.events()[0]
        assert (ev["input_tokens"], ev["output_tokens"], ev["stream"]) == (5, 2, True)


def test_stream_first_byte_is_not_buffered(gateway_factory: Any) -> None:
    """The upstream pauses 0.5 s between events: the first event must arrive long before the rest."""
    with ThreadedServer(lambda: _upstream_app(0.5)) as up:
        gw = _gateway_on(gateway_factory, up.url)
        _, body, first, total = _raw_post(gw.port, "/openai/v1/chat/completions",
                                          b'{"model":"gpt-4o-mini","stream":true}')
        assert total >= 1.4
        assert first < 0.4, f"first body byte after {first:.3f}s: the stream was buffered"
        # The client did not ask for usage: the usage-only chunk is withheld, the rest is intact.
        assert body == SSE_PARTS[0] + SSE_PARTS[1] + b"data: [DONE]\n\n"

#!/usr/bin/env python3
"""A bare pass-through on Tollhouse's own HTTP layer (tollhouse.wire): what the stack costs before the gateway
does anything (no parsing, no policy, no records). Compare with floor_aiohttp.py.

    python benchmarks/passthrough_wire.py --port 8791 --upstream http://127.0.0.1:8080
"""

import argparse
import asyncio
import signal

import uvloop

from tollhouse.wire.client import Client
from tollhouse.wire.server import Exchange, Head, HttpServer

HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


async def main(host: str, port: int, upstream: str) -> None:
    client = Client(upstream, read_timeout_s=60)

    async def forward(head: Head, exchange: Exchange) -> None:
        if head.path == "/_ready":
            exchange.response_bytes(200, [], b"ok")
            return
        body = await exchange()
        target = head.raw_path + ("?" + head.query_string if head.query_string else "")
        resp = await client.send(head.method, target, [(k, v) for k, v in head.headers.items() if k not in HOP], body)
        headers = [(k, v) for k, v in resp.headers if k not in HOP]
        if resp.headers and any(k == "transfer-encoding" for k, _ in resp.headers):
            stream = exchange.response_stream(resp.status, headers)
            while (chunk := await resp.next_chunk()) is not None:
                await stream.send_bytes(chunk)
            return
        exchange.response_bytes(resp.status, headers, await resp.read())

    server = HttpServer(forward)
    await server.start(host, port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace_s=1)
    client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8791)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    uvloop.run(main(args.host, args.port, args.upstream))

#!/usr/bin/env python3
"""The Python floor for a proxy: a bare aiohttp + uvloop pass-through (no parsing, no policy, no records).

    python benchmarks/floor_aiohttp.py --port 8790 --upstream http://127.0.0.1:8080
"""

import argparse

import aiohttp
import uvloop
from aiohttp import web

HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


async def forward(request: web.Request) -> web.StreamResponse:
    session: aiohttp.ClientSession = request.app["session"]
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
    async with session.request(request.method, request.app["upstream"] + request.path_qs, headers=headers,
                               data=await request.read()) as upstream:
        response = web.StreamResponse(status=upstream.status, headers={
            k: v for k, v in upstream.headers.items() if k.lower() not in HOP})
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


async def app(upstream: str) -> web.Application:
    application = web.Application()
    application["upstream"] = upstream.rstrip("/")
    application["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
    application.on_cleanup.append(lambda a: a["session"].close())
    application.router.add_route("*", "/{tail:.*}", forward)
    return application


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8790)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    uvloop.install()
    web.run_app(app(args.upstream), host=args.host, port=args.port, access_log=None, print=None)

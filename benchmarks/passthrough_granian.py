#!/usr/bin/env python3
"""A bare pass-through on Granian (RSGI) + pyreqwest: the stack Tollhouse used before tollhouse.wire, kept to
re-measure the choice (needs `pip install granian`; bench_stack.py skips it when Granian is missing).

    python benchmarks/passthrough_granian.py --port 8792 --upstream http://127.0.0.1:8080
"""

import argparse
import asyncio
from typing import Any

import uvloop
from granian.constants import Interfaces, TaskImpl  # type: ignore[import-not-found,unused-ignore]
from granian.server.embed import Server  # type: ignore[import-not-found,unused-ignore]
from pyreqwest.client import ClientBuilder

HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


class App:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.client: Any = None

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.path == "/_ready":
            proto.response_bytes(200, [], b"ok")
            return
        if self.client is None:
            self.client = ClientBuilder().build()
        body = await proto()
        headers = [(k, v) for k, v in scope.headers.items() if k not in HOP]
        resp = await self.client.request(scope.method, self.upstream + scope.path).headers(headers) \
            .body_bytes(body).build().send()
        data = bytes(await resp.bytes())
        proto.response_bytes(resp.status, [(k, v) for k, v in resp.headers.items() if k not in HOP], data)

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        return None

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        return None


async def main(host: str, port: int, upstream: str) -> None:
    server = Server(App(upstream), address=host, port=port, interface=Interfaces.RSGI, task_impl=TaskImpl.asyncio,
                    backlog=1024, log_enabled=False)
    await server.serve()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8792)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    uvloop.run(main(args.host, args.port, args.upstream))

"""The small HTTP surface the gateway's handlers see (served by `tollhouse.wire.server`).

The server and the upstream client run in the event loop's own thread (asyncio + llhttp), chosen by
measurement over Granian + pyreqwest and over aiohttp: README.md, "Choosing the stack" (benchmarks/bench_stack.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl

import orjson

if TYPE_CHECKING:
    from tollhouse.gateway.console_session import ConsoleUser


class Headers(Protocol):
    """Request headers: names are lower-case; `get` is case-insensitive."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def items(self) -> list[tuple[str, str]]: ...


class StreamTransport(Protocol):
    async def send_bytes(self, data: bytes) -> None: ...

    def end(self) -> None:
        """The body is complete: the client gets its end now, while the handler may still finish its work."""
        ...


class HTTPProtocol(Protocol):
    async def __call__(self) -> bytes: ...

    def __aiter__(self) -> Any: ...

    @property
    def client_gone(self) -> bool:
        """The client went away (the server cancels a handler still streaming to it)."""
        ...

    def client_address(self) -> str | None: ...

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None: ...

    def response_stream(self, status: int, headers: list[tuple[str, str]]) -> StreamTransport: ...


class BodyTooLarge(Exception):
    def __init__(self, size: int | None) -> None:
        super().__init__(f"body of {size} bytes" if size is not None else "body too large")
        self.size = size


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query_string: str
    headers: Headers
    proto: HTTPProtocol
    raw_path: str  # the path as sent, still percent-encoded (what the proxy forwards)
    params: dict[str, str] = field(default_factory=dict)  # path parameters from the router
    user: ConsoleUser | None = None  # who the router signed in (console pages and /api/v1 routes for users)

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return value if isinstance(value, str) else None

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(self.query_string, keep_blank_values=True))

    async def body(self, limit: int) -> bytes:
        """The whole body, refusing more than `limit` bytes (declared or actually sent)."""
        declared = self.header("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge(int(declared))
        if declared is not None:
            data = await self.proto()
            if len(data) > limit:
                raise BodyTooLarge(len(data))
            return data
        parts: list[bytes] = []
        size = 0
        async for chunk in self.proto:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(None)
            parts.append(chunk)
        return b"".join(parts)


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


class Streamed:
    """Returned by a handler that already answered through `response_stream`."""


STREAMED = Streamed()


def json_response(data: Any, status: int = 200, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, orjson.dumps(data), [("content-type", "application/json"), *(headers or [])])


def text_response(text: str, content_type: str = "text/plain; charset=utf-8", status: int = 200) -> Response:
    return Response(status, text.encode(), [("content-type", content_type)])

"""A tunnel: bytes copied untouched between a client and the host it asked for, both ways.

Flow control keeps buffers bounded: when one side's write buffer passes its high-water mark the other side
stops being read until it drains. An end of stream from one side is passed on as a half-close (write_eof) and
the tunnel closes once both sides have ended; the proxy's sweeper closes a tunnel idle for too long.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class _End(asyncio.Protocol):
    """One end of the tunnel; `peer` is the other."""

    def __init__(self, tunnel: Tunnel, upstream: bool) -> None:
        self.tunnel = tunnel
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.peer: _End | None = None
        self.ended = False  # this side sent its end of stream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        tunnel.last_active = tunnel.loop.time()
        if not self.upstream and tunnel.inspect is not None:
            inspect, tunnel.inspect = tunnel.inspect, None
            if not inspect(data):
                tunnel.close(abort=True)
                return
        if self.upstream:
            tunnel.down += len(data)
        else:
            tunnel.up += len(data)
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            peer.transport.write(data)

    def eof_received(self) -> bool:
        self.ended = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            if peer.ended or not peer.transport.can_write_eof():
                self.tunnel.close()
                return False
            peer.transport.write_eof()
            return True
        return False

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None and not self.peer.transport.is_closing():
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.close()


class Tunnel:
    """A client's connection joined to an upstream connection. `on_close(tunnel)` runs once, at the end."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_close: Callable[[Tunnel], None], host: str,
                 person: str) -> None:
        self.loop = loop
        self.host = host
        self.person = person
        self.client = _End(self, upstream=False)
        self.upstream = _End(self, upstream=True)
        self.client.peer, self.upstream.peer = self.upstream, self.client
        self.up = 0  # bytes client → host
        self.down = 0  # bytes host → client
        self.last_active = loop.time()
        self.closed = False
        self._on_close = on_close
        # shown the client's first bytes (its TLS ClientHello) once; False closes the tunnel
        self.inspect: Callable[[bytes], bool] | None = None

    def attach_client(self, transport: asyncio.Transport, early: bytes) -> None:
        """Take over the client's connection (its reading paused); `early`: bytes it sent already."""
        transport.set_protocol(self.client)
        self.client.connection_made(transport)
        if early:
            self.client.data_received(early)
        transport.resume_reading()

    def close(self, abort: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        for end in (self.client, self.upstream):
            if end.transport is not None:
                if abort:
                    end.transport.abort()
                else:
                    end.transport.close()
        self._on_close(self)

    def check(self, now: float, idle_timeout_s: float) -> None:
        if not self.closed and now - self.last_active > idle_timeout_s:
            self.close(abort=True)

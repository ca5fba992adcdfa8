"""Audit entries to a SIEM over syslog: RFC 5424 messages over UDP (RFC 5426, `syslog://host:port`) or TCP
with octet-counting framing (RFC 6587, `syslog+tcp://host:port`).

Each message carries the entry's seq, hash, kind and actor as structured data and the whole entry as JSON
in MSG. The forwarder never blocks its caller: entries wait in a bounded queue for a sender thread that
reconnects with backoff and resends what it could not deliver (at least once; a receiver dedupes by seq).
An entry is dropped only when the queue is full or at shutdown, and every drop is counted and logged.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import select
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson

from tollhouse.audit.chain import AuditEntry

log = logging.getLogger("tollhouse.audit")

FACILITY_LOG_AUDIT = 13
SD_ID = "tollhouse@32473"  # 32473: the enterprise number IANA reserves for examples (RFC 5612)
_SEVERITY = {"ledger.unavailable": 3, "call.blocked": 4, "policy.rejected": 4, "policy.changed": 5}  # else 6
_SCHEMES: dict[str, Literal["udp", "tcp"]] = {"syslog": "udp", "syslog+udp": "udp", "syslog+tcp": "tcp"}
URL_EXAMPLE = '"syslog://siem.example.com:514" (UDP) or "syslog+tcp://siem.example.com:6514" (TCP)'


@dataclass(frozen=True, slots=True)
class SyslogTarget:
    transport: Literal["udp", "tcp"]
    host: str
    port: int

    def __str__(self) -> str:
        return f"syslog+{self.transport}://{self.host}:{self.port}"


def parse_syslog_url(url: str) -> SyslogTarget:
    """`syslog://host:port` (UDP), `syslog+udp://...`, `syslog+tcp://host:port`; the port defaults to 514."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port or 514
    except ValueError:
        parts, port = None, 0
    transport = _SCHEMES.get(parts.scheme.lower()) if parts else None
    if parts is None or transport is None or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f"{orjson.dumps(url).decode()} is not a syslog URL; example: {URL_EXAMPLE}")
    return SyslogTarget(transport, parts.hostname, port)


def _timestamp(ts_ms: int) -> str:
    """RFC 5424 TIMESTAMP: RFC 3339 in UTC with milliseconds."""
    return datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _header_field(value: str, most: int) -> str:
    """A header field: printable US-ASCII without spaces, at most `most` characters, or '-' when empty."""
    text = "".join(c if 33 <= ord(c) <= 126 else "_" for c in value)[:most]
    return text or "-"


def _param(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def format_entry(entry: AuditEntry, hostname: str, app_name: str = "tollhouse", procid: str = "-",
                 facility: int = FACILITY_LOG_AUDIT) -> bytes:
    """One RFC 5424 message: header (MSGID = the entry's kind), structured data, the entry as JSON."""
    pri = facility * 8 + _SEVERITY.get(entry.kind, 6)
    header = (f"<{pri}>1 {_timestamp(entry.ts_ms)} {_header_field(hostname, 255)} {_header_field(app_name, 48)} "
              f"{_header_field(procid, 128)} {_header_field(entry.kind, 32)}")
    sd = (f'[{SD_ID} seq="{entry.seq}" hash="{_param(entry.hash)}" kind="{_param(entry.kind)}" '
          f'actor="{_param(entry.actor)}"]')
    return f"{header} {sd} ".encode() + orjson.dumps(entry.json())


class _Connection:
    """One socket to the target; `send` raises OSError when the message did not (certainly) go out."""

    def __init__(self, target: SyslogTarget, timeout_s: float) -> None:
        self._target = target
        if target.transport == "tcp":
            self._sock = socket.create_connection((target.host, target.port), timeout=timeout_s)
            self._addr: tuple[Any, ...] | None = None
        else:
            family, kind, proto, _, addr = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_DGRAM)[0]
            self._sock = socket.socket(family, kind, proto)
            self._addr = addr

    def send(self, message: bytes) -> None:
        if self._addr is not None:
            self._sock.sendto(message, self._addr)
            return
        # A receiver that closed the connection is seen before sending (a send into a half-closed socket
        # would "succeed" and the message be lost).
        readable, _, _ = select.select([self._sock], [], [], 0)
        if readable and not self._sock.recv(4096):
            raise ConnectionResetError(f"{self._target} closed the connection")
        self._sock.sendall(f"{len(message)} ".encode() + message)

    def close(self) -> None:
        self._sock.close()


class SyslogForwarder:
    """Sends audit entries to one syslog receiver from a thread of its own; `submit` never blocks."""

    def __init__(self, target: SyslogTarget, max_queue: int = 10_000, hostname: str | None = None,
                 retry_max_s: float = 5.0, timeout_s: float = 5.0) -> None:
        self.target = target
        self._hostname = hostname or socket.gethostname()
        self._procid = str(os.getpid())
        self._queue: queue.Queue[AuditEntry | None] = queue.Queue(maxsize=max_queue)
        self._retry_max_s = retry_max_s
        self._timeout_s = timeout_s
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._sent = 0
        self._dropped = 0
        self._thread = threading.Thread(target=self._run, name="tollhouse-syslog", daemon=True)

    @property
    def sent(self) -> int:
        return self._sent

    @property
    def dropped(self) -> int:
        return self._dropped

    def start(self) -> None:
        self._thread.start()

    def submit(self, entry: AuditEntry) -> None:
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self._drop(1, f"the queue is full (entry #{entry.seq})")

    def _drop(self, count: int, why: str) -> None:
        """Count dropped entries; log the first drop, every thousandth, and each drop at shutdown."""
        if not count:
            return
        with self._lock:
            before = self._dropped
            self._dropped += count
        if before == 0 or before // 1000 != self._dropped // 1000 or self._stopping.is_set():
            log.error("audit entries to %s dropped: %s; %d dropped so far", self.target, why, before + count)

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued within `timeout_s`; whatever is left is counted as dropped and logged."""
        if self._thread.is_alive():
            deadline = time.monotonic() + timeout_s
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=timeout_s)
            self._thread.join(max(0.0, deadline - time.monotonic()))
            self._stopping.set()
            self._thread.join(self._timeout_s + 1)
        self._stopping.set()
        left = 0
        with contextlib.suppress(queue.Empty):
            while True:
                left += self._queue.get_nowait() is not None
        self._drop(left, "shut down before they could be delivered")

    def _run(self) -> None:
        conn: _Connection | None = None
        message: bytes | None = None
        backoff = 0.0
        while not self._stopping.is_set():
            if message is None:
                entry = self._queue.get()
                if entry is None:
                    break
                message = format_entry(entry, self._hostname, procid=self._procid)
            try:
                conn = conn or _Connection(self.target, self._timeout_s)
                conn.send(message)
            except OSError as exc:
                if conn is not None:
                    conn.close()
                    conn = None
                if exc.errno == errno.EMSGSIZE:
                    self._drop(1, f"a message of {len(message)} bytes is too large for a datagram")
                    message = None
                    continue
                if not backoff:
                    log.warning("cannot send audit entries to %s (%s); retrying", self.target, exc)
                backoff = min(max(backoff * 2, 0.05), self._retry_max_s)
                self._stopping.wait(backoff)
                continue
            if backoff:
                log.warning("sending audit entries to %s again", self.target)
            self._sent += 1
            message, backoff = None, 0.0
        if conn is not None:
            conn.close()
        self._drop(0 if message is None else 1, "shut down before they could be delivered")

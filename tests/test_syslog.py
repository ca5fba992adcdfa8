"""Audit entries over syslog: RFC 5424 formatting, and delivery to real local UDP and TCP receivers, through
receiver restarts, with every drop counted."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from conftest import Gateway, Mock, free_port, upstreams
from test_gateway_sdks import oai
from test_policy_gateway import ALLOWLIST, DIRECTORY
from tollhouse.audit.chain import AuditEntry
from tollhouse.audit.syslog import SD_ID, SyslogForwarder, SyslogTarget, format_entry, parse_syslog_url
from tollhouse.config import ConfigError, parse_settings

RFC5424 = re.compile(r"<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<procid>\S+) (?P<msgid>\S+) "
                     r"\[(?P<sdid>\S+)(?P<params>(?: [a-z]+=\"(?:[^\"\\\]]|\\.)*\")*)\] (?P<msg>.*)", re.DOTALL)
PARAM = re.compile(r' ([a-z]+)="((?:[^"\\\]]|\\.)*)"')


def entry(seq: int = 1, kind: str = "call.blocked", actor: str = "gateway", **data: Any) -> AuditEntry:
    return AuditEntry(seq, 1_700_000_000_123 + seq, kind, actor, data or {"rule_id": "r1"}, "0" * 64, f"{seq:064x}")


def parse(message: bytes) -> dict[str, Any]:
    m = RFC5424.fullmatch(message.decode())
    assert m is not None, message
    params = {k: re.sub(r"\\(.)", r"\1", v) for k, v in PARAM.findall(m["params"])}
    return {**m.groupdict(), "params": params, "msg": json.loads(m["msg"])}


@pytest.mark.parametrize(("kind", "pri"), [
    ("call.blocked", 13 * 8 + 4), ("ledger.unavailable", 13 * 8 + 3), ("policy.changed", 13 * 8 + 5),
    ("policy.rejected", 13 * 8 + 4), ("gateway.started", 13 * 8 + 6),
])
def test_rfc5424_format(kind: str, pri: int) -> None:
    e = entry(7, kind)
    got = parse(format_entry(e, "gw-1.example.com", procid="4242"))
    assert got["pri"] == str(pri) and got["ts"] == "2023-11-14T22:13:20.130Z"
    assert (got["host"], got["app"], got["procid"], got["msgid"]) == ("gw-1.example.com", "tollhouse", "4242", kind)
    assert got["sdid"] == SD_ID
    assert got["params"] == {"seq": "7", "hash": e.hash, "kind": kind, "actor": "gateway"}
    assert got["msg"] == e.json()


def test_awkward_values_are_escaped_or_replaced() -> None:
    e = entry(1, kind="weird kind é" + "x" * 40, actor='a"b]c\\d', note="naïve ]\"")
    message = format_entry(e, "my host", procid="")
    got = parse(message)
    assert got["host"] == "my_host" and got["procid"] == "-"
    assert got["msgid"] == ("weird_kind_" + "_" + "x" * 40)[:32]
    assert got["params"]["actor"] == 'a"b]c\\d' and got["params"]["kind"] == e.kind
    assert got["msg"] == e.json()


@pytest.mark.parametrize(("url", "target"), [
    ("syslog://siem.example.com:514", SyslogTarget("udp", "siem.example.com", 514)),
    ("syslog+udp://10.0.0.1:1514", SyslogTarget("udp", "10.0.0.1", 1514)),
    ("syslog+tcp://siem:6514", SyslogTarget("tcp", "siem", 6514)),
    ("syslog://siem", SyslogTarget("udp", "siem", 514)),
    ("SYSLOG+TCP://[::1]:601/", SyslogTarget("tcp", "::1", 601)),
])
def test_parse_syslog_url(url: str, target: SyslogTarget) -> None:
    assert parse_syslog_url(url) == target


@pytest.mark.parametrize("url", ["http://siem:514", "syslog+tls://siem:6514", "syslog://", "syslog://siem:99999",
                                 "siem:514", "syslog://siem:514/path"])
def test_bad_syslog_urls(url: str) -> None:
    with pytest.raises(ValueError, match=re.escape('is not a syslog URL; example: "syslog://siem.example.com:514"')):
        parse_syslog_url(url)


def test_config_section() -> None:
    settings = parse_settings({"audit": {"syslog_url": "syslog+tcp://siem:6514"}}, "(test)")
    assert settings.audit.syslog_url == "syslog+tcp://siem:6514"
    with pytest.raises(ConfigError, match=r"audit.syslog_url: \"https://siem\" is not a syslog URL"):
        parse_settings({"audit": {"syslog_url": "https://siem"}}, "(test)")


# -- real receivers -----------------------------------------------------------------------------------


@contextlib.contextmanager
def forwarder(url: str, **kwargs: Any) -> Iterator[SyslogForwarder]:
    fwd = SyslogForwarder(parse_syslog_url(url), **kwargs)
    fwd.start()
    try:
        yield fwd
    finally:
        fwd.close(timeout_s=2)


def test_udp_delivery() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        with forwarder(f"syslog://127.0.0.1:{rx.getsockname()[1]}") as fwd:
            for seq in (1, 2, 3):
                fwd.submit(entry(seq))
            got = [parse(rx.recv(65535)) for _ in range(3)]
        assert [g["params"]["seq"] for g in got] == ["1", "2", "3"]
        assert fwd.sent == 3 and fwd.dropped == 0


class TcpReceiver:
    """A syslog receiver reading octet-counted frames; `close_after` frames it hangs up (once per connection)."""

    def __init__(self, port: int = 0, close_after: int | None = None) -> None:
        self.sock = socket.create_server(("127.0.0.1", port))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.frames: list[bytes] = []
        self.connections = 0
        self._close_after = close_after
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with conn:
                self._read(conn)

    def _read(self, conn: socket.socket) -> None:
        buf = b""
        count = 0
        conn.settimeout(0.2)
        while not self._stop.is_set():
            while b" " in buf:
                length, _, rest = buf.partition(b" ")
                if len(rest) < int(length):
                    break
                self.frames.append(rest[:int(length)])
                buf = rest[int(length):]
                count += 1
            if self._close_after is not None and count >= self._close_after:
                return  # hangs up having kept every whole frame it read (a receiver drops none it has read)
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                return
            buf += chunk

    def seqs(self) -> list[int]:
        return [int(parse(f)["params"]["seq"]) for f in self.frames]

    def wait_for(self, n: int, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while len(set(self.seqs())) < n and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def test_tcp_delivery_with_octet_counting() -> None:
    rx = TcpReceiver()
    try:
        with forwarder(f"syslog+tcp://127.0.0.1:{rx.port}") as fwd:
            for seq in range(1, 51):
                fwd.submit(entry(seq, note="x" * seq * 10))
            rx.wait_for(50)
        assert rx.seqs() == list(range(1, 51)) and rx.connections == 1
        assert parse(rx.frames[9])["msg"]["data"]["note"] == "x" * 100
        assert fwd.sent == 50 and fwd.dropped == 0
    finally:
        rx.close()


def test_tcp_reconnects_when_the_receiver_hangs_up() -> None:
    rx = TcpReceiver(close_after=3)
    try:
        with forwarder(f"syslog+tcp://127.0.0.1:{rx.port}") as fwd:
            for seq in range(1, 11):
                fwd.submit(entry(seq))
                time.sleep(0.02)
            rx.wait_for(10)
        assert sorted(set(rx.seqs())) == list(range(1, 11))  # at least once, nothing lost
        assert rx.connections >= 3 and fwd.dropped == 0
    finally:
        rx.close()


def test_entries_wait_for_a_receiver_that_is_down(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    caplog.set_level(logging.WARNING, "tollhouse.audit")
    with forwarder(f"syslog+tcp://127.0.0.1:{port}", retry_max_s=0.2) as fwd:
        for seq in range(1, 6):
            fwd.submit(entry(seq))
        time.sleep(0.5)
        assert fwd.sent == 0
        rx = TcpReceiver(port)
        try:
            rx.wait_for(5)
            assert sorted(set(rx.seqs())) == [1, 2, 3, 4, 5]
        finally:
            rx.close()
    assert fwd.dropped == 0
    assert any("cannot send audit entries" in r.message for r in caplog.records)


def test_a_full_queue_counts_and_logs_drops_and_never_blocks(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, "tollhouse.audit")
    fwd = SyslogForwarder(parse_syslog_url(f"syslog+tcp://127.0.0.1:{free_port()}"), max_queue=3)
    began = time.monotonic()
    for seq in range(1, 2001):
        fwd.submit(entry(seq))
    assert time.monotonic() - began < 1
    assert fwd.dropped == 1997
    drops = [r.message for r in caplog.records if "dropped" in r.message]
    assert len(drops) == 2 and "the queue is full (entry #4)" in drops[0]  # the first, then every thousandth
    fwd.close(timeout_s=0.1)
    assert fwd.dropped == 2000
    assert "shut down before they could be delivered; 2000 dropped" in caplog.records[-1].message


def test_close_gives_up_on_an_unreachable_receiver_and_counts_what_is_left() -> None:
    fwd = SyslogForwarder(parse_syslog_url(f"syslog+tcp://127.0.0.1:{free_port()}"), retry_max_s=0.1)
    fwd.start()
    for seq in range(1, 4):
        fwd.submit(entry(seq))
    began = time.monotonic()
    fwd.close(timeout_s=0.3)
    assert time.monotonic() - began < 3
    assert fwd.sent == 0 and fwd.dropped == 3


def test_the_gateway_forwards_its_audit_trail(mock: Mock, tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(10)
        gw = Gateway({"identity": {"trust_user_header": True}, "providers": upstreams(mock.url),
                      "enforcement": "on", "directory": DIRECTORY, "policy": {"rules": [ALLOWLIST]},
                      "audit": {"syslog_url": f"syslog://127.0.0.1:{rx.getsockname()[1]}"}}, tmp_path).start()
        try:
            with pytest.raises(openai.PermissionDeniedError):
                oai(gw).chat.completions.create(model="o1", messages=[{"role": "user", "content": "x"}])
            got = [parse(rx.recv(65535)) for _ in range(4)]
        finally:
            gw.stop()
    assert [g["msgid"] for g in got] == ["directory.changed", "policy.changed", "gateway.started", "call.blocked"]
    assert got[3]["msg"]["data"]["rule_id"] == "approved-models" and got[3]["params"]["seq"] == "4"

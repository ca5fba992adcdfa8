"""The Redis ledger: one budget enforced by two gateways, rebuilt from the store, failing closed."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import redis

from conftest import Gateway, Mock, free_port
from test_ledger_gateway import _call, _config, _together, budget_rule


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    with redis_server(free_port(), tmp_path) as url:
        yield url


@contextlib.contextmanager
def redis_server(port: int, tmp_path: Path) -> Iterator[str]:
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.time() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.time() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _shared(mock: Mock, redis_url: str, store_url: str, rules: list[dict[str, Any]], fail_open: bool = False
            ) -> dict[str, Any]:
    return _config(mock, rules, counters={"url": redis_url, "fail_open": fail_open}, store={"url": store_url})


def test_two_gateways_on_one_redis_enforce_one_budget(mock: Mock, gateway_factory: Any, redis_url: str,
                                                      store_url: str, tmp_path: Path) -> None:
    """Both stores: one shared SQLite file, or one PostgreSQL (the at-scale deployment)."""
    cfg = _shared(mock, redis_url, store_url, [budget_rule()])
    gw1: Gateway = gateway_factory(cfg, tmp_path / "g1")
    gw2: Gateway = gateway_factory(cfg, tmp_path / "g2")
    statuses = _together(40, lambda i: _call((gw1 if i % 2 else gw2).url))
    admitted = statuses.count(200)
    assert 9 <= admitted <= 10, statuses
    gw2.events()  # flushes gw2's writer; both gateways write to the one shared store
    events = gw1.events(limit=100)
    assert len(events) == 40
    spent = sum(e["cost_usd"] or 0 for e in events)
    assert spent <= 1.0 + 1e-9 and abs(spent - admitted * 0.10) < 1e-9


def test_flushed_counters_are_rebuilt_from_the_store(mock: Mock, gateway_factory: Any, redis_url: str,
                                                     store_url: str) -> None:
    gw: Gateway = gateway_factory(_shared(mock, redis_url, store_url, [budget_rule(threshold=0.5)]))
    assert [_call(gw.url) for _ in range(3)] == [200, 200, 200]
    redis.Redis.from_url(redis_url).flushall()
    assert [_call(gw.url) for _ in range(3)] == [200, 200, 403]  # $0.30 came back from the store
    status, body, _ = gw.get("/api/v1/spend?scope=person&id=alice")
    cap = json.loads(body)["caps"][0]
    assert status == 200 and abs(cap["used"] - 0.5) < 1e-9 and cap["remaining"] == 0


def test_settles_go_through_after_redis_forgets_its_scripts(mock: Mock, gateway_factory: Any, redis_url: str,
                                                           store_url: str) -> None:
    """Settles are pipelined EVALSHAs: a Redis that lost its scripts (restart, SCRIPT FLUSH) gets them again,
    and no settle is lost or counted as failed."""
    gw: Gateway = gateway_factory(_shared(mock, redis_url, store_url, [budget_rule(threshold=0.5)]))
    assert [_call(gw.url) for _ in range(2)] == [200, 200]
    redis.Redis.from_url(redis_url).script_flush()
    assert [_call(gw.url) for _ in range(4)] == [200, 200, 200, 403]  # $0.10 each: the sixth goes over $0.50
    assert b"tollhouse_ledger_settle_errors_total 0.0" in gw.get("/metrics")[1]
    cap = json.loads(gw.get("/api/v1/spend?scope=person&id=alice")[1])["caps"][0]
    assert abs(cap["used"] - 0.5) < 1e-9


def test_token_window_in_redis_answers_429_with_retry_after(mock: Mock, gateway_factory: Any, redis_url: str
                                                           ) -> None:
    rule = {"id": "tpm", "scope": "team", "team": "platform",
            "condition": {"type": "usage", "metric": "tokens_per_minute", "threshold": 60},
            "action": {"type": "hard_stop"}}
    gw: Gateway = gateway_factory(_shared(mock, redis_url, "", [rule]))
    client = openai.OpenAI(base_url=gw.url + "/openai/v1", api_key="sk-x", max_retries=0,
                           default_headers={"X-Tollhouse-User": "bob"})
    outcomes = []
    for _ in range(4):
        try:
            client.chat.completions.create(model="budget-model", max_tokens=16,
                                           messages=[{"role": "user", "content": "x"}])
            outcomes.append(200)
        except openai.RateLimitError as exc:
            outcomes.append(int(exc.response.headers["retry-after"]))
    assert outcomes[0] == 200 and any(55 <= o <= 61 for o in outcomes[1:]), outcomes


def test_redis_down_fails_closed_or_open_as_configured(mock: Mock, gateway_factory: Any) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    closed: Gateway = gateway_factory(_shared(mock, dead, "", [budget_rule()]))
    assert _call(closed.url) == 503
    assert mock.stats.total == 0
    ev = closed.events()[0]
    assert ev["status"] == 503 and ev["decision"] == "block"
    opened: Gateway = gateway_factory(_shared(mock, dead, "", [budget_rule()], fail_open=True))
    assert _call(opened.url) == 200
    _, metrics, _ = opened.get("/metrics", token=None)
    assert b'tollhouse_ledger_unavailable_total{failed="open"} 1.0' in metrics



class Partition:
    """A TCP relay in front of Redis that can drop everything (a network partition) and heal."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.cut = threading.Event()
        self._target = target_port
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if not self.cut.is_set():  # partitioned: bytes vanish, nobody is told
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()

    def close(self) -> None:
        self._server.close()


def test_a_settle_lost_in_a_partition_is_rebuilt_from_the_store(mock: Mock, gateway_factory: Any,
                                                                 redis_url: str) -> None:
    """Redis took the reservation, then the network dropped the settle. Once the reservation has expired the
    call's spend must still count: the counter is rebuilt from the store. It is counted and audited."""
    relay = Partition(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    cfg = _shared(mock, f"redis://127.0.0.1:{relay.port}/0", "", [budget_rule(threshold=0.5)])
    gw: Gateway = gateway_factory({**cfg, "ledger": {"reservation_ttl_s": 1}})
    client = openai.OpenAI(base_url=gw.url + "/openai/v1", api_key="sk-x", max_retries=0,
                           default_headers={"X-Tollhouse-User": "alice", "X-Mock-Latency-Ms": "500"})
    slow = threading.Thread(target=lambda: client.chat.completions.create(
        model="budget-model", max_tokens=16, messages=[{"role": "user", "content": "spend"}]))
    slow.start()
    time.sleep(0.25)  # reserved and in flight
    relay.cut.set()
    slow.join(10)
    time.sleep(1.5)  # the settle timed out (1 s) and the reservation expired in Redis
    relay.cut.clear()
    try:
        assert [_call(gw.url) for _ in range(5)] == [200, 200, 200, 200, 403]  # the lost $0.10 still counts
        _, metrics, _ = gw.get("/metrics", token=None)
        assert b"tollhouse_ledger_settle_errors_total 1.0" in metrics
        _, body, _ = gw.get("/api/v1/audit")
        assert "ledger.settle_failed" in [e["kind"] for e in json.loads(body)["entries"]]
    finally:
        relay.close()


def test_an_outage_is_audited_once_and_its_end_too(mock: Mock, gateway_factory: Any, tmp_path: Path) -> None:
    port = free_port()
    gw: Gateway = gateway_factory(_shared(mock, f"redis://127.0.0.1:{port}/0", "", [budget_rule()]))
    assert [_call(gw.url) for _ in range(3)] == [503, 503, 503]
    with redis_server(port, tmp_path):
        assert _call(gw.url) == 200
        _, body, _ = gw.get("/api/v1/audit")
    entries = [e for e in json.loads(body)["entries"] if e["kind"].startswith("ledger.")]
    assert [e["kind"] for e in entries] == ["ledger.unavailable", "ledger.recovered"]
    assert entries[0]["data"]["failed"] == "closed" and entries[0]["data"]["rules"] == ["dollar"]
    assert entries[1]["data"]["calls_failed_closed"] == 3

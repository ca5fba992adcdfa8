"""Storage faults lose nothing: a real gateway (`tollhouse serve` over the mock provider) with its data
directory on a small tmpfs that fills up or turns read-only mid-run, and one killed (-9) under load.

The tmpfs tests mount (we run as root); where mounting is not permitted they are skipped, saying so.
A real `mount -o remount,ro` of a file system the gateway has files open on fails with EBUSY (its
journal segment is mapped writable, its SQLite WAL open), so "read-only" is a read-only bind mount of
the tmpfs over itself: every path the gateway opens, creates or deletes from then on is read-only (EROFS),
which is what a remount does to new files.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Mock, free_port, upstreams
from test_event_writer_faults import Switch
from test_ledger_gateway import DIRECTORY, PRICED, budget_rule
from test_ledger_redis import redis_server
from test_operations import _wait_healthy

ADMIN = "storage-admin"
CALL_COST_USD = 0.10  # budget-model, max_tokens=16, 16 tokens out: worst case = actual (PRICED)


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs at {where} ({done.stderr.strip() or done.returncode}): the storage "
                    "fault tests need root with permission to mount")
    try:
        yield where
    finally:
        for _ in range(5):  # a read-only view may be stacked on it
            if not os.path.ismount(where):
                break
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    assert done.returncode == 0, f"mount {' '.join(args)}: {done.stderr}"


def read_only_view(mnt: Path, staging: Path) -> None:
    """Put a read-only view of `mnt` over it, in one step the gateway cannot race (it creates files all
    the time): a bind mount made read-only aside, then bound over `mnt` (a bind keeps read-only)."""
    staging.mkdir()
    _mount("--bind", str(mnt), str(staging))
    _mount("-o", "remount,ro,bind", str(staging))
    _mount("--bind", str(staging), str(mnt))
    subprocess.run(["umount", "-l", str(staging)], check=True)


class Gateway:
    """`tollhouse serve` in a subprocess."""

    def __init__(self, config: dict[str, Any], data_dir: Path, config_path: Path) -> None:
        config_path.write_text(json.dumps({"admin_token": ADMIN, **config}))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "tollhouse", "serve", "--config", str(config_path),
                                      "--port", str(self.port), "--data-dir", str(data_dir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _wait_healthy(self.url)
        except AssertionError:
            self.proc.kill()
            raise AssertionError(f"gateway did not start: {self.proc.communicate(timeout=10)[1][-3000:]}") from None

    def get(self, path: str, timeout: float = 10) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {ADMIN}"})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"null")
        finally:
            conn.close()

    def health(self) -> dict[str, Any]:
        return self.get("/healthz")[1]  # type: ignore[no-any-return]

    def events(self) -> list[dict[str, Any]]:
        status, body = self.get("/api/v1/events?limit=10000")
        assert status == 200, body
        return body["events"]  # type: ignore[no-any-return]

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.communicate(timeout=30)[1]
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.communicate(timeout=10)[1]

    def kill(self) -> str:
        os.kill(self.proc.pid, signal.SIGKILL)
        return self.proc.communicate(timeout=10)[1]


def chat(port: int, user: str = "alice", latency_ms: int = 0, timeout: float = 30) -> int | None:
    """One chat call; its status, or None when the connection failed (gateway gone)."""
    body = json.dumps({"model": "budget-model", "max_tokens": 16, "messages": [{"role": "user", "content": "x"}]})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/openai/v1/chat/completions", body,
                     {"content-type": "application/json", "authorization": "Bearer sk-x", "x-tollhouse-user": user,
                      "x-mock-latency-ms": str(latency_ms)})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


class Traffic:
    """Threads calling the gateway back to back until stopped; every answer's status is kept."""

    def __init__(self, port: int, threads: int = 2, latency_ms: int = 0) -> None:
        self.statuses: list[int | None] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(port, latency_ms), daemon=True)
                         for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, port: int, latency_ms: int) -> None:
        while not self._stop.is_set():
            status = chat(port, latency_ms=latency_ms)
            with self._lock:
                self.statuses.append(status)
            if status is None:
                return

    def count(self) -> int:
        with self._lock:
            return len(self.statuses)

    def stop(self) -> list[int | None]:
        self._stop.set()
        for t in self._threads:
            t.join(60)
        return self.statuses


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 60, during: Callable[[], None] = lambda: None
             ) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        during()
        time.sleep(0.05)  # polling a condition, not synchronising on time


def fill(directory: Path) -> None:
    """Write filler files until the file system says it is full."""
    chunk = b"\xff" * (256 * 1024)
    n = len(list(directory.glob("filler-*")))
    while True:
        path = directory / f"filler-{n}"
        n += 1
        try:
            with path.open("wb") as f:
                while True:
                    f.write(chunk)
                    f.flush()
        except OSError:
            with contextlib.suppress(OSError):
                if path.stat().st_size == 0:
                    path.unlink()
            return


def read_within(gw: Gateway, bound_s: float) -> int:
    """GET /api/v1/events answers (200 from the store, or 503) within `bound_s`; returns its status."""
    started = time.monotonic()
    status, body = gw.get("/api/v1/events?limit=5", timeout=bound_s + 5)
    took = time.monotonic() - started
    assert took < bound_s, f"GET /api/v1/events took {took:.1f} s"
    assert status in (200, 503), body
    if status == 503:
        assert "retry" in body["error"]["message"]
    return status


def assert_everything_recorded(gw: Gateway, mock: Mock, statuses: list[int | None]) -> None:
    served = mock.stats.total
    events = gw.events()
    assert len(events) < 10000
    answered = [s for s in statuses if s is not None]
    assert answered and set(answered) == {200}, f"calls answered other than 200: {sorted(set(answered))}"
    assert sum(1 for e in events if e["status"] == 200) == len(answered) == served
    assert len({e["id"] for e in events}) == len(events)
    assert not [e for e in events if e["usage_source"] == "reserved"]  # every call finished: no intent stored


def _error(gw: Gateway) -> str:
    return gw.health()["events"]["error"] or ""


def _config(mock: Mock, **extra: Any) -> dict[str, Any]:
    return {"identity": {"trust_user_header": True}, "providers": upstreams(mock.url), "directory": DIRECTORY,
            "pricing": PRICED, "events": {"flush_interval_s": 0.05, "batch_size": 500}, **extra}


def test_a_full_data_dir_holds_events_in_memory_and_writes_them_when_space_is_back(mock: Mock,
                                                                                  tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt", "48m") as mnt:
        data = mnt / "data"
        gw = Gateway(_config(mock), data, tmp_path / "c.json")
        traffic = Traffic(gw.port)
        try:
            wait_for("calls before the disk fills", lambda: traffic.count() >= 20)
            fill(mnt)
            wait_for("/healthz to say the disk is full", lambda: "No space left on device" in _error(gw),
                     during=lambda: fill(mnt))
            health = gw.health()
            assert health["status"] == health["events"]["status"] == "degraded"
            assert str(data / "journal") in health["events"]["error"]
            degraded_at = traffic.count()
            wait_for("calls while the disk is full", lambda: traffic.count() >= degraded_at + 40,
                     during=lambda: fill(mnt))
            assert gw.health()["events"]["pending"] > 0
            read_within(gw, 8)
            for filler in mnt.glob("filler-*"):
                filler.unlink()
            statuses = traffic.stop()
            wait_for("the events to be written once space is back",
                     lambda: (h := gw.health()["events"])["status"] == "ok" and h["pending"] == 0)
            assert gw.proc.poll() is None  # no crash (it was SIGBUS before)
            assert_everything_recorded(gw, mock, statuses)
        finally:
            traffic.stop()
            err = gw.stop()
    assert "No space left on device" in err and "Traceback" not in err


def test_a_read_only_data_dir_loses_nothing_and_reads_never_hang(mock: Mock, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt", "64m") as mnt:
        data = mnt / "data"
        gw = Gateway(_config(mock), data, tmp_path / "c.json")
        traffic = Traffic(gw.port)
        read_only = False
        try:
            wait_for("calls before the remount", lambda: traffic.count() >= 20)
            read_only_view(mnt, tmp_path / "ro")
            read_only = True
            with pytest.raises(OSError):
                (data / "probe").write_bytes(b"x")
            wait_for("/healthz to say the disk is read-only", lambda: "Read-only file system" in _error(gw))
            assert gw.health()["events"]["status"] == "degraded"
            degraded_at = traffic.count()
            wait_for("calls while read-only", lambda: traffic.count() >= degraded_at + 60)
            assert read_within(gw, 8) == 200  # the store still answers (its files were open before)
            status, usage = gw.get("/api/v1/usage?group_by=person", timeout=13)  # the rollups too
            assert status == 200 and usage["totals"]["calls"] >= 20, usage
            subprocess.run(["umount", str(mnt)], check=True)  # back to read-write
            read_only = False
            statuses = traffic.stop()
            wait_for("the journal to be writable again and every event stored",
                     lambda: (h := gw.health()["events"])["status"] == "ok" and h["pending"] == 0)
            assert gw.proc.poll() is None
            assert_everything_recorded(gw, mock, statuses)
        finally:
            traffic.stop()
            if read_only:
                subprocess.run(["umount", str(mnt)], capture_output=True)
            err = gw.stop()
    assert "Read-only file system" in err and "Traceback" not in err


@pytest.mark.parametrize("counters", ["local", "redis"])
def test_kill_9_under_load_never_forgets_a_call_the_provider_served(mock: Mock, tmp_path: Path,
                                                                    counters: str) -> None:
    """Embedded counters are rebuilt from the store at start; shared (Redis) counters outlive the process, their
    dead reservations only expire: either way the calls in flight at the kill count at their worst case."""
    with contextlib.ExitStack() as stack:
        extra: dict[str, Any] = {}
        if counters == "redis":
            extra["counters"] = {"url": stack.enter_context(redis_server(free_port(), tmp_path))}
            # Dead processes' holds expire within the test: without the rebuild, their calls would not count.
            extra["ledger"] = {"reservation_ttl_s": 1}
        _kill_9_under_load(mock, tmp_path, extra)


def _kill_9_under_load(mock: Mock, tmp_path: Path, extra: dict[str, Any]) -> None:
    cap_calls = 12
    cfg = _config(mock, enforcement="on", policy={"rules": [budget_rule(threshold=cap_calls * CALL_COST_USD)]},
                  **extra)
    data = tmp_path / "data"
    rng = random.Random(int(os.environ.get("TOLLHOUSE_TEST_SEED", "7")))
    logs = ""
    for _ in range(4):
        gw = Gateway(cfg, data, tmp_path / "c.json")
        traffic = Traffic(gw.port, threads=6, latency_ms=150)  # several calls in flight at any moment
        at = rng.randint(2, 8)
        wait_for("calls before the kill", lambda n=at, t=traffic: t.count() >= n or mock.stats.total >= cap_calls)
        logs += gw.kill()
        traffic.stop()
    gw = Gateway(cfg, data, tmp_path / "c.json")
    try:
        served = mock.stats.total
        events = gw.events()
        forwarded = [e for e in events if e["decision"] != "block"]
        finished = [e for e in forwarded if e["usage_source"] != "reserved"]
        intents = [e for e in forwarded if e["usage_source"] == "reserved"]
        assert intents, "no kill landed while a call was in flight"
        assert all(e["status"] == 0 and e["cost_nusd"] == int(CALL_COST_USD * 1e9) and
                   e["error"] == "the gateway stopped before this call finished" for e in intents)
        # Every call the provider served is an event (one that never reached it may be an intent too).
        assert len(finished) <= served <= len(forwarded)
        # The budget never let more through than it allows: the counters knew every call in flight.
        assert served <= cap_calls
        status = chat(gw.port)
        if len(forwarded) >= cap_calls or "counters" not in extra:
            assert status == (200 if len(forwarded) < cap_calls else 403)
        else:  # shared counters: the dead process's holds count too until they expire (never less than the truth)
            assert status in (200, 403)
    finally:
        logs += gw.stop()
    assert "recorded at their worst case" in logs
    if "counters" in extra:
        assert "shared budget counters will be rebuilt from the store" in logs


def test_a_store_that_fails_and_hangs_gets_503s_not_hangs_and_new_calls_fail_closed(mock: Mock,
                                                                                  gateway_factory: Any) -> None:
    gw = gateway_factory({**_config(mock), "events": {"flush_interval_s": 0.05, "max_pending": 10}})
    state = gw.state
    switch = Switch(state.runner.store)
    release = threading.Event()
    real_list = state.runner.store.list_events
    state.runner.store.list_events = lambda *a, **k: (release.wait(30), real_list(*a, **k))[1]
    try:
        switch.broken = True
        assert [chat(gw.port) for _ in range(9)] == [200] * 9  # held in memory (and journaled)
        wait_for("the failed write to show", lambda: "disk is full" in (json.loads(gw.get("/healthz")[1])
                                                                          ["events"]["error"] or ""))
        health = json.loads(gw.get("/healthz")[1])
        assert health["status"] == "degraded" and health["events"]["pending"] == 9
        served = mock.stats.total
        # 9 of 10 held: a new call cannot be recorded, so it is not forwarded.
        status, body, _ = gw.request("POST", "/openai/v1/chat/completions", {"model": "budget-model", "messages": []},
                                     headers={"x-tollhouse-user": "alice"})
        assert status == 503 and json.loads(body)["error"]["code"] == "event_storage_unavailable"
        assert mock.stats.total == served
        assert gw.get("/healthz")[0] == 503
        started = time.monotonic()
        status, body, _ = gw.get("/api/v1/events")
        assert status == 503 and time.monotonic() - started < 8, body
        assert "disk is full" in json.loads(body)["error"]["message"]
    finally:
        switch.broken = False
        release.set()
    wait_for("the held events to be stored", lambda: json.loads(gw.get("/healthz")[1])["events"]["pending"] == 0)
    assert sum(1 for e in gw.events() if e["status"] == 200) == 9
    assert chat(gw.port) == 200

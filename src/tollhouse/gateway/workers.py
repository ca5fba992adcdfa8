"""`tollhouse serve --workers N`: N gateway processes on one port (the kernel spreads connections over
them: each listens with SO_REUSEPORT), supervised by this one.

Workers share the data dir (store, admin token, audit signing key) and must share budget counters
(Redis): separate in-process counters would let each worker spend the whole budget. Worker 0 starts
first (it records the config's policy and directory versions); the rest then adopt them. A worker that
dies is started again; SIGINT/SIGTERM stop them all, each draining its events.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tollhouse.audit.checkpoint import load_or_create_signing_key
from tollhouse.config import Settings
from tollhouse.events.store import open_store
from tollhouse.gateway.state import admin_token_for, replay_all_journals

log = logging.getLogger("tollhouse.workers")


class WorkersError(Exception):
    """`--workers` cannot run with this configuration; the message says what to change."""


def check_workers(settings: Settings, workers: int) -> None:
    if workers < 1:
        raise WorkersError(f"--workers must be at least 1, got {workers}")
    if workers > 1 and settings.counters.url == "local://":
        raise WorkersError(
            f"--workers {workers} needs budget counters the workers share: set counters.url to "
            "redis://HOST:6379/0 in the config (with local:// each worker process would count budgets on "
            "its own and together could spend several times a cap)")


def prepare(settings: Settings, data_dir: Path) -> str:
    """What the workers share, made once before any starts: data dir, admin token, signing key, and the
    events any earlier run left in its journals. Returns the admin token."""
    data_dir.mkdir(parents=True, exist_ok=True)
    load_or_create_signing_key(data_dir, settings.audit.signing_key_file)
    store = open_store(settings.store.url, data_dir)
    try:
        replay_all_journals(store, data_dir, settings.counters.url)
    finally:
        store.close()
    return admin_token_for(settings, data_dir)


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Supervisor:
    def __init__(self, argv: Sequence[str], workers: int, host: str, port: int) -> None:
        self._argv = list(argv)  # `python -m tollhouse serve ...` without --workers
        self._n = workers
        self._host, self._port = host, port
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._stopping = False
        self._restarts: dict[int, list[float]] = {}

    def _spawn(self, index: int) -> None:
        self._procs[index] = subprocess.Popen([*self._argv, "--worker", str(index)])

    def start(self, timeout_s: float = 30.0) -> None:
        """Worker 0 first, until it listens (it writes the start-up versions); then the others."""
        self._spawn(0)
        deadline = time.monotonic() + timeout_s
        while not _listening(self._host, self._port):
            if self._procs[0].poll() is not None:
                raise WorkersError(f"worker 0 exited with code {self._procs[0].returncode} during start-up")
            if time.monotonic() > deadline:
                raise WorkersError(f"worker 0 did not listen on {self._host}:{self._port} within {timeout_s:.0f} s")
            time.sleep(0.05)
        for index in range(1, self._n):
            self._spawn(index)

    def stop(self, *_: object) -> None:
        self._stopping = True
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def run(self) -> int:
        """Supervise until stopped: a worker that dies is restarted (at most 5 times a minute each)."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        while not self._stopping:
            for index, proc in list(self._procs.items()):
                code = proc.poll()
                if code is None or self._stopping:
                    continue
                recent = [t for t in self._restarts.get(index, []) if t > time.monotonic() - 60]
                if len(recent) >= 5:
                    log.error("worker %d keeps exiting (code %d); stopping the gateway", index, code)
                    self.stop()
                    break
                log.error("worker %d exited with code %d; starting it again", index, code)
                self._restarts[index] = [*recent, time.monotonic()]
                self._spawn(index)
            time.sleep(0.2)
        codes = []
        for proc in self._procs.values():
            try:
                codes.append(proc.wait(30))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        return max((c for c in codes if c > 0), default=0)


def worker_argv(config: Path | None, host: str, port: int, data_dir: Path) -> list[str]:
    argv = [sys.executable, "-m", "tollhouse", "serve", "--host", host, "--port", str(port),
            "--data-dir", str(data_dir)]
    return argv + (["--config", str(config)] if config is not None else [])

"""Shared fixtures: the mock provider and a gateway, each on a real loopback socket in its own thread."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from browser import browser, page, page_problems, playwright_instance  # noqa: F401  (browser tests' fixtures)
from tollhouse.config import parse_settings
from tollhouse.events.pg_local import DEFAULT_BIN, LocalPostgres, PostgresUnavailable
from tollhouse.events.store import Store, open_store
from tollhouse.gateway.app import serve
from tollhouse.gateway.state import GatewayState
from tollhouse.mock.provider import MOCK_STATS, MockSettings, MockStats, build_mock_app
from tollhouse.mock.serve_thread import ThreadedServer

ADMIN = "test-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Mock:
    url: str
    server: ThreadedServer

    @property
    def stats(self) -> MockStats:
        return self.server.app[MOCK_STATS]


@pytest.fixture
def mock() -> Iterator[Mock]:
    server = ThreadedServer(lambda: build_mock_app(MockSettings()))
    url = server.start()
    try:
        yield Mock(url, server)
    finally:
        server.stop()


class ServedInThread:
    """A server coroutine (`_serve`) run on its own event loop in a background thread until `stop()`."""

    what = "server"

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.state: GatewayState | None = None
        self.port = 0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _serve(self, ready: Any, stop: asyncio.Event) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()

            def ready(state: GatewayState, port: int) -> None:
                self.state, self.port = state, port
                self._ready.set()

            await self._serve(ready, self._stop)

        try:
            asyncio.run(main())
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    def start(self) -> Any:
        self._thread.start()
        self._ready.wait(15)
        if self._error is not None:
            raise RuntimeError(f"{self.what} failed to start") from self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)


class Gateway(ServedInThread):
    """A gateway served from a background thread, stopped (and its events flushed) on `stop()`."""

    what = "gateway"

    def __init__(self, config: dict[str, Any], data_dir: Path, clock: Any = time.time, port: int = 0) -> None:
        """port 0: a free one (give the port of a stopped gateway to bring it back at the same address)."""
        super().__init__()
        self._clock = clock
        self._port = port
        config = {"admin_token": ADMIN, **config}
        self.settings = parse_settings(config, "(test)")
        self.data_dir = data_dir

    async def _serve(self, ready: Any, stop: asyncio.Event) -> None:
        await serve(self.settings, self.data_dir, "127.0.0.1", self._port or free_port(), ready, stop, self._clock)

    def start(self) -> Gateway:
        started: Gateway = super().start()
        return started

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, token: str | None = ADMIN) -> tuple[int, bytes, dict[str, str]]:
        return self.request("GET", path, token=token)

    def request(self, method: str, path: str, body: Any = None, token: str | None = ADMIN,
                headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
        """One HTTP call; a body that is not bytes is sent as JSON."""
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers or {})
        if data is not None and not isinstance(body, bytes):
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read(), {k.lower(): v for k, v in resp.headers.items()}
        except urllib.error.HTTPError as err:
            return err.code, err.read(), {k.lower(): v for k, v in err.headers.items()}

    def events(self, limit: int = 100) -> list[dict[str, Any]]:
        status, body, _ = self.get(f"/api/v1/events?limit={limit}")
        assert status == 200, body
        events: list[dict[str, Any]] = json.loads(body)["events"]
        return events


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[Gateway] = []

    def make(config: dict[str, Any], data_dir: Path | None = None) -> Gateway:
        gw = Gateway(config, data_dir or tmp_path / f"gw{len(started)}")
        started.append(gw.start())
        return gw

    yield make
    for gw in started:
        gw.stop()


@pytest.fixture
def token(control: Gateway) -> str:
    """An enrollment token issued by the test module's `control` fixture (its control plane) for agents."""
    status, body, _ = control.request("POST", "/api/v1/agent/tokens", {"label": "laptops"})
    assert status == 201, body
    enrollment: str = json.loads(body)["token"]
    return enrollment


def upstreams(url: str, **extra: Any) -> dict[str, Any]:
    return {"openai": {"upstream": url, **extra}, "anthropic": {"upstream": url, **extra},
            "gemini": {"upstream": url, **extra}}


@pytest.fixture
def gateway(mock: Mock, gateway_factory: Any) -> Gateway:
    """A gateway in observe mode in front of the mock, trusting X-Tollhouse-User, with a small directory."""
    gw: Gateway = gateway_factory({
        "identity": {"trust_user_header": True},
        "providers": upstreams(mock.url, api_key="sk-real-provider-key"),
        "directory": {
            "org": "acme",
            "teams": [{"id": "engineering"}, {"id": "platform", "parent": "engineering", "cost_centre": "CC-100"}],
            "projects": [{"id": "checkout", "team": "platform", "cost_centre": "CC-200"}],
            "people": [{"id": "alice", "team": "platform", "projects": ["checkout"]},
                       {"id": "bob", "team": "platform"}],
            "services": [{"id": "support-bot", "team": "platform"}],
        },
    })
    return gw


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    """One real PostgreSQL for the session: Debian's postgresql-15 binaries (scripts/test installs them), or
    those in $TOLLHOUSE_PG_BIN. Missing binaries fail the tests that need it (never a silent skip)."""
    pg = LocalPostgres(free_port(), Path(os.environ.get("TOLLHOUSE_PG_BIN") or DEFAULT_BIN))
    try:
        pg.start()
    except PostgresUnavailable as exc:
        pytest.fail(f"PostgreSQL tests need a local server: {exc}", pytrace=False)
    try:
        yield pg
    finally:
        pg.stop()


_databases = itertools.count()


@pytest.fixture
def postgres_url(postgres_server: LocalPostgres) -> str:
    """A fresh, empty database of the session's PostgreSQL, for this test alone."""
    name = f"t_{next(_databases)}"
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_server.url_for(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store's `store.url`, once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def store(store_url: str, tmp_path: Path) -> Iterator[Store]:
    """An empty store of its own, once per backend."""
    s = open_store(store_url, tmp_path)
    try:
        yield s
    finally:
        s.close()

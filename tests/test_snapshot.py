"""Live state as snapshots (Published) and one ordered lifespan for every component."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import Gateway, Mock, upstreams
from tollhouse.config import CaptureMode, Enforcement, parse_settings
from tollhouse.gateway.live import LiveSettings
from tollhouse.gateway.state import build_state, publish_live
from tollhouse.lifespan import Background, Lifespan
from tollhouse.snapshot import MutableSnapshot, Published

# --- the primitive ---


@dataclass(frozen=True)
class Version:
    number: int
    names: tuple[str, ...]


def test_a_reader_holding_a_snapshot_keeps_seeing_it_after_a_publish() -> None:
    first = Version(1, ("alice",))
    published = Published(first)
    held = published.current
    assert published.publish(Version(2, ("alice", "bob"))) is first  # the previous value is handed back
    assert held is first and held == Version(1, ("alice",))  # never mutated
    assert published.current == Version(2, ("alice", "bob"))


def test_subscribers_are_told_in_order_and_all_run_when_one_raises() -> None:
    published = Published(Version(1, ()))
    seen: list[tuple[str, int]] = []

    def failing(v: Version) -> None:
        seen.append(("failing", v.number))
        raise RuntimeError("subscriber broke")

    published.subscribe(lambda v: seen.append(("first", v.number)))
    published.subscribe(failing)
    unsubscribe = published.subscribe(lambda v: seen.append(("last", v.number)))
    with pytest.raises(RuntimeError, match="subscriber broke"):
        published.publish(Version(2, ()))
    assert seen == [("first", 2), ("failing", 2), ("last", 2)]
    assert published.current.number == 2  # in force even though a subscriber failed
    unsubscribe()
    seen.clear()
    with pytest.raises(RuntimeError):
        published.publish(Version(3, ()))
    assert seen == [("first", 3), ("failing", 3)]


@dataclass
class Loose:
    number: int


@pytest.mark.parametrize(("value", "why"), [
    ({"a": 1}, "a dict"), ([1], "a list"), ({1}, "a set"), (Loose(1), "not frozen")])
def test_mutable_values_are_refused_with_what_to_publish_instead(value: object, why: str) -> None:
    with pytest.raises(MutableSnapshot, match=why):
        Published(value)
    published: Published[object] = Published(())
    with pytest.raises(MutableSnapshot, match=why):
        published.publish(value)
    assert published.current == ()


# --- the lifespan ---


def _recording(lifespan: Lifespan, log: list[str], name: str, fail_stop: bool = False,
               fail_start: bool = False) -> None:
    async def start() -> None:
        log.append(f"start {name}")
        if fail_start:
            raise OSError(f"{name} cannot start")

    def stop() -> None:
        log.append(f"stop {name}")
        if fail_stop:
            raise RuntimeError(f"{name} cannot stop")

    lifespan.add(name, start, stop)


def test_the_lifespan_stops_in_reverse_and_stops_everything_when_one_stop_raises() -> None:
    log: list[str] = []
    lifespan = Lifespan()
    lifespan.adopt("store", lambda: log.append("stop store"))
    for name in ("writer", "audit", "server"):
        _recording(lifespan, log, name, fail_stop=name == "audit")

    async def run() -> list[tuple[str, Exception]]:
        await lifespan.start()
        assert lifespan.started == ("store", "writer", "audit", "server")
        return await lifespan.stop()

    failures = asyncio.run(run())
    assert log == ["start writer", "start audit", "start server",
                   "stop server", "stop audit", "stop writer", "stop store"]
    assert [(name, str(exc)) for name, exc in failures] == [("audit", "audit cannot stop")]
    assert lifespan.started == ()
    assert asyncio.run(lifespan.stop()) == []  # nothing is stopped twice
    assert log[-1] == "stop store"


def test_a_failed_start_stops_what_started_in_reverse_and_raises() -> None:
    log: list[str] = []
    lifespan = Lifespan()
    lifespan.adopt("store", lambda: log.append("stop store"))
    _recording(lifespan, log, "writer")
    _recording(lifespan, log, "server", fail_start=True)
    _recording(lifespan, log, "never")
    with pytest.raises(OSError, match="server cannot start"):
        asyncio.run(lifespan.start())
    assert log == ["start writer", "start server", "stop writer", "stop store"]  # the failed one never started
    assert lifespan.started == ()


def test_background_work_ends_with_its_stop() -> None:
    async def run() -> None:
        lifespan = Lifespan()
        forever = asyncio.Event()
        loop = Background("tollhouse-test-loop", forever.wait).add_to(lifespan)
        await lifespan.start()
        assert loop.task is not None and not loop.task.done()
        await lifespan.stop()
        assert loop.task.cancelled()

    asyncio.run(run())


def test_a_stopped_gateway_has_stopped_every_component(mock: Mock, tmp_path: Path) -> None:
    gw = Gateway({"providers": upstreams(mock.url)}, tmp_path / "gw").start()
    assert gw.state is not None
    started = gw.state.lifespan.started
    assert started[:2] == ("store", "provider clients")  # adopted at build: stopped last
    assert started.index("event writer") < started.index("server") < started.index("agent long-polls")
    gw.stop()
    assert gw.state.lifespan.started == ()


# --- snapshots in the gateway ---


def test_new_live_settings_rebuild_the_routes_and_leave_the_old_snapshots_as_they_were(tmp_path: Path) -> None:
    settings = parse_settings({"providers": {"openai": {"upstream": "http://127.0.0.1:9"}}}, "test")

    async def run() -> None:
        state = await build_state(settings, tmp_path, "http://127.0.0.1:8787")
        try:
            live, routes = state.live_settings.current, state.providers.current
            new = LiveSettings(Enforcement.on, CaptureMode.enterprise, "http://proxy.example:3128")
            publish_live(state, new)
            assert state.live_settings.current == new
            assert live == LiveSettings.of(settings)  # the old value as it was
            assert state.providers.current is not routes
            assert state.providers.current["openai"].client is not routes["openai"].client
            with pytest.raises(TypeError):
                routes["openai"] = routes["openai"]  # type: ignore[index]  # routes are read-only
            same = state.providers.current
            publish_live(state, LiveSettings(Enforcement.off, CaptureMode.enterprise, "http://proxy.example:3128"))
            assert state.providers.current is same  # the proxy did not change: the routes stay
        finally:
            await state.close()

    asyncio.run(run())


DIRECTORY_V1 = {"org": "acme", "teams": [{"id": "a"}, {"id": "b"}], "people": [{"id": "alice", "team": "a"}]}
DIRECTORY_V2 = {"org": "acme", "teams": [{"id": "a"}, {"id": "b"}], "people": [{"id": "alice", "team": "b"}]}
NO_MINI = {"id": "no-mini", "scope": "project", "severity": "BLOCK",
           "condition": {"type": "MODEL_DENYLIST", "models": ["gpt-4o-mini"]}}
NO_4O = {"id": "no-4o", "scope": "org", "severity": "BLOCK",
         "condition": {"type": "MODEL_DENYLIST", "models": ["gpt-4o"]}}


def _put(gw: Gateway, path: str, body: Any) -> dict[str, Any]:
    status, raw, _ = gw.request("PUT", path, body)
    assert status == 200, raw
    result: dict[str, Any] = json.loads(raw)
    return result


def _head(sock: socket.socket) -> bytes:
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = sock.recv(4096)
        assert chunk, f"the gateway closed the connection after {got!r}"
        got += chunk
    return got


def test_a_call_in_flight_is_judged_under_the_policy_and_directory_it_started_with(
        mock: Mock, gateway_factory: Any) -> None:
    gw: Gateway = gateway_factory({
        "identity": {"trust_user_header": True}, "providers": upstreams(mock.url), "enforcement": "on",
        "directory": DIRECTORY_V1, "policy": {"rules": [NO_MINI]}})
    assert gw.state is not None
    directory_v1, policy_v1 = gw.state.directory.current, gw.state.policy.current
    versions = (directory_v1.version, policy_v1.version)
    body = json.dumps({"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: gw\r\nX-Tollhouse-User: alice\r\n"
                     b"Authorization: Bearer sk-client\r\nContent-Type: application/json\r\nConnection: close\r\n"
                     b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        # 100 Continue: the gateway has taken the call's versions and identified it, and now waits for the body.
        assert _head(sock).startswith(b"HTTP/1.1 100 Continue")
        _put(gw, "/api/v1/directory", DIRECTORY_V2)  # alice moves to team b ...
        _put(gw, "/api/v1/policy", {"rules": [NO_MINI, NO_4O]})  # ... and gpt-4o is refused to everyone
        sock.sendall(body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert b"data: " in answer  # streamed through
    # The snapshots the call took were never changed by the publishes.
    assert (directory_v1.version, policy_v1.version) == versions
    assert directory_v1.subject("alice").team == "a" and [r.id for r in policy_v1.rules] == ["no-mini"]
    now = gw.state.directory.current, gw.state.policy.current
    assert now[0].version > versions[0] and now[1].version > versions[1] and now[0].subject("alice").team == "b"
    # The next call is judged under the new versions.
    status, _, _ = gw.request("POST", "/openai/v1/chat/completions", {"model": "gpt-4o", "messages": []},
                              token="sk-client", headers={"X-Tollhouse-User": "alice"})
    assert status == 403
    later, in_flight = gw.events()[:2]
    assert (in_flight["team"], in_flight["decision"], in_flight["rule_id"]) == ("a", "allow", None)
    assert (later["team"], later["decision"], later["rule_id"]) == ("b", "block", "no-4o")

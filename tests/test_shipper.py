"""The agent's telemetry shipper against a real control plane: spool (a real local store) → control plane."""

from __future__ import annotations

import asyncio
import http.client
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

from conftest import Gateway, free_port
from connect_proxy import ConnectProxy
from shipping import agent_spool, call, cp_ids, cp_ids_async, enroll, metric, record, until
from tls_front import TlsFront
from tollhouse.agent.ship_client import Acked, Answer, Refused
from tollhouse.agent.shipper import ShipError, Shipper, ShipUnauthorized
from tollhouse.events import spool
from tollhouse.events.store import open_store
from tollhouse.events.writer import StoreRunner

FAST = {"retry_base_s": 0.02, "retry_max_s": 0.1, "interval_s": 0.05}


@pytest.fixture
def cp(gateway_factory: Any) -> Gateway:
    """A control plane (a gateway with the admin token)."""
    gw: Gateway = gateway_factory({})
    return gw


def _value(shipper: Shipper, name: str, **labels: str) -> float:
    return shipper.metrics.registry.get_sample_value(name, labels) or 0.0


def test_spooled_events_reach_the_control_plane_exactly_once(cp: Gateway, tmp_path: Path) -> None:
    events = [call(n) for n in range(2500)]

    async def main() -> None:
        async with agent_spool(tmp_path) as (runner, writer):
            shipper = Shipper(runner, cp.url, enroll(cp), batch=1000, **FAST)
            shipper.start()
            await record(writer, events)
            await until(lambda: _value(shipper, "tollhouse_spool_shipped_total") == 2500 and shipper.backlog == 0,
                        what="2500 shipped and acknowledged")
            await shipper.stop()
            # the watermark is in the store: a new shipper (the agent restarted) has nothing to send
            again = Shipper(runner, cp.url, enroll(cp), **FAST)
            assert await again.ship_once() == 0 and again.backlog == 0
            await again.stop()
            assert await runner.run(spool.watermark) == 2500

    asyncio.run(main())
    ids = cp_ids(cp)
    assert len(ids) == 2500 and set(ids) == {e.id for e in events}
    assert metric(cp, 'tollhouse_agent_events_total{result="stored"}') == 2500
    assert metric(cp, 'tollhouse_agent_events_total{result="duplicate"}') == 0
    # the stored event is the recorded one, field for field
    status, body, _ = cp.get(f"/api/v1/events/{events[7].id}")
    assert status == 200 and b'"stream":false' in body and b'"cost_nusd":4800' in body


def test_an_outage_grows_the_backlog_and_everything_arrives_once_when_the_control_plane_returns(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    cp = Gateway({}, tmp_path / "cp", port=port).start()

    async def main() -> None:
        nonlocal cp
        async with agent_spool(tmp_path / "agent") as (runner, writer):
            shipper = Shipper(runner, cp.url, enroll(cp), batch=200, **FAST)
            shipper.start()
            await record(writer, [call(n) for n in range(100)])
            await until(lambda: _value(shipper, "tollhouse_spool_shipped_total") == 100)
            await asyncio.to_thread(cp.stop)  # the control plane goes away
            await record(writer, [call(n) for n in range(100, 400)])
            await until(lambda: shipper.backlog == 300, what="the backlog to grow")
            await until(lambda: _value(shipper, "tollhouse_spool_ship_failures_total", kind="unreachable") >= 3)
            assert await runner.run(spool.watermark) == 100  # nothing acknowledged while it is down
            cp = await asyncio.to_thread(Gateway({}, tmp_path / "cp", port=port).start)  # back, same store
            await until(lambda: shipper.backlog == 0, what="the backlog to drain")
            await shipper.stop()

    try:
        with caplog.at_level(logging.WARNING, "tollhouse.shipper"):
            asyncio.run(main())
        ids = cp_ids(cp)
        assert len(ids) == 400 and len(set(ids)) == 400
        messages = [r.getMessage() for r in caplog.records]
        assert any("telemetry not shipped (attempt 1" in m for m in messages)
        assert any("takes telemetry again" in m for m in messages)
    finally:
        cp.stop()


class Crash(BaseException):
    """The process dies here (kill -9): nothing after this runs."""


def test_a_crash_between_the_post_and_the_watermark_resends_and_the_control_plane_deduplicates(
        cp: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = enroll(cp)

    async def crash_after_post() -> None:
        async with agent_spool(tmp_path) as (runner, writer):
            await record(writer, [call(n) for n in range(300)])
            shipper = Shipper(runner, cp.url, token, batch=300)

            def die(*_: Any) -> None:
                raise Crash

            monkeypatch.setattr(spool, "set_watermark", die)
            with pytest.raises(Crash):
                await shipper.ship_once()  # the control plane stored the batch; the agent died before noting it
            monkeypatch.undo()

    async def restart() -> tuple[int, float, float]:
        runner = StoreRunner(open_store("", tmp_path))  # the agent starts again on the same spool
        shipper = Shipper(runner, cp.url, token, batch=300)
        try:
            assert await runner.run(spool.watermark) == 0
            shipped = await shipper.ship_once()
            return shipped, _value(shipper, "tollhouse_spool_duplicates_total"), await runner.run(spool.watermark)
        finally:
            await shipper.stop()
            runner.close()

    asyncio.run(crash_after_post())
    assert len(cp_ids(cp)) == 300
    shipped, duplicates, watermark = asyncio.run(restart())
    assert (shipped, duplicates, watermark) == (300, 300, 300)  # sent again, all recognised as duplicates
    ids = cp_ids(cp)
    assert len(ids) == 300 and len(set(ids)) == 300
    assert metric(cp, 'tollhouse_agent_events_total{result="duplicate"}') == 300


def test_the_spool_bound_drops_the_oldest_unshipped_events_with_a_metric_and_a_log_line(
        cp: Gateway, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    async def main() -> None:
        async with agent_spool(tmp_path) as (runner, writer):
            await record(writer, [call(n) for n in range(250)])
            offline = Shipper(runner, down, "the-token", max_spool=100, timeout_s=2)
            with caplog.at_level(logging.WARNING, "tollhouse.shipper"), pytest.raises(ShipError, match="unreachable"):
                await offline.ship_once()
            assert _value(offline, "tollhouse_spool_dropped_total") == 150 and offline.backlog == 100
            assert _value(offline, "tollhouse_spool_ship_failures_total", kind="unreachable") == 1
            await offline.stop()
            online = Shipper(runner, cp.url, enroll(cp), max_spool=100)
            assert await online.ship_once() == 100
            await online.stop()
            # the dropped events stay in the local store (they feed the agent's own budget counters)
            assert await runner.run(lambda s: len(s.list_events(1000))) == 250

    asyncio.run(main())
    assert sorted(cp_ids(cp)) == [call(n).id for n in range(150, 250)]  # the newest 100
    [line] = [r for r in caplog.records if "dropped the oldest" in r.getMessage()]
    assert line.levelno == logging.WARNING
    assert "bound of 100" in line.getMessage() and "the oldest 150" in line.getMessage()
    assert "from 2026-11-18T11:06:40.000Z to 2026-11-18T11:09:09.000Z" in line.getMessage()  # the dropped calls


def test_a_revoked_token_stops_shipping_loudly_keeps_spooling_and_a_new_token_resumes(
        cp: Gateway, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    token = enroll(cp)
    prefix = token[:12]
    assert cp.request("DELETE", f"/api/v1/agent/tokens/{prefix}")[0] == 200

    async def main() -> None:
        async with agent_spool(tmp_path) as (runner, writer):
            shipper = Shipper(runner, cp.url, token, **FAST)
            shipper.start()
            await record(writer, [call(n) for n in range(10)])
            await until(lambda: shipper.unauthorized, what="the 401")
            assert _value(shipper, "tollhouse_spool_unauthorized_total") == 1
            assert _value(shipper, "tollhouse_spool_shipping_stopped") == 1
            with pytest.raises(ShipUnauthorized):
                await shipper.ship_once()
            await record(writer, [call(n) for n in range(10, 20)])  # calls keep being recorded
            await asyncio.sleep(0.3)
            assert _value(shipper, "tollhouse_spool_unauthorized_total") == 1  # stopped, not hammering
            assert await cp_ids_async(cp) == []
            shipper.set_token(await asyncio.to_thread(enroll, cp))
            await until(lambda: _value(shipper, "tollhouse_spool_shipped_total") == 20, what="the resumed shipping")
            assert _value(shipper, "tollhouse_spool_shipping_stopped") == 0
            await shipper.stop()

    with caplog.at_level(logging.WARNING, "tollhouse.shipper"):
        asyncio.run(main())
    assert len(set(cp_ids(cp))) == 20
    [stopped] = [r for r in caplog.records if "STOPPED" in r.getMessage()]
    assert stopped.levelno == logging.ERROR and "HTTP 401" in stopped.getMessage()


def test_events_the_control_plane_refuses_are_skipped_and_the_rest_delivered(
        cp: Gateway, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = {4: call(4)._replace(decision="maybe"), 7: call(7)._replace(status=42)}
    events = [bad.get(n, call(n)) for n in range(10)]

    async def main() -> None:
        async with agent_spool(tmp_path) as (runner, writer):
            await record(writer, events)
            shipper = Shipper(runner, cp.url, enroll(cp))
            with caplog.at_level(logging.ERROR, "tollhouse.shipper"):
                assert await shipper.ship_once() == 8
            assert _value(shipper, "tollhouse_spool_refused_total") == 2 and shipper.backlog == 0
            assert await shipper.ship_once() == 0  # not wedged: the watermark moved past them
            await shipper.stop()

    asyncio.run(main())
    assert sorted(cp_ids(cp)) == sorted(e.id for n, e in enumerate(events) if n not in bad)
    [line] = [r.getMessage() for r in caplog.records if "refused 2 spooled events" in r.getMessage()]
    assert "ship-000004" in line and "ship-000007" in line and "events[4].decision" in line


class _PickyControlPlane:
    """A fake ingest that refuses any batch holding a poisoned event without saying which (an older control
    plane, or a proxy's 413): the shipper must narrow the batch down by halves."""

    def __init__(self, poisoned: set[str]) -> None:
        self.poisoned = poisoned
        self.taken: list[str] = []
        self.posts = 0
        self.url = "fake"
        self.token = ""

    async def post(self, body: bytes) -> Answer:
        self.posts += 1
        ids = [e["id"] for e in orjson.loads(body)["events"]]
        if self.poisoned & set(ids):
            return Refused(413, [], ["too large"])
        self.taken += ids
        return Acked(len(ids), len(ids), 0)

    async def close(self) -> None:
        return None


def test_a_refusal_that_names_no_event_is_narrowed_down_by_halves(tmp_path: Path) -> None:
    fake = _PickyControlPlane({call(37).id})

    async def main() -> Shipper:
        async with agent_spool(tmp_path) as (runner, writer):
            await record(writer, [call(n) for n in range(100)])
            shipper = Shipper(runner, "http://unused", "t", batch=100)
            shipper._client = fake  # type: ignore[assignment]
            assert await shipper.ship_once() == 99
            await shipper.stop()
            return shipper

    shipper = asyncio.run(main())
    assert sorted(fake.taken) == sorted(call(n).id for n in range(100) if n != 37)
    assert _value(shipper, "tollhouse_spool_refused_total") == 1 and fake.posts <= 2 * 7 + 1


def test_stop_makes_one_last_drain_attempt(cp: Gateway, tmp_path: Path) -> None:
    async def main() -> int:
        async with agent_spool(tmp_path) as (runner, writer):
            shipper = Shipper(runner, cp.url, enroll(cp), interval_s=60)
            shipper.start()
            await asyncio.sleep(0.1)  # the loop looked at an empty spool and sleeps for a minute
            await record(writer, [call(n) for n in range(50)])
            await shipper.stop()
            return await runner.run(spool.watermark)

    assert asyncio.run(main()) == 50
    assert len(cp_ids(cp)) == 50


def test_stop_gives_up_quickly_when_the_control_plane_is_down(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> float:
        async with agent_spool(tmp_path) as (runner, writer):
            await record(writer, [call(n) for n in range(5)])
            shipper = Shipper(runner, f"http://127.0.0.1:{free_port()}", "t", stop_timeout_s=0.5)
            started = asyncio.get_running_loop().time()
            with caplog.at_level(logging.WARNING, "tollhouse.shipper"):
                await shipper.stop()
            return asyncio.get_running_loop().time() - started

    assert asyncio.run(main()) < 2
    assert any("stay spooled" in r.getMessage() for r in caplog.records)


def test_shipping_goes_through_the_configured_proxy(cp: Gateway, tmp_path: Path) -> None:
    with ConnectProxy(auth=("svc", "s3cret")) as proxy:
        async def main() -> None:
            async with agent_spool(tmp_path) as (runner, writer):
                await record(writer, [call(n) for n in range(30)])
                shipper = Shipper(runner, cp.url, enroll(cp), proxy=proxy.url_with_auth, batch=10)
                while await shipper.ship_once():
                    pass
                await shipper.stop()

        asyncio.run(main())
        assert proxy.refused == 0 and proxy.requests == [f"POST {cp.url}/api/v1/agent/events"] * 3
    assert len(cp_ids(cp)) == 30


def test_an_https_control_plane_is_reached_through_the_proxy_with_connect(cp: Gateway, tmp_path: Path) -> None:
    with ConnectProxy() as proxy, TlsFront(cp.port) as front:
        async def main() -> int:
            async with agent_spool(tmp_path) as (runner, writer):
                await record(writer, [call(n) for n in range(20)])
                shipper = Shipper(runner, front.url, enroll(cp), proxy=proxy.url, ca_pem=front.cert_pem)
                shipped = await shipper.ship_once()
                await shipper.stop()
                return shipped

        assert asyncio.run(main()) == 20
        assert proxy.tunnels == [f"127.0.0.1:{front.port}"] and proxy.requests == []
    assert len(cp_ids(cp)) == 20


def test_the_test_proxy_tunnels_connect_and_asks_for_credentials(cp: Gateway) -> None:
    """The shared helper's CONNECT path (what an https control plane or update server goes through)."""
    with ConnectProxy(auth=("svc", "s3cret")) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        conn.set_tunnel("127.0.0.1", cp.port, headers={"Proxy-Authorization": "Basic c3ZjOnMzY3JldA=="})
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()
        assert proxy.tunnels == [f"127.0.0.1:{cp.port}"]
        refused = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        refused.set_tunnel("127.0.0.1", cp.port)
        with pytest.raises(OSError, match="407"):
            refused.request("GET", "/healthz")
        assert proxy.refused == 1

"""Ships the agent's spooled call events to the control plane, at least once each.

The spool is the agent's local store (see `events/spool.py`): every call is journaled and written to its
events table before it is answered; the shipper reads the events after a persisted watermark, POSTs them in
batches and moves the watermark only once the control plane answered 200. The control plane stores each
event id once, so a batch sent again after a crash or a lost answer is harmless.

- Control plane down (refused, timed out, 5xx): retried with exponential backoff and jitter; the backlog
  grows in the local store and is shipped when it is back.
- Over `max_spool` unshipped events: the oldest are given up (a WARNING saying how many and from when, and
  `tollhouse_spool_dropped_total`).
- 400: the control plane names the invalid events; they are skipped (logged, `tollhouse_spool_refused_total`)
  and the rest is sent again. A refusal that names none is narrowed by halving the batch.
- 401/403: shipping stops (an ERROR, `tollhouse_spool_unauthorized_total`) and events keep spooling until
  `set_token()` gives a new token.

Lifecycle (on the agent's event loop): `start()` after the event writer started; at shutdown
`await writer.flush()` then `await shipper.stop()` (one last short drain attempt), then close the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import orjson

from tollhouse.agent.backoff import Backoff
from tollhouse.agent.ship_client import INGEST_PATH, Acked, Failed, Refused, ShipClient, Unauthorized
from tollhouse.agent.ship_metrics import ShipMetrics
from tollhouse.control.agent_policy import redact_url
from tollhouse.events import spool
from tollhouse.events.model import iso_ts
from tollhouse.events.spool import Spooled
from tollhouse.events.store import StoreError
from tollhouse.events.wire import MAX_BATCH, to_wire
from tollhouse.events.writer import StoreRunner

log = logging.getLogger("tollhouse.shipper")

MAX_BODY_BYTES = 4 * 1024 * 1024  # per POST; the control plane takes up to 8 MiB


class ShipError(Exception):
    """A batch could not be delivered now; it stays spooled and is sent again."""


class ShipUnauthorized(ShipError):
    """The control plane refused the token: shipping is stopped until `set_token()`."""


# An event ready to send: where it is in the spool, and its wire JSON.
_Encoded = tuple[Spooled, bytes]


def _body(items: Sequence[_Encoded]) -> bytes:
    return b'{"events":[' + b",".join(raw for _, raw in items) + b"]}"


def _chunks(items: list[_Encoded], max_events: int, max_bytes: int) -> list[list[_Encoded]]:
    """Consecutive runs of at most `max_events` events and (but for a lone big event) `max_bytes` of JSON."""
    out: list[list[_Encoded]] = []
    current: list[_Encoded] = []
    size = 0
    for item in items:
        if current and (len(current) >= max_events or size + len(item[1]) > max_bytes):
            out.append(current)
            current, size = [], 0
        current.append(item)
        size += len(item[1]) + 1
    if current:
        out.append(current)
    return out


class Shipper:
    def __init__(self, runner: StoreRunner, control_plane_url: str, token: str, proxy: str | None = None,
                 batch: int = 1000, max_spool: int = 1_000_000, interval_s: float = 1.0,
                 metrics: ShipMetrics | None = None, *, timeout_s: float = 30.0, retry_base_s: float = 0.5,
                 retry_max_s: float = 30.0, stop_timeout_s: float = 3.0,
                 max_body_bytes: int = MAX_BODY_BYTES, ca_pem: bytes | None = None, agent_id: str = "") -> None:
        """ca_pem: a CA certificate to trust for an https control plane, besides the system's."""
        if not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"batch must be between 1 and {MAX_BATCH} events, got {batch}")
        if max_spool < 1:
            raise ValueError(f"max_spool must be at least 1 event, got {max_spool}")
        self._runner = runner
        self._client = ShipClient(control_plane_url, token, proxy, timeout_s, ca_pem, agent_id)
        self._proxy, self._timeout_s, self._ca_pem = proxy, timeout_s, ca_pem
        self._retired: list[ShipClient] = []  # clients replaced by set_proxy, closed at stop
        self._batch = batch
        self._max_spool = max_spool
        self._interval = interval_s
        self._stop_timeout = stop_timeout_s
        self._max_bytes = max_body_bytes
        self.metrics = metrics if metrics is not None else ShipMetrics()
        self._backoff = Backoff(retry_base_s, retry_max_s)
        self._watermark: int | None = None  # read from the store on first use
        self._backlog = 0
        self._unauthorized = False
        self._resume = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def backlog(self) -> int:
        """Spooled events the control plane has not acknowledged (as of the last look at the store)."""
        return self._backlog

    @property
    def unauthorized(self) -> bool:
        """Shipping is stopped because the control plane refused the token."""
        return self._unauthorized

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="tollhouse-shipper")

    def wake(self) -> None:
        """Look at the spool now rather than after `interval_s` (e.g. right after a flush)."""
        self._wake.set()

    def set_token(self, token: str) -> None:
        """A new enrollment token (after a 401): shipping resumes with it."""
        self._client.token = token
        if self._unauthorized:
            self._unauthorized = False
            self.metrics.stopped.set(0)
            log.warning("telemetry shipping resumes with a new token (backlog %d events)", self._backlog)
        self._resume.set()

    def set_proxy(self, proxy: str | None) -> None:
        """Dial the control plane through another proxy (or directly) from the next batch on."""
        if proxy == self._proxy:
            return
        old = self._client
        self._client = ShipClient(old.url.removesuffix(INGEST_PATH), old.token, proxy, self._timeout_s, self._ca_pem,
                                  old.agent_id)
        self._proxy = proxy
        self._retired.append(old)
        log.info("telemetry now ships %s", f"through the proxy {redact_url(proxy)}" if proxy else "directly")

    async def stop(self) -> None:
        """Stop the loop and make one last attempt, at most `stop_timeout_s`, to ship what is spooled.
        Whatever is left stays in the store and is shipped after the next start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            async with asyncio.timeout(self._stop_timeout):
                while not self._unauthorized and await self.ship_once():
                    pass
        except (TimeoutError, ShipError, StoreError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            log.warning("stopping with %d events not yet shipped (%s); they stay spooled and are shipped after "
                        "the next start", self._backlog, reason)
        finally:
            for client in (*self._retired, self._client):
                await client.close()

    async def ship_once(self) -> int:
        """Ship the oldest batch of the spool. Returns how many events the control plane acknowledged
        (0: nothing was waiting). Raises ShipError when the control plane could not take it now (the batch
        stays spooled), ShipUnauthorized once the token was refused, StoreError if the store failed."""
        if self._unauthorized:
            raise ShipUnauthorized("shipping is stopped: the control plane refused the token")
        if self._watermark is None:
            self._watermark = await self._runner.run(spool.watermark)
        after = self._watermark
        head, items = await self._runner.run(lambda s: (spool.head(s), spool.read(s, after, self._batch)))
        self._set_backlog(head - after)
        if self._backlog > self._max_spool and await self._drop_oldest():
            after = self._watermark
            items = await self._runner.run(lambda s: spool.read(s, after, self._batch))
            self._set_backlog(head - after)
        if not items:
            return 0
        encoded = [(item, orjson.dumps(to_wire(item.event, item.capture))) for item in items]
        acked = 0
        for chunk in _chunks(encoded, self._batch, self._max_bytes):
            acked += await self._send(chunk)
        last = items[-1].seq
        await self._runner.run(lambda s: spool.set_watermark(s, last))
        self._watermark = last
        self._set_backlog(head - last)
        return acked

    def _set_backlog(self, n: int) -> None:
        self._backlog = max(n, 0)
        self.metrics.backlog.set(self._backlog)

    async def _drop_oldest(self) -> bool:
        """Over the bound: give up the oldest. False if the exact count is within it (head - watermark is an
        upper bound on PostgreSQL, whose sequences have gaps)."""
        after = self._watermark or 0
        dropped = await self._runner.run(lambda s: spool.drop_oldest(s, after, self._max_spool))
        if dropped is None:
            return False
        self._watermark = dropped.watermark
        self.metrics.dropped.inc(dropped.events)
        log.warning("telemetry spool over its bound of %d unshipped events: dropped the oldest %d (calls from %s "
                    "to %s); they will not reach the control plane (tollhouse_spool_dropped_total)",
                    self._max_spool, dropped.events, iso_ts(dropped.first_ts_ms), iso_ts(dropped.last_ts_ms))
        return True

    async def _send(self, chunk: list[_Encoded]) -> int:
        """POST one chunk; on a refusal skip what the control plane names (or narrow it down by halves) and
        send the rest. Returns how many events were acknowledged."""
        answer = await self._client.post(_body(chunk))
        if isinstance(answer, Acked):
            self.metrics.shipped.inc(answer.received)
            self.metrics.duplicates.inc(answer.duplicates)
            return answer.received
        if isinstance(answer, Failed):
            self.metrics.failures.labels(answer.kind).inc()
            raise ShipError(f"the control plane at {self._client.url} did not take {len(chunk)} events: "
                            f"{answer.kind}: {answer.detail}")
        if isinstance(answer, Unauthorized):
            self._stop_unauthorized(answer)
            raise ShipUnauthorized(f"the control plane refused the token ({answer.status})")
        return await self._narrow(chunk, answer)

    async def _narrow(self, chunk: list[_Encoded], answer: Refused) -> int:
        named = sorted({i for i in answer.bad if 0 <= i < len(chunk)})
        if named:
            self._skip([chunk[i][0] for i in named], answer)
            rest = [item for i, item in enumerate(chunk) if i not in set(named)]
            return await self._send(rest) if rest else 0
        if len(chunk) == 1:
            self._skip([chunk[0][0]], answer)
            return 0
        half = len(chunk) // 2
        return await self._send(chunk[:half]) + await self._send(chunk[half:])

    def _skip(self, items: list[Spooled], answer: Refused) -> None:
        self.metrics.refused.inc(len(items))
        ids = ", ".join(item.event.id for item in items[:10]) + (" ..." if len(items) > 10 else "")
        log.error("the control plane refused %d spooled events as invalid (HTTP %d): %s; skipping them (ids %s; "
                  "they stay in the local store) and shipping the rest (tollhouse_spool_refused_total)",
                  len(items), answer.status, "; ".join(answer.problems[:5]), ids)

    def _stop_unauthorized(self, answer: Unauthorized) -> None:
        self._unauthorized = True
        self._resume.clear()
        self.metrics.unauthorized.inc()
        self.metrics.stopped.set(1)
        log.error("the control plane at %s refused this agent's token (HTTP %d: %s): telemetry shipping is "
                  "STOPPED; calls keep being recorded and spooled locally (backlog %d events) until the agent "
                  "gets a valid enrollment token", self._client.url, answer.status, answer.message, self._backlog)

    async def _loop(self) -> None:
        while True:
            before = self._watermark
            try:
                await self.ship_once()
            except ShipUnauthorized:
                await self._resume.wait()
                continue
            except (ShipError, StoreError) as exc:
                delay = self._backoff.next()
                attempts = self._backoff.attempts
                if attempts & (attempts - 1) == 0:  # the 1st, 2nd, 4th, 8th ... failure in a row
                    log.warning("telemetry not shipped (attempt %d, backlog %d events, retrying in %.1fs): %s",
                                attempts, self._backlog, delay, exc)
                await asyncio.sleep(delay)
                continue
            except Exception:
                log.exception("telemetry shipper failed unexpectedly; retrying")
                await asyncio.sleep(self._backoff.next())
                continue
            if self._backoff.attempts:
                log.warning("the control plane takes telemetry again after %d failed attempts; shipping the "
                            "backlog (%d events left)", self._backoff.attempts, self._backlog)
                self._backoff.reset()
            if self._backlog and self._watermark != before:
                continue  # more is waiting: no pause between batches while draining
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)

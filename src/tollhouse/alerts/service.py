"""The alert service: two background loops beside the gateway, never on a call's path.

- The evaluator drains the hand-off queue every `TICK_S`, turns calls into rule and budget alerts, closes
  dedup windows (with their counts), follows the audit trail for exemption requests and decisions, and scans
  history for anomalies; every alert goes into the outbox (the store) before anything is sent.
- The deliverer claims due deliveries from the outbox and sends them; a failure is retried with backoff
  (per channel: a channel that is down is tried once per round, not once per message) until the channel
  accepts. Claims lapse, so a delivery a killed process held is sent by the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from tollhouse.alerts import anomaly_scan, exemption_alerts, outbox
from tollhouse.alerts.channels import DeliveryError, Sender
from tollhouse.alerts.config import AlertsConfig
from tollhouse.alerts.evaluate import Evaluator, Raised
from tollhouse.alerts.model import Alert, Delivery
from tollhouse.alerts.routing import Router
from tollhouse.events.db import StoreError
from tollhouse.events.store import Store
from tollhouse.gateway.sign_in_guard import LOCKED
from tollhouse.gateway.state import GatewayState, add_health_section
from tollhouse.lifespan import Background
from tollhouse.policy.timewindow import zone

log = logging.getLogger("tollhouse.alerts")

TICK_S = 0.1  # how often the hand-off queue is drained
CLOSE_EVERY_S = 1.0  # how often dedup windows that are over are closed (and their counts sent)
AUDIT_EVERY_S = 2.0
POLL_S = 1.0  # the deliverer looks for due deliveries at least this often


@dataclass(slots=True)
class ChannelHealth:
    failures: int = 0  # consecutive
    last_error: str | None = None
    last_ok_ms: int | None = None
    retry_at_ms: int = 0

    def shown(self, failing_after: int, pending: int) -> dict[str, Any]:
        return {"state": "failing" if self.failures >= failing_after else ("retrying" if self.failures else "ok"),
                "consecutive_failures": self.failures, "last_error": self.last_error,
                "last_delivered_ms": self.last_ok_ms, "pending": pending}


@dataclass(slots=True)
class _Counters:
    raised: int = 0
    delivered: int = 0
    failed_attempts: int = 0
    pending: dict[str, int] = field(default_factory=dict)


class AlertService:
    def __init__(self, state: GatewayState, sender: Sender | None = None) -> None:
        self.state = state
        self.cfg: AlertsConfig = state.settings.alerts
        self.router = Router(self.cfg)
        lc = state.settings.ledger
        self.console = (self.cfg.console_url.rstrip("/") + "/") if self.cfg.console_url else state.console_url
        self.evaluator = Evaluator(self.cfg, self.router, self.console, lc.billing_day, zone(lc.timezone))
        self.sender = sender or Sender(self.cfg, self.cfg.delivery_timeout_s)
        self.channels = {name: ChannelHealth() for name in self.cfg.channels}
        self.counters = _Counters()
        self._wake = asyncio.Event()
        self._lease_ms = int(self.cfg.delivery_timeout_s * 3000) + 1000
        self._bumps: dict[str, int] = {}  # firings of alerts raised already, not yet written (alert id -> count)

    def now_ms(self) -> int:
        return int(self.state.clock() * 1000)

    # health

    def health(self) -> dict[str, Any]:
        n = self.cfg.failing_after
        channels = {name: h.shown(n, self.counters.pending.get(name, 0)) for name, h in self.channels.items()}
        return {"status": "failing" if any(c["state"] == "failing" for c in channels.values()) else "ok",
                "channels": channels, "raised": self.counters.raised, "delivered": self.counters.delivered,
                "failed_attempts": self.counters.failed_attempts, "dropped": self.state.alerts.dropped}

    # the evaluator

    async def store(self, raised: Sequence[Raised], bumps: Mapping[str, int] | None = None) -> None:
        """Put alerts in the outbox (windowed ones add to their counts), add firings to alerts raised already;
        wake the deliverer."""
        if not raised and not bumps:
            return
        now = self.now_ms()

        def write(s: Store) -> int:
            new = 0
            with s.db.transaction():
                for r in raised:
                    if r.alert.closes_ms is not None:
                        new += outbox.add_fired(s, r.alert, r.targets, now, r.count)
                    else:
                        new += outbox.add_alert(s, r.alert, r.targets, now, r.count)
                if bumps:
                    outbox.bump(s, bumps, now)
            return new

        try:
            new = await self.state.runner.run(write)
        except StoreError:
            self.evaluator.forget(raised)
            raise
        if new:
            self.counters.raised += new
            self._wake.set()

    async def evaluate_batch(self, flush: bool = True) -> None:
        """New alerts go to the store at once; further firings of alerts raised already are added up here and
        written when `flush` (once a second: a count is at most that late)."""
        batch = self.state.alerts.drain()
        raised: list[Raised] = []
        if batch:
            raised, bumps = self.evaluator.evaluate(batch)
            for alert_id, count in bumps.items():
                self._bumps[alert_id] = self._bumps.get(alert_id, 0) + count
        if raised or (flush and self._bumps):
            bumps, self._bumps = (self._bumps, {}) if flush else ({}, self._bumps)
            try:
                await self.store(raised, bumps)
            except StoreError:
                for alert_id, count in bumps.items():  # kept for the next flush
                    self._bumps[alert_id] = self._bumps.get(alert_id, 0) + count
                raise

    async def evaluate_loop(self) -> None:
        n = 0
        audit_every = max(1, int(AUDIT_EVERY_S / TICK_S))
        close_every = max(1, int(CLOSE_EVERY_S / TICK_S))
        prune_every = max(1, int(3600 / TICK_S))
        anomaly_every = max(1, int(self.cfg.anomaly.interval_s / TICK_S))
        while True:
            await asyncio.sleep(TICK_S)
            n += 1
            try:
                await self.evaluate_batch(flush=n % close_every == 0)
                if n % close_every == 0:
                    self.evaluator.expire(self.now_ms())
                    await self._close_windows()
                if n % audit_every == 1 or audit_every == 1:
                    await self.follow_audit()
                if self.cfg.anomaly.enabled and n % anomaly_every == 1:
                    await self.scan_anomalies()
                if n % prune_every == 1:
                    before = self.now_ms() - int(self.cfg.retention_days * 86_400_000)
                    await self.state.runner.run(partial(outbox.prune, before_ms=before))
            except StoreError as exc:
                log.warning("alerts: the store is unavailable (%s); alerts are evaluated again on the next tick", exc)
            except Exception:  # a bug here must not end alerting: say so and go on with the next tick
                log.exception("alerts: evaluation failed unexpectedly; going on with the next tick")

    async def _close_windows(self) -> None:
        now = self.now_ms()

        def close(s: Store) -> list[Raised]:
            out: list[Raised] = []
            for closed in outbox.closing(s, now):
                targets = tuple((r["channel"], r["target"]) for r in s.db.query(
                    "SELECT channel, target FROM alert_deliveries WHERE alert_id = ?", (closed.id,)))
                summary = self.evaluator.summary(closed, targets)
                if summary is not None:
                    out.append(summary)
            return out

        await self.store(await self.state.runner.run(close))

    async def follow_audit(self) -> None:
        entries, requesters, seq = await self.state.runner.run(exemption_alerts.read_new)
        if entries:
            emails = {p.id: p.email for p in self.state.directory.current.config.people if p.email}
            raised: list[Raised] = []
            for e in entries:
                if e.kind == LOCKED:
                    raised.append(Raised(exemption_alerts.lockout_alert(e, self.console),
                                         self.router.targets(self.cfg.security)))
                    continue
                found = exemption_alerts.notice(e, requesters.get(str(e.data.get("id"))), emails, self.console)
                if found is None:
                    continue
                if found.to_owners:
                    targets = self.router.targets(self.cfg.policy_owners)
                else:
                    targets = self.router.targets([found.requester_email or ""], fallback=())
                    targets = tuple(t for t in targets if t[1])  # an address, never the default channels
                if targets:
                    raised.append(Raised(found.alert, targets))
            await self.store(raised)
        await self.state.runner.run(lambda s: exemption_alerts.set_watermark(s, seq))

    async def scan_anomalies(self) -> list[Alert]:
        cfg = self.cfg.anomaly
        now = self.now_ms()
        since = anomaly_scan.history_since_ms(now, cfg)
        tz = self.evaluator.tz
        found: list[Alert] = []
        for scope in ("team", "person") if cfg.people else ("team",):
            usage = await self.state.runner.run(partial(anomaly_scan.hourly_usage, scope=scope, since_ms=since))
            found += anomaly_scan.scan(usage, scope, now, since, tz, cfg, self.console)
        targets = self.router.targets(cfg.channels)
        await self.store([Raised(a, targets) for a in found])
        return found

    # the deliverer

    def _backoff_ms(self, failures: int) -> int:
        return int(min(self.cfg.retry_max_s, self.cfg.retry_min_s * 2 ** max(failures - 1, 0)) * 1000)

    async def deliver_loop(self) -> None:
        while True:
            try:
                sent = await self.deliver_once()
            except StoreError as exc:
                log.warning("alerts: the store is unavailable (%s); deliveries resume when it is back", exc)
                sent = 0
            except Exception:
                log.exception("alerts: delivery failed unexpectedly; trying again")
                sent = 0
            if not sent:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), POLL_S)

    async def deliver_once(self) -> int:
        """Claim what is due and send it; the number of deliveries attempted."""
        now = self.now_ms()
        due = await self.state.runner.run(lambda s: outbox.claim_due(s, now, self._lease_ms))
        self.counters.pending = await self.state.runner.run(outbox.pending_by_channel)
        if not due:
            return 0
        per_channel: dict[str, list[Delivery]] = defaultdict(list)
        for d in due:
            per_channel[d.channel].append(d)
        await asyncio.gather(*(self._send_channel(name, ds) for name, ds in per_channel.items()))
        return len(due)

    async def _send_channel(self, name: str, deliveries: list[Delivery]) -> None:
        """In order; at the first failure the rest wait for the channel's next try."""
        health = self.channels.setdefault(name, ChannelHealth())
        for i, d in enumerate(deliveries):
            error = await self._attempt(d)
            if error is not None:
                health.failures += 1
                health.last_error = error
                self.counters.failed_attempts += 1
                wait_ms = self._backoff_ms(health.failures)
                retry = self.now_ms() + wait_ms
                health.retry_at_ms = retry
                log.warning("alerts: channel %s did not accept alert %s (attempt %d; %d waiting): %s; next try in "
                            "%.1f s", name, d.alert.id, d.attempts + 1, len(deliveries) - i, error, wait_ms / 1000)
                await self.state.runner.run(partial(self._failed, d=d, rest=deliveries[i + 1:], retry=retry,
                                                    error=error))
                return
            now = self.now_ms()
            await self.state.runner.run(partial(outbox.mark_delivered, d=d, now_ms=now))
            health.failures = 0
            health.last_error = None
            health.last_ok_ms = now
            self.counters.delivered += 1

    async def _attempt(self, d: Delivery) -> str | None:
        """Send one delivery; None when the channel accepted it, else why not."""
        try:
            await self.sender.send(d)
        except DeliveryError as exc:
            return str(exc)
        except Exception as exc:  # a bug in a sender must not stop the deliverer
            log.exception("alerts: sending alert %s over %s failed unexpectedly", d.alert.id, d.channel)
            return f"internal error: {type(exc).__name__}"
        return None

    @staticmethod
    def _failed(s: Store, d: Delivery, rest: list[Delivery], retry: int, error: str) -> None:
        with s.db.transaction():
            outbox.mark_failed(s, d, retry, error)
            outbox.release(s, rest, retry)

    async def close(self) -> None:
        await self.sender.close()


def install(state: GatewayState) -> AlertService | None:
    """Run the alert service in the gateway's lifespan when channels are configured (else: nothing, and the
    request path's hand-off stays a no-op)."""
    if not state.settings.alerts.channels:
        return None
    service = AlertService(state)
    state.alerts.enabled = True
    lifespan = state.lifespan
    evaluator = Background("tollhouse-alerts-evaluate", service.evaluate_loop)
    deliverer = Background("tollhouse-alerts-deliver", service.deliver_loop)

    async def start() -> None:
        try:  # before the server listens: a first run follows the audit trail from here on
            await service.follow_audit()
        except StoreError as exc:
            log.warning("alerts: cannot read the audit trail yet (%s); exemption notices start once it can", exc)
        await evaluator.start()
        await deliverer.start()

    lifespan.add("alerts", start, _stopper(service, evaluator, deliverer))
    add_health_section(state, "alerts", service.health)
    return service


def _stopper(service: AlertService, *loops: Background) -> Any:
    async def stop() -> None:
        for loop in loops:
            await loop.stop()
        try:  # what the last tick had not stored yet
            await service.evaluate_batch()
        except StoreError as exc:
            log.warning("alerts: %s; alerts of the last %.2f s before the stop were not stored", exc, TICK_S)
        await service.close()
    return stop

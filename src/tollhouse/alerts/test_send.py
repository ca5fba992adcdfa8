"""`tollhouse alerts test CHANNEL`: send a test alert over one channel now (not through the outbox) and say
whether the channel accepted it."""

from __future__ import annotations

import asyncio
import os
import time

from tollhouse.alerts.channels import DeliveryError, Sender
from tollhouse.alerts.config import AlertsConfig, EmailChannel
from tollhouse.alerts.model import Alert, Delivery, Stored


class AlertTestError(Exception):
    """The channel is unknown or did not accept the test; the message says why (secrets masked)."""


def sample_alert(channel: str, now_ms: int) -> Stored:
    a = Alert(f"test:{channel}:{now_ms}:{os.getpid()}", "test", "info", f"Tollhouse test alert for {channel}",
              f"This is a test of the alert channel {channel!r}, sent with `tollhouse alerts test {channel}`. "
              "Alerts from rules, budget thresholds, anomalies and exemptions arrive here like this.",
              (("Channel", channel), ("Sent", time.strftime("%Y-%m-%d %H:%M:%S %Z"))))
    return Stored(a.id, now_ms, a.kind, a.severity, a.title, a.text, a.fields, a.links, 1)


def send_test(cfg: AlertsConfig, channel: str, to: str | None = None) -> str:
    """What was sent where (secrets masked); raises AlertTestError."""
    ch = cfg.channels.get(channel)
    if ch is None:
        known = ", ".join(sorted(cfg.channels)) or "none: add alerts.channels to the config file"
        raise AlertTestError(f"no alert channel {channel!r} in alerts.channels (configured: {known})")
    if to is not None and not isinstance(ch, EmailChannel):
        raise AlertTestError(f"--to is for email channels; {channel!r} is a {ch.type} channel")
    delivery = Delivery(sample_alert(channel, int(time.time() * 1000)), channel, to or "", 0)

    async def run() -> None:
        sender = Sender(cfg, cfg.delivery_timeout_s)
        try:
            await sender.send(delivery)
        finally:
            await sender.close()

    try:
        asyncio.run(run())
    except DeliveryError as exc:
        raise AlertTestError(f"channel {channel!r} ({ch.describe()}) did not accept the test alert: {exc}") from None
    return f"test alert {delivery.alert.id} accepted by {channel} ({ch.describe()})" + (f" for {to}" if to else "")

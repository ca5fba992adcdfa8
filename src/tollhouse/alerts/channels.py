"""Sending one delivery: a Slack incoming webhook, an email over SMTP, or a webhook signed per Standard Webhooks.

`send()` returns when the channel accepted the message, or raises DeliveryError saying why (secrets never
appear in the message: URLs are masked)."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

import aiohttp
import orjson
from standardwebhooks import Webhook

from tollhouse.alerts.config import AlertsConfig, EmailChannel, SlackChannel, WebhookChannel, mask_url
from tollhouse.alerts.model import Delivery, Stored

_SEVERITY_ICON = {"critical": ":rotating_light:", "warning": ":warning:", "info": ":information_source:"}


class DeliveryError(Exception):
    """The channel did not accept the message; the text says why (no secrets)."""


def slack_payload(a: Stored) -> dict[str, Any]:
    """A readable Slack message: the title, the explanation, the facts as fields, links as buttons."""
    count = f" (fired {a.count} times)" if a.count > 1 else ""
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn",
                                     "text": f"{_SEVERITY_ICON.get(a.severity, '')} *{a.title}*{count}\n{a.text}"}},
    ]
    if a.fields:
        blocks.append({"type": "section", "fields": [
            {"type": "mrkdwn", "text": f"*{label}*\n{value}"} for label, value in a.fields[:10]]})
    if a.links:
        blocks.append({"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": label}, "url": url}
            for label, url in a.links[:5]]})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"Tollhouse alert `{a.id}`"}]})
    return {"text": f"{a.title}{count}", "blocks": blocks}


def webhook_payload(a: Stored) -> dict[str, Any]:
    return {"type": f"tollhouse.alert.{a.kind}",
            "timestamp": datetime.fromtimestamp(a.created_ms / 1000, UTC).isoformat(timespec="milliseconds"),
            "data": {"id": a.id, "kind": a.kind, "severity": a.severity, "title": a.title, "text": a.text,
                     "count": a.count, "fields": dict(a.fields), "links": dict(a.links)}}


def email_message(a: Stored, channel: EmailChannel, to: str, message_id: str) -> EmailMessage:
    msg = EmailMessage()
    count = f" (fired {a.count} times)" if a.count > 1 else ""
    msg["Subject"] = f"[Tollhouse {a.severity}] {a.title}{count}"
    msg["From"] = channel.sender
    msg["To"] = to
    msg["Date"] = format_datetime(datetime.fromtimestamp(a.created_ms / 1000, UTC))
    msg["Message-ID"] = f"<{message_id}@tollhouse>"
    msg["X-Tollhouse-Alert"] = a.id
    lines = [a.text, ""]
    lines += [f"{label}: {value}" for label, value in a.fields]
    if a.links:
        lines.append("")
        lines += [f"{label}: {url}" for label, url in a.links]
    lines += ["", f"Tollhouse alert {a.id}"]
    msg.set_content("\n".join(lines))
    return msg


def _smtp_send(channel: EmailChannel, msg: EmailMessage) -> None:
    s = channel.server()
    context = ssl.create_default_context(cafile=channel.ca_file)
    try:
        smtp: smtplib.SMTP
        if s.tls == "ssl":
            smtp = smtplib.SMTP_SSL(s.host, s.port, timeout=channel.timeout_s, context=context)
        else:
            smtp = smtplib.SMTP(s.host, s.port, timeout=channel.timeout_s)
        with smtp:
            smtp.ehlo()
            if s.tls == "starttls":
                if not smtp.has_extn("starttls"):
                    raise DeliveryError(f"the SMTP server {s.host}:{s.port} does not offer STARTTLS; use "
                                        "smtps:// (port 465) or a server that does")
                smtp.starttls(context=context)
                smtp.ehlo()
            if s.user is not None:
                smtp.login(s.user, s.password or "")
            smtp.send_message(msg)
    except smtplib.SMTPAuthenticationError as exc:
        raise DeliveryError(f"SMTP {s.host}:{s.port} refused the login of {s.user}: {exc.smtp_code}") from None
    except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
        raise DeliveryError(f"SMTP {s.host}:{s.port}: {type(exc).__name__}: {exc}") from None


class Sender:
    """Sends deliveries over the configured channels (one HTTP session, reused)."""

    def __init__(self, cfg: AlertsConfig, timeout_s: float = 10.0) -> None:
        self.cfg = cfg
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.post(url, data=body, headers=headers) as resp:
                if resp.status >= 300:
                    text = (await resp.text())[:200]
                    raise DeliveryError(f"{mask_url(url)} answered {resp.status}: {text}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeliveryError(f"{mask_url(url)}: {type(exc).__name__}: {exc}".replace(url, mask_url(url))) from None

    async def send(self, d: Delivery) -> None:
        channel = self.cfg.channels.get(d.channel)
        if channel is None:
            raise DeliveryError(f"channel {d.channel!r} is no longer in alerts.channels; add it back to deliver "
                                "what is waiting for it")
        if isinstance(channel, SlackChannel):
            await self._post(channel.url.get_secret_value(), orjson.dumps(slack_payload(d.alert)),
                             {"content-type": "application/json"})
        elif isinstance(channel, WebhookChannel):
            body = orjson.dumps(webhook_payload(d.alert))
            now = datetime.now(UTC)
            signature = Webhook(channel.secret.get_secret_value()).sign(d.idempotency_key, now, body)
            await self._post(channel.url.get_secret_value(), body, {
                "content-type": "application/json", "webhook-id": d.idempotency_key,
                "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": signature,
                "idempotency-key": d.idempotency_key})
        else:
            to = d.target or ", ".join(channel.to)
            if not to:
                raise DeliveryError(f"email channel {d.channel!r} has no recipients: give it `to:` or name "
                                    "addresses in a rule's notify")
            msg = email_message(d.alert, channel, to, d.idempotency_key)
            await asyncio.to_thread(_smtp_send, channel, msg)

"""The `alerts:` section of the configuration: channels, where alerts go, budget thresholds, anomalies.

Secrets (webhook URLs, SMTP passwords, signing secrets) are `SecretStr`: they print as `**********` and every
description of a channel shown anywhere (API, health, logs, CLI) goes through `describe()`, which masks them.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _http(value: SecretStr, what: str) -> SecretStr:
    url = value.get_secret_value()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} must be an http(s) URL, e.g. https://hooks.slack.com/services/T000/B000/XXXX")
    return value


def mask_url(url: str) -> str:
    """scheme://host/… : the path and query of a webhook URL are its secret."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/****" if parts.path.strip("/") or parts.query else f"{parts.scheme}://{host}{port}"


class SlackChannel(_Frozen):
    type: Literal["slack"]
    url: SecretStr  # the incoming webhook's URL (its path is the secret)

    @field_validator("url")
    @classmethod
    def _url(cls, value: SecretStr) -> SecretStr:
        return _http(value, "url")

    def describe(self) -> str:
        return f"slack {mask_url(self.url.get_secret_value())}"


class SmtpServer(_Frozen):
    host: str
    port: int
    user: str | None
    password: str | None
    tls: Literal["starttls", "ssl", "none"]


class EmailChannel(_Frozen):
    type: Literal["email"]
    # smtp://user:pass@host:587 (STARTTLS, required), smtps://user:pass@host:465 (TLS from the start), or
    # smtp+plain://host:25 (no TLS: only for a relay on a trusted network)
    smtp: SecretStr
    sender: str = Field(alias="from")
    to: tuple[str, ...] = ()  # default recipients (a rule's notify may name others)
    timeout_s: float = Field(default=20.0, gt=0)
    ca_file: str | None = None  # trust this CA (PEM) for the server's certificate (an internal relay)
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @field_validator("smtp")
    @classmethod
    def _smtp(cls, value: SecretStr) -> SecretStr:
        parse_smtp(value.get_secret_value())
        return value

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str) -> str:
        if "@" not in value:
            raise ValueError(f"from must be an email address, got {value!r}")
        return value

    def server(self) -> SmtpServer:
        return parse_smtp(self.smtp.get_secret_value())

    def describe(self) -> str:
        s = self.server()
        who = f"{s.user}:****@" if s.user else ""
        return f"email smtp://{who}{s.host}:{s.port} ({s.tls}) from {self.sender}"


_SMTP_SCHEMES = {"smtp": ("starttls", 587), "smtps": ("ssl", 465), "smtp+plain": ("none", 25)}


def parse_smtp(url: str) -> SmtpServer:
    parts = urlsplit(url)
    if parts.scheme not in _SMTP_SCHEMES or not parts.hostname:
        raise ValueError("smtp must look like smtp://user:password@host:587 (STARTTLS), smtps://user:password@host"
                         ":465 or smtp+plain://host:25 (no TLS)")
    tls, default_port = _SMTP_SCHEMES[parts.scheme]
    try:
        port = parts.port or default_port
    except ValueError:
        raise ValueError("smtp: the port is not a number") from None
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return SmtpServer(host=parts.hostname, port=port, user=user, password=password, tls=tls)  # type: ignore[arg-type]


class WebhookChannel(_Frozen):
    type: Literal["webhook"]
    url: SecretStr
    secret: SecretStr  # whsec_<base64>: signs every delivery (Standard Webhooks)

    @field_validator("url")
    @classmethod
    def _url(cls, value: SecretStr) -> SecretStr:
        return _http(value, "url")

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        body = raw.removeprefix("whsec_")
        try:
            ok = len(base64.b64decode(body + "==", validate=False)) >= 16
        except (binascii.Error, ValueError):
            ok = False
        if not raw.startswith("whsec_") or not ok:
            raise ValueError("secret must be whsec_ followed by base64 of at least 16 bytes; make one with: "
                             "python -c \"import os,base64;print('whsec_'+base64.b64encode(os.urandom(32)).decode())\"")
        return value

    def describe(self) -> str:
        return f"webhook {mask_url(self.url.get_secret_value())} (signed)"


Channel = Annotated[SlackChannel | EmailChannel | WebhookChannel, Field(discriminator="type")]


class AnomalyConfig(_Frozen):
    enabled: bool = False
    channels: tuple[str, ...] = ()  # default: alerts.default
    people: bool = True  # per person too (not only per team)
    hourly: bool = True  # hourly as well as daily
    interval_s: float = Field(default=300.0, gt=0)  # how often history is scanned
    weeks: int = Field(default=6, ge=2, le=26)  # trailing weeks of same-weekday history for the daily baseline
    # A value is anomalous when it is above ratio x the top of its usual range and above the robust bound
    # (median + sigmas x 1.4826 x MAD) and at least the minimum volume of its metric.
    ratio: float = Field(default=2.0, gt=1)
    sigmas: float = Field(default=4.0, gt=0)
    min_usd: float = Field(default=10.0, ge=0)
    min_tokens: int = Field(default=200_000, ge=0)
    min_calls: int = Field(default=200, ge=0)


class AlertsConfig(_Frozen):
    channels: dict[str, Channel] = Field(default_factory=dict)
    default: tuple[str, ...] = ()  # where alert rules without notify (and everything else) go
    policy_owners: tuple[str, ...] = ()  # channels or addresses told of new exemption requests (default: default)
    security: tuple[str, ...] = ()  # channels or addresses told of admin-token lockouts (default: default)
    budget_thresholds: tuple[float, ...] = (0.5, 0.8, 1.0)
    anomaly: AnomalyConfig = AnomalyConfig()
    dedup_window_s: float = Field(default=600.0, gt=0)  # one message per rule and subject per window, then a count
    console_url: str = ""  # links in messages (default: the gateway's own /console/)
    retry_min_s: float = Field(default=2.0, gt=0)  # the first wait after a failed delivery (doubling from there) ...
    retry_max_s: float = Field(default=300.0, gt=0)  # ... up to this
    delivery_timeout_s: float = Field(default=10.0, gt=0)  # one attempt (HTTP request, SMTP session)
    retention_days: float = Field(default=90, gt=0)  # delivered alerts are forgotten after this
    failing_after: int = Field(default=5, ge=1)  # consecutive failures after which /healthz shows a channel failing

    @field_validator("budget_thresholds")
    @classmethod
    def _thresholds(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        for t in value:
            if not 0 < t <= 10:
                raise ValueError(f"{t} is not a fraction of a cap; use e.g. [0.5, 0.8, 1.0]")
        return tuple(sorted(set(value)))

    @model_validator(mode="after")
    def _names(self) -> AlertsConfig:
        for where, names in (("default", self.default), ("policy_owners", self.policy_owners),
                             ("security", self.security),
                             ("anomaly.channels", self.anomaly.channels)):
            for name in names:
                check_target(self, name, f"alerts.{where}")
        return self

    def describe(self) -> dict[str, str]:
        """Each channel, secrets masked."""
        return {name: ch.describe() for name, ch in self.channels.items()}


def check_target(cfg: AlertsConfig, name: str, where: str) -> None:
    """A notify target is a channel name, or an email address when an email channel exists."""
    if name in cfg.channels:
        return
    if "@" in name:
        if not any(isinstance(c, EmailChannel) for c in cfg.channels.values()):
            raise ValueError(f"{where}: {name!r} is an email address but alerts.channels has no email channel to "
                             "send it through; add one: {type: email, smtp: \"smtp://user:pass@host:587\", from: ...}")
        return
    known = ", ".join(sorted(cfg.channels)) or "none configured"
    raise ValueError(f"{where}: {name!r} is not a channel in alerts.channels ({known}) nor an email address")

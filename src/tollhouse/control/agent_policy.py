"""The agent policy: the seven runtime settings every agent polls for, plus where releases are listed.

`parse_agent_policy` reports every invalid or unknown setting at once, each with a valid example.
`model_dump()` is the wire form sent to agents (it carries the proxy password the agent dials with);
`redacted()` is the form for the audit trail, diffs and logs, and never holds a password.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from enum import StrEnum
from pathlib import PurePosixPath, PureWindowsPath
from typing import Annotated, Any
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from tollhouse.config import CaptureMode, Enforcement
from tollhouse.control.version import EXAMPLE as VERSION_EXAMPLE
from tollhouse.control.version import Version, VersionParseError, parse_version
from tollhouse.control.window import EXAMPLE as WINDOW_EXAMPLE
from tollhouse.control.window import MaintenanceWindow, WindowParseError, parse_window


class UpdatePolicy(StrEnum):
    auto = "auto"  # install newer versions when the maintenance window is open
    notify_only = "notify-only"  # show "update available"; never install
    manual = "manual"  # notify-only, and send agent.update.available to the control plane
    disabled = "disabled"  # do not poll; another mechanism owns the agent


class UpdateChannel(StrEnum):
    stable = "stable"
    beta = "beta"


class AgentPolicyError(ValueError):
    """Every invalid setting of an agent policy, one line each, naming the field and showing an example."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = tuple(problems)


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_PROXY_EXAMPLE = '"http://proxy.example.com:8080" or "https://user:pass@proxy.example.com:3128"'
_INDEX_EXAMPLE = '"https://releases.example.com/tollhouse/index.json" or "/srv/tollhouse/releases.json"'


def redact_url(text: str) -> str:
    """`text` with the credentials before the last '@' masked: user:pass@ -> user:***@, token@ -> ***@."""
    scheme = _SCHEME.match(text)
    begin = scheme.end() if scheme else 0
    at = text.rfind("@")
    if at < begin:
        return text
    user, colon, _ = text[begin:at].partition(":")
    return text[:begin] + (f"{user}:***" if colon else "***") + text[at:]


def _quote(text: str) -> str:
    return orjson.dumps(text).decode()


_JSON_TYPES = {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}


def _text(value: object, example: str, secret: bool = False) -> str:
    """A string setting, stripped (null counts as empty); anything else is a problem, shown without its value
    when it may hold a secret."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    what = _JSON_TYPES.get(type(value), f"a {type(value).__name__}")
    shown = "" if secret else orjson.dumps(value, default=repr).decode()[:80] + " is "
    raise ValueError(f"{shown}{what}, not a string; example: {example}")


def _choice(enum: type[StrEnum], value: object) -> str:
    allowed = [m.value for m in enum]
    if enum is Enforcement and isinstance(value, bool):
        value = "on" if value else "off"  # YAML 1.1 reads a bare on/off as a boolean
    text = value.value if isinstance(value, StrEnum) else _text(value, _quote(allowed[0])) if value is not None else ""
    if text.lower() not in allowed:
        shown = "null" if value is None else _quote(text)
        raise ValueError(f"{shown} is not one of {', '.join(allowed)}; example: {_quote(allowed[0])}")
    return text.lower()


def _proxy_problem(text: str) -> str | None:
    try:
        parts = urlsplit(text)
    except ValueError:
        return "not a URL"
    if parts.scheme.lower() not in ("http", "https"):
        return "not http:// or https://"
    if not parts.hostname:
        return "no host"
    try:
        port = parts.port
    except ValueError:
        return "the port is not a number from 1 to 65535"
    if not port:
        return "no port"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "has a path, query or fragment"
    return None


def _proxy(value: object) -> str:
    text = _text(value, _PROXY_EXAMPLE, secret=True)
    why = _proxy_problem(text) if text else None
    if why is not None:
        raise ValueError(f"{_quote(redact_url(text))} is not http(s)://[user:pass@]host:port ({why}); "
                         f"example: {_PROXY_EXAMPLE}")
    return text.removesuffix("/")


def _release_index(value: object) -> str:
    text = _text(value, _INDEX_EXAMPLE)
    if not text:
        return ""
    try:
        parts = urlsplit(text)
    except ValueError:
        parts = None
    ok = parts is not None and (
        (parts.scheme.lower() in ("http", "https") and bool(parts.hostname))
        or (parts.scheme.lower() == "file" and parts.path.startswith("/"))
        or PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute())
    if not ok:
        raise ValueError(f"{_quote(redact_url(text))} is not an http(s):// or file:// URL or an absolute file "
                         f"path; example: {_INDEX_EXAMPLE}")
    return text


def _window(value: object) -> str:
    try:
        window = parse_window(_text(value, WINDOW_EXAMPLE))
    except WindowParseError as exc:
        raise ValueError(str(exc)) from None
    return "" if window is None else str(window)


def _version(value: object) -> str:
    text = _text(value, VERSION_EXAMPLE)
    try:
        return str(parse_version(text)) if text else ""
    except VersionParseError as exc:
        raise ValueError(f"{exc}; or empty to follow the channel") from None


def _choices(enum: type[StrEnum]) -> BeforeValidator:
    return BeforeValidator(lambda value: _choice(enum, value))


class AgentPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    capture_mode: Annotated[CaptureMode, _choices(CaptureMode)] = CaptureMode.telemetry
    update_policy: Annotated[UpdatePolicy, _choices(UpdatePolicy)] = UpdatePolicy.notify_only
    update_channel: Annotated[UpdateChannel, _choices(UpdateChannel)] = UpdateChannel.stable
    # canonical `DOW HH:MM-HH:MM`; empty: any time
    maintenance_window: Annotated[str, BeforeValidator(_window)] = ""
    # canonical vN.M.K[-beta.X]; empty: the channel decides
    pinned_version: Annotated[str, BeforeValidator(_version)] = ""
    # http(s)://[user:pass@]host:port; empty: dial directly
    upstream_proxy: Annotated[str, BeforeValidator(_proxy)] = ""
    enforcement: Annotated[Enforcement, _choices(Enforcement)] = Enforcement.off
    # URL or absolute path of the JSON release index (read by the agent updater); empty: none
    release_index: Annotated[str, BeforeValidator(_release_index)] = ""

    @property
    def window(self) -> MaintenanceWindow | None:
        return parse_window(self.maintenance_window)

    @property
    def pinned(self) -> Version | None:
        return parse_version(self.pinned_version) if self.pinned_version else None

    def redacted(self) -> dict[str, str]:
        """Every setting as JSON-ready strings, passwords masked (for the audit trail, diffs and logs)."""
        out = self.model_dump(mode="json")
        out["upstream_proxy"] = redact_url(self.upstream_proxy)
        out["release_index"] = redact_url(self.release_index)
        return out

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        yield from self.redacted().items()


def parse_agent_policy(data: object) -> AgentPolicy:
    """Validate a policy document (missing settings take their defaults); AgentPolicyError lists every problem."""
    if not isinstance(data, dict):
        raise AgentPolicyError([f"agent policy: expected an object of settings, got a {type(data).__name__}; "
                                'example: {"update_policy": "auto", "maintenance_window": "Sun 02:00-04:00"}'])
    try:
        return AgentPolicy.model_validate(data)
    except ValidationError as err:
        raise AgentPolicyError([_problem(e["loc"], e["type"], e["msg"]) for e in err.errors()]) from None


def _problem(loc: tuple[int | str, ...], kind: str, msg: str) -> str:
    field = ".".join(str(p) for p in loc) or "agent policy"
    if kind == "extra_forbidden":
        return f"{field}: unknown setting; known: {', '.join(AgentPolicy.model_fields)}"
    return f"{field}: {msg.removeprefix('Value error, ')}"

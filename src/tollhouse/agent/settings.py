"""The agent's effective settings, each with the layer it came from.

Precedence, highest first: the environment (`TOLLHOUSE_*`), the managed file (`/etc/tollhouse.env` or
`$TOLLHOUSE_MANAGED_CONFIG`), the control plane's agent policy (from the last bundle), built-in defaults.
`resolve` is a pure function over plain mappings; reading the environment and the file is the caller's job.
An empty value counts as not set (so `TOLLHOUSE_PINNED_VERSION=` does not hide the control plane's pin).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from tollhouse.config import CaptureMode, Enforcement
from tollhouse.control.agent_policy import AgentPolicy, AgentPolicyError, parse_agent_policy, redact_url

MANAGED_DEFAULT = "/etc/tollhouse.env"
MANAGED_ENV = "TOLLHOUSE_MANAGED_CONFIG"


class Source(StrEnum):
    env = "env"
    managed = "managed"
    control_plane = "control-plane"
    default = "default"


class SettingsError(ValueError):
    """Every invalid setting, one line each, naming the key, where it came from and a valid example."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = tuple(problems)


_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _log_level(value: str) -> str:
    if value.lower() not in _LOG_LEVELS:
        raise ValueError(f"{value!r} is not one of {', '.join(_LOG_LEVELS)}; example: \"debug\"")
    return value.lower()


def _url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{redact_url(value)!r} is not an http(s) URL; example: \"https://tollhouse.acme.internal\"")
    return value.rstrip("/")


def check_url(name: str, value: str) -> str:
    """A control plane URL, or ValueError naming `name`."""
    try:
        return _url(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def _text(value: str) -> str:
    return value


def _port(value: str) -> str:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ValueError(f"{value!r} is not a port number (1-65535); example: \"8789\"")
    return value


@dataclass(frozen=True, slots=True)
class Key:
    name: str  # the setting's name in `config show` and the agent policy
    check: Callable[[str], str] | None  # None: an agent-policy setting, checked by its validator
    secret: bool = False
    local: bool = False  # only the environment and the managed file can set it

    @property
    def env(self) -> str:
        return "TOLLHOUSE_" + self.name.upper()


_POLICY_KEYS = ("enforcement", "capture_mode", "upstream_proxy", "update_policy", "update_channel",
                "maintenance_window", "pinned_version", "release_index")
KEYS: tuple[Key, ...] = (
    Key("log_level", _log_level, local=True),
    Key("user", _text, local=True),
    Key("control_plane", _url, local=True),
    Key("token", _text, secret=True, local=True),
    Key("forward_proxy_port", _port, local=True),  # the CONNECT proxy (install --forward-proxy); "" off
    *(Key(name, None) for name in _POLICY_KEYS),
)
ENV_NAMES = frozenset(k.env for k in KEYS)


@dataclass(frozen=True, slots=True)
class Setting:
    value: str
    source: Source


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """The effective value and source of every setting; `policy` is the agent-policy part, validated."""

    values: Mapping[str, Setting]
    policy: AgentPolicy

    def __getitem__(self, name: str) -> str:
        return self.values[name].value

    @property
    def enforcement(self) -> Enforcement:
        return self.policy.enforcement

    @property
    def capture_mode(self) -> CaptureMode:
        return self.policy.capture_mode

    def shown(self) -> dict[str, dict[str, str]]:
        """`config show --json`: every setting with its source; the token and proxy password masked."""
        return {name: {"value": _masked(name, s.value), "source": s.source.value} for name, s in self.values.items()}


def _masked(name: str, value: str) -> str:
    if name == "token":
        # an enrollment token's prefix is what the control plane lists and revokes by; nothing of other tokens
        return "" if not value else (value[:12] + "***" if value.startswith("the-") else "***")
    if name in ("upstream_proxy", "release_index"):
        return redact_url(value)
    return value


def _where(key: Key, source: Source, managed_label: str) -> str:
    if source is Source.env:
        return f"{key.env} (environment)"
    if source is Source.managed:
        return f"{key.env} (managed file {managed_label})"
    return f"{key.name} (control plane's agent policy)"


def resolve(env: Mapping[str, str], managed: Mapping[str, str], control_plane: Mapping[str, object] | None,
            login: str, managed_label: str = MANAGED_DEFAULT) -> AgentSettings:
    """Pick each setting from the highest layer that sets it and validate it there. Raises SettingsError
    listing every bad value with its key, its layer and an example."""
    defaults = AgentPolicy().model_dump(mode="json")
    defaults.update(log_level="info", user=login, control_plane="", token="", forward_proxy_port="")
    cp = control_plane or {}
    values: dict[str, Setting] = {}
    problems: list[str] = []
    for key in KEYS:
        layers: list[tuple[Source, object]] = [(Source.env, env.get(key.env)), (Source.managed, managed.get(key.env))]
        if not key.local:
            layers.append((Source.control_plane, cp.get(key.name)))
        source, raw = next(((s, v) for s, v in layers if v not in (None, "")), (Source.default, defaults[key.name]))
        if source is Source.default:
            values[key.name] = Setting(str(raw), source)
            continue
        try:
            value = _check(key, raw)
        except ValueError as exc:
            problems.append(f"{_where(key, source, managed_label)}: {exc}")
            continue
        values[key.name] = Setting(value, source)
    if problems:
        raise SettingsError(problems)
    policy = parse_agent_policy({k: values[k].value for k in _POLICY_KEYS})
    return AgentSettings(values, policy)


def _check(key: Key, raw: object) -> str:
    if key.check is not None:
        if not isinstance(raw, str):
            raise ValueError(f"expected a string, got {type(raw).__name__}")
        return key.check(raw.strip())
    try:
        value: object = getattr(parse_agent_policy({key.name: raw}), key.name)
    except AgentPolicyError as exc:
        raise ValueError(exc.problems[0].removeprefix(f"{key.name}: ")) from None
    return value.value if isinstance(value, StrEnum) else str(value)


@dataclass(frozen=True, slots=True)
class LocalLayers:
    """The layers above the control plane's, fixed when the agent starts."""

    env: Mapping[str, str]
    managed: Mapping[str, str]
    managed_label: str
    login: str

    def resolve(self, control_plane: Mapping[str, object] | None) -> AgentSettings:
        return resolve(self.env, self.managed, control_plane, self.login, self.managed_label)

"""The configuration file: one validated, frozen model.

Errors name the file, the key path and the problem; nothing else in the package reads raw
config dictionaries.
"""

from __future__ import annotations

import ipaddress
import os
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import orjson
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from tollhouse.alerts.config import AlertsConfig
from tollhouse.audit.syslog import parse_syslog_url
from tollhouse.console.settings import ConsoleConfig
from tollhouse.policy.rules import PolicyError, Rule, ScopeKind, parse_rules
from tollhouse.policy.timewindow import zone
from tollhouse.providers.family import Family
from tollhouse.providers.paths import PathError, normalise_path


class ConfigError(Exception):
    """A configuration problem a user can fix; the message says where and how."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _http_url(value: str) -> str:
    if not (value.startswith("http://") or value.startswith("https://")):
        raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


HttpUrl = Annotated[str, AfterValidator(_http_url)]


class Enforcement(StrEnum):
    off = "off"
    on = "on"


class Unpriced(StrEnum):
    """pricing.unpriced: what happens, while enforcing, to a call to a model with no price under a spend cap."""

    block = "block"
    allow = "allow"


class CaptureMode(StrEnum):
    telemetry = "telemetry"
    enterprise = "enterprise"


_DEFAULT_UPSTREAMS: dict[str, tuple[str, Family]] = {
    "openai": ("https://api.openai.com", Family.openai),
    "anthropic": ("https://api.anthropic.com", Family.anthropic),
    "gemini": ("https://generativelanguage.googleapis.com", Family.gemini),
}

# genai-prices names some providers differently from the route prefix.
_PRICE_PROVIDER_IDS = {"gemini": "google", "xai": "x-ai", "azure-openai": "azure"}


class ProviderConfig(_Frozen):
    upstream: HttpUrl
    family: Family = Family.openai
    api_key: SecretStr | None = None
    api_key_env: str | None = None
    price_provider: str | None = None
    timeout_s: float = Field(default=600.0, gt=0)
    # Paths (after the /{provider} prefix; '*' for any one segment) let through while enforcing although the
    # gateway does not know their class. Stored normalised, as requests are matched.
    passthrough: tuple[str, ...] = ()
    # Host names the forward proxy intercepts for this provider (forward_proxy.intercept; README "Forward-proxy mode")
    hosts: tuple[str, ...] = ()

    @field_validator("hosts")
    @classmethod
    def _host_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return host_names(value)

    @field_validator("passthrough")
    @classmethod
    def _normalised(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for i, path in enumerate(value):
            if not path.startswith("/"):
                raise ValueError(f"[{i}] {path!r}: write the path after the provider prefix, starting with '/' "
                                 "(e.g. /v1/vector_stores)")
            if "?" in path or "#" in path:
                raise ValueError(f"[{i}] {path!r}: a path only, without a query string or fragment")
            try:
                normal = normalise_path(path)
            except PathError as exc:
                raise ValueError(f"[{i}] {exc}") from None
            if normal == "/":
                raise ValueError(f"[{i}] {path!r}: the provider's root lets everything through; list paths")
            out.append(normal)
        return tuple(out)

    def resolve_api_key(self) -> str | None:
        """The real provider key swapped in for gateway virtual keys (config, then env)."""
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_env:
            return os.environ.get(self.api_key_env) or None
        return None


def host_names(value: tuple[str, ...]) -> tuple[str, ...]:
    """Host names, lower-cased, checked for shape (a leading '*.' allowed)."""
    out = []
    for i, name in enumerate(value):
        host = name.strip().lower().rstrip(".")
        bare = host.removeprefix("*.")
        labels = bare.split(".")
        if not bare or not all(part and len(part) <= 63 and part.replace("-", "").isalnum() for part in labels):
            raise ValueError(f"[{i}] {name!r} is not a host name; example: api.openai.com (or *.openai.azure.com)")
        out.append(host)
    return tuple(out)


class ForwardProxyConfig(_Frozen):
    """forward_proxy: an HTTP CONNECT proxy for tools that cannot set a base URL (README "Forward-proxy mode")."""

    port: int | None = Field(default=None, ge=0, le=65535)  # None: off; 0: any free port
    host: str | None = None  # the address to bind; None: the gateway's own (127.0.0.1 by default)
    intercept: tuple[str, ...] = ("api.openai.com", "api.anthropic.com", "generativelanguage.googleapis.com")
    deny: tuple[str, ...] = ()  # hosts, *.wildcards, IP addresses or CIDRs refused (403)
    max_connections: int = Field(default=1000, gt=0)
    max_head_bytes: int = Field(default=16 * 1024, ge=1024, le=1024 * 1024)
    head_timeout_s: float = Field(default=10.0, gt=0)  # accept to the end of the CONNECT head
    handshake_timeout_s: float = Field(default=10.0, gt=0)  # the TLS handshake of an intercepted connection
    connect_timeout_s: float = Field(default=10.0, gt=0)  # reaching a tunnelled host
    idle_timeout_s: float = Field(default=300.0, gt=0)  # a tunnel with no byte either way
    leaf_cache: int = Field(default=256, gt=0)  # leaf certificates kept minted
    # hosts (GET /api/v1/hosts) not seen for this long are deleted, this gateway's tallies and agents' reports alike
    hosts_retention_days: int = Field(default=90, ge=1, le=3650)
    # CONNECTs must carry a gateway key in Proxy-Authorization; None: when bound to other than a loopback address
    require_auth: bool | None = None

    @field_validator("intercept")
    @classmethod
    def _intercept(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return host_names(value)

    @field_validator("deny")
    @classmethod
    def _deny(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for i, entry in enumerate(value):
            try:
                out.append(str(ipaddress.ip_network(entry.strip(), strict=False)))
                continue
            except ValueError:
                pass
            try:
                out.extend(host_names((entry,)))
            except ValueError:
                raise ValueError(f"[{i}] {entry!r} is neither a host (evil.example), a wildcard (*.evil.example) "
                                 "nor an address or CIDR (203.0.113.0/24)") from None
        return tuple(out)


class IdentityConfig(_Frozen):
    trust_user_header: bool = False
    default_user: str | None = None  # the subject of calls that name no one (the agent: the machine's user)
    # A caller who is no person or service of the directory, while enforcing: block (401) or allow.
    # Unset: block once the directory names anyone.
    unknown_callers: Literal["block", "allow"] | None = None
    # Reverse proxies (addresses or CIDRs) whose X-Forwarded-For names the client (per-address limits)
    trusted_proxies: tuple[str, ...] = ()

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR such as 10.0.0.0/8") from None
        return value


class Team(_Frozen):
    id: str
    parent: str | None = None
    cost_centre: str | None = None


class Project(_Frozen):
    id: str
    team: str | None = None
    cost_centre: str | None = None


class Person(_Frozen):
    id: str
    team: str | None = None
    projects: tuple[str, ...] = ()
    kind: Literal["employee", "contractor"] = "employee"
    cost_centre: str | None = None
    email: str | None = None  # where alerts about this person's own requests go (exemption decisions)
    provider_key_sha256: tuple[str, ...] = ()

    @field_validator("provider_key_sha256")
    @classmethod
    def _hex(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for digest in value:
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
                raise ValueError(f"{digest!r} is not a SHA-256 hex digest (64 hex characters)")
        return tuple(d.lower() for d in value)


class Service(_Frozen):
    id: str
    team: str | None = None
    project: str | None = None
    cost_centre: str | None = None


class DirectoryConfig(_Frozen):
    org: str = "default"
    teams: tuple[Team, ...] = ()
    projects: tuple[Project, ...] = ()
    people: tuple[Person, ...] = ()
    services: tuple[Service, ...] = ()

    @model_validator(mode="after")
    def _references(self) -> DirectoryConfig:
        team_ids = [t.id for t in self.teams]
        _unique("teams", team_ids)
        _unique("projects", [p.id for p in self.projects])
        _unique("people", [p.id for p in self.people])
        _unique("services", [s.id for s in self.services])
        teams = set(team_ids)
        projects = {p.id for p in self.projects}
        for i, t in enumerate(self.teams):
            if t.parent is not None and t.parent not in teams:
                raise ValueError(f"teams[{i}] ({t.id}): parent {t.parent!r} is not a team in directory.teams")
        for i, p in enumerate(self.projects):
            if p.team is not None and p.team not in teams:
                raise ValueError(f"projects[{i}] ({p.id}): team {p.team!r} is not a team in directory.teams")
        for i, person in enumerate(self.people):
            if person.team is not None and person.team not in teams:
                raise ValueError(f"people[{i}] ({person.id}): team {person.team!r} is not in directory.teams")
            for proj in person.projects:
                if proj not in projects:
                    raise ValueError(f"people[{i}] ({person.id}): project {proj!r} is not in directory.projects")
        for i, s in enumerate(self.services):
            if s.team is not None and s.team not in teams:
                raise ValueError(f"services[{i}] ({s.id}): team {s.team!r} is not in directory.teams")
            if s.project is not None and s.project not in projects:
                raise ValueError(f"services[{i}] ({s.id}): project {s.project!r} is not in directory.projects")
        # A cycle in the team tree would make ancestor walks loop forever.
        parents = {t.id: t.parent for t in self.teams}
        for start in parents:
            seen: set[str] = set()
            node: str | None = start
            while node is not None:
                if node in seen:
                    raise ValueError(f"teams: the parent chain of {start!r} loops back to {node!r}")
                seen.add(node)
                node = parents.get(node)
        return self


def _unique(what: str, ids: list[str]) -> None:
    seen: set[str] = set()
    for ident in ids:
        if ident in seen:
            raise ValueError(f"{what}: id {ident!r} appears more than once")
        seen.add(ident)


class PriceOverride(_Frozen):
    """USD per million tokens, overriding or adding to the genai-prices table; and/or the most output tokens
    the model generates in one call (the worst case of a call that sets no limit)."""

    provider: str
    model: str
    input_mtok: Decimal | None = Field(default=None, ge=0)
    output_mtok: Decimal | None = Field(default=None, ge=0)
    cache_read_mtok: Decimal | None = Field(default=None, ge=0)
    cache_write_mtok: Decimal | None = Field(default=None, ge=0)
    max_output_tokens: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _complete(self) -> PriceOverride:
        priced = (self.input_mtok is not None, self.output_mtok is not None)
        if priced == (False, False):
            if self.cache_read_mtok is not None or self.cache_write_mtok is not None:
                raise ValueError(f"{self.provider}/{self.model}: cache prices need input_mtok and output_mtok")
            if self.max_output_tokens is None:
                raise ValueError(f"{self.provider}/{self.model}: give input_mtok and output_mtok (USD per "
                                 "million tokens), max_output_tokens, or both")
        elif priced != (True, True):
            missing = "output_mtok" if priced[0] else "input_mtok"
            raise ValueError(f"{self.provider}/{self.model}: {missing} is required with "
                             f"{'input_mtok' if priced[0] else 'output_mtok'}")
        return self


class PricingConfig(_Frozen):
    overrides: tuple[PriceOverride, ...] = ()
    unpriced: Unpriced = Unpriced.block  # a model with no price under a spend cap, while enforcing: refuse or allow


class StoreConfig(_Frozen):
    url: str = ""  # empty: sqlite:///DATA_DIR/tollhouse.db; or postgresql://USER[:PASSWORD]@HOST:PORT/DB

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if value and not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("must be sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
        return value


class CountersConfig(_Frozen):
    url: str = "local://"  # in-process (rebuilt from the store at start) or redis://host:6379/0 (shared)
    fail_open: bool = False  # counters unreachable while enforcing: refuse (default) or forward uncounted

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if value != "local://" and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("use local:// (in-process) or redis://HOST:PORT/DB to share counters across gateways")
        return value


class LimitsConfig(_Frozen):
    """Bounds on what one call may take of the gateway (README, "Limits")."""

    max_body_bytes: int = Field(default=32 * 1024 * 1024, gt=0)  # a request body (413 past it)
    max_response_bytes: int = Field(default=64 * 1024 * 1024, gt=0)  # a whole (non-stream) upstream body (502)
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)  # a head, request (431) or upstream response (502)
    max_headers: int = Field(default=100, ge=10, le=10_000)  # headers of a request (431) or upstream response (502)
    head_timeout_s: float = Field(default=30.0, gt=0)  # a request's head, from its first byte (408)
    body_timeout_s: float = Field(default=300.0, gt=0)  # a request's body, from the end of its head (408)
    idle_timeout_s: float = Field(default=75.0, gt=0)  # a keep-alive connection with no request under way
    write_timeout_s: float = Field(default=60.0, gt=0)  # a client that reads < 64 KiB of its answer in it: cut
    upstream_total_timeout_s: float = Field(default=600.0, gt=0)  # a whole non-stream response (504)
    stream_total_timeout_s: float = Field(default=3600.0, gt=0)  # a whole stream (ended with an error event)
    max_connections: int | None = Field(default=None, gt=0)  # None: min(10000, RLIMIT_NOFILE - 64)
    # CONTENT_DLP: the most time inspecting one prompt may take (matching, in a worker thread; regex counts it in
    # process CPU time); past it a BLOCK rule fails closed unless it is marked fail_open
    dlp_time_ms: int = Field(default=200, gt=0, le=60_000)


class EventsConfig(_Frozen):
    flush_interval_s: float = Field(default=0.2, gt=0)
    # Events per store transaction at most (a batch also goes every flush_interval_s). Each batch costs the store
    # thread a few GIL hand-overs with the event loop (statements, journal files): at 2,000, a busy gateway
    # writes every 0.2 s rather than 16 times a second (c=32: the loop thread blocked 12 times per 1,000 calls
    # against 31 at 500).
    batch_size: int = Field(default=2000, gt=0)
    # Events held in memory while storage fails; new calls are refused (503) from 90% of it on.
    max_pending: int = Field(default=100_000, ge=10)


class ExemptionsConfig(_Frozen):
    refresh_interval_s: float = Field(default=2.0, gt=0)  # how soon approvals on another gateway apply here
    # Requests waiting for a decision: per subject, per requesting client address, and in all (a bound no one
    # source can reach, so one requester cannot fill the queue for everyone).
    max_pending_per_subject: int = Field(default=20, ge=1)
    max_pending_per_address: int = Field(default=20, ge=1)
    max_pending: int = Field(default=10_000, ge=1)
    # The gateway whose queue holds this one's exemptions (an agent: its control plane, set by `tollhouse agent`).
    # Block errors link to its console form, and this gateway's exemption routes redirect there. Empty: this one.
    authority_url: str = ""

    @field_validator("authority_url")
    @classmethod
    def _authority(cls, value: str) -> str:
        parts = urlsplit(value)
        if value and (parts.scheme not in ("http", "https") or not parts.hostname):
            raise ValueError(f"{value!r} is not an http(s) URL; example: \"https://tollhouse.acme.internal\"")
        return value.rstrip("/")


class LedgerConfig(_Frozen):
    billing_day: int = Field(default=1, ge=1, le=28)  # monthly budgets reset at 00:00 on this day
    timezone: str = "UTC"  # ... in this IANA zone
    default_max_output_tokens: int = Field(default=4096, gt=0)  # worst case when a call sets no limit
    reservation_ttl_s: float = Field(default=900, gt=0)  # a reservation never settled is released then
    # Budget leases (control plane → agents): an agent spends against a slice of a cap's remaining budget,
    # renewed in the background; the control plane's values are the ones in force.
    lease_usd: Decimal | None = Field(default=None, gt=0)  # a spend lease's size; default: lease_fraction of the cap
    lease_fraction: float = Field(default=0.01, gt=0, le=1)  # of a cap's limit (token and request caps always)
    lease_ttl_s: float = Field(default=60, ge=1, le=3600)  # a lease not renewed for this long is spent no more

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        zone(value)
        return value


class AuditConfig(_Frozen):
    checkpoint_every: int = Field(default=100, gt=0)  # sign the chain's head every N entries ...
    checkpoint_interval_s: float = Field(default=60.0, gt=0)  # ... and every T seconds while entries arrive
    syslog_url: str = ""  # syslog://host:port (UDP) or syslog+tcp://host:port: forward every entry (RFC 5424)
    # Ed25519 key that signs checkpoints (generated if missing; public key beside it as .pub). Gateways that
    # share one store must share one key file (e.g. a mounted secret). Default: DATA_DIR/audit_signing_key.pem
    signing_key_file: str = ""

    @field_validator("syslog_url")
    @classmethod
    def _syslog(cls, value: str) -> str:
        if value:
            parse_syslog_url(value)
        return value


class BlockStyle(StrEnum):
    """How a blocked call is answered: `error` (the provider's error shape and status), `message` (a normal,
    successful answer in the provider's shape whose text is the block message), `auto` (message for the
    interactive tools recognised by their User-Agent, error for programs and SDKs)."""

    auto = "auto"
    error = "error"
    message = "message"


class SoftCapNotice(StrEnum):
    """How a soft cap's warning reaches the caller: `header` (X-Tollhouse-Warning only), `message` (also appended
    to the assistant's answer, streams included), `auto` (message for interactive tools, header otherwise)."""

    auto = "auto"
    header = "header"
    message = "message"


class AnswerStyle(_Frozen):
    """A person's or service's own choice of block_style / soft_cap_notice (unset: the policy's)."""

    block_style: BlockStyle | None = None
    soft_cap_notice: SoftCapNotice | None = None


class PolicyConfig(_Frozen):
    rules: tuple[dict[str, Any], ...] = ()
    rules_file: str | None = None  # YAML/JSON list of rules (or {"rules": [...]}); hot-reloaded
    timezone: str = "UTC"  # default IANA zone for time windows
    enforce_teams: tuple[str, ...] = ()  # phased rollout: enforce for these teams (and below) while off
    block_style: BlockStyle = BlockStyle.auto
    soft_cap_notice: SoftCapNotice = SoftCapNotice.auto
    per_subject: dict[str, AnswerStyle] = Field(default_factory=dict)  # person or service id -> its own styles
    _compiled: tuple[Rule, ...] = PrivateAttr(default=())

    @model_validator(mode="after")
    def _valid(self) -> PolicyConfig:
        zone(self.timezone)
        if self.rules and self.rules_file:
            raise ValueError("give either rules or rules_file, not both")
        try:
            self._compiled = parse_rules(list(self.rules), self.timezone)
        except PolicyError as exc:
            raise ValueError("invalid rules:\n    " + "\n    ".join(exc.problems)) from None
        return self

    @property
    def compiled_rules(self) -> tuple[Rule, ...]:
        """`rules` as the engine's Rules (parsed once, when the config was validated)."""
        return self._compiled


class Settings(_Frozen):
    enforcement: Enforcement = Enforcement.off

    @field_validator("enforcement", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `on` / `off` as a boolean.
        if isinstance(value, bool):
            return "on" if value else "off"
        return value

    capture_mode: CaptureMode = CaptureMode.telemetry
    admin_token: SecretStr | None = None
    policy_url: str | None = None
    exemption_instructions: str = (
        "To request an exemption, follow the exemption link or contact your AI policy owner."
    )
    providers: dict[str, ProviderConfig] = Field(default_factory=dict, validate_default=True)
    upstream_proxy: HttpUrl | None = None
    identity: IdentityConfig = IdentityConfig()
    directory: DirectoryConfig = DirectoryConfig()
    policy: PolicyConfig = PolicyConfig()
    pricing: PricingConfig = PricingConfig()
    store: StoreConfig = StoreConfig()
    counters: CountersConfig = CountersConfig()
    limits: LimitsConfig = LimitsConfig()
    ledger: LedgerConfig = LedgerConfig()
    events: EventsConfig = EventsConfig()
    exemptions: ExemptionsConfig = ExemptionsConfig()
    audit: AuditConfig = AuditConfig()
    alerts: AlertsConfig = AlertsConfig()
    forward_proxy: ForwardProxyConfig = ForwardProxyConfig()
    console: ConsoleConfig = ConsoleConfig()  # sign-in: session length, single sign-on, roles

    @field_validator("providers", mode="before")
    @classmethod
    def _provider_defaults(cls, value: Any) -> Any:
        """Fill in family and upstream for the three well-known ids; keep the rest as given."""
        if value is None:
            value = {}
        if not isinstance(value, dict):
            return value
        merged: dict[str, Any] = {}
        for pid, (upstream, family) in _DEFAULT_UPSTREAMS.items():
            merged[pid] = {"upstream": upstream, "family": family.value, "api_key_env": f"{pid.upper()}_API_KEY",
                           "hosts": [urlsplit(upstream).hostname]}
        if "gemini" in merged:
            merged["gemini"]["api_key_env"] = "GEMINI_API_KEY"
        for pid, entry in value.items():
            if not isinstance(pid, str) or not pid or "/" in pid:
                raise ValueError(f"provider id {pid!r} must be a non-empty name without '/'")
            if isinstance(entry, dict):
                base = dict(merged.get(pid, {}))
                base.update(entry)
                merged[pid] = base
            else:
                merged[pid] = entry
        return merged

    @model_validator(mode="after")
    def _intercepted_hosts(self) -> Settings:
        """Every intercepted host is some provider's (providers.NAME.hosts), and only one's."""
        owners: dict[str, str] = {}
        for pid, cfg in self.providers.items():
            for host in cfg.hosts:
                if host in owners:
                    raise ValueError(f"providers.{pid}.hosts: {host!r} is also a host of providers.{owners[host]}")
                owners[host] = pid
        if self.forward_proxy.port is not None:
            for host in self.forward_proxy.intercept:
                if host not in owners:
                    raise ValueError(f"forward_proxy.intercept: {host!r} is no provider's host; add it to "
                                     "providers.NAME.hosts for the provider it stands for, or remove it")
        return self

    @model_validator(mode="after")
    def _policy_targets(self) -> Settings:
        teams = {t.id for t in self.directory.teams}
        for team in self.policy.enforce_teams:
            if team not in teams:
                raise ValueError(f"policy.enforce_teams: {team!r} is not a team in directory.teams")
        known = {p.id for p in self.directory.people} | {s.id for s in self.directory.services}
        for subject in self.policy.per_subject:
            if known and subject not in known:
                raise ValueError(f"policy.per_subject: {subject!r} is not a person or service in the directory "
                                 "(directory.people / directory.services)")
        if self.policy.rules:
            problems = target_problems(self.policy.compiled_rules, self.directory)
            if problems:
                raise ValueError("invalid rules:\n    " + "\n    ".join(problems))
        return self

    def price_provider_id(self, provider: str) -> str:
        cfg = self.providers[provider]
        if cfg.price_provider:
            return cfg.price_provider
        return _PRICE_PROVIDER_IDS.get(provider, provider)

    def resolved_admin_token(self) -> str | None:
        env = os.environ.get("TOLLHOUSE_ADMIN_TOKEN")
        if env:
            return env
        return self.admin_token.get_secret_value() if self.admin_token else None


def target_problems(rules: tuple[Rule, ...], directory: DirectoryConfig) -> list[str]:
    """Rules that target a team, project or service the directory does not have."""
    known = {
        ScopeKind.team: {t.id for t in directory.teams},
        ScopeKind.project: {p.id for p in directory.projects},
        ScopeKind.service: {s.id for s in directory.services},
    }
    out = []
    for rule in rules:
        ids = known.get(rule.scope)
        if ids is not None and rule.target is not None and rule.target not in ids:
            field = "service" if rule.scope is ScopeKind.service else rule.scope.value
            out.append(f"rule {rule.id}: {field}: {rule.target!r} is not in directory.{rule.scope.value}s "
                       f"(known: {', '.join(sorted(ids)) or 'none'})")
    return out


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


def validation_problems(err: ValidationError, prefix: str = "") -> list[str]:
    """One line per problem: where (dotted path under `prefix`) and what is wrong."""
    lines = []
    for e in err.errors():
        parts = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        loc = _format_loc(((prefix,) if prefix else ()) + parts)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the Configuration section of the README)"
        lines.append(f"{loc}: {msg}")
    return lines


def format_validation_error(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid configuration ({err.error_count()} problem(s)):"]
    lines += [f"  {line}" for line in validation_problems(err)]
    return "\n".join(lines)


def parse_settings(data: Any, source: str) -> Settings:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys to values")
    try:
        return Settings.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(source, err)) from None


def load_settings(path: Path | None) -> Settings:
    """Load and validate the config file; no file means the embedded defaults."""
    if path is None:
        return parse_settings({}, "(defaults)")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
    try:
        data = orjson.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML/JSON: {exc}") from None
    return parse_settings(_relative_to(data, path.parent), str(path))


def _relative_to(data: object, base: Path) -> object:
    """A relative `policy.rules_file` is relative to the config file's directory, whatever the working
    directory of the command that reads it (serve, policy explain, workers)."""
    policy = data.get("policy") if isinstance(data, dict) else None
    rules_file = policy.get("rules_file") if isinstance(policy, dict) else None
    if not isinstance(data, dict) or not isinstance(policy, dict) or not isinstance(rules_file, str) \
            or not rules_file or Path(rules_file).expanduser().is_absolute():
        return data
    return {**data, "policy": {**policy, "rules_file": str(base.absolute() / rules_file)}}

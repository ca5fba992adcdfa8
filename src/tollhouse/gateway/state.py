"""The one state object, built at start-up and passed down (frozen; what changes is published as snapshots)."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from redis.exceptions import RedisError

from tollhouse.alerts.handoff import AlertQueue
from tollhouse.audit.checkpoint import load_or_create_signing_key
from tollhouse.audit.log import AuditLog
from tollhouse.audit.syslog import SyslogForwarder, parse_syslog_url
from tollhouse.config import ProviderConfig, Settings
from tollhouse.control.documents import ChangeFeed, Documents
from tollhouse.control.leases import LeaseBook, LeaseSizing
from tollhouse.control.overrides import OverrideSet
from tollhouse.directory import Directory
from tollhouse.events.journal import PROVISIONAL, Journal, Recovered, recover
from tollhouse.events.model import CallEvent
from tollhouse.events.store import LeaseRow, Store, StoreError, open_store
from tollhouse.events.writer import EventWriter, StoreRunner
from tollhouse.forward.hosts import HostBook
from tollhouse.gateway.directory_holder import DirectoryHolder
from tollhouse.gateway.live import LiveSettings
from tollhouse.gateway.metrics import GatewayMetrics
from tollhouse.gateway.oidc_client import OidcClient
from tollhouse.gateway.overrides import EXEMPTIONS_FEED, OverrideHolder
from tollhouse.gateway.policy_holder import PolicyHolder, initial_policy
from tollhouse.gateway.redact import Redactor
from tollhouse.gateway.routes_memo import RouteMemo
from tollhouse.gateway.session_revocations import Revocations
from tollhouse.gateway.sign_in_guard import SignInGuard
from tollhouse.gateway.wire_limits import client_limits
from tollhouse.keys import EnrollmentCache, KeyCache
from tollhouse.ledger.base import Ledger
from tollhouse.ledger.local import HistoryRow, Loader, LocalLedger
from tollhouse.ledger.outage import OutageTracker
from tollhouse.ledger.redis import RedisLedger, rebuild_all_counters
from tollhouse.lifespan import Lifespan
from tollhouse.policy.engine import CompiledPolicy
from tollhouse.policy.timewindow import zone
from tollhouse.pricing import PriceBook
from tollhouse.providers.base import ProviderProtocol
from tollhouse.providers.family import Family
from tollhouse.providers.protocols import protocol_for
from tollhouse.snapshot import Published
from tollhouse.wire.client import Client

log = logging.getLogger("tollhouse")


@dataclass(frozen=True, slots=True)
class ProviderRoute:
    id: str
    family: Family
    protocol: ProviderProtocol
    upstream: str
    api_key: str | None
    price_provider: str
    client: Client
    host: str  # the upstream's hostname, for provider rules written by hostname
    auth_names: frozenset[str]  # lower-case names of the headers that carry this family's API key
    redactor: Redactor | None = None  # keeps api_key out of responses to calls it was injected into


@dataclass(frozen=True, slots=True)
class GatewayState:
    """Everything a handler needs, built at start-up and never reassigned.

    Immutable configuration: `settings`, `data_dir`, `admin_token`, `console_url`, `prices`, `clock`, `loop`.

    What changes at run time is an immutable snapshot behind a `Published` handle (tollhouse.snapshot): read
    `.current` once per call and use that value throughout, so a call sees one consistent version; a change
    publishes a new value whole and never mutates the old one.
      - `policy`: the CompiledPolicy in force. Published by `policies` (API edits, rollbacks, the rules file,
        exemption approvals, an agent's bundle, versions another gateway sharing the store wrote).
      - `directory`: the Directory in force, one new instance per version. Published by `directories`.
      - `live_settings`: enforcement, capture mode, upstream proxy (LiveSettings). Published by the agent when its
        agent policy changes (`publish_live`); a gateway keeps the values of its config.
      - `providers`: provider id → ProviderRoute (a MappingProxyType). Republished whole by `rebuild_routes` when
        the upstream proxy changes; calls in flight keep the route (and client) they started with.
      - `overrides`: the approved exemption overrides (OverrideSet). Published by `override_loader`.
      - `health`: extra /healthz sections by name (a MappingProxyType). Published by `add_health_section`.
      - `sessions.published`: the console sessions signed out or revoked (Revoked). Published by `sessions`
        (a sign-out, an admin's revocation, each second's reload of the store's).

    Long-lived services (internally synchronised, started and stopped by `lifespan`): metrics, runner, writer,
    keys, ledger, audit, docs, enrollment, outage, and the snapshot writers above.
    """

    settings: Settings
    data_dir: Path
    admin_token: str
    console_url: str
    prices: PriceBook
    clock: Callable[[], float]  # wall clock, seconds (time.time; tests pass a fake)
    loop: asyncio.AbstractEventLoop  # the event loop the gateway serves on
    # live state: immutable snapshots
    policy: Published[CompiledPolicy]
    directory: Published[Directory]
    live_settings: Published[LiveSettings]
    providers: Published[Mapping[str, ProviderRoute]]
    overrides: Published[OverrideSet]
    health: Published[Mapping[str, Callable[[], object]]]
    # what publishes them
    policies: PolicyHolder
    directories: DirectoryHolder
    override_loader: OverrideHolder  # loads approved exemption overrides into `overrides`
    # long-lived services
    metrics: GatewayMetrics
    runner: StoreRunner
    writer: EventWriter
    keys: KeyCache
    ledger: Ledger
    leases: LeaseBook  # budget leases granted to agents (held in `ledger`)
    audit: AuditLog
    docs: Documents  # versioned control-plane documents (policy, directory, agent policy)
    enrollment: EnrollmentCache  # agents' enrollment tokens
    outage: OutageTracker  # counter-store outages, audited once each (not once per call)
    sessions: Revocations  # console sessions signed out or revoked (published: Revoked)
    guard: SignInGuard  # wrong admin tokens per client address, and the lockouts they cause
    lifespan: Lifespan  # every component with background work or resources, started and stopped in order
    routes: RouteMemo = field(default_factory=RouteMemo)  # paths already split and classified (a memo)
    alerts: AlertQueue = field(default_factory=AlertQueue)  # finished calls handed to the alert service
    hosts: HostBook = field(default_factory=HostBook)  # hosts the forward proxy saw, not yet stored (issue 21)
    sso: OidcClient = field(default_factory=OidcClient)  # the console's single sign-on: provider metadata, keys

    async def close(self) -> None:
        """Stop everything that started, in reverse order (see Lifespan.stop)."""
        await self.lifespan.stop()


def unsaved_history(events: list[CallEvent], scope: str, ids: frozenset[str], since_ms: int, bucket_ms: int
                    ) -> list[HistoryRow]:
    """The same rows as Store.usage_history, for events not yet in the store."""
    field = scope if scope in ("subject", "team", "project") else None  # org: every event
    out: list[HistoryRow] = []
    for e in events:
        if e.ts_ms < since_ms or e.decision == "block" or (field is not None and getattr(e, field) not in ids):
            continue
        out.append((e.ts_ms - e.ts_ms % bucket_ms, e.provider, e.cost_nusd or 0, e.input_tokens, e.output_tokens,
                    1 if e.status < 400 else 0))
    return out


def replay_journal(store: Store, journal_dir: Path, counters_url: str = "local://") -> Recovered | None:
    """Events a killed process journaled but never stored go into the store before we serve. The intent
    of a call that never finished is stored as it is (its worst case counts against budgets). When the
    store cannot take them now (disk full), they are returned, their segments left in place: the writer
    adopts them and stores them once it can."""
    if not journal_dir.exists():
        return None
    recovered = recover(journal_dir)
    events, captures, paths = recovered
    if events:
        try:
            store.insert_events(events, captures)
        except StoreError as exc:
            log.error("could not store the %d events left in %s by the previous run (%s); they are kept and "
                      "written as soon as the store takes them", len(events), journal_dir, exc)
            return recovered
        unfinished = sum(1 for e in events if e.usage_source == PROVISIONAL)
        log.warning("recovered %d events from %d journal segments in %s (the previous run did not shut down "
                    "cleanly)%s", len(events), len(paths), journal_dir,
                    f"; {unfinished} calls were in flight and are recorded at their worst case" if unfinished else "")
        if unfinished and counters_url != "local://":
            _rebuild_shared_counters(counters_url)
    for path in paths:
        path.unlink()
    return None


def _rebuild_shared_counters(url: str) -> None:
    """Calls that were in flight when a process died are now in the store at their worst case, while their
    reservations in Redis will only expire: every counter is rebuilt from the store before its next use, so
    their spend counts (the expiring holds may count twice until then: never less)."""
    try:
        marked = rebuild_all_counters(url)
    except RedisError as exc:
        log.error("could not mark the shared budget counters for rebuilding (%s): calls in flight when the "
                  "previous run stopped count again only once their reservations expire", exc)
        return
    log.warning("%d shared budget counters will be rebuilt from the store (calls were in flight when the "
                "previous run stopped)", marked)


def admin_token_path(data_dir: Path) -> Path:
    return data_dir / "admin_token"


def admin_token_for(settings: Settings, data_dir: Path) -> str:
    """Configured token, else one generated once and kept in the data dir (mode 0600). Never logged."""
    token = settings.resolved_admin_token()
    if token:
        return token
    path = admin_token_path(data_dir)
    if path.exists():
        return path.read_text().strip()
    token = "tha-" + secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, not even briefly
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    path.chmod(0o600)
    log.warning("no admin_token configured: generated one into %s (mode 0600)", path)
    return token


def admin_token_hint(settings: Settings, data_dir: Path) -> str:
    """Where the admin token is and how to read it (for start-up banners; the token itself is never printed)."""
    if os.environ.get("TOLLHOUSE_ADMIN_TOKEN"):
        return "the TOLLHOUSE_ADMIN_TOKEN environment variable"
    if settings.admin_token is not None:
        return "admin_token in the config file"
    path = admin_token_path(data_dir)
    return f"{path} (mode 0600; read it with: cat {path})"


def admin_token_shell(settings: Settings, data_dir: Path) -> str:
    """A shell expression that yields the admin token (for the banner's curl example)."""
    if os.environ.get("TOLLHOUSE_ADMIN_TOKEN"):
        return "$TOLLHOUSE_ADMIN_TOKEN"
    if settings.admin_token is not None:
        return "$TOKEN"
    return f"$(cat {admin_token_path(data_dir)})"


def journal_dir_for(data_dir: Path, worker: int | None) -> Path:
    """Each process of `serve --workers N` journals into its own directory."""
    return data_dir / "journal" if worker is None else data_dir / "journal" / f"worker-{worker}"


def replay_all_journals(store: Store, data_dir: Path, counters_url: str = "local://") -> None:
    """Before workers start: every journal left by any earlier process (any worker count) goes in."""
    root = data_dir / "journal"
    replay_journal(store, root, counters_url)
    for sub in sorted(root.glob("worker-*")) if root.exists() else ():
        replay_journal(store, sub, counters_url)


MakeLedger = Callable[[Loader], Ledger]
"""Builds the ledger from the store's history loader (the agent's: budget leases from its control plane)."""


async def build_state(settings: Settings, data_dir: Path, public_url: str,
                      clock: Callable[[], float] = time.time, worker: int | None = None,
                      make_ledger: MakeLedger | None = None) -> GatewayState:
    """Raises RulesFileError (bad rules file), StoreError (store unusable) or SigningKeyError (audit signing key
    unreadable) before anything listens. What it built is released again when it raises. The components are
    registered in `lifespan` in start order (the store thread and the provider clients, running already, are
    adopted: stopped last); `lifespan.start()` starts the others. Stop order: policy file watch, exemption
    overrides, budget counters, audit log, event writer, provider clients, store."""
    p = settings.policy
    policy = initial_policy(p.rules, p.rules_file, p.timezone, settings.directory)
    data_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - start-up, before serving
    signer = load_or_create_signing_key(data_dir, settings.audit.signing_key_file)
    store = open_store(settings.store.url, data_dir)
    lifespan = Lifespan()
    try:
        store.use_day_zone(settings.ledger.timezone)  # usage day rollups in the organisation's local dates
        return await _build(settings, data_dir, public_url, clock, worker, policy, signer, store, lifespan,
                            make_ledger)
    except BaseException:
        if not lifespan.started:
            store.close()
        await lifespan.stop()
        raise


async def _build(settings: Settings, data_dir: Path, public_url: str, clock: Callable[[], float],
                 worker: int | None, policy: PolicyHolder, signer: Ed25519PrivateKey, store: Store,
                 lifespan: Lifespan, make_ledger: MakeLedger | None = None) -> GatewayState:
    journal_dir = journal_dir_for(data_dir, worker)
    leftover = replay_journal(store, journal_dir, settings.counters.url)
    runner = StoreRunner(store)
    lifespan.adopt("store", runner.close)
    metrics = GatewayMetrics()
    writer = EventWriter(runner, settings.events.flush_interval_s, settings.events.batch_size,
                         on_write_error=metrics.event_write_errors.inc, journal=Journal(journal_dir),
                         max_pending=settings.events.max_pending, on_drop=metrics.events_dropped.inc)
    if leftover is not None:
        writer.adopt(leftover)
    lifespan.add("event writer", writer.start, writer.close)
    directory = Published(Directory(settings.directory))

    async def load_history(scope: str, ident: str, since_ms: int, bucket_ms: int) -> list[HistoryRow]:
        ids = directory.current.descendants(ident) if scope == "team" else (ident,)
        rows = await runner.run(lambda s: s.usage_history(scope, ids, since_ms, bucket_ms))
        # What is recorded but not yet stored counts too (without waiting for a write on this call).
        return rows + unsaved_history(writer.unsaved(), scope, frozenset(ids), since_ms, bucket_ms)

    ac = settings.audit
    forwarder = SyslogForwarder(parse_syslog_url(ac.syslog_url)) if ac.syslog_url else None
    audit = AuditLog(runner, clock, signer, ac.checkpoint_every, ac.checkpoint_interval_s, forwarder)
    lifespan.add("audit log", audit.start, audit.close)
    policy.on_change = lambda kind, data: audit.record(kind, "gateway", data)

    def settle_failed(error: str) -> None:
        metrics.ledger_settle_errors.inc()
        audit.record("ledger.settle_failed", "gateway", {"error": error, "recovery": "counters rebuilt from the store"})

    docs = Documents(runner, clock, audit.record, ChangeFeed())
    directories = DirectoryHolder(directory, policy, settings.directory, docs)
    await directories.bootstrap()  # first: the policy is checked against the directory in force
    await policy.bootstrap(docs)
    await docs.refresh()

    lc = settings.ledger
    ledger: Ledger
    if make_ledger is not None:
        ledger = make_ledger(load_history)
    elif settings.counters.url == "local://":
        ledger = LocalLedger(load_history, lc.billing_day, zone(lc.timezone), lc.reservation_ttl_s)
    else:
        ledger = RedisLedger(settings.counters.url, load_history, lc.billing_day, zone(lc.timezone),
                             lc.reservation_ttl_s, on_settle_error=settle_failed)
    lifespan.add("budget counters", stop=ledger.close)  # stopped before the audit log: a settle error is audited

    async def save_leases(rows: Sequence[LeaseRow]) -> None:
        await runner.run(lambda s: s.save_leases(rows))

    async def delete_leases(keys: Sequence[tuple[str, str, str, str]]) -> None:
        await runner.run(lambda s: s.delete_leases(keys))

    leases = LeaseBook(ledger, LeaseSizing(lc.lease_ttl_s, lc.lease_usd, lc.lease_fraction), lc.billing_day,
                       zone(lc.timezone), refresh_ms=int(lc.reservation_ttl_s * 1000 / 3), save=save_leases,
                       delete=delete_leases)

    async def take_back_leases() -> None:
        rows = await runner.run(lambda s: s.load_leases())
        if rows:
            kept = await leases.load(rows, policy.current, int(clock() * 1000))
            log.info("budget leases: %d granted before the restart hold their outstanding amounts again", kept)

    lifespan.add("budget leases", take_back_leases)
    providers: Published[Mapping[str, ProviderRoute]] = Published(MappingProxyType({
        pid: _provider_route(pid, cfg, settings, settings.upstream_proxy) for pid, cfg in settings.providers.items()}))
    lifespan.adopt("provider clients", lambda: _close_clients(providers.current))
    overrides = OverrideHolder(runner, clock, settings.exemptions.refresh_interval_s, audit.record,
                               lambda generation: docs.feed.set(EXEMPTIONS_FEED, generation))
    lifespan.add("exemption overrides", overrides.start, overrides.stop)
    lifespan.add("policy file watch", policy.start, policy.stop)
    guard = SignInGuard(settings.console.failed_sign_ins, settings.console.lockout_minutes * 60, clock,
                        audit.record)
    sessions = Revocations(runner, clock, data_dir / "console-revocations.jsonl")
    await sessions.refresh()  # sessions signed out before this start stay signed out
    return GatewayState(
        settings=settings,
        data_dir=data_dir,
        admin_token=admin_token_for(settings, data_dir),
        console_url=public_url.rstrip("/") + "/console/",
        prices=PriceBook(settings.pricing.overrides),
        clock=clock,
        loop=asyncio.get_running_loop(),
        policy=policy.published,
        directory=directory,
        live_settings=Published(LiveSettings.of(settings)),
        providers=providers,
        overrides=overrides.published,
        health=Published(MappingProxyType({})),
        policies=policy,
        directories=directories,
        override_loader=overrides,
        metrics=metrics,
        runner=runner,
        writer=writer,
        keys=KeyCache(runner),
        ledger=ledger,
        leases=leases,
        audit=audit,
        docs=docs,
        enrollment=EnrollmentCache(),
        outage=OutageTracker(lambda kind, data: audit.record(kind, "gateway", data)),
        sessions=sessions,
        guard=guard,
        lifespan=lifespan,
    )


def _close_clients(routes: Mapping[str, ProviderRoute]) -> None:
    for route in routes.values():
        route.client.close()


def _client(cfg: ProviderConfig, settings: Settings, upstream_proxy: str | None) -> Client:
    return Client(str(cfg.upstream), read_timeout_s=cfg.timeout_s, proxy=upstream_proxy,
                  limits=client_limits(settings.limits))


def _provider_route(pid: str, cfg: ProviderConfig, settings: Settings, upstream_proxy: str | None) -> ProviderRoute:
    protocol = protocol_for(cfg.family)
    api_key = cfg.resolve_api_key()
    return ProviderRoute(
        id=pid,
        family=cfg.family,
        protocol=protocol,
        upstream=cfg.upstream,
        api_key=api_key,
        price_provider=settings.price_provider_id(pid),
        client=_client(cfg, settings, upstream_proxy),
        host=urlsplit(cfg.upstream).hostname or "",
        auth_names=frozenset(n.lower() for n in protocol.auth_header_names()),
        redactor=Redactor((api_key,)) if api_key else None,
    )


def rebuild_routes(state: GatewayState, upstream_proxy: str | None) -> None:
    """Dial providers through another upstream proxy from the next call on: every route is rebuilt with a new
    client and the routes are published whole. Calls in flight keep the route they started with, whose client
    is released when the last of them ends."""
    old = state.providers.current
    routes: dict[str, ProviderRoute] = {}
    for pid, route in old.items():
        cfg = state.settings.providers[pid]
        routes[pid] = replace(route, client=_client(cfg, state.settings, upstream_proxy))
    state.providers.publish(MappingProxyType(routes))
    _close_clients(old)  # idle connections now; busy ones when their call ends


def publish_live(state: GatewayState, live: LiveSettings) -> None:
    """Put new live settings in force (the agent, when its agent policy changes). A new upstream proxy
    rebuilds the provider routes first, so no call sees the new settings with the old routes."""
    old = state.live_settings.current
    if live == old:
        return
    if live.upstream_proxy != old.upstream_proxy:
        rebuild_routes(state, live.upstream_proxy)
    state.live_settings.publish(live)


def add_health_section(state: GatewayState, name: str, section: Callable[[], object]) -> None:
    """Show `section()` under `name` in /healthz."""
    state.health.publish(MappingProxyType({**state.health.current, name: section}))

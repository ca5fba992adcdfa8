"""The one state object, built at start-up and passed down (frozen)."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from tollhouse.audit.checkpoint import load_or_create_signing_key
from tollhouse.audit.log import AuditLog
from tollhouse.audit.syslog import SyslogForwarder, parse_syslog_url
from tollhouse.config import ProviderConfig, Settings
from tollhouse.control.documents import ChangeFeed, Documents
from tollhouse.directory import Directory
from tollhouse.events.journal import PROVISIONAL, Journal, Recovered, recover
from tollhouse.events.model import CallEvent
from tollhouse.events.store import Store, StoreError, open_store
from tollhouse.events.writer import EventWriter, StoreRunner
from tollhouse.gateway.directory_holder import DirectoryHolder
from tollhouse.gateway.live import LiveSettings
from tollhouse.gateway.metrics import GatewayMetrics
from tollhouse.gateway.overrides import OverrideHolder
from tollhouse.gateway.policy_holder import PolicyHolder, initial_policy
from tollhouse.gateway.redact import Redactor
from tollhouse.gateway.wire_limits import client_limits
from tollhouse.keys import EnrollmentCache, KeyCache
from tollhouse.ledger.base import Ledger
from tollhouse.ledger.local import HistoryRow, LocalLedger
from tollhouse.ledger.outage import OutageTracker
from tollhouse.ledger.redis import RedisLedger
from tollhouse.policy.timewindow import zone
from tollhouse.pricing import PriceBook
from tollhouse.providers.base import ProviderProtocol
from tollhouse.providers.family import Family
from tollhouse.providers.protocols import protocol_for
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
    settings: Settings
    data_dir: Path
    admin_token: str
    providers: dict[str, ProviderRoute]  # routes are replaced whole (rebuild_clients), never mutated
    directory: Directory
    prices: PriceBook
    metrics: GatewayMetrics
    runner: StoreRunner
    writer: EventWriter
    keys: KeyCache
    console_url: str
    policy: PolicyHolder
    ledger: Ledger
    clock: Callable[[], float]  # wall clock, seconds (time.time; tests pass a fake)
    audit: AuditLog
    docs: Documents  # versioned control-plane documents (policy, directory, agent policy)
    directories: DirectoryHolder  # publishes directory versions into `directory`
    enrollment: EnrollmentCache  # agents' enrollment tokens
    outage: OutageTracker  # counter-store outages, audited once each (not once per call)
    overrides: OverrideHolder  # approved exemption overrides, in memory for the request path
    live: LiveSettings  # enforcement, capture mode and upstream proxy as they are now (the agent changes them)
    loop: asyncio.AbstractEventLoop  # the event loop the gateway serves on
    health: dict[str, Callable[[], object]] = field(default_factory=dict)  # extra /healthz sections by name

    async def close(self) -> None:
        await self.policy.stop()
        await self.overrides.stop()
        await self.ledger.close()
        await self.audit.close()
        await self.writer.close()
        for route in self.providers.values():
            route.client.close()
        self.runner.close()


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


def replay_journal(store: Store, journal_dir: Path) -> Recovered | None:
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
    for path in paths:
        path.unlink()
    return None


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


def replay_all_journals(store: Store, data_dir: Path) -> None:
    """Before workers start: every journal left by any earlier process (any worker count) goes in."""
    root = data_dir / "journal"
    replay_journal(store, root)
    for sub in sorted(root.glob("worker-*")) if root.exists() else ():
        replay_journal(store, sub)


async def build_state(settings: Settings, data_dir: Path, public_url: str,
                      clock: Callable[[], float] = time.time, worker: int | None = None) -> GatewayState:
    """Raises RulesFileError (bad rules file), StoreError (store unusable) or SigningKeyError (audit signing key
    unreadable) before anything listens."""
    p = settings.policy
    policy = initial_policy(p.rules, p.rules_file, p.timezone, settings.directory)
    data_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - start-up, before serving
    signer = load_or_create_signing_key(data_dir, settings.audit.signing_key_file)
    store = open_store(settings.store.url, data_dir)
    journal_dir = journal_dir_for(data_dir, worker)
    leftover = replay_journal(store, journal_dir)
    runner = StoreRunner(store)
    metrics = GatewayMetrics()
    writer = EventWriter(runner, settings.events.flush_interval_s, settings.events.batch_size,
                         on_write_error=metrics.event_write_errors.inc, journal=Journal(journal_dir),
                         max_pending=settings.events.max_pending, on_drop=metrics.events_dropped.inc)
    if leftover is not None:
        writer.adopt(leftover)
    directory = Directory(settings.directory)

    async def load_history(scope: str, ident: str, since_ms: int, bucket_ms: int) -> list[HistoryRow]:
        ids = directory.descendants(ident) if scope == "team" else (ident,)
        rows = await runner.run(lambda s: s.usage_history(scope, ids, since_ms, bucket_ms))
        # What is recorded but not yet stored counts too (without waiting for a write on this call).
        return rows + unsaved_history(writer.unsaved(), scope, frozenset(ids), since_ms, bucket_ms)

    ac = settings.audit
    forwarder = SyslogForwarder(parse_syslog_url(ac.syslog_url)) if ac.syslog_url else None
    audit = AuditLog(runner, clock, signer, ac.checkpoint_every, ac.checkpoint_interval_s, forwarder)

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
    if settings.counters.url == "local://":
        ledger = LocalLedger(load_history, lc.billing_day, zone(lc.timezone), lc.reservation_ttl_s)
    else:
        ledger = RedisLedger(settings.counters.url, load_history, lc.billing_day, zone(lc.timezone),
                             lc.reservation_ttl_s, on_settle_error=settle_failed)
    providers = {pid: _provider_route(pid, cfg, settings, settings.upstream_proxy)
                 for pid, cfg in settings.providers.items()}
    return GatewayState(
        settings=settings,
        data_dir=data_dir,
        admin_token=admin_token_for(settings, data_dir),
        providers=providers,
        directory=directory,
        prices=PriceBook(settings.pricing.overrides),
        metrics=metrics,
        runner=runner,
        writer=writer,
        keys=KeyCache(runner),
        console_url=public_url.rstrip("/") + "/console/",
        policy=policy,
        ledger=ledger,
        clock=clock,
        audit=audit,
        docs=docs,
        directories=directories,
        enrollment=EnrollmentCache(),
        outage=OutageTracker(lambda kind, data: audit.record(kind, "gateway", data)),
        overrides=OverrideHolder(runner, clock, settings.exemptions.refresh_interval_s),
        live=LiveSettings.of(settings),
        loop=asyncio.get_running_loop(),
    )


def _provider_route(pid: str, cfg: ProviderConfig, settings: Settings, upstream_proxy: str | None) -> ProviderRoute:
    protocol = protocol_for(cfg.family)
    return ProviderRoute(
        id=pid,
        family=cfg.family,
        protocol=protocol,
        upstream=cfg.upstream,
        api_key=cfg.resolve_api_key(),
        price_provider=settings.price_provider_id(pid),
        client=Client(str(cfg.upstream), read_timeout_s=cfg.timeout_s, proxy=upstream_proxy,
                      limits=client_limits(settings.limits)),
        host=urlsplit(cfg.upstream).hostname or "",
        auth_names=frozenset(n.lower() for n in protocol.auth_header_names()),
        redactor=Redactor((api_key,)) if (api_key := cfg.resolve_api_key()) else None,
    )


def rebuild_clients(state: GatewayState, upstream_proxy: str | None) -> None:
    """Dial providers through another upstream proxy from the next call on. Each route is replaced whole:
    calls in flight keep the client they started with, which is released when the last of them ends."""
    if upstream_proxy == state.live.upstream_proxy:
        return
    for pid, route in list(state.providers.items()):
        cfg = state.settings.providers[pid]
        client = Client(str(cfg.upstream), read_timeout_s=cfg.timeout_s, proxy=upstream_proxy,
                        limits=client_limits(state.settings.limits))
        state.providers[pid] = replace(route, client=client)
        route.client.close()  # idle connections now; busy ones when their call ends
    state.live.upstream_proxy = upstream_proxy

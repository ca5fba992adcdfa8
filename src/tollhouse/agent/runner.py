"""`tollhouse agent`: the gateway's data plane on an engineer's machine, following a control plane.

The local config holds only local overrides (provider upstreams, ports, limits); the policy, the directory
and the agent policy come from the control plane's bundle, applied into the local store. Every call's
subject is the machine's configured user.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tollhouse import __version__
from tollhouse.agent.apply import BundleApplier
from tollhouse.agent.bundle import BundleSync, Retry
from tollhouse.agent.cache import BundleCache
from tollhouse.agent.leases import LeaseLedger
from tollhouse.agent.notices import NoticeSender
from tollhouse.agent.settings import AgentSettings, LocalLayers
from tollhouse.agent.ship_metrics import ShipMetrics
from tollhouse.agent.shipper import Shipper
from tollhouse.agent.updater import Updater, restart_in_place, running_version
from tollhouse.config import DirectoryConfig, Settings
from tollhouse.control.overrides import OverrideSet
from tollhouse.events import spool
from tollhouse.events.store import StoreError
from tollhouse.forward.ship import HostReporter
from tollhouse.gateway.app import serve
from tollhouse.gateway.state import GatewayState, add_health_section
from tollhouse.lifespan import Background, Lifespan
from tollhouse.policy.timewindow import zone

AGENT_ID_FILE = "agent_id"
log = logging.getLogger("tollhouse.agent")


@dataclass(frozen=True, slots=True)
class AgentOptions:
    control_plane: str
    token: str
    host: str = "127.0.0.1"
    port: int = 8788
    wait_s: int = 30  # how long each long-poll of the bundle is held
    retry: Retry = field(default_factory=Retry)
    ship_interval_s: float = 1.0  # how often the shipper looks at the spool
    update_interval_s: float = 3600.0  # how often the updater reads the release index (and on policy changes)
    hosts_interval_s: float = 60.0  # how often the forward proxy's hosts are reported to the control plane
    retention_days: float = 100.0  # shipped events older than this leave the laptop's store (budget windows
    #                                the local ledger counts must fit inside it)
    restart: Callable[[], None] = restart_in_place  # after an update is installed


def local_config_problems(settings: Settings) -> list[str]:
    """The agent's config file may not carry what the control plane owns."""
    out = []
    if settings.policy.rules or settings.policy.rules_file:
        out.append("policy: the agent's policy comes from the control plane; remove policy.rules / rules_file")
    if settings.directory != DirectoryConfig():
        out.append("directory: the agent's directory comes from the control plane; remove it")
    return out


def gateway_settings(local: Settings, effective: AgentSettings) -> Settings:
    """The data plane's start-up settings: the local config with the effective agent settings on top."""
    identity = local.identity.model_copy(update={"default_user": effective["user"]})
    forward_port = effective["forward_proxy_port"]  # TOLLHOUSE_FORWARD_PROXY_PORT over the config's forward_proxy.port
    forward = local.forward_proxy.model_copy(update={"port": int(forward_port)}) if forward_port else \
        local.forward_proxy
    return local.model_copy(update={"enforcement": effective.enforcement, "capture_mode": effective.capture_mode,
                                    "upstream_proxy": effective["upstream_proxy"] or None, "identity": identity,
                                    "forward_proxy": forward})


def agent_id(data_dir: Path) -> str:
    """This installation's id, made once and kept in the data dir."""
    path = data_dir / AGENT_ID_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        ident = f"{socket.gethostname()}-{uuid.uuid4().hex[:12]}"
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(ident + "\n")
        return ident


async def _update_loop(updater: Updater, applier: BundleApplier, changed: asyncio.Event, every_s: float) -> None:
    """Check for an update shortly after start, every `every_s`, and when the agent policy changes."""
    await asyncio.sleep(min(5.0, every_s))
    while True:
        changed.clear()
        await updater.check_once(applier.effective.policy, datetime.now())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), every_s)


async def _prune_loop(state: GatewayState, days: float, clock: Callable[[], float],
                      every_s: float = 86_400.0) -> None:
    """Once a day (and soon after start): drop shipped events older than the retention period."""
    await asyncio.sleep(60.0)
    while True:
        cutoff = int((clock() - days * 86_400) * 1000)
        try:
            removed = await state.runner.run(functools.partial(spool.prune, before_ms=cutoff))
        except StoreError as exc:
            log.warning("could not prune shipped events: %s", exc)
        else:
            if removed:
                log.info("pruned %d shipped events older than %g days from the local store", removed, days)
        await asyncio.sleep(every_s)


async def run_agent(local: Settings, layers: LocalLayers, opts: AgentOptions, data_dir: Path,
                    ready: Callable[[GatewayState, int], None] | None = None, stop: asyncio.Event | None = None,
                    clock: Callable[[], float] = time.time) -> None:
    """Serve until `stop` is set. Raises SettingsError, and what `serve` raises, before listening."""
    effective = layers.resolve(None)  # without the control plane's layer; the cached bundle adds it below
    ident = await asyncio.to_thread(agent_id, data_dir)

    async def extension(state: GatewayState) -> Callable[[], Awaitable[None]]:
        policy_changed = asyncio.Event()
        follow: list[Callable[[AgentSettings], None]] = [lambda _: policy_changed.set()]

        def on_settings(settings: AgentSettings) -> None:
            for follower in follow:
                follower(settings)

        # Exemptions are the control plane's: none until its bundle (or the cached one) brings them.
        state.override_loader.follow(OverrideSet())
        applier = BundleApplier(state, layers, effective, on_settings=on_settings)
        sync = BundleSync(opts.control_plane, opts.token, BundleCache(data_dir), applier,
                          {"x-tollhouse-agent-id": ident, "x-tollhouse-hostname": socket.gethostname(),
                           "x-tollhouse-agent-version": __version__},
                          clock, opts.wait_s, opts.retry, effective["upstream_proxy"] or None,
                          lambda: {"x-tollhouse-user": str(applier.effective["user"] or ""),
                                   "x-tollhouse-enforcement": state.live_settings.current.enforcement.value})
        await sync.load_cached()

        def agent_health() -> dict[str, Any]:
            return {"id": ident, "user": applier.effective["user"], "settings": applier.effective.shown(),
                    "bundle_errors": applier.errors, "exemptions": state.overrides.current.size}

        add_health_section(state, "control_plane", sync.health)
        add_health_section(state, "agent", agent_health)
        # Telemetry (branch `ship`): every call is spooled in the local store; the shipper delivers it. The
        # proxy is the one in force at start, then follows the agent policy.
        shipper = Shipper(state.runner, opts.control_plane, opts.token, applier.effective["upstream_proxy"] or None,
                          metrics=ShipMetrics(state.metrics.registry), interval_s=opts.ship_interval_s,
                          agent_id=ident)
        follow.append(lambda s: shipper.set_proxy(s["upstream_proxy"] or None))  # a live proxy change
        add_health_section(state, "telemetry",
                           lambda: {"backlog": shipper.backlog, "unauthorized": shipper.unauthorized})
        # Updates: the updater reads the release index now and then and whenever the agent policy changes;
        # its notices go to the local audit trail and to the control plane.
        local_proxy = effective["upstream_proxy"] or None  # set on this machine (env / managed file)
        notices = NoticeSender(opts.control_plane, opts.token, ident, local_proxy, state.audit)
        updater = Updater(sys.executable, running_version(), local_proxy, notices, opts.restart)
        add_health_section(state, "update", updater.status)
        # Started in this order, stopped in reverse; what started is stopped even if a later start fails.
        parts = Lifespan()
        parts.add("bundle sync", sync.start, sync.stop)
        parts.add("update notices", notices.start, notices.stop)
        parts.add("telemetry shipper", shipper.start, shipper.stop)
        async def flush_events() -> None:
            await state.writer.flush(10.0)  # bounded: storage that fails must not hold the shutdown

        parts.add("events flushed for the shipper", stop=flush_events)
        Background("tollhouse-agent-updates",
                   lambda: _update_loop(updater, applier, policy_changed, opts.update_interval_s)).add_to(parts)
        Background("tollhouse-agent-leases", leases.run_renewals).add_to(parts)
        add_health_section(state, "budget_leases", leases.health)
        Background("tollhouse-agent-prune", lambda: _prune_loop(state, opts.retention_days, clock)).add_to(parts)
        if state.settings.forward_proxy.port is not None:  # the forward proxy's hosts, to the control plane
            hosts = HostReporter(state.runner, opts.control_plane, opts.token, ident, local_proxy,
                                 opts.hosts_interval_s)
            parts.add("forward-proxy hosts report", hosts.start, hosts.stop)
            add_health_section(state, "forward_proxy_hosts", hosts.health)
        await parts.start()

        async def cleanup() -> None:
            await parts.stop()

        return cleanup

    settings = gateway_settings(local, effective)
    # Block errors link to the control plane's exemption form; this agent's exemption routes redirect there.
    settings = settings.model_copy(update={"exemptions": settings.exemptions.model_copy(
        update={"authority_url": opts.control_plane.rstrip("/")})})
    lc = local.ledger
    # Every cap is the control plane's: this machine spends against budget leases (agent/leases.py).
    leases = LeaseLedger(opts.control_plane, opts.token, ident, lc.billing_day, zone(lc.timezone),
                         lc.reservation_ttl_s, proxy=effective["upstream_proxy"] or None)
    await serve(settings, data_dir, opts.host, opts.port, ready, stop, clock,
                extension=extension, make_ledger=lambda _loader: leases)

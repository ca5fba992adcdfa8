"""The agent updater: read the release index, `decide`, and for an install run pip into the agent's own
environment and restart the agent.

The agent core builds one `Updater` at start-up and calls `await updater.check_once(policy, now_local)` from
its loop (each poll, or at least hourly); `updater.status()` goes into /healthz. `check_once` does not
raise for an unreadable index or a failed install: it returns an `error` decision, keeps the message in
`status()`, and (for a failed install) sends an `agent.update.failed` notice. Notices go to `on_notice(kind,
data)`, which the agent core forwards to the control plane:

  agent.update.available   update_policy manual, once per target version
  agent.update.installed   pip succeeded; the restart follows
  agent.update.failed      pip failed or timed out (the message holds pip's last lines)
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from tollhouse import __version__
from tollhouse.agent.release_fetch import fetch_releases
from tollhouse.agent.releases import Release, ReleaseIndexError, from_pep440
from tollhouse.agent.update_decision import UpdateAction, UpdateDecision, decide
from tollhouse.control.agent_policy import AgentPolicy, UpdatePolicy, redact_url
from tollhouse.control.version import Version

log = logging.getLogger(__name__)

Notice = Callable[[str, dict[str, Any]], None]
AVAILABLE, INSTALLED, FAILED = "agent.update.available", "agent.update.installed", "agent.update.failed"
_PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "pip_proxy"}
_PIP_TAIL_LINES = 12


class UpdateInstallError(Exception):
    """pip could not install the chosen release; the message holds pip's exit code and last lines."""


def running_version() -> Version:
    """This package's version as an agent version (`0.2.0b1` -> v0.2.0-beta.1)."""
    return from_pep440(__version__)


def pip_command(python: str, release: Release, proxy: str | None) -> list[str]:
    argv = [python, "-m", "pip", "install", "--upgrade", "--disable-pip-version-check", "--no-input"]
    if release.index_url:
        argv += ["--index-url", release.index_url]
    if release.find_links:
        argv += ["--find-links", release.find_links]
    if release.no_index:
        argv.append("--no-index")
    if proxy:
        argv += ["--proxy", proxy]
    return [*argv, release.requirement]


def pip_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` without proxy variables: like the data plane, pip dials through the configured proxy only."""
    return {k: v for k, v in environ.items() if k.lower() not in _PROXY_VARIABLES}


def restart_in_place() -> None:
    """Replace this process with a fresh run of the same command (the new code loads)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


async def run_pip(argv: list[str], timeout_s: float) -> None:
    shown = " ".join(redact_url(a) for a in argv[3:])
    log.info("agent update: %s", shown)
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                                                env=pip_environment(os.environ))
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise UpdateInstallError(f"`{shown}` did not finish within {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        tail = "\n".join(output.decode(errors="replace").strip().splitlines()[-_PIP_TAIL_LINES:])
        raise UpdateInstallError(f"`{shown}` failed (exit {proc.returncode}):\n{tail}")


class Updater:
    def __init__(self, python: str, current: Version, fetch_proxy: str | None, on_notice: Notice,
                 restart: Callable[[], None] = restart_in_place, *, fetch_timeout_s: float = 30.0,
                 pip_timeout_s: float = 900.0) -> None:
        """`python`: the agent environment's interpreter (sys.executable); `fetch_proxy`: a proxy set locally
        (managed file / env), which wins over the agent policy's `upstream_proxy`."""
        self.python, self.current = python, current
        self._fetch_proxy = fetch_proxy or None
        self._on_notice, self._restart = on_notice, restart
        self._fetch_timeout_s, self._pip_timeout_s = fetch_timeout_s, pip_timeout_s
        self._lock = asyncio.Lock()
        self._policy: AgentPolicy | None = None
        self._checked_at: datetime | None = None
        self._decision: UpdateDecision | None = None
        self._noticed: Version | None = None
        self._installed: Version | None = None

    def _proxy(self, policy: AgentPolicy) -> str | None:
        return self._fetch_proxy or policy.upstream_proxy or None

    async def check_once(self, policy: AgentPolicy, now_local: datetime) -> UpdateDecision:
        async with self._lock:
            decision = await self._check(policy, now_local)
            self._policy, self._checked_at, self._decision = policy, now_local, decision
            if decision.action is UpdateAction.install_now:
                self._restart()
            return decision

    async def _check(self, policy: AgentPolicy, now_local: datetime) -> UpdateDecision:
        if policy.update_policy is UpdatePolicy.disabled:
            return decide(policy, self.current, [], now_local)
        if not policy.release_index:
            return UpdateDecision(UpdateAction.none, "no release_index in the agent policy: nothing to check")
        proxy = self._proxy(policy)
        try:
            releases = await fetch_releases(policy.release_index, proxy, self._fetch_timeout_s)
        except ReleaseIndexError as exc:
            log.warning("agent update: %s", exc)
            return UpdateDecision(UpdateAction.error, str(exc))
        decision = decide(policy, self.current, releases, now_local)
        target = decision.target
        if decision.notice and target is not None and target.version != self._noticed:
            self._notify(AVAILABLE, policy, decision)
            self._noticed = target.version
        if decision.action is UpdateAction.install_now and target is not None:
            try:
                await run_pip(pip_command(self.python, target, proxy), self._pip_timeout_s)
            except (UpdateInstallError, OSError) as exc:
                failed = UpdateDecision(UpdateAction.error, f"installing {target.version} failed: {exc}", target)
                log.warning("agent update: %s", failed.reason)
                self._notify(FAILED, policy, failed)
                return failed
            self._installed = target.version
            self._notify(INSTALLED, policy, decision)
        return decision

    def _notify(self, kind: str, policy: AgentPolicy, decision: UpdateDecision) -> None:
        target = decision.target
        data: dict[str, Any] = {
            "current": str(self.current), "target": str(target.version) if target else None,
            "channel": policy.update_channel.value, "update_policy": policy.update_policy.value,
            "pinned_version": policy.pinned_version or None, "reason": decision.reason,
        }
        try:
            self._on_notice(kind, data)
        except Exception:
            log.exception("agent update: the %s notice could not be handed on", kind)

    def status(self) -> dict[str, Any]:
        """For /healthz: the running version, the last decision, and any update available or pending restart."""
        d, p = self._decision, self._policy
        pending = d is not None and d.action in (UpdateAction.notify, UpdateAction.wait_for_window,
                                                 UpdateAction.install_now)
        return {
            "current": str(self.current),
            "update_policy": p.update_policy.value if p else None,
            "update_channel": p.update_channel.value if p else None,
            "pinned_version": (p.pinned_version or None) if p else None,
            "checked_at": self._checked_at.isoformat(timespec="seconds") if self._checked_at else None,
            "action": d.action.value if d else None,
            "reason": d.reason if d else "not checked yet",
            "update_available": str(d.target.version) if d and d.target and pending else None,
            "next_window": d.next_start.isoformat(timespec="minutes") if d and d.next_start else None,
            "installed_pending_restart": str(self._installed) if self._installed else None,
            "last_error": d.reason if d and d.action is UpdateAction.error else None,
        }

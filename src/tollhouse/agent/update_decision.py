"""What the agent updater does next: a pure function of the agent policy, the running version, the release
index and the local wall-clock time (no I/O, no clock).

- update_policy: `auto` installs when the maintenance window is open (empty window: any time);
  `notify-only` reports "update available"; `manual` also asks for an `agent.update.available` notice;
  `disabled` decides nothing (the updater does not even read the index).
- channel: `stable` considers stable releases only; `beta` considers both.
- pinned version: the target is exactly the pin, whatever the channel, even when that is a downgrade;
  at the pin nothing moves; a pin the index does not list holds the current version and says so.
- without a pin the agent only moves up: the newest release on the channel, when newer than the running one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from tollhouse.agent.releases import Release
from tollhouse.control.agent_policy import AgentPolicy, UpdateChannel, UpdatePolicy
from tollhouse.control.version import Version


class UpdateAction(StrEnum):
    none = "none"  # nothing to do (up to date, at the pin, no index)
    disabled = "disabled"  # update_policy disabled: another mechanism owns the agent
    notify = "notify"  # a target exists; notify-only / manual never install it
    install_now = "install_now"  # auto, window open
    wait_for_window = "wait_for_window"  # auto, window closed: install at `next_start`
    pinned_hold = "pinned_hold"  # the pinned version is not in the index
    error = "error"  # set by the updater when reading the index or installing failed


@dataclass(frozen=True, slots=True)
class UpdateDecision:
    action: UpdateAction
    reason: str
    target: Release | None = None
    next_start: datetime | None = None  # wait_for_window: when the window next opens (local time)
    notice: bool = False  # send `agent.update.available` to the control plane (update_policy manual)


def _eligible(channel: UpdateChannel, release: Release) -> bool:
    return channel is UpdateChannel.beta or not release.version.is_beta


def _target(policy: AgentPolicy, current: Version, releases: list[Release]) -> Release | UpdateDecision:
    """The release to move to, or the decision that there is none."""
    pinned = policy.pinned
    if pinned is not None:
        if current == pinned:
            return UpdateDecision(UpdateAction.none, f"at the pinned version {pinned}")
        listed = next((r for r in releases if r.version == pinned), None)
        if listed is None:
            return UpdateDecision(UpdateAction.pinned_hold, f"pinned to {pinned}, which the release index does not "
                                  f"list: staying on {current}")
        return listed
    best = max((r for r in releases if _eligible(policy.update_channel, r)), key=lambda r: r.version, default=None)
    if best is None or best.version <= current:
        newest = "no release" if best is None else f"the newest is {best.version}"
        return UpdateDecision(UpdateAction.none, f"up to date: {current} on the {policy.update_channel.value} "
                              f"channel ({newest})")
    return best


def decide(policy: AgentPolicy, current: Version, releases: list[Release], now_local: datetime) -> UpdateDecision:
    if policy.update_policy is UpdatePolicy.disabled:
        return UpdateDecision(UpdateAction.disabled, "update_policy is disabled: another mechanism updates this agent")
    target = _target(policy, current, releases)
    if isinstance(target, UpdateDecision):
        return target
    move = "downgrade" if target.version < current else "update"
    pin = " (pinned)" if policy.pinned is not None else ""
    what = f"{move} {current} -> {target.version}{pin}"
    if policy.update_policy is not UpdatePolicy.auto:
        return UpdateDecision(UpdateAction.notify, f"{what} available; update_policy {policy.update_policy.value} "
                              "does not install it", target, notice=policy.update_policy is UpdatePolicy.manual)
    window = policy.window
    if window is None or window.contains(now_local):
        where = "any time" if window is None else f"inside the maintenance window {window}"
        return UpdateDecision(UpdateAction.install_now, f"{what}: installing ({where})", target)
    opens = window.next_start(now_local)
    return UpdateDecision(UpdateAction.wait_for_window, f"{what}: waiting for the maintenance window {window} "
                          f"(opens {opens.isoformat(timespec='minutes')})", target, opens)

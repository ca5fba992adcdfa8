"""Applying a bundle to the agent's local data plane.

The directory and the policy are published into the local store as new versions (actor and source
"control-plane"), through the same holders the gateway uses, so the local audit trail records each change
with its diff. They are checked together: a bundle that renames a team and retargets its rules is accepted.
A part that does not validate is not applied; the previous one stays in force and /healthz says why.
The approved exemption overrides replace the set in force whole (the agent's own store is never their source).
The agent policy is re-resolved under the local layers (environment, managed file) and applied live:
enforcement and capture mode at once, an upstream proxy change by rebuilding the provider clients.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from tollhouse.agent.settings import AgentSettings, LocalLayers, SettingsError
from tollhouse.config import DirectoryConfig
from tollhouse.control.agent_policy import AgentPolicyError, parse_agent_policy
from tollhouse.control.overrides import Grant, OverrideSet
from tollhouse.events.records import AGENT_POLICY
from tollhouse.gateway.directory_holder import DirectoryError, parse_directory
from tollhouse.gateway.live import LiveSettings
from tollhouse.gateway.policy_holder import RulesFileError, compile_rules
from tollhouse.gateway.state import GatewayState, publish_live

log = logging.getLogger("tollhouse.agent")

ACTOR = "control-plane"
_META = ("version", "actor", "ts")  # what the bundle adds to each document besides its content


def _content(doc: object) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in _META} if isinstance(doc, dict) else {}


def policy_content(bundle: Mapping[str, Any]) -> dict[str, Any]:
    """The agent-policy settings a bundle carries (without its version metadata)."""
    return _content(bundle.get("agent_policy"))


def _redacted(body: Mapping[str, Any]) -> Mapping[str, Any]:
    try:
        return parse_agent_policy(dict(body)).redacted()
    except AgentPolicyError:
        return {}


class BundleApplier:
    def __init__(self, state: GatewayState, layers: LocalLayers, effective: AgentSettings,
                 on_settings: Callable[[AgentSettings], None] = lambda s: None) -> None:
        self._state = state
        self._layers = layers
        self.effective = effective
        self._on_settings = on_settings  # the shipper and the updater follow the settings they use
        self.errors: list[str] = []  # why parts of the last bundle were not applied (shown in /healthz)

    def apply_settings(self, effective: AgentSettings) -> None:
        publish_live(self._state, LiveSettings(effective.enforcement, effective.capture_mode,
                                               effective["upstream_proxy"] or None))
        changed = effective != self.effective
        self.effective = effective
        if changed:
            self._on_settings(effective)

    async def __call__(self, bundle: dict[str, Any]) -> None:
        note = f"bundle {bundle.get('etag')}"
        errors = await self._documents(bundle, note)
        errors += await self._agent_policy(bundle, note)
        errors += self._exemptions(bundle)
        for error in errors:
            log.error("control-plane bundle %s: %s", bundle.get("etag"), error)
        self.errors = errors

    def _exemptions(self, bundle: dict[str, Any]) -> list[str]:
        """The control plane's approved overrides replace the set in force (a bundle without them: none)."""
        grants, errors = parse_grants(bundle.get("exemptions", []))
        self._state.override_loader.follow(OverrideSet(grants))
        return errors

    async def _agent_policy(self, bundle: dict[str, Any], note: str) -> list[str]:
        body = policy_content(bundle)
        try:
            effective = self._layers.resolve(body)
            canonical = parse_agent_policy(body).model_dump(mode="json")
        except (SettingsError, AgentPolicyError) as exc:
            return [f"agent policy not applied, keeping the previous settings: {exc}"]
        docs = self._state.docs
        latest = await docs.latest(AGENT_POLICY)
        if latest is None or latest.body != canonical:
            await docs.publish(AGENT_POLICY, canonical, ACTOR, ACTOR, latest.body if latest else {}, note,
                               redact=_redacted)
        self.apply_settings(effective)
        return []

    async def _documents(self, bundle: dict[str, Any], note: str) -> list[str]:
        state = self._state
        holder = state.policies
        errors: list[str] = []
        policy = bundle.get("policy") if isinstance(bundle.get("policy"), dict) else {}
        assert isinstance(policy, dict)
        raw = policy.get("rules")
        rules_ok = isinstance(raw, list)
        if not rules_ok:
            errors.append("the bundle has no policy rules list; keeping policy version "
                          f"{holder.current.version}")
        tz = str(policy.get("timezone") or "UTC")
        try:
            directory: DirectoryConfig | None = parse_directory(_content(bundle.get("directory")))
        except DirectoryError as exc:
            directory = None
            errors.append(f"directory not applied, keeping version {state.directory.current.version}: {exc}")
        target = directory or state.directory.current.config
        compiled = None
        if rules_ok:
            assert isinstance(raw, list)
            try:
                compiled = compile_rules(raw, tz, target, 0, "control-plane policy")
            except RulesFileError as exc:
                holder.error = str(exc)
                errors.append(f"policy not applied, keeping version {holder.current.version}: {exc}")
        if directory is not None and _json(directory) != _json(state.directory.current.config):
            try:
                await state.directories.publish(_json(directory), ACTOR, note, source=ACTOR,
                                                rules=compiled.rules if compiled is not None else None)
            except DirectoryError as exc:
                errors.append(f"directory not applied, keeping version {state.directory.current.version}: {exc}")
        if compiled is not None and isinstance(raw, list) and (raw != holder.raw or holder.source != ACTOR):
            try:
                # the control plane's version, not only this agent's local copy's (numbered 1, 2, ... here)
                await holder.publish(raw, ACTOR, ACTOR, f"control-plane policy version {policy.get('version')}, "
                                     f"{note}", timezone=tz)
            except RulesFileError as exc:
                holder.error = str(exc)
                errors.append(f"policy not applied, keeping version {holder.current.version}: {exc}")
        return errors


def parse_grants(raw: object) -> tuple[list[Grant], list[str]]:
    """The bundle's exemptions: the valid ones, and why the others were left out (an override that cannot be
    read is not applied: it only ever allows more)."""
    if not isinstance(raw, list):
        return [], [f"the bundle's exemptions are not a list ({type(raw).__name__}); none applied"]
    grants: list[Grant] = []
    errors: list[str] = []
    for item in raw:
        try:
            grants.append(Grant.from_json(item))
        except ValueError as exc:
            errors.append(f"exemption not applied: {exc}")
    return grants, errors


def _json(cfg: DirectoryConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json", exclude_defaults=True)

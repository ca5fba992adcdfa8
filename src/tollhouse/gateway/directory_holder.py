"""The directory as versioned data: the config's directory is a version, the API can publish others.

A new directory must keep every rule of the current policy valid (a rule aimed at a team that would
vanish is named, and nothing changes). Gateways sharing the store adopt each other's versions.

Each version is a new immutable Directory, published whole into `published` (GatewayState.directory); a call
reads `.current` once and resolves everything about itself in that one version.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from tollhouse.config import DirectoryConfig, target_problems, validation_problems
from tollhouse.control.documents import Documents
from tollhouse.directory import Directory
from tollhouse.events.records import DocumentVersion
from tollhouse.gateway.policy_holder import PolicyHolder
from tollhouse.policy.rules import Rule
from tollhouse.snapshot import Published

log = logging.getLogger("tollhouse.directory")
KIND = "directory"


class DirectoryError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def parse_directory(data: object) -> DirectoryConfig:
    try:
        return DirectoryConfig.model_validate(data)
    except ValidationError as err:
        raise DirectoryError(validation_problems(err, "directory")) from None


class DirectoryHolder:
    def __init__(self, published: Published[Directory], policy: PolicyHolder, configured: DirectoryConfig,
                 docs: Documents) -> None:
        self.published = published
        self._policy = policy
        self._configured = configured
        self._docs = docs

    def _json(self, cfg: DirectoryConfig) -> dict[str, Any]:
        return cfg.model_dump(mode="json", exclude_defaults=True)

    async def bootstrap(self) -> None:
        """The config's directory becomes a version when it changed since it was last loaded; otherwise the
        store's latest version applies (an API edit survives a restart)."""
        body = self._json(self._configured)
        last = await self._docs.last_from(KIND, "config")
        latest = await self._docs.latest(KIND)
        if last is None and body == self._json(DirectoryConfig()):
            # no directory configured, ever: whatever the API (or an agent's control plane) published applies
            if latest is not None:
                self._adopt(latest)
            return
        if last is None or last.body != body:
            if latest is not None or body != self._json(DirectoryConfig()):
                await self._store(self._configured, "config", "config", latest.body if latest else {})
            return
        if latest is not None and latest.version != self.published.current.version:
            self._adopt(latest)

    def _adopt(self, doc: DocumentVersion) -> None:
        try:
            cfg = parse_directory(doc.body)
        except DirectoryError as exc:
            log.error("directory version %d in the store does not validate: %s", doc.version, exc)
            return
        self._install(cfg, doc.version)

    def _install(self, cfg: DirectoryConfig, version: int) -> None:
        self._policy.directory = cfg
        self.published.publish(Directory(cfg, version))
        self._docs.feed.set(KIND, version)

    async def publish(self, data: object, actor: str, note: str | None = None, source: str = "api",
                      rules: tuple[Rule, ...] | None = None) -> DocumentVersion:
        """Validate (the directory itself, and every rule against it), store, apply. The rules are the
        current policy's, or `rules`: a policy about to be published with this directory (an agent's bundle)."""
        cfg = self.check(data, rules)
        return await self._store(cfg, actor, source, self._json(self.published.current.config), note)

    def check(self, data: object, rules: tuple[Rule, ...] | None = None) -> DirectoryConfig:
        """The directory `data` describes, validated itself and against every rule (raises DirectoryError)."""
        cfg = parse_directory(data)
        problems = target_problems(self._policy.current.rules if rules is None else rules, cfg)
        if problems:
            raise DirectoryError([f"the current policy would break: {p}; change the policy first" for p in problems])
        return cfg

    async def _store(self, cfg: DirectoryConfig, actor: str, source: str, before: dict[str, Any],
                     note: str | None = None) -> DocumentVersion:
        doc = await self._docs.publish(KIND, self._json(cfg), actor, source, before, note)
        self._install(cfg, doc.version)
        return doc

    async def poll(self, versions: Mapping[str, int]) -> None:
        """Adopt a newer version another gateway sharing the store wrote (`versions`: the store's latest)."""
        latest = versions.get(KIND, 0)
        if latest > self.published.current.version:
            doc = await self._docs.latest(KIND)
            if doc is not None:
                self._adopt(doc)

"""The live policy: built at start-up, swapped atomically when a new version is published (API, rules
file, another gateway sharing the store).

A bad edit keeps the last good policy; the error is logged and shown in /healthz.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from tollhouse.config import DirectoryConfig, target_problems
from tollhouse.control.documents import Documents
from tollhouse.events.records import DocumentVersion
from tollhouse.policy.engine import CompiledPolicy
from tollhouse.policy.rules import PolicyError, parse_rules
from tollhouse.snapshot import Published

log = logging.getLogger("tollhouse.policy")


class RulesFileError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def read_rules_file(path: Path) -> list[Any]:
    """Rules from a YAML/JSON file: a list of rules, {"rules": [...]}, or a config with policy.rules."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesFileError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    try:
        data = orjson.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, orjson.JSONDecodeError) as exc:
        raise RulesFileError([f"{path}: not valid YAML/JSON: {exc}"]) from None
    if isinstance(data, dict) and isinstance(data.get("policy"), dict):
        data = data["policy"]
    if isinstance(data, dict) and "rules" in data:
        data = data["rules"]
    if not isinstance(data, list):
        raise RulesFileError([f"{path}: expected a list of rules or {{\"rules\": [...]}}"])
    return data


def compile_rules(raw: list[Any], timezone: str, directory: DirectoryConfig, version: int,
                  source: str) -> CompiledPolicy:
    try:
        rules = parse_rules(raw, timezone)
    except PolicyError as exc:
        raise RulesFileError([f"{source}: {p}" for p in exc.problems]) from None
    problems = target_problems(rules, directory)
    if problems:
        raise RulesFileError([f"{source}: {p}" for p in problems])
    return CompiledPolicy(rules, version=version)


@dataclass
class PolicyStatus:
    version: int
    source: str
    rules: int
    error: str | None


class VersionConflict(Exception):
    """A write based on a version that is no longer the latest."""


class FileAuthoritative(Exception):
    """A policy write through the API (an edit, a rollback, a rule-edit approval) while `policy.rules_file` is
    configured: the file is the one source of the policy, so the change must be made there."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"the policy comes from the rules file {path} (policy.rules_file), which is authoritative "
                         f"on this gateway: make the change by editing {path}; the gateway reloads it within a "
                         "second and records it as a new policy version. Changes through the API are refused so that "
                         "the file and the API never overwrite each other (remove policy.rules_file from the config "
                         "to manage the policy through the API instead).")
        self.path = path


class PolicyHolder:
    """Publishes the compiled policy into `published` (GatewayState.policy): each version is a new immutable
    CompiledPolicy, published whole, never mutated; `raw` and `source` change with it, in the same step.

    Every policy is a version in the store (`documents`, kind "policy"): API edits, rollbacks, and the
    config or rules file when it changes. The version number is the store's.

    With a rules file the file is authoritative: `publish` (API edits, rollbacks, rule-edit approvals) raises
    FileAuthoritative, and an edit of the file that leaves its parsed rules as they were (comments, whitespace,
    key order) makes no version and changes nothing. Without one, the API is authoritative."""

    def __init__(self, initial: CompiledPolicy, raw: list[Any], source: str, path: Path | None, timezone: str,
                 directory: DirectoryConfig) -> None:
        self.published: Published[CompiledPolicy] = Published(initial)
        self.raw = raw  # the rules as written (API output, diffs)
        self.source = source
        self.error: str | None = None
        self._path = path
        self._tz = timezone
        self.directory = directory  # the directory rules are checked against (swapped with it)
        self._mtime = self._stat()
        self._file_raw: list[Any] | None = raw if path is not None else None  # the file's rules as last loaded
        self._task: asyncio.Task[None] | None = None
        self._docs: Documents | None = None
        self._lock = asyncio.Lock()
        self.on_change: Callable[[str, dict[str, Any]], None] = lambda kind, data: None

    @property
    def current(self) -> CompiledPolicy:
        """The policy in force now (the request path reads `published.current` directly)."""
        return self.published.current

    @property
    def authoritative(self) -> str:
        """Where the policy is changed: `file:PATH` (policy.rules_file) or `api`."""
        return f"file:{self._path}" if self._path is not None else "api"

    @property
    def _source_key(self) -> str:
        return f"file:{self._path}" if self._path is not None else "config"

    def _stat(self) -> float | None:
        try:
            return self._path.stat().st_mtime_ns if self._path else None
        except OSError:
            return None

    def status(self) -> PolicyStatus:
        return PolicyStatus(self.current.version, self.source, len(self.current.rules), self.error)

    def compile(self, raw: list[Any], version: int, source: str) -> CompiledPolicy:
        """Validate and compile rules (raises RulesFileError naming each rule and field)."""
        return compile_rules(raw, self._tz, self.directory, version, source)

    async def bootstrap(self, docs: Documents) -> None:
        """Reconcile with the store at start-up: the config's rules (or the rules file) become a new version
        when they changed since they were last loaded; otherwise the store's latest version (an API edit or
        a rollback survives a restart). Raises RulesFileError if the stored version no longer validates."""
        self._docs = docs
        mine = bool(self.raw) or self._path is not None
        latest = await docs.latest("policy")
        if self._path is not None:  # the file is authoritative: its rules are the policy in force
            if latest is None or latest.body.get("rules") != self.raw:
                before = list(latest.body.get("rules", [])) if latest is not None else []
                await self._store(self.raw, "file", self._source_key, None, before)
                return
            self._adopt(latest)
            docs.feed.set("policy", self.current.version)
            return
        if mine:
            last = await docs.last_from("policy", self._source_key)
            if last is None or last.body.get("rules") != self.raw:
                before = list(latest.body.get("rules", [])) if latest is not None else []
                await self._store(self.raw, "config" if self._path is None else "file", self._source_key, None,
                                  before)
                return
        if latest is not None:
            self._adopt(latest)
        docs.feed.set("policy", self.current.version)

    def _adopt(self, doc: DocumentVersion) -> None:
        raw = list(doc.body.get("rules", []))
        try:
            compiled = self.compile(raw, doc.version, f"policy version {doc.version}")
        except RulesFileError as exc:
            raise RulesFileError([*exc.problems, f"policy version {doc.version} in the store does not validate "
                                  "against this configuration (its directory?); fix the configuration, or start "
                                  "without it and roll back with POST /api/v1/policy/rollback"]) from None
        self._install(compiled, raw, doc.source)

    def _install(self, compiled: CompiledPolicy, raw: list[Any], source: str) -> None:
        self.raw = raw
        self.source = source
        self.error = None
        self.published.publish(compiled)
        if self._docs is not None:
            self._docs.feed.set("policy", compiled.version)

    async def publish(self, raw: list[Any], actor: str, source: str = "api", note: str | None = None,
                      base_version: int | None = None, timezone: str | None = None) -> DocumentVersion:
        """Validate the whole policy, then store it as a new version and apply it. Nothing changes when
        validation fails (RulesFileError) or `base_version` is not the latest (VersionConflict). `timezone`:
        the policy's own default zone for time windows (an agent's bundle carries its control plane's)."""
        if self._path is not None:
            raise FileAuthoritative(self._path)
        tz = timezone or self._tz
        compile_rules(raw, tz, self.directory, 0, "policy")  # validate before anything is written
        async with self._lock:
            self._tz = tz
            if base_version is not None and base_version != self.current.version:
                raise VersionConflict(f"base_version {base_version} is not the current policy version "
                                      f"{self.current.version}; GET /api/v1/policy and apply your edit to it")
            return await self._store(raw, actor, source, note)

    async def _store(self, raw: list[Any], actor: str, source: str, note: str | None,
                     before: list[Any] | None = None) -> DocumentVersion:
        assert self._docs is not None, "bootstrap() first"
        compiled = self.compile(raw, 0, source)
        previous = {"rules": self.raw if before is None else before}
        doc = await self._docs.publish("policy", {"rules": raw}, actor, source, previous, note)
        self._install(CompiledPolicy(compiled.rules, version=doc.version), raw, source)
        log.info("policy version %d from %s (%s): %d rules%s", doc.version, source, actor, len(compiled.rules),
                 f" ({note})" if note else "")
        return doc

    def start(self, interval_s: float = 1.0) -> None:
        if self._path is not None:
            self._task = asyncio.create_task(self._watch(interval_s), name="tollhouse-policy-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def reload(self) -> bool:
        """Load the rules file again; True if the policy changed. An edit that leaves the parsed rules as they
        were (comments, whitespace, key order) makes no version and changes nothing."""
        assert self._path is not None
        try:
            raw = read_rules_file(self._path)
            if raw == self._file_raw:
                self.error = None  # back to the rules in force (e.g. after a bad edit was undone)
                return False
            async with self._lock:
                await self._store(raw, "file", self._source_key, None)
                self._file_raw = raw
        except RulesFileError as exc:
            self.error = str(exc)
            log.error("policy file change rejected, keeping version %d:\n%s", self.current.version, exc)
            self.on_change("policy.rejected", {"source": str(self._path), "kept_version": self.current.version,
                                               "problems": exc.problems})
            return False
        return True

    async def poll(self, versions: Mapping[str, int]) -> None:
        """Adopt a newer version another gateway sharing the store wrote (`versions`: the store's latest)."""
        assert self._docs is not None
        latest = versions.get("policy", 0)
        if latest > self.current.version:
            async with self._lock:
                doc = await self._docs.latest("policy")
                if doc is not None and doc.version > self.current.version:
                    try:
                        self._adopt(doc)
                    except RulesFileError as exc:
                        self.error = str(exc)
                        log.error("policy version %d from the store rejected: %s", doc.version, exc)

    async def _watch(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            mtime = self._stat()
            if mtime is not None and mtime != self._mtime:
                self._mtime = mtime
                await self.reload()


def initial_policy(rules: tuple[dict[str, Any], ...], rules_file: str | None, timezone: str,
                   directory: DirectoryConfig) -> PolicyHolder:
    """The start-up policy. A bad rules file at start-up is a configuration error (raised)."""
    if rules_file:
        path = Path(rules_file)
        raw = read_rules_file(path)
        compiled = compile_rules(raw, timezone, directory, 1, str(path))
        return PolicyHolder(compiled, raw, str(path), path, timezone, directory)
    compiled = compile_rules(list(rules), timezone, directory, 1 if rules else 0, "config")
    return PolicyHolder(compiled, list(rules), "config", None, timezone, directory)

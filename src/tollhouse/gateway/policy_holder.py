"""The live policy: built at start-up, swapped atomically when the rules file changes.

A bad edit keeps the last good policy; the error is logged and shown in /healthz.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from tollhouse.config import DirectoryConfig, target_problems
from tollhouse.control.diff import diff_documents, item_summary
from tollhouse.policy.engine import CompiledPolicy
from tollhouse.policy.rules import PolicyError, parse_rules

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


class PolicyHolder:
    """Holds the current compiled policy; `current` is replaced whole, never mutated."""

    def __init__(self, initial: CompiledPolicy, raw: list[Any], source: str, path: Path | None, timezone: str,
                 directory: DirectoryConfig) -> None:
        self.current = initial
        self._raw = raw  # the rules as written, for the audit trail's diffs
        self.source = source
        self.error: str | None = None
        self._path = path
        self._tz = timezone
        self._directory = directory
        self._mtime = self._stat()
        self._task: asyncio.Task[None] | None = None
        self.on_change: Callable[[str, dict[str, Any]], None] = lambda kind, data: None

    def _stat(self) -> float | None:
        try:
            return self._path.stat().st_mtime_ns if self._path else None
        except OSError:
            return None

    def status(self) -> PolicyStatus:
        return PolicyStatus(self.current.version, self.source, len(self.current.rules), self.error)

    def start(self, interval_s: float = 1.0) -> None:
        if self._path is not None:
            self._task = asyncio.create_task(self._watch(interval_s), name="tollhouse-policy-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def reload(self) -> bool:
        """Load the rules file again; True if the policy changed."""
        assert self._path is not None
        try:
            raw = read_rules_file(self._path)
            compiled = compile_rules(raw, self._tz, self._directory, self.current.version + 1, str(self._path))
        except RulesFileError as exc:
            self.error = str(exc)
            log.error("policy file change rejected, keeping version %d:\n%s", self.current.version, exc)
            self.on_change("policy.rejected", {"source": str(self._path), "kept_version": self.current.version,
                                               "problems": exc.problems})
            return False
        changes = diff_documents({"rules": self._raw}, {"rules": raw})
        self.on_change("policy.changed", {"source": str(self._path), "version": compiled.version,
                                          **item_summary(changes), "changes": [c.json() for c in changes]})
        self.current = compiled
        self._raw = raw
        self.error = None
        log.info("policy reloaded from %s: version %d, %d rules", self._path, compiled.version, len(compiled.rules))
        return True

    async def _watch(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            mtime = self._stat()
            if mtime is not None and mtime != self._mtime:
                self._mtime = mtime
                self.reload()


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

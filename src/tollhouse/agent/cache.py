"""The last bundle received, kept on disk so the agent enforces it across restarts while the control plane
is unreachable.

The file is `sha256:<hex>` on the first line and the JSON content after it; the checksum covers those exact
bytes. It is written atomically (temporary file, fsync, rename, fsync of the directory) with mode 0600 (it
holds the upstream proxy's credentials). A file that fails the checksum or does not parse is ignored with
a log line, never applied.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("tollhouse.agent")

CACHE_FILE = "agent-bundle.json"


@dataclass(frozen=True, slots=True)
class Cached:
    bundle: dict[str, Any]
    received_ms: int  # when the control plane sent it


class BundleCache:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / CACHE_FILE

    def save(self, bundle: dict[str, Any], received_ms: int) -> None:
        content = orjson.dumps({"received_ms": received_ms, "bundle": bundle})
        data = b"sha256:" + hashlib.sha256(content).hexdigest().encode() + b"\n" + content
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def load(self) -> Cached | None:
        """The cached bundle, or None (no cache, or one that is corrupt: logged, never applied)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error("cannot read the cached policy bundle %s: %s; running without it", self.path, exc)
            return None
        problem = _problem(data)
        if problem is not None:
            log.error("the cached policy bundle %s is corrupt (%s): ignored, not applied; the next bundle from "
                      "the control plane replaces it", self.path, problem)
            return None
        parsed = orjson.loads(data.partition(b"\n")[2])
        return Cached(parsed["bundle"], int(parsed["received_ms"]))


def _problem(data: bytes) -> str | None:
    head, newline, content = data.partition(b"\n")
    if not newline or not head.startswith(b"sha256:"):
        return "no checksum line"
    if hashlib.sha256(content).hexdigest().encode() != head[7:].strip():
        return "checksum mismatch"
    try:
        parsed = orjson.loads(content)
    except orjson.JSONDecodeError:
        return "not JSON"
    if not isinstance(parsed, dict) or not isinstance(parsed.get("bundle"), dict) \
            or not isinstance(parsed.get("received_ms"), int):
        return "unexpected content"
    return None

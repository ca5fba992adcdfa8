"""The command-line flags a running agent was given, kept in its data dir while it runs, so that
`tollhouse config show` (another process) shows them as the agent uses them. Secrets are never written."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

FLAGS_FILE = "agent-flags.json"
SOURCE = "flag"


def _masked(name: str, value: str) -> str:
    return "***" if name == "token" else value


def record_flags(data_dir: Path, flags: Mapping[str, str | None]) -> None:
    """Write the flags given (None: not given) with this process's id."""
    given = {name: _masked(name, value) for name, value in flags.items() if value is not None}
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / FLAGS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "flags": given}))
    tmp.replace(path)


def forget_flags(data_dir: Path) -> None:
    with contextlib.suppress(OSError):
        (data_dir / FLAGS_FILE).unlink()


def running_flags(data_dir: Path) -> dict[str, str]:
    """The flags of the agent running on `data_dir` ({} when none runs there)."""
    try:
        data = json.loads((data_dir / FLAGS_FILE).read_text())
        pid = int(data["pid"])
        flags = data["flags"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return {}  # left behind by an agent that did not stop cleanly
    except PermissionError:
        pass  # alive, another user's
    return {str(k): str(v) for k, v in flags.items()} if isinstance(flags, dict) else {}

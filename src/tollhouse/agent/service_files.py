"""The service definitions `tollhouse install` writes: a systemd unit and a launchd plist (pure rendering)."""

from __future__ import annotations

import plistlib
import re
from dataclasses import dataclass
from pathlib import Path

UNIT_NAME = "tollhouse-agent.service"
LAUNCHD_LABEL = "com.tollhouse.agent"
LIMIT_NOFILE = 65536  # the systemd unit's file-descriptor limit
_SYSTEMD_SAFE = re.compile(r"[A-Za-z0-9_./:@%+,=-]+")


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    python: str  # the interpreter of the environment tollhouse is installed in
    managed_file: Path
    data_dir: Path
    user: str | None  # the account the agent runs as; None: the service manager's default (root)

    @property
    def command(self) -> list[str]:
        return [self.python, "-m", "tollhouse", "agent"]


def _systemd_word(word: str) -> str:
    if _SYSTEMD_SAFE.fullmatch(word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_unit(spec: ServiceSpec) -> str:
    lines = [
        "# Written by `tollhouse install`; re-run it (not an editor) to change this file.",
        "[Unit]",
        "Description=Tollhouse agent (AI usage governance)",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        # The agent reads the managed file itself (not EnvironmentFile=), so `tollhouse config show` can tell
        # a managed value from one set in the environment.
        f"Environment={_systemd_word('TOLLHOUSE_MANAGED_CONFIG=' + str(spec.managed_file))}",
        "ExecStart=" + " ".join(_systemd_word(w) for w in spec.command),
        "Restart=always",
        "RestartSec=5",
        # Every proxied call holds a client and an upstream connection; the default 1024 would cap the agent
        # near 500 concurrent calls (it raises its soft limit to this at start; see limits.max_connections).
        f"LimitNOFILE={LIMIT_NOFILE}",
    ]
    if spec.user:
        lines.append(f"User={spec.user}")
    lines += ["", "[Install]", "WantedBy=multi-user.target"]
    return "\n".join(lines) + "\n"


def launchd_plist(spec: ServiceSpec) -> bytes:
    doc: dict[str, object] = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": spec.command,
        "EnvironmentVariables": {"TOLLHOUSE_MANAGED_CONFIG": str(spec.managed_file)},
        "RunAtLoad": True,
        "KeepAlive": True,
        "StandardOutPath": str(spec.data_dir / "agent.log"),
        "StandardErrorPath": str(spec.data_dir / "agent.log"),
    }
    if spec.user:
        doc["UserName"] = spec.user
    return plistlib.dumps(doc, sort_keys=True)

"""The managed file (`/etc/tollhouse.env`): `KEY=VALUE` lines, as systemd's `EnvironmentFile=` reads them.

Blank lines and lines starting with `#` or `;` are comments. A value is bare, or in double quotes with
`\\"` and `\\\\` escaped, or in single quotes taken literally. `merge_env` rewrites only the keys it is
given and keeps every other line (comments, keys an MDM profile added) as it was.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from tollhouse.agent.managed import parse_env_file
from tollhouse.agent.settings import SettingsError

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE = re.compile(r"[A-Za-z0-9_./:@%+,=-]*")


class ManagedEnvError(ValueError):
    """A managed file line or value that cannot be read or written; the message names the line or key."""


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r'\\(["\\])', r"\1", value[1:-1])
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1]
    return value


def _entry(line: str) -> tuple[str, str] | None:
    stripped = line.strip()
    if not stripped or stripped[0] in "#;":
        return None
    key, eq, value = stripped.partition("=")
    key = key.strip().removeprefix("export ").strip()
    if not eq or not _KEY.fullmatch(key):
        return None
    return key, _unquote(value.strip())


def parse_env(text: str, source: str = "managed file") -> dict[str, str]:
    """Every `KEY=VALUE` in `text` (a later line wins), read exactly as the agent reads it."""
    try:
        return parse_env_file(text, source)
    except SettingsError as exc:
        raise ManagedEnvError("; ".join(exc.problems)) from None


def format_value(key: str, value: str) -> str:
    if "\n" in value or "\r" in value or "\0" in value:
        raise ManagedEnvError(f"{key}: a value in the managed file cannot hold a line break or NUL")
    if _BARE.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def merge_env(text: str, updates: Mapping[str, str]) -> str:
    """`text` with each key in `updates` set (in place when present, appended otherwise)."""
    pending = dict(updates)
    lines: list[str] = []
    for line in text.splitlines():
        entry = _entry(line)
        if entry is not None and entry[0] in updates:
            if entry[0] not in pending:
                continue  # a duplicate of a key already rewritten above
            key = entry[0]
            line = f"{key}={format_value(key, pending.pop(key))}"
        lines.append(line)
    lines.extend(f"{key}={format_value(key, value)}" for key, value in pending.items())
    return "".join(f"{line}\n" for line in lines)

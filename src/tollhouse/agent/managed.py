"""The managed file MDM writes (`/etc/tollhouse.env`): KEY=VALUE lines, as systemd's EnvironmentFile reads them.

Blank lines and `#` or `;` comments are skipped; `export KEY=VALUE` is accepted; values may be double-quoted
(backslash escapes \\" \\\\ \\n \\t) or single-quoted (literal); an unquoted value ends at ` #`.
"""

from __future__ import annotations

import getpass
import re
from collections.abc import Mapping
from pathlib import Path

from tollhouse.agent.settings import MANAGED_DEFAULT, MANAGED_ENV, LocalLayers, SettingsError

_LINE = re.compile(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)")
_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "$": "$"}


def _unquote(raw: str, where: str) -> str:
    if raw[:1] == '"':
        out, i = [], 1
        while i < len(raw):
            ch = raw[i]
            if ch == "\\" and i + 1 < len(raw):
                out.append(_ESCAPES.get(raw[i + 1], "\\" + raw[i + 1]))
                i += 2
                continue
            if ch == '"':
                _trailing(raw[i + 1:], where)
                return "".join(out)
            out.append(ch)
            i += 1
        raise SettingsError([f"{where}: the double quote is never closed"])
    if raw[:1] == "'":
        end = raw.find("'", 1)
        if end < 0:
            raise SettingsError([f"{where}: the single quote is never closed"])
        _trailing(raw[end + 1:], where)
        return raw[1:end]
    value = re.split(r"\s#", raw, maxsplit=1)[0]
    return value.strip()


def _trailing(rest: str, where: str) -> None:
    rest = rest.strip()
    if rest and not rest.startswith("#"):
        raise SettingsError([f"{where}: unexpected text after the closing quote: {rest[:40]!r}"])


def parse_env_file(text: str, label: str) -> dict[str, str]:
    """KEY=VALUE pairs (a later line wins); SettingsError names the file and line of every bad line."""
    out: dict[str, str] = {}
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        where = f"{label} line {number}"
        match = _LINE.fullmatch(stripped)
        if match is None:
            problems.append(f"{where}: expected KEY=VALUE, e.g. TOLLHOUSE_ENFORCEMENT=on")
            continue
        try:
            out[match.group(1)] = _unquote(match.group(2), where)
        except SettingsError as exc:
            problems.extend(exc.problems)
    if problems:
        raise SettingsError(problems)
    return out


def managed_path(env: Mapping[str, str]) -> tuple[Path, bool]:
    """The managed file's path, and whether it was named explicitly (then it must exist)."""
    named = env.get(MANAGED_ENV)
    return (Path(named), True) if named else (Path(MANAGED_DEFAULT), False)


def read_managed(env: Mapping[str, str]) -> tuple[dict[str, str], str]:
    """The managed file's settings and its path (for messages). No file at the default path: no settings."""
    path, named = managed_path(env)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if named:
            raise SettingsError([f"{MANAGED_ENV}={path}: no such file"]) from None
        return {}, str(path)
    except OSError as exc:
        raise SettingsError([f"{path}: cannot read the managed file: {exc.strerror or exc}"]) from None
    return parse_env_file(text, str(path)), str(path)


def local_layers(env: Mapping[str, str]) -> LocalLayers:
    """The environment and the managed file as they are now; the user defaults to the OS login name."""
    managed, label = read_managed(env)
    try:
        login = getpass.getuser()
    except (OSError, KeyError):
        login = "unknown"
    return LocalLayers(dict(env), managed, label, login)

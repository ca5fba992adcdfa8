"""Audit entries as lines for a SIEM: JSON Lines, or ArcSight CEF (pure formatting)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from tollhouse import __version__
from tollhouse.audit.chain import AuditEntry

_SEVERITY = {"call.blocked": 6, "ledger.unavailable": 8, "policy.rejected": 5, "policy.changed": 4}


def jsonl(entry: AuditEntry) -> str:
    return orjson.dumps(entry.json()).decode()


def _header(value: str) -> str:
    return value.replace("\\", "\\\\").replace("|", "\\|")


def _ext(value: object) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text.replace("\\", "\\\\").replace("=", "\\=").replace("\n", "\\n").replace("\r", "\\r")


def _epoch_ms(iso: object) -> int | None:
    if not isinstance(iso, str):
        return None
    try:
        return int(datetime.fromisoformat(iso).timestamp() * 1000)
    except ValueError:
        return None


def _kind_fields(kind: str, d: dict[str, Any]) -> list[str]:
    """What a SIEM needs of an exemption decision (who approved it, until when, which request) and of a document
    change (its version), in CEF dictionary keys the common columns leave free."""
    out: list[str] = []
    if kind.startswith("exemption."):
        for label, key, slot in (("reviewer", "reviewer", "flexString1"), ("exemption", "id", "flexString2")):
            if d.get(key) is not None:
                out += [f"{slot}Label={label}", f"{slot}={_ext(d[key])}"]
        expires = _epoch_ms(d.get("expires"))
        if expires is not None:
            out += ["deviceCustomDate1Label=expires", f"deviceCustomDate1={expires}"]
        if d.get("kind") is not None:
            out.append(f"act={_ext(d['kind'])}")  # override | rule_edit
    if kind.endswith(".changed") and isinstance(d.get("version"), int):
        out += ["cn1Label=version", f"cn1={d['version']}"]
    return out


def _change_summary(kind: str, d: dict[str, Any]) -> str | None:
    """A document change's diff in one line: rules added, removed, changed, and each changed path."""
    if not kind.endswith(".changed") or "changes" not in d:
        return None
    parts = [f"{op} {', '.join(d[op])}" for op in ("added", "removed", "changed") if d.get(op)]
    paths = [f"{c.get('op')} {c.get('path')}" for c in d.get("changes") or [] if isinstance(c, dict)]
    summary = "; ".join(parts) if parts else ""
    if paths:
        shown = ", ".join(paths[:20]) + (f" and {len(paths) - 20} more" if len(paths) > 20 else "")
        summary = f"{summary} ({shown})" if summary else shown
    return f"version {d.get('version')}: {summary or 'no changes'}"


def cef(entry: AuditEntry) -> str:
    """CEF:0|vendor|product|version|signature|name|severity|extension (keys from the CEF dictionary,
    the rest as cs1..cs6 custom strings)."""
    d = entry.data
    ext = [f"rt={entry.ts_ms}", f"externalId={entry.seq}", f"suser={_ext(d.get('subject') or entry.actor)}"]
    custom = [("rule", d.get("rule_id")), ("model", d.get("model")), ("provider", d.get("provider")),
              ("team", d.get("team")), ("project", d.get("project")), ("hash", entry.hash)]
    for n, (label, value) in enumerate(custom, start=1):
        if value is not None:
            ext += [f"cs{n}Label={label}", f"cs{n}={_ext(value)}"]
    ext += _kind_fields(entry.kind, d)
    reason = d.get("reason") or d.get("error") or _change_summary(entry.kind, d)
    if reason:
        ext.append(f"msg={_ext(reason)}")
    severity = _SEVERITY.get(entry.kind, 3)
    return (f"CEF:0|Tollhouse|Tollhouse|{_header(__version__)}|{_header(entry.kind)}|{_header(entry.kind)}|"
            f"{severity}|" + " ".join(ext))

"""Audit entries as lines for a SIEM: JSON Lines, or ArcSight CEF (pure formatting)."""

from __future__ import annotations

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
    reason = d.get("reason") or d.get("error")
    if reason:
        ext.append(f"msg={_ext(reason)}")
    severity = _SEVERITY.get(entry.kind, 3)
    return (f"CEF:0|Tollhouse|Tollhouse|{_header(__version__)}|{_header(entry.kind)}|{_header(entry.kind)}|"
            f"{severity}|" + " ".join(ext))

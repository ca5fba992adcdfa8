"""The call event record."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NamedTuple, get_type_hints

from tollhouse.pricing import nusd_to_usd

# Public field order of GET /api/v1/events (DESIGN.md), then the extras.
PUBLIC_FIELDS = (
    "id", "ts", "subject", "team", "project", "provider", "model", "requested_model", "stream", "status",
    "input_tokens", "output_tokens", "cost_usd", "decision", "rule_id",
)


class CallEvent(NamedTuple):
    """One call. A tuple in column order, so the store binds it as a row without conversion."""

    id: str
    ts_ms: int  # wall clock, Unix milliseconds (UTC)
    subject: str
    subject_kind: str
    team: str | None
    project: str | None
    cost_centre: str | None
    provider: str
    endpoint: str
    path: str
    metered: bool
    model: str | None
    requested_model: str | None
    stream: bool
    status: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_nusd: int | None
    usage_source: str
    decision: str
    rule_id: str | None
    would: str | None
    latency_ms: float
    ttfb_ms: float | None
    client_disconnected: bool
    error: str | None
    # metered | governed | free | unknown (DESIGN.md "Every request is classified"); added in schema 6
    endpoint_class: str = "metered"
    # the approved exemption(s) that let the call past a rule it violated (comma-separated); added in schema 7
    exemption_id: str | None = None


COLUMNS = CallEvent._fields
_BOOL_COLUMNS = frozenset(name for name, hint in get_type_hints(CallEvent).items() if hint is bool)

# Captured text is cut to this many characters per field (the wire refuses longer).
MAX_CAPTURE_CHARS = 256 * 1024


class Capture(NamedTuple):
    """What a call said (enterprise capture mode): its prompt and response text, stored apart from the
    event row (table event_content, keyed by event id). None: nothing of that side was captured."""

    prompt: str | None
    response: str | None


def capture(prompt: str | None, response: str | None) -> Capture:
    """A capture with each text cut to MAX_CAPTURE_CHARS."""
    return Capture(None if prompt is None else prompt[:MAX_CAPTURE_CHARS],
                   None if response is None else response[:MAX_CAPTURE_CHARS])


def event_from_row(row: dict[str, Any]) -> CallEvent:
    """A stored row (any extra columns ignored) as a CallEvent, booleans as bool (SQLite returns 0/1)."""
    return CallEvent._make(bool(row[n]) if n in _BOOL_COLUMNS else row[n] for n in COLUMNS)


def iso_ts(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_json(row: dict[str, Any]) -> dict[str, Any]:
    """The API shape of one stored event: the public fields first, the rest after."""
    out: dict[str, Any] = {
        "id": row["id"],
        "ts": iso_ts(row["ts_ms"]),
        "subject": row["subject"],
        "team": row["team"],
        "project": row["project"],
        "provider": row["provider"],
        "model": row["model"],
        "requested_model": row["requested_model"],
        "stream": bool(row["stream"]),
        "status": row["status"],
        "input_tokens": row["input_tokens"],
        "output_tokens": row["output_tokens"],
        "cost_usd": nusd_to_usd(row["cost_nusd"]),
        "decision": row["decision"],
        "rule_id": row["rule_id"],
        "would": row["would"],
        "subject_kind": row["subject_kind"],
        "cost_centre": row["cost_centre"],
        "endpoint": row["endpoint"],
        "path": row["path"],
        "metered": bool(row["metered"]),
        "cache_read_tokens": row["cache_read_tokens"],
        "cache_write_tokens": row["cache_write_tokens"],
        "cost_nusd": row["cost_nusd"],
        "usage_source": row["usage_source"],
        "latency_ms": row["latency_ms"],
        "ttfb_ms": row["ttfb_ms"],
        "client_disconnected": bool(row["client_disconnected"]),
        "error": row["error"],
        "endpoint_class": row["endpoint_class"],
        "exemption_id": row["exemption_id"],
    }
    if "prompt" in row:  # read with its captured content
        out["prompt"], out["response"] = row["prompt"], row["response"]
    return out

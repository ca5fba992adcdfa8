"""OpenAPI operations of the usage views: /api/v1/usage, /api/v1/reports/spend.csv, /api/v1/baseline; and the
filters /api/v1/events takes."""

from __future__ import annotations

from typing import Any

_ERR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
_DIMENSIONS = ["team", "project", "cost_centre", "person", "provider", "model"]


def _q(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema or {"type": "string"}, "description": description}


RANGE = [
    _q("from", "start (inclusive): a date (local midnight in ledger.timezone) or an ISO 8601 time; default: the "
       "start of the current billing month (ledger.billing_day). Hours are whole: the hour `from` falls in counts"),
    _q("to", "end: a date (that day included) or an ISO 8601 time (exclusive); default: the end of the current "
       "billing month"),
]
FILTERS = [
    _q("team", "only these teams (comma-separated) and the teams below them; 404 for a team no one knows"),
    _q("project", "only these projects (comma-separated); 404 for an unknown project"),
    _q("cost_centre", "only these cost centres (comma-separated)"),
    _q("person", "only these people or services (comma-separated); 404 for an unknown one"),
    _q("subject", "the same as person"),
    _q("provider", "only these providers (comma-separated)"),
    _q("model", "only these models (comma-separated)"),
]
_MEASURES: dict[str, Any] = {
    "calls": {"type": "integer"}, "input_tokens": {"type": "integer"}, "output_tokens": {"type": "integer"},
    "cost_usd": {"type": "number"}, "blocked": {"type": "integer", "description": "calls the policy blocked"},
    "would_block": {"type": "integer", "description": "calls a rule would have blocked (observe mode, shadow rules)"},
    "errors": {"type": "integer", "description": "calls answered with a status of 400 or more"},
}
_BAD = {"description": "an unknown parameter (the valid ones are listed) or a bad value", "content": _ERR}
_UNKNOWN = {"description": "a team, project or person neither the directory nor the recorded calls know",
            "content": _ERR}
GET_USAGE: dict[str, Any] = {
    "parameters": [
        _q("group_by", "the dimension each series is; none: one series, key \"all\"", {"type": "string",
           "enum": _DIMENSIONS}),
        _q("interval", "bucket of each point (hour: ranges up to 93 days)",
           {"type": "string", "enum": ["day", "hour"], "default": "day"}),
        *RANGE, *FILTERS],
    "responses": {
        "200": {"description": "series, the costliest first; points are the buckets with calls, oldest first",
                "content": {"application/json": {"schema": {"type": "object", "properties": {
                    "group_by": {"type": ["string", "null"]}, "interval": {"type": "string"},
                    "from": {"type": "string", "format": "date-time"},
                    "to": {"type": "string", "format": "date-time"}, "timezone": {"type": "string"},
                    "totals": {"type": "object", "properties": _MEASURES},
                    "series": {"type": "array", "items": {"type": "object", "properties": {
                        "key": {"type": ["string", "null"], "description": "null: calls without one"},
                        "totals": {"type": "object", "properties": _MEASURES},
                        "points": {"type": "array", "items": {"type": "object", "properties": {
                            "t": {"type": "string", "format": "date-time"}, **_MEASURES}}}}}}}}}}},
        "400": _BAD, "401": {"description": "missing or wrong admin token"}, "404": _UNKNOWN,
        "503": {"description": "the event store cannot be read right now"}},
}

GET_REPORTS_SPEND_CSV: dict[str, Any] = {
    "parameters": [
        _q("group_by", "dimensions, comma-separated (default team)", {"type": "string", "default": "team"}),
        _q("interval", "period of each row (csv)", {"type": "string", "enum": ["day", "hour", "month", "total"],
                                                   "default": "day"}),
        _q("format", "csv, or focus (FinOps Open Cost and Usage Specification columns)",
           {"type": "string", "enum": ["csv", "focus"], "default": "csv"}),
        *RANGE, *FILTERS],
    "responses": {"200": {"description": "CSV; money as exact decimal dollars",
                          "content": {"text/csv": {"schema": {"type": "string"}}}},
                  "400": _BAD, "401": {"description": "missing or wrong admin token"}, "404": _UNKNOWN},
}

GET_BASELINE: dict[str, Any] = {
    "parameters": [
        {"name": "team", "in": "query", "required": True, "schema": {"type": "string"}},
        _q("days", "how many days (1 to 366)", {"type": "integer", "default": 14, "minimum": 1, "maximum": 366}),
        _q("to", "the last day included (a date); default: yesterday"),
    ],
    "responses": {"200": {"description": "the baseline: per_day, weekdays, weekends, model_mix, daily"},
                  "400": _BAD, "401": {"description": "missing or wrong admin token"}, "404": _UNKNOWN},
}

EVENT_FILTERS = [p for p in FILTERS if p["name"] != "subject"] + [
    _q("subject", "only these people or services (comma-separated; the same as person); 404 for an unknown one"),
    _q("decision", "only these decisions (comma-separated)",
       {"type": "string", "enum": ["allow", "warn", "redirect", "block"]}),
]

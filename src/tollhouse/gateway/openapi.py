"""What the OpenAPI document of /api/v1 says beyond what the router knows: the components (schemas, security
schemes) and, per operation, its parameters, request body and responses. The router (gateway/routes.py) attaches
each operation to its route and generates the document (gateway/router.py openapi_document)."""

from __future__ import annotations

from typing import Any

from tollhouse.gateway.openapi_usage import EVENT_FILTERS

_EVENT_PROPS: dict[str, Any] = {
    "id": {"type": "string"},
    "ts": {"type": "string", "format": "date-time"},
    "subject": {"type": "string"},
    "team": {"type": ["string", "null"]},
    "project": {"type": ["string", "null"]},
    "provider": {"type": "string"},
    "model": {"type": ["string", "null"]},
    "requested_model": {"type": ["string", "null"]},
    "stream": {"type": "boolean"},
    "status": {"type": "integer"},
    "input_tokens": {"type": "integer"},
    "output_tokens": {"type": "integer"},
    "cost_usd": {"type": ["number", "null"], "description": "null when the model has no known price"},
    "decision": {"type": "string", "enum": ["allow", "warn", "redirect", "block"]},
    "rule_id": {"type": ["string", "null"]},
    "usage_source": {"type": "string", "enum": ["response", "partial", "estimate", "none", "unparsed", "reserved"]},
    "exemption_id": {"type": ["string", "null"], "description": "the approved exemption(s), comma-separated, that "
                     "let the call past a rule it violated (also sent as X-Tollhouse-Exemption)"},
}
# Enterprise capture mode: what the call said (GET /api/v1/events/{id}, or the list with ?include=content).
_CONTENT_PROPS: dict[str, Any] = {
    "prompt": {"type": ["string", "null"], "description": "the request's prompt text, each CONTENT_DLP match "
               "replaced by [redacted:<detector or rule id>]; null: not captured (telemetry capture mode)"},
    "response": {"type": ["string", "null"], "description": "the response text (a stream's assembled from its "
                 "deltas); null: not captured"},
}

_EXEMPTION_PROPS: dict[str, Any] = {
    "id": {"type": "string"},
    "status": {"type": "string", "enum": ["pending", "approved", "denied", "revoked"]},
    "created": {"type": "string", "format": "date-time"},
    "requester": {"type": "string"},
    "subject": {"type": "string"},
    "rule_id": {"type": "string"},
    "provider": {"type": ["string", "null"]},
    "model": {"type": ["string", "null"]},
    "team": {"type": ["string", "null"]},
    "project": {"type": ["string", "null"]},
    "call_ts_ms": {"type": ["integer", "null"]},
    "justification": {"type": "string"},
    "reviewer": {"type": ["string", "null"]},
    "decided_ms": {"type": ["integer", "null"]},
    "decision_kind": {"type": ["string", "null"], "enum": ["override", "rule_edit", None]},
    "expires": {"type": ["string", "null"], "format": "date-time"},
    "note": {"type": ["string", "null"], "description": "the reviewer's note, or the reason for a denial"},
    "models": {"type": ["array", "null"], "items": {"type": "string"}, "description": "an override's models "
               "(names or patterns, * for any): the model requested unless the approval widened it"},
    "providers": {"type": ["array", "null"], "items": {"type": "string"}, "description": "an override's providers "
                  "(names or patterns, * for any): the provider requested unless the approval widened it"},
    "revoked": {"type": ["string", "null"], "format": "date-time"},
    "revoked_by": {"type": ["string", "null"]},
    "active": {"type": "boolean", "description": "an approved override in force now"},
    "status_url": {"type": "string", "description": "the console page that shows the request's status"},
}

_ERROR = {"type": "object", "properties": {"error": {"type": "object", "properties": {
    "message": {"type": "string"}, "code": {"type": "string"}}}}}


def _json(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}


_ID_PARAM = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
_ONE_EXEMPTION = {"application/json": {"schema": {"type": "object", "properties": {
    "exemption": {"$ref": "#/components/schemas/Exemption"}}}}}
_DECIDE_ERRORS = {
    "400": {"description": "a field is wrong (named in error.field)", "content": _json("FieldError")},
    "401": {"description": "missing or wrong admin token"},
    "404": {"description": "no such exemption", "content": _json("Error")},
    "409": {"description": "already decided: only a pending request can be decided (or, for a rule edit, the "
                           "policy changed meanwhile)", "content": _json("Error")},
}

# every versioned document (policy, agent policy, directory): its history, one version, a diff
VERSIONS: dict[str, Any] = {
    "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer"}},
                   {"name": "before", "in": "query", "schema": {"type": "integer"}}],
    "responses": {"200": {"description": "versions"}}}
VERSION: dict[str, Any] = {
    "parameters": [{"name": "version", "in": "path", "required": True, "schema": {"type": "integer"}}],
    "responses": {"200": {"description": "the version"}, "404": {"description": "no such version"}}}
DIFF: dict[str, Any] = {
    "parameters": [{"name": "from", "in": "query", "required": True, "schema": {"type": "integer"}},
                   {"name": "to", "in": "query", "schema": {"type": "integer"}, "description": "default: the latest"}],
    "responses": {"200": {"description": "changes, each with op, path, before, after"}}}

# the document's frame: the router adds "paths"
DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Tollhouse control plane", "version": "1"},
    "components": {
        "securitySchemes": {"admin": {"type": "http", "scheme": "bearer"},
                            "enrollment": {"type": "http", "scheme": "bearer",
                                           "description": "an agent enrollment token (the-...)"},
                            "session": {"type": "apiKey", "in": "cookie", "name": "tollhouse_console",
                                        "description": "a console session (sign in at /console/login): GET as the "
                                        "session's role allows; other methods also need the X-CSRF-Token header"}},
        "schemas": {
            "Event": {"type": "object", "properties": _EVENT_PROPS, "required": list(_EVENT_PROPS)[:15]},
            "Error": _ERROR,
            "Exemption": {"type": "object", "properties": _EXEMPTION_PROPS},
            "FieldError": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                "message": {"type": "string"}, "code": {"type": "string", "enum": ["invalid_field"]},
                "field": {"type": "string", "description": "the first field that is wrong"},
                "problems": {"type": "array", "items": {"type": "object", "properties": {
                    "field": {"type": "string"}, "message": {"type": "string"}}}}}}}},
        },
    },
    "security": [{"admin": []}],
}


POST_EXEMPTIONS: dict[str, Any] = {
    "description": "The block error's exemption_url opens the console form that posts the same fields.",
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["subject", "rule", "justification"],
        "properties": {
            "subject": {"type": "string", "maxLength": 200, "description": "who was blocked"},
            "rule": {"type": "string", "description": "id of a rule in the current policy"},
            "justification": {"type": "string", "maxLength": 2000},
            "provider": {"type": "string"}, "model": {"type": "string"}, "team": {"type": "string"},
            "project": {"type": "string"},
            "ts": {"type": "string", "format": "date-time", "description": "time of the blocked call"},
            "requester": {"type": "string", "description": "who asks (default: the subject)"}}}}}},
    "responses": {
        "201": {"description": "filed", "content": {"application/json": {"schema": {
            "type": "object", "properties": {
                "id": {"type": "string"}, "status": {"type": "string"}, "status_url": {"type": "string"},
                "exemption": {"$ref": "#/components/schemas/Exemption"}}}}}},
        "400": {"description": "a field is wrong (named in error.field)", "content": _json("FieldError")},
        "409": {"description": "this subject already has a pending request for this rule (error.id, "
                               "error.status_url)", "content": _json("Error")},
        "429": {"description": "too many requests are waiting for a decision"},
    },
}

GET_EXEMPTIONS: dict[str, Any] = {
    "parameters": [
        {"name": "status", "in": "query",
         "schema": {"type": "string", "enum": ["pending", "approved", "denied", "revoked", "all"]}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
    ],
    "responses": {
        "200": {"description": "exemptions", "content": {"application/json": {"schema": {
            "type": "object", "properties": {
                "exemptions": {"type": "array", "items": {"$ref": "#/components/schemas/Exemption"}}}}}}},
        "400": {"description": "bad parameter"}, "401": {"description": "missing or wrong admin token"},
    },
}

GET_EXEMPTIONS_ID: dict[str, Any] = {"parameters": _ID_PARAM,
    "responses": {"200": {"description": "the request", "content": _ONE_EXEMPTION},
                  "404": {"description": "no such exemption"}},
}

POST_EXEMPTIONS_ID_APPROVE: dict[str, Any] = {
    "parameters": [*_ID_PARAM, {"name": "X-Tollhouse-Actor", "in": "header", "schema": {"type": "string"}}],
    "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {
        "kind": {"type": "string", "enum": ["override", "rule_edit"], "default": "override"},
        "hours": {"type": "integer", "minimum": 1, "maximum": 720, "default": 24},
        "models": {"type": "array", "items": {"type": "string"}, "description": "override: the models it "
                   "covers (names or patterns, [\"*\"] for any); default: the model requested"},
        "providers": {"type": "array", "items": {"type": "string"}, "description": "override: the providers "
                      "it covers ([\"*\"] for any); default: the provider requested"},
        "rule": {"type": "object", "description": "rule_edit: the full rule to add or replace"},
        "note": {"type": "string", "maxLength": 2000}}}}}},
    "responses": {"200": {"description": "approved", "content": _ONE_EXEMPTION}, **_DECIDE_ERRORS},
}

POST_EXEMPTIONS_ID_DENY: dict[str, Any] = {
    "parameters": [*_ID_PARAM, {"name": "X-Tollhouse-Actor", "in": "header", "schema": {"type": "string"}}],
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["reason"],
        "properties": {"reason": {"type": "string", "maxLength": 2000}}}}}},
    "responses": {"200": {"description": "denied", "content": _ONE_EXEMPTION}, **_DECIDE_ERRORS},
}

POST_EXEMPTIONS_ID_REVOKE: dict[str, Any] = {
    "parameters": [*_ID_PARAM, {"name": "X-Tollhouse-Actor", "in": "header", "schema": {"type": "string"}}],
    "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {
        "reason": {"type": "string", "maxLength": 2000}}}}}},
    "responses": {"200": {"description": "revoked", "content": _ONE_EXEMPTION},
                  "401": {"description": "missing or wrong admin token"},
                  "404": {"description": "no such exemption", "content": _json("Error")},
                  "409": {"description": "not an approved override in force (pending, denied, a rule edit, "
                                         "expired or already revoked)", "content": _json("Error")}},
}

GET_EVENTS: dict[str, Any] = {
    "parameters": [
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10000}},
        *EVENT_FILTERS,
        {"name": "before", "in": "query", "schema": {"type": "integer"},
         "description": "page: the `next` link of the previous page carries it"},
        {"name": "include", "in": "query", "schema": {"type": "string", "enum": ["content"]},
         "description": "content: each event also carries its captured prompt and response"},
    ],
    "responses": {
        "200": {"description": "events", "content": {"application/json": {"schema": {
            "type": "object", "properties": {
                "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                "next": {"type": "string"}}}}}},
        "400": {"description": "bad parameter, or one it does not take (the valid ones are listed)",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        "401": {"description": "missing or wrong admin token"},
        "404": {"description": "a team, project or person no one knows"},
    },
}

GET_SPEND: dict[str, Any] = {
    "parameters": [
        {"name": "scope", "in": "query", "required": True,
         "schema": {"type": "string", "enum": ["person", "team", "project", "service", "org"]}},
        {"name": "id", "in": "query", "schema": {"type": "string"}},
        {"name": "window", "in": "query", "schema": {"type": "string", "default": "month"},
         "description": "month, or a rolling window such as 1h, 24h, 7d, 30d"},
        {"name": "provider", "in": "query", "schema": {"type": "string"}},
    ],
    "responses": {"200": {"description": "spend report"}, "400": {"description": "bad parameter"},
                  "404": {"description": "a team, project or person no one knows"},
                  "503": {"description": "budget counters unavailable"}},
}

GET_AUDIT: dict[str, Any] = {
    "parameters": [
        {"name": "since", "in": "query", "schema": {"type": "integer", "minimum": 0},
         "description": "entries after this sequence number"},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10000}},
    ],
    "responses": {"200": {"description": "entries"}, "400": {"description": "bad parameter"}},
}

GET_ALERTS: dict[str, Any] = {
    "parameters": [
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
        {"name": "before_ms", "in": "query", "schema": {"type": "integer", "minimum": 0},
         "description": "alerts created before this time (the `next` link pages with it)"},
        {"name": "kind", "in": "query", "schema": {"type": "string", "enum": [
            "rule", "rule.summary", "budget", "anomaly", "exemption.requested", "exemption.decided",
            "test"]}},
    ],
    "responses": {"200": {"description": "alerts"}, "400": {"description": "bad parameter"}},
}

GET_KEYS: dict[str, Any] = {"responses": {"200": {"description": "keys"}}}

POST_KEYS: dict[str, Any] = {
    "requestBody": {"content": {"application/json": {"schema": {
        "type": "object", "required": ["user"],
        "properties": {"user": {"type": "string", "maxLength": 128}, "label": {"type": "string"},
                       "allow_unknown": {"type": "boolean", "default": False}}}}}},
    "responses": {"201": {"description": "created"},
                  "400": {"description": "bad body, or a user the directory lacks"}},
}

GET_POLICY: dict[str, Any] = {"responses": {"200": {"description": "policy"}}}

PUT_POLICY: dict[str, Any] = {"requestBody": {"content": {"application/json": {"schema": {
        "type": "object", "required": ["rules"], "properties": {
            "rules": {"type": "array", "items": {"type": "object"}}, "note": {"type": "string"},
            "base_version": {"type": "integer", "description": "409 unless this is current"}}}}}},
    "responses": {"200": {"description": "the new version"}, "400": {"description": "invalid"},
                  "409": {"description": "base_version is not the current version"}}}

POST_POLICY_ROLLBACK: dict[str, Any] = {
    "requestBody": {"content": {"application/json": {"schema": {
        "type": "object", "required": ["version"], "properties": {"version": {"type": "integer"}}}}}},
    "responses": {"200": {"description": "the new version"}, "404": {"description": "no such version"}}}

POST_POLICY_BACKTEST: dict[str, Any] = {
    "requestBody": {"content": {"application/json": {"schema": {
        "type": "object", "required": ["rules"],
        "properties": {"rules": {"type": "array", "items": {"type": "object"}},
                       "days": {"type": "integer", "minimum": 1, "maximum": 366, "default": 14}}}}}},
    "responses": {
        "200": {"description": "{from, to, calls, judged, changed, changes, outcomes, in_force_outcomes, "
                               "cost_usd_blocked, cost_unknown, not_evaluable, shadow: {rules, would}, rules: "
                               "[{id, mode, would_block, would_warn, would_redirect, would_log, "
                               "cost_usd_blocked, cost_usd_saved_by_redirect, subjects, teams, first, last, "
                               "not_evaluable}]}"},
        "400": {"description": "the rules do not validate (every problem listed) or days is out of range",
                "content": _json("Error")},
        "503": {"description": "the store cannot be read", "content": _json("Error")}}}

_NEW_VERSION: dict[str, Any] = {"responses": {"200": {"description": "the new version"},
                                          "400": {"description": "invalid"}}}

GET_AGENT_POLICY: dict[str, Any] = {"responses": {"200": {"description": "agent policy"}}}

PUT_AGENT_POLICY: dict[str, Any] = _NEW_VERSION

GET_DIRECTORY: dict[str, Any] = {"responses": {"200": {"description": "directory"}}}

PUT_DIRECTORY: dict[str, Any] = _NEW_VERSION

GET_AGENT_TOKENS: dict[str, Any] = {"responses": {"200": {"description": "ok"}}}

POST_AGENT_TOKENS: dict[str, Any] = {"requestBody": {"content": {"application/json": {"schema": {
    "type": "object", "properties": {"label": {"type": "string"}}}}}},
"responses": {"201": {"description": "created"}}}

DELETE_AGENT_TOKENS_PREFIX: dict[str, Any] = {
    "parameters": [{"name": "prefix", "in": "path", "required": True, "schema": {"type": "string"}}],
    "responses": {"200": {"description": "revoked"}, "404": {"description": "no such token"}}}

GET_AGENTS: dict[str, Any] = {"responses": {"200": {"description": "agents"}}}

GET_AGENT_BUNDLE: dict[str, Any] = {
    "parameters": [{"name": "wait", "in": "query", "schema": {"type": "integer", "maximum": 60}},
                   {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}},
                   {"name": "X-Tollhouse-Agent-Id", "in": "header", "schema": {"type": "string"}}],
    "responses": {"200": {"description": "bundle"}, "304": {"description": "unchanged"},
                  "401": {"description": "missing, unknown or revoked token"}}}

POST_AGENT_EVENTS: dict[str, Any] = {
    "responses": {"200": {"description": "{received, stored, duplicates}"},
                  "400": {"description": "invalid batch; nothing stored. error.problems names the bad "
                          "events and fields (up to 20), error.bad lists every bad event's index"}}}

POST_AGENT_LEASES: dict[str, Any] = {
    "parameters": [{"name": "X-Tollhouse-Agent-Id", "in": "header", "schema": {"type": "string"}}],
    "responses": {"200": {"description": "{ttl_s, leases}"},
                  "400": {"description": "a malformed request, naming the bad item"},
                  "503": {"description": "the budget counters are unavailable"}}}

GET_EVENTS_ID: dict[str, Any] = {
    "parameters": _ID_PARAM,
    "responses": {"200": {"description": "the event", "content": {"application/json": {"schema": {
        "type": "object", "properties": {"event": {"allOf": [
            {"$ref": "#/components/schemas/Event"},
            {"type": "object", "properties": _CONTENT_PROPS}]}}}}}},
        "404": {"description": "no event with that id", "content": {"application/json": {
            "schema": _ERROR}}}}}

POST_AGENT_NOTICES: dict[str, Any] = {
            "responses": {"200": {"description": "recorded"}, "400": {"description": "unknown kind"}}}

GET_CONSOLE_SESSIONS: dict[str, Any] = {"responses": {"200": {"description": "{sessions: [{id, user, role, via, "
                                                                  "signed_in, expires}]}"}}}

POST_CONSOLE_SESSION_REVOKE: dict[str, Any] = {
    "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
    "responses": {"200": {"description": "{session, revoked: true}"},
                  "404": {"description": "no session that still works has this id"}},
}

POST_CONSOLE_SESSIONS_REVOKE: dict[str, Any] = {
    "requestBody": {"content": {"application/json": {"schema": {
        "type": "object", "required": ["user"], "additionalProperties": False,
        "properties": {"user": {"type": "string", "maxLength": 320,
                                "description": "the name the user signs in to the console as"}}}}}},
    "responses": {"200": {"description": "{user, revoked_before}: sessions begun until then no longer work"},
                  "400": {"description": "bad body"}},
}

DELETE_KEYS_PREFIX: dict[str, Any] = {
    "parameters": [{"name": "prefix", "in": "path", "required": True, "schema": {"type": "string"}}],
    "responses": {"200": {"description": "revoked"}, "404": {"description": "no such key"}},
}

# forward proxy (issue 21)
_HOSTS_PATH: dict[str, Any] = {"get": {
            "summary": "Hosts reached through the forward proxy (forward_proxy.port), most recently seen first: "
                       "connections (intercepted, denied), bytes up and down of tunnels, first and last seen "
                       "(first_ms, last_ms), the people, `known_ai` with the `vendor` for known AI API hosts, and "
                       "`managed` for intercepted (governed) hosts",
            "parameters": [
                {"name": "known_ai", "in": "query", "schema": {"type": "boolean"}},
                {"name": "managed", "in": "query", "schema": {"type": "boolean"},
                 "description": "false: AI services used outside the managed ones (with known_ai=true)"},
                {"name": "since", "in": "query", "schema": {"type": "integer", "minimum": 0},
                 "description": "hosts last seen at or after this time (ms)"},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100000}},
            ],
            "responses": {"200": {"description": "hosts"}, "400": {"description": "bad parameter"}},
        }}
HOSTS_SUMMARY: str = _HOSTS_PATH["get"]["summary"]
GET_HOSTS: dict[str, Any] = {k: v for k, v in _HOSTS_PATH["get"].items() if k != "summary"}
_AGENT_HOSTS_PATH: dict[str, Any] = {"post": {
            "summary": "An agent's forward-proxy host totals (enrollment token and X-Tollhouse-Agent-Id): each row "
                       "replaces the agent's previous report for that host and person",
            "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {
                "hosts": {"type": "array", "maxItems": 5000, "items": {"type": "object", "properties": {
                    "host": {"type": "string"}, "person": {"type": "string"},
                    **{k: {"type": "integer", "minimum": 0} for k in (
                        "connections", "intercepted", "denied", "bytes_up", "bytes_down", "first_ms", "last_ms")}},
                    "required": ["host", "person"]}}}, "required": ["hosts"]}}}},
            "responses": {"200": {"description": "stored"}, "400": {"description": "a bad report"},
                          "401": {"description": "no valid enrollment token"}},
        }}
AGENT_HOSTS_SUMMARY: str = _AGENT_HOSTS_PATH["post"]["summary"]
POST_AGENT_HOSTS: dict[str, Any] = {k: v for k, v in _AGENT_HOSTS_PATH["post"].items() if k != "summary"}

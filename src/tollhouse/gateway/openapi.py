"""OpenAPI description of /api/v1 (served at /api/v1/openapi.json)."""

from __future__ import annotations

from typing import Any

from tollhouse.gateway.openapi_usage import EVENT_FILTERS, USAGE_PATHS

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
_EXEMPTION_PATHS: dict[str, Any] = {
    "/api/v1/exemptions": {
        "post": {
            "summary": "Request an exemption from a rule (no admin token: requesters are ordinary users)",
            "description": "The block error's exemption_url opens the console form that posts the same fields.",
            "security": [],
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
        },
        "get": {
            "summary": "The exemption queue, newest first",
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
        },
    },
    "/api/v1/exemptions/{id}": {"get": {
        "summary": "One exemption request (no admin token: the id is known only to whoever filed it)",
        "security": [], "parameters": _ID_PARAM,
        "responses": {"200": {"description": "the request", "content": _ONE_EXEMPTION},
                      "404": {"description": "no such exemption"}},
    }},
    "/api/v1/exemptions/{id}/approve": {"post": {
        "summary": "Approve a pending request: a one-off override of the rule for the subject that expires on "
                   "its own, or a rule edit (the rule added to the policy, or replacing the rule with its id, as "
                   "a new policy version). The reviewer is X-Tollhouse-Actor (default admin)",
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
    }},
    "/api/v1/exemptions/{id}/deny": {"post": {
        "summary": "Deny a pending request with a reason the requester sees",
        "parameters": [*_ID_PARAM, {"name": "X-Tollhouse-Actor", "in": "header", "schema": {"type": "string"}}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["reason"],
            "properties": {"reason": {"type": "string", "maxLength": 2000}}}}}},
        "responses": {"200": {"description": "denied", "content": _ONE_EXEMPTION}, **_DECIDE_ERRORS},
    }},
    "/api/v1/exemptions/{id}/revoke": {"post": {
        "summary": "End an approved override early: calls stop passing at once (on agents within the bundle's "
                   "long-poll). Audited as exemption.revoked; the revoker is X-Tollhouse-Actor (default admin)",
        "parameters": [*_ID_PARAM, {"name": "X-Tollhouse-Actor", "in": "header", "schema": {"type": "string"}}],
        "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {
            "reason": {"type": "string", "maxLength": 2000}}}}}},
        "responses": {"200": {"description": "revoked", "content": _ONE_EXEMPTION},
                      "401": {"description": "missing or wrong admin token"},
                      "404": {"description": "no such exemption", "content": _json("Error")},
                      "409": {"description": "not an approved override in force (pending, denied, a rule edit, "
                                             "expired or already revoked)", "content": _json("Error")}},
    }},
}


def _versions(what: str) -> dict[str, Any]:
    return {"summary": f"History of the {what}, newest first",
            "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer"}},
                           {"name": "before", "in": "query", "schema": {"type": "integer"}}],
            "responses": {"200": {"description": "versions"}}}


def _version(what: str) -> dict[str, Any]:
    return {"summary": f"One version of the {what}",
            "parameters": [{"name": "version", "in": "path", "required": True, "schema": {"type": "integer"}}],
            "responses": {"200": {"description": "the version"}, "404": {"description": "no such version"}}}


def _diff(what: str) -> dict[str, Any]:
    return {"summary": f"What changed between two {what}",
            "parameters": [{"name": "from", "in": "query", "required": True, "schema": {"type": "integer"}},
                           {"name": "to", "in": "query", "schema": {"type": "integer"},
                            "description": "default: the latest"}],
            "responses": {"200": {"description": "changes, each with op, path, before, after"}}}


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Tollhouse control plane", "version": "1"},
    "components": {
        "securitySchemes": {"admin": {"type": "http", "scheme": "bearer"},
                            "enrollment": {"type": "http", "scheme": "bearer",
                                           "description": "an agent enrollment token (the-...)"}},
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
    "paths": {
        "/api/v1/events": {"get": {
            "summary": "Calls through the gateway, newest first",
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
        }},
        **USAGE_PATHS,
        "/api/v1/spend": {"get": {
            "summary": "Spend, tokens and requests of a person, team, project, service or the org, with each "
                       "cap's limit, used and remaining",
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
        }},
        "/api/v1/audit": {"get": {
            "summary": "The audit trail, oldest first, hash-chained (prev_hash, hash)",
            "parameters": [
                {"name": "since", "in": "query", "schema": {"type": "integer", "minimum": 0},
                 "description": "entries after this sequence number"},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10000}},
            ],
            "responses": {"200": {"description": "entries"}, "400": {"description": "bad parameter"}},
        }},
        "/api/v1/alerts": {"get": {
            "summary": "Alerts newest first (rules, budget thresholds, anomalies, exemptions), each with its count "
                       "and its deliveries' states (pending with attempts and last error, or delivered); the "
                       "channels (secrets masked) and their health",
            "parameters": [
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                {"name": "before_ms", "in": "query", "schema": {"type": "integer", "minimum": 0},
                 "description": "alerts created before this time (the `next` link pages with it)"},
                {"name": "kind", "in": "query", "schema": {"type": "string", "enum": [
                    "rule", "rule.summary", "budget", "anomaly", "exemption.requested", "exemption.decided",
                    "test"]}},
            ],
            "responses": {"200": {"description": "alerts"}, "400": {"description": "bad parameter"}},
        }},
        "/api/v1/hosts": {"get": {
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
        }},
        "/api/v1/agent/hosts": {"post": {
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
        }},
        "/api/v1/keys": {
            "get": {"summary": "Gateway virtual keys (prefixes only)", "responses": {"200": {"description": "keys"}}},
            "post": {
                "summary": "Create a gateway key for a person or service of the directory; the key is shown once",
                "requestBody": {"content": {"application/json": {"schema": {
                    "type": "object", "required": ["user"],
                    "properties": {"user": {"type": "string", "maxLength": 128}, "label": {"type": "string"},
                                   "allow_unknown": {"type": "boolean", "default": False}}}}}},
                "responses": {"201": {"description": "created"},
                              "400": {"description": "bad body, or a user the directory lacks"}},
            },
        },
        **_EXEMPTION_PATHS,

        "/api/v1/policy": {
            "get": {"summary": "The current policy: {version, rules, source, actor, ts}",
                    "responses": {"200": {"description": "policy"}}},
            "put": {"summary": "Replace the rules: the whole policy is validated (400 lists every problem by rule "
                               "and field; nothing changes), then stored as the next version and applied",
                    "requestBody": {"content": {"application/json": {"schema": {
                        "type": "object", "required": ["rules"], "properties": {
                            "rules": {"type": "array", "items": {"type": "object"}}, "note": {"type": "string"},
                            "base_version": {"type": "integer", "description": "409 unless this is current"}}}}}},
                    "responses": {"200": {"description": "the new version"}, "400": {"description": "invalid"},
                                  "409": {"description": "base_version is not the current version"}}},
        },
        "/api/v1/policy/versions": {"get": _versions("policy")},
        "/api/v1/policy/versions/{version}": {"get": _version("policy")},
        "/api/v1/policy/diff": {"get": _diff("policy versions (rules matched by id)")},
        "/api/v1/policy/rollback": {"post": {
            "summary": "Make an earlier version current again, as a new version",
            "requestBody": {"content": {"application/json": {"schema": {
                "type": "object", "required": ["version"], "properties": {"version": {"type": "integer"}}}}}},
            "responses": {"200": {"description": "the new version"}, "404": {"description": "no such version"}}}},
        "/api/v1/policy/backtest": {"post": {
            "summary": "What proposed rules would have done to the stored calls of the last `days` (default 14), "
                       "enforcing, beside the policy in force: replayed in time order through the gateway's decision "
                       "with budget counters simulated; nothing is changed",
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
                "503": {"description": "the store cannot be read", "content": _json("Error")}}}},
        "/api/v1/agent-policy": {
            "get": {"summary": "The agent policy (seven settings + release_index), proxy passwords masked",
                    "responses": {"200": {"description": "agent policy"}}},
            "put": {"summary": "Replace the agent policy (missing settings take their defaults); 400 names each "
                               "invalid setting with a valid example",
                    "responses": {"200": {"description": "the new version"}, "400": {"description": "invalid"}}},
        },
        "/api/v1/agent-policy/versions": {"get": _versions("agent policy")},
        "/api/v1/agent-policy/versions/{version}": {"get": _version("agent policy")},
        "/api/v1/agent-policy/diff": {"get": _diff("agent policy versions")},
        "/api/v1/directory": {
            "get": {"summary": "The directory in force: {version, directory: {org, teams, projects, people, "
                               "services}}", "responses": {"200": {"description": "directory"}}},
            "put": {"summary": "Replace the directory: validated whole (400 lists each problem), refused if a rule "
                               "of the current policy would lose its target; a new version, audited",
                    "responses": {"200": {"description": "the new version"}, "400": {"description": "invalid"}}},
        },
        "/api/v1/directory/versions": {"get": _versions("directory")},
        "/api/v1/directory/versions/{version}": {"get": _version("directory")},
        "/api/v1/directory/diff": {"get": _diff("directory versions")},
        "/api/v1/agent/tokens": {
            "get": {"summary": "Agent enrollment tokens (prefixes only)", "responses": {"200": {"description": "ok"}}},
            "post": {"summary": "Issue an enrollment token (shown once) for agents to use as their bearer token",
                     "requestBody": {"content": {"application/json": {"schema": {
                         "type": "object", "properties": {"label": {"type": "string"}}}}}},
                     "responses": {"201": {"description": "created"}}},
        },
        "/api/v1/agent/tokens/{prefix}": {"delete": {
            "summary": "Revoke an enrollment token",
            "parameters": [{"name": "prefix", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "revoked"}, "404": {"description": "no such token"}}}},
        "/api/v1/agents": {"get": {"summary": "Agents that have checked in (id, hostname, version, last seen)",
                                   "responses": {"200": {"description": "agents"}}}},
        "/api/v1/agent/bundle": {"get": {
            "summary": "Everything an agent needs (policy, directory, agent policy) with an ETag. With If-None-Match "
                       "the request is held until something changes (200, the new bundle) or `wait` seconds pass "
                       "(304). Bearer: an enrollment token or the admin token.",
            "security": [{"admin": []}, {"enrollment": []}],
            "parameters": [{"name": "wait", "in": "query", "schema": {"type": "integer", "maximum": 60}},
                           {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}},
                           {"name": "X-Tollhouse-Agent-Id", "in": "header", "schema": {"type": "string"}}],
            "responses": {"200": {"description": "bundle"}, "304": {"description": "unchanged"},
                          "401": {"description": "missing, unknown or revoked token"}}}},
        "/api/v1/agent/events": {"post": {
            "summary": "Agent telemetry: {events: [...]} (at most 5000), stored once each by event id (a retried "
                       "batch is harmless); one invalid event refuses the whole batch, naming it",
            "security": [{"admin": []}, {"enrollment": []}],
            "responses": {"200": {"description": "{received, stored, duplicates}"},
                          "400": {"description": "invalid batch; nothing stored. error.problems names the bad "
                                  "events and fields (up to 20), error.bad lists every bad event's index"}}}},
        "/api/v1/agent/leases": {"post": {
            "summary": "An agent's budget leases, all its caps in one request: {epoch, leases: [{rule, scope, id, "
                       "consumed, need, release}]} (at most 256). Amounts in counter units (nano-dollars for spend "
                       "caps). The answer, in the same order: {ttl_s, leases: [{granted, used, limit, ttl_s, "
                       "error}]}; `granted` is the epoch's cumulative grant, `used` the fleet's count without this "
                       "lease",
            "security": [{"admin": []}, {"enrollment": []}],
            "parameters": [{"name": "X-Tollhouse-Agent-Id", "in": "header", "schema": {"type": "string"}}],
            "responses": {"200": {"description": "{ttl_s, leases}"},
                          "400": {"description": "a malformed request, naming the bad item"},
                          "503": {"description": "the budget counters are unavailable"}}}},
        "/api/v1/events/{id}": {"get": {
            "summary": "One call event, with its captured prompt and response (enterprise capture mode)",
            "parameters": _ID_PARAM,
            "responses": {"200": {"description": "the event", "content": {"application/json": {"schema": {
                "type": "object", "properties": {"event": {"allOf": [
                    {"$ref": "#/components/schemas/Event"},
                    {"type": "object", "properties": _CONTENT_PROPS}]}}}}}},
                "404": {"description": "no event with that id", "content": {"application/json": {
                    "schema": _ERROR}}}}}},
        "/api/v1/agent/notices": {"post": {
            "summary": "An agent's notice {kind: agent.update.available|installed|failed, data: {...}}: audited, "
                       "and kept as the agent's last status",
            "security": [{"admin": []}, {"enrollment": []}],
            "responses": {"200": {"description": "recorded"}, "400": {"description": "unknown kind"}}}},
        "/api/v1/keys/{prefix}": {"delete": {
            "summary": "Revoke a gateway key",
            "parameters": [{"name": "prefix", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "revoked"}, "404": {"description": "no such key"}},
        }},
    },
}

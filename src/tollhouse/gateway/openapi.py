"""OpenAPI description of /api/v1 (served at /api/v1/openapi.json)."""

from __future__ import annotations

from typing import Any

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
    "usage_source": {"type": "string", "enum": ["response", "partial", "estimate", "none", "unparsed"]},
}

_ERROR = {"type": "object", "properties": {"error": {"type": "object", "properties": {
    "message": {"type": "string"}, "code": {"type": "string"}}}}}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Tollhouse control plane", "version": "1"},
    "components": {
        "securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Event": {"type": "object", "properties": _EVENT_PROPS, "required": list(_EVENT_PROPS)[:15]},
            "Error": _ERROR,
        },
    },
    "security": [{"admin": []}],
    "paths": {
        "/api/v1/events": {"get": {
            "summary": "Calls through the gateway, newest first",
            "parameters": [
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10000}},
                {"name": "subject", "in": "query", "schema": {"type": "string"}},
                {"name": "before", "in": "query", "schema": {"type": "integer"},
                 "description": "page: the `next` link of the previous page carries it"},
            ],
            "responses": {
                "200": {"description": "events", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {
                        "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                        "next": {"type": "string"}}}}}},
                "400": {"description": "bad parameter", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Error"}}}},
                "401": {"description": "missing or wrong admin token"},
            },
        }},
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
        "/api/v1/keys": {
            "get": {"summary": "Gateway virtual keys (prefixes only)", "responses": {"200": {"description": "keys"}}},
            "post": {
                "summary": "Create a gateway key for a person; the key is shown once",
                "requestBody": {"content": {"application/json": {"schema": {
                    "type": "object", "required": ["user"],
                    "properties": {"user": {"type": "string"}, "label": {"type": "string"}}}}}},
                "responses": {"201": {"description": "created"}, "400": {"description": "bad body"}},
            },
        },
        "/api/v1/keys/{prefix}": {"delete": {
            "summary": "Revoke a gateway key",
            "parameters": [{"name": "prefix", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "revoked"}, "404": {"description": "no such key"}},
        }},
    },
}

"""Every route of the control plane and the console, in one table (the console's pages come from
console/registry.py). The OpenAPI document at /api/v1/openapi.json is generated from it (gateway/router.py).

Roles on the API (DESIGN.md "Seeing and deciding"): admin may do everything; policy_owner reads and writes
policy, agent policy and exemptions, runs backtests and reads usage; finance reads usage, reports, baselines,
spend, events and the directory; auditor reads everything, the audit trail included, and writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

import orjson

from tollhouse.alerts import api as alerts_api
from tollhouse.console import render
from tollhouse.console.pages import ADMIN, ALL_ROLES, AUDIT, POLICY, Page
from tollhouse.forward import api as forward_api
from tollhouse.gateway import (
    admin,
    agent_api,
    backtest_api,
    baseline,
    events_api,
    lease_api,
    policy_api,
    sessions_api,
    spend,
    sso,
    usage_api,
)
from tollhouse.gateway import exemption_api as exemption
from tollhouse.gateway import exemption_console as exemption_page
from tollhouse.gateway import openapi as doc
from tollhouse.gateway import openapi_usage as usage_doc
from tollhouse.gateway.exemption_routes import EXEMPTION_ID, at_authority
from tollhouse.gateway.http import Request, Response
from tollhouse.gateway.router import Auth, Handler, Route, Router, openapi_document
from tollhouse.gateway.state import GatewayState

# who reads what (writes: ADMIN, or POLICY for policy, agent policy and exemptions)
READ_ALL = ALL_ROLES - {"finance", "policy_owner"}  # admin, auditor: keys, agents, alerts, what calls said
USAGE = ALL_ROLES  # usage, reports, baselines, spend, events, the directory
POLICY_READ = POLICY | AUDIT  # policy and agent policy, their history; the exemption queue

PUBLIC, AGENT, PAGE = Auth.public, Auth.agent, Auth.page


def _versioned(base: str, what: str, read: frozenset[str], write: frozenset[str], get: Handler, put: Handler,
               get_summary: str, put_summary: str, get_doc: Mapping[str, Any], put_doc: Mapping[str, Any],
               diff_note: str = "") -> tuple[Route, ...]:
    """A versioned document's routes: itself, its history, one version, a diff (`diff_note`: how it compares)."""
    return (
        Route("GET", base, get, roles=read, summary=get_summary, doc=get_doc),
        Route("PUT", base, put, roles=write, summary=put_summary, doc=put_doc),
        Route("GET", f"{base}/versions", policy_api.list_versions, roles=read,
              summary=f"History of the {what}, newest first", doc=doc.VERSIONS),
        Route("GET", f"{base}/versions/{{version}}", policy_api.get_version, roles=read,
              summary=f"One version of the {what}", doc=doc.VERSION),
        Route("GET", f"{base}/diff", policy_api.diff_versions, roles=read, doc=doc.DIFF,
              summary=f"What changed between two {what} versions{diff_note}"),
    )


async def openapi(request: Request, state: GatewayState) -> Response:
    """The OpenAPI document, generated once from the routes."""
    return Response(200, _document(), [("content-type", "application/json")])


@cache
def _document() -> bytes:
    return orjson.dumps(openapi_document(doc.DOCUMENT, (*API, *EXEMPTIONS)))  # the console's pages are not API


async def static(request: Request, state: GatewayState) -> Response:
    """A vendored script, style sheet or font of the console (public: no data in them)."""
    return render.static(request.params["name"])


API: tuple[Route, ...] = (
    Route("GET", "/healthz", admin.healthz, PUBLIC, summary="Liveness and what the gateway runs"),
    Route("GET", "/metrics", admin.metrics, PUBLIC, summary="Prometheus metrics"),
    Route("GET", "/api/v1/openapi.json", openapi, PUBLIC, summary="This document"),
    # calls and usage (from the rollups: series, the spend report as CSV or FOCUS, a team's baseline)
    Route("GET", "/api/v1/events", events_api.list_events, roles=USAGE,
          summary="Calls through the gateway, newest first", doc=doc.GET_EVENTS),
    Route("GET", "/api/v1/events/{id}", admin.get_event, roles=READ_ALL, doc=doc.GET_EVENTS_ID,
          summary="One call event, with its captured prompt and response (enterprise capture mode)"),
    Route("GET", "/api/v1/usage", usage_api.usage, roles=USAGE, doc=usage_doc.GET_USAGE,
          summary="Calls, tokens and cost over time, by team, project, cost centre, person, provider or model "
                  "(served from hourly rollups; days are local days in ledger.timezone)"),
    Route("GET", "/api/v1/reports/spend.csv", usage_api.spend_csv, roles=USAGE, doc=usage_doc.GET_REPORTS_SPEND_CSV,
          summary="The spend report as CSV (chargeback): a row per period and group; format=focus: FOCUS 1.x "
                  "columns (BilledCost, EffectiveCost, ChargePeriodStart, ServiceName, SkuId, Tags, ...) a row per "
                  "day, provider and model, with x_Team, x_Project, x_CostCentre, x_Person for the groups asked"),
    Route("GET", "/api/v1/baseline", baseline.baseline, roles=USAGE, doc=usage_doc.GET_BASELINE,
          summary="What normal looks like for a team (and the teams below it): calls, tokens and cost per day "
                  "(median, quartiles, mean, min, max; weekdays and weekends apart) and its model mix, over the "
                  "last complete local days"),
    Route("GET", "/api/v1/spend", spend.spend, roles=USAGE, doc=doc.GET_SPEND,
          summary="Spend, tokens and requests of a person, team, project, service or the org, with each cap's "
                  "limit, used and remaining"),
    Route("GET", "/api/v1/audit", admin.list_audit, roles=AUDIT, doc=doc.GET_AUDIT,
          summary="The audit trail, oldest first, hash-chained (prev_hash, hash)"),
    Route("GET", "/api/v1/alerts", alerts_api.list_alerts, roles=READ_ALL, doc=doc.GET_ALERTS,
          summary="Alerts newest first (rules, budget thresholds, anomalies, exemptions), each with its count and "
                  "its deliveries' states (pending with attempts and last error, or delivered); the channels "
                  "(secrets masked) and their health"),
    # gateway keys
    Route("GET", "/api/v1/keys", admin.list_gateway_keys, roles=READ_ALL, doc=doc.GET_KEYS,
          summary="Gateway virtual keys (prefixes only)"),
    Route("POST", "/api/v1/keys", admin.create_gateway_key, roles=ADMIN, doc=doc.POST_KEYS,
          summary="Create a gateway key for a person or service of the directory; the key is shown once"),
    Route("DELETE", "/api/v1/keys/{prefix}", admin.revoke_gateway_key, roles=ADMIN, doc=doc.DELETE_KEYS_PREFIX,
          summary="Revoke a gateway key"),
    # console sessions
    Route("GET", "/api/v1/console/sessions", sessions_api.list_sessions, roles=READ_ALL, doc=doc.GET_CONSOLE_SESSIONS,
          summary="The console sessions that still work, newest first: id, user, role, via, signed_in, expires"),
    Route("POST", "/api/v1/console/sessions/{id}/revoke", sessions_api.revoke_session, roles=ADMIN,
          doc=doc.POST_CONSOLE_SESSION_REVOKE,
          summary="End one console session on every gateway sharing the store; audited"),
    Route("POST", "/api/v1/console/sessions/revoke", sessions_api.revoke_sessions, roles=ADMIN,
          doc=doc.POST_CONSOLE_SESSIONS_REVOKE,
          summary="End every console session of a user (signed in until now) on every gateway sharing the store; "
                  "audited"),
    # versioned policy, agent policy and directory
    *_versioned("/api/v1/policy", "policy", POLICY_READ, POLICY, policy_api.get_policy, policy_api.put_policy,
                "The current policy: {version, rules, source, actor, ts}",
                "Replace the rules: the whole policy is validated (400 lists every problem by rule and field; "
                "nothing changes), then stored as the next version and applied", doc.GET_POLICY, doc.PUT_POLICY,
                " (rules matched by id)"),
    Route("POST", "/api/v1/policy/rollback", policy_api.rollback_policy, roles=POLICY, doc=doc.POST_POLICY_ROLLBACK,
          summary="Make an earlier version current again, as a new version"),
    Route("POST", "/api/v1/policy/backtest", backtest_api.backtest, roles=POLICY, doc=doc.POST_POLICY_BACKTEST,
          summary="What proposed rules would have done to the stored calls of the last `days` (default 14), "
                  "enforcing, beside the policy in force: replayed in time order through the gateway's decision "
                  "with budget counters simulated; nothing is changed"),
    *_versioned("/api/v1/agent-policy", "agent policy", POLICY_READ, POLICY, policy_api.get_agent_policy,
                policy_api.put_agent_policy,
                "The agent policy (seven settings + release_index), proxy passwords masked",
                "Replace the agent policy (missing settings take their defaults); 400 names each invalid setting "
                "with a valid example", doc.GET_AGENT_POLICY, doc.PUT_AGENT_POLICY),
    *_versioned("/api/v1/directory", "directory", USAGE, ADMIN, policy_api.get_directory,
                policy_api.put_directory,
                "The directory in force: {version, directory: {org, teams, projects, people, services}}",
                "Replace the directory: validated whole (400 lists each problem), refused if a rule of the current "
                "policy would lose its target; a new version, audited", doc.GET_DIRECTORY, doc.PUT_DIRECTORY),
    # agents: enrollment tokens (admin); the bundle, telemetry, notices and leases (an enrollment token)
    Route("POST", "/api/v1/agent/tokens", agent_api.create_token, roles=ADMIN, doc=doc.POST_AGENT_TOKENS,
          summary="Issue an enrollment token (shown once) for agents to use as their bearer token"),
    Route("GET", "/api/v1/agent/tokens", agent_api.list_tokens, roles=READ_ALL, doc=doc.GET_AGENT_TOKENS,
          summary="Agent enrollment tokens (prefixes only)"),
    Route("DELETE", "/api/v1/agent/tokens/{prefix}", agent_api.revoke_token, roles=ADMIN,
          doc=doc.DELETE_AGENT_TOKENS_PREFIX, summary="Revoke an enrollment token"),
    Route("GET", "/api/v1/agents", agent_api.list_agents, roles=READ_ALL, doc=doc.GET_AGENTS,
          summary="Agents that have checked in (id, hostname, version, last seen)"),
    Route("GET", "/api/v1/agent/bundle", agent_api.bundle, AGENT, doc=doc.GET_AGENT_BUNDLE,
          summary="Everything an agent needs (policy, directory, agent policy) with an ETag. With If-None-Match "
                  "the request is held until something changes (200, the new bundle) or `wait` seconds pass "
                  "(304). Bearer: an enrollment token or the admin token."),
    Route("POST", "/api/v1/agent/events", agent_api.ingest_events, AGENT, doc=doc.POST_AGENT_EVENTS,
          summary="Agent telemetry: {events: [...]} (at most 5000), stored once each by event id (a retried "
                  "batch is harmless); one invalid event refuses the whole batch, naming it"),
    Route("POST", "/api/v1/agent/notices", agent_api.notices, AGENT, doc=doc.POST_AGENT_NOTICES,
          summary="An agent's notice {kind: agent.update.available|installed|failed, data: {...}}: audited, and "
                  "kept as the agent's last status"),
    Route("POST", "/api/v1/agent/leases", lease_api.leases, AGENT, doc=doc.POST_AGENT_LEASES,
          summary="An agent's budget leases, all its caps in one request: {epoch, leases: [{rule, scope, id, "
                  "consumed, need, release}]} (at most 256). Amounts in counter units (nano-dollars for spend "
                  "caps). The answer, in the same order: {ttl_s, leases: [{granted, used, limit, ttl_s, error}]}; "
                  "`granted` is the epoch's cumulative grant, `used` the fleet's count without this lease"),
    # the forward proxy (issue 21): hosts reached through it, and agents' reports of theirs
    Route("GET", "/api/v1/hosts", forward_api.hosts, roles=READ_ALL, doc=doc.GET_HOSTS,
          summary=doc.HOSTS_SUMMARY),
    Route("POST", "/api/v1/agent/hosts", forward_api.agent_hosts, AGENT, doc=doc.POST_AGENT_HOSTS,
          summary=doc.AGENT_HOSTS_SUMMARY),
)

# The exemption workflow (issue 6): requesters file and follow without signing in; policy owners decide (the
# queue and its decisions are console pages: console/exemptions.py). On a gateway whose queue is another's
# (exemptions.authority_url) every workflow path redirects there.
EXEMPTIONS: tuple[Route, ...] = tuple(
    Route(r.method, r.path, at_authority(r.handler), r.auth, r.roles, r.summary, r.doc, r.segment) for r in (
        Route("POST", "/api/v1/exemptions", exemption.create, PUBLIC, doc=doc.POST_EXEMPTIONS,
              summary="Request an exemption from a rule (no admin token: requesters are ordinary users)"),
        Route("GET", "/api/v1/exemptions", exemption.list_exemptions, roles=POLICY_READ, doc=doc.GET_EXEMPTIONS,
              summary="The exemption queue, newest first"),
        Route("GET", "/api/v1/exemptions/{id}", exemption.get_exemption, PUBLIC, segment=EXEMPTION_ID,
              doc=doc.GET_EXEMPTIONS_ID,
              summary="One exemption request (no admin token: the id is known only to whoever filed it)"),
        Route("POST", "/api/v1/exemptions/{id}/approve", exemption.approve, roles=POLICY, segment=EXEMPTION_ID,
              doc=doc.POST_EXEMPTIONS_ID_APPROVE,
              summary="Approve a pending request: a one-off override of the rule for the subject that expires on "
                      "its own, or a rule edit (the rule added to the policy, or replacing the rule with its id, "
                      "as a new policy version). The reviewer is the signed-in user, or X-Tollhouse-Actor with the "
                      "admin token (default admin)"),
        Route("POST", "/api/v1/exemptions/{id}/deny", exemption.deny, roles=POLICY, segment=EXEMPTION_ID,
              doc=doc.POST_EXEMPTIONS_ID_DENY, summary="Deny a pending request with a reason the requester sees"),
        Route("POST", "/api/v1/exemptions/{id}/revoke", exemption.revoke, roles=POLICY, segment=EXEMPTION_ID,
              doc=doc.POST_EXEMPTIONS_ID_REVOKE,
              summary="End an approved override early: calls stop passing at once (on agents within the bundle's "
                      "long-poll). Audited as exemption.revoked; the revoker is the signed-in user, or "
                      "X-Tollhouse-Actor with the admin token (default admin)"),
        Route("GET", "/console/exemptions/new", exemption_page.new_request, PUBLIC),
        Route("POST", "/console/exemptions", exemption_page.file_request, PUBLIC),
        Route("GET", "/console/exemptions/{id}", exemption_page.status_page, PUBLIC, segment=EXEMPTION_ID),
    ))

# Signing in and out of the console (admin token, or single sign-on when console.oidc is configured).
SIGN_IN: tuple[Route, ...] = (
    Route("GET", "/console/login", exemption_page.login_form, PUBLIC),
    Route("POST", "/console/login", exemption_page.login, PUBLIC),
    Route("POST", "/console/logout", exemption_page.logout, PUBLIC),
    Route("GET", sso.START_PATH, sso.start, PUBLIC),
    Route("GET", sso.CALLBACK_PATH, sso.callback, PUBLIC),
    Route("GET", "/console/static/{name}", static, PUBLIC, segment=r"[A-Za-z0-9_.-]{1,80}"),
)



def page_route(page: Page) -> Route:
    """A console page as a route: the page's handler gets the signed-in user the app authenticated."""
    handler = page.handler

    async def call(request: Request, state: GatewayState) -> Response:
        assert request.user is not None  # Auth.page: the app has signed the user in
        return await handler(request, state, request.user)

    return Route(page.method, page.path, call, PAGE, page.roles, page.title)


def table() -> tuple[Route, ...]:
    """Every route: the API, the exemption workflow, sign-in, and the console's pages (as registered now)."""
    from tollhouse.console import registry  # the page modules import the console, which imports the gateway

    return (*API, *EXEMPTIONS, *SIGN_IN, *(page_route(p) for p in registry.PAGES))


def router() -> Router:
    """The routes compiled (the app compiles them once, when it starts)."""
    return Router(table())


"""/api/v1/policy and /api/v1/agent-policy: versioned documents with history, diffs and rollback."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from tollhouse.control.agent_policy import AgentPolicy, AgentPolicyError, parse_agent_policy
from tollhouse.control.diff import diff_documents, item_summary
from tollhouse.events.records import DocumentVersion
from tollhouse.gateway.admin import ApiError, BadParameter, api_error, int_param, refused
from tollhouse.gateway.directory_holder import DirectoryError
from tollhouse.gateway.http import Request, Response, json_response
from tollhouse.gateway.policy_holder import FileAuthoritative, RulesFileError, VersionConflict
from tollhouse.gateway.state import GatewayState

MAX_DOCUMENT_BYTES = 8 * 1024 * 1024
_ACTOR_HEADER = "x-tollhouse-actor"
POLICY, AGENT_POLICY, DIRECTORY = "policy", "agent_policy", "directory"


def actor(request: Request) -> str:
    """Who made an admin change: the user the router signed in (a console session's user, or with the admin
    token `X-Tollhouse-Actor`), else `X-Tollhouse-Actor`, else admin."""
    return request.user.name if request.user is not None else actor_header(request)


def actor_header(request: Request) -> str:
    """`X-Tollhouse-Actor` (e.g. an SSO name set by a fronting proxy that holds the admin token), else admin."""
    name = (request.header(_ACTOR_HEADER) or "").strip()
    return name[:200] if name else "admin"


async def json_body(request: Request, empty: Any = None) -> Any:
    """The request body as JSON (`empty` when there is none and that is allowed); else a 400 (ApiError)
    that says what is wrong."""
    raw = await request.body(MAX_DOCUMENT_BYTES)
    if not raw.strip() and empty is not None:
        return empty
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}", "malformed_json") from None


# the policy

def _policy_json(state: GatewayState, doc: DocumentVersion | None = None) -> dict[str, Any]:
    holder = state.policies
    if doc is None:
        return {"version": holder.current.version, "rules": holder.raw, "source": holder.source,
                "authoritative": holder.authoritative}
    return {"version": doc.version, "rules": doc.body.get("rules", []), "source": doc.source, "actor": doc.actor,
            "ts": doc.json()["ts"], "note": doc.note, "authoritative": holder.authoritative}


async def get_policy(request: Request, state: GatewayState) -> Response:
    version = state.policy.current.version
    doc = await state.docs.get(POLICY, version) if version else None
    return json_response(_policy_json(state, doc))


async def put_policy(request: Request, state: GatewayState) -> Response:
    """Validate the whole policy, then make it the next version. Nothing changes on any error."""
    data = await json_body(request)
    if isinstance(data, list):
        data = {"rules": data}
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        return api_error(400, 'body must be {"rules": [...], "note": "optional", "base_version": N (optional)}',
                         "bad_request")
    note, base = data.get("note"), data.get("base_version")
    if note is not None and not isinstance(note, str):
        return api_error(400, "note must be a string", "bad_request")
    if base is not None and (not isinstance(base, int) or isinstance(base, bool)):
        return api_error(400, "base_version must be an integer (the version your edit starts from)", "bad_request")
    return await _publish(request, state, data["rules"], "api", note, base)


async def _publish(request: Request, state: GatewayState, rules: list[Any], source: str, note: str | None,
                   base: int | None = None) -> Response:
    try:
        doc = await state.policies.publish(rules, actor(request), source, note, base)
    except RulesFileError as exc:
        raise refused("policy", "invalid_policy", exc.problems) from None
    except VersionConflict as exc:
        return api_error(409, str(exc), "version_conflict")
    except FileAuthoritative as exc:
        return api_error(409, str(exc), "policy_file_authoritative")
    return json_response(_policy_json(state, doc))


async def rollback_policy(request: Request, state: GatewayState) -> Response:
    """Make an earlier version current again, as a new version (history is never rewritten)."""
    data = await json_body(request)
    version = data.get("version") if isinstance(data, dict) else None
    if not isinstance(version, int) or isinstance(version, bool):
        return api_error(400, 'body must be {"version": N}: the version to roll back to', "bad_request")
    doc = await state.docs.get(POLICY, version)
    if doc is None:
        return api_error(404, f"there is no policy version {version}; see GET /api/v1/policy/versions", "not_found")
    return await _publish(request, state, list(doc.body.get("rules", [])), f"rollback:{version}",
                          data.get("note") if isinstance(data.get("note"), str) else f"rollback to version {version}")


# the agent policy

def agent_policy_json(doc: DocumentVersion | None, redact: bool) -> dict[str, Any]:
    policy = parse_agent_policy(doc.body) if doc is not None else AgentPolicy()
    settings = policy.redacted() if redact else policy.model_dump(mode="json")
    return {"version": doc.version if doc else 0, **settings,
            **({"actor": doc.actor, "ts": doc.json()["ts"]} if doc else {})}


async def get_agent_policy(request: Request, state: GatewayState) -> Response:
    return json_response(agent_policy_json(await state.docs.latest(AGENT_POLICY), redact=True))


def _redacted(body: Mapping[str, Any]) -> Mapping[str, Any]:
    try:
        return parse_agent_policy(dict(body)).redacted()
    except AgentPolicyError:
        return body


async def put_agent_policy(request: Request, state: GatewayState) -> Response:
    """Every setting is validated; each bad one is named with a valid example and nothing changes."""
    data = await json_body(request)
    note = data.pop("note", None) if isinstance(data, dict) else None
    try:
        policy = parse_agent_policy(data)
    except AgentPolicyError as exc:
        raise refused("agent policy", "invalid_agent_policy", list(exc.problems)) from None
    latest = await state.docs.latest(AGENT_POLICY)
    body = policy.model_dump(mode="json")
    if latest is not None and latest.body == body:
        return json_response(agent_policy_json(latest, redact=True))  # no change, no new version
    doc = await state.docs.publish(AGENT_POLICY, body, actor(request), "api",
                                   latest.body if latest else AgentPolicy().model_dump(mode="json"),
                                   note if isinstance(note, str) else None, redact=_redacted)
    return json_response(agent_policy_json(doc, redact=True))


# the directory

async def get_directory(request: Request, state: GatewayState) -> Response:
    d = state.directory.current
    return json_response({"version": d.version, "directory": d.config.model_dump(mode="json", exclude_defaults=True)})


async def put_directory(request: Request, state: GatewayState) -> Response:
    """Replace the directory (teams tree, projects, people, services, cost centres): validated whole, and
    refused if a rule of the current policy would lose its target."""
    data = await json_body(request)
    note = data.pop("note", None) if isinstance(data, dict) else None
    if isinstance(data, dict) and isinstance(data.get("directory"), dict):
        data = data["directory"]
    try:
        doc = await state.directories.publish(data, actor(request), note if isinstance(note, str) else None)
    except DirectoryError as exc:
        raise refused("directory", "invalid_directory", exc.problems) from None
    return json_response({"version": doc.version, "directory": doc.body})


# history and diffs, for any versioned document

_KINDS = {"/api/v1/policy": POLICY, "/api/v1/agent-policy": AGENT_POLICY, "/api/v1/directory": DIRECTORY}


def _kind(path: str) -> str:
    return next(kind for prefix, kind in _KINDS.items() if path.startswith(prefix + "/"))


def _summary(doc: DocumentVersion) -> dict[str, Any]:
    out = doc.json()
    body = out.pop("body")
    if doc.kind == POLICY:
        out["rules"] = len(body.get("rules", []))
    return out


async def list_versions(request: Request, state: GatewayState) -> Response:
    kind = _kind(request.path)
    try:
        limit = int_param(request.query, "limit", 50, 1, 1000) or 50
        before = int_param(request.query, "before", None, 1, 2**62)
    except BadParameter as exc:
        return api_error(400, str(exc), "bad_parameter")
    docs = await state.docs.history(kind, limit, before)
    body: dict[str, Any] = {"versions": [_summary(d) for d in docs]}
    if len(docs) == limit:
        body["next"] = f"{request.path}?limit={limit}&before={docs[-1].version}"
    return json_response(body)


async def get_version(request: Request, state: GatewayState) -> Response:
    kind = _kind(request.path)
    raw = request.params["version"]
    valid = raw.isascii() and raw.isdigit() and len(raw) <= 18  # a version number the store can hold
    doc = await state.docs.get(kind, int(raw)) if valid else None
    if doc is None:
        return api_error(404, f"no version {raw!r}; see GET {request.path.rsplit('/', 1)[0]}", "not_found")
    if kind == AGENT_POLICY:
        return json_response({**_summary(doc), **agent_policy_json(doc, redact=True)})
    if kind == DIRECTORY:
        return json_response({**_summary(doc), "directory": doc.body})
    return json_response(_policy_json(state, doc))


async def diff_versions(request: Request, state: GatewayState) -> Response:
    """What changed from version `from` to version `to` (default: the latest)."""
    kind = _kind(request.path)
    try:
        a = int_param(request.query, "from", None, 0, 2**62)
        b = int_param(request.query, "to", None, 0, 2**62)
    except BadParameter as exc:
        return api_error(400, str(exc), "bad_parameter")
    if a is None:
        return api_error(400, "query parameter 'from' is required (a version number; 0 = empty)", "bad_parameter")
    if b is None:
        b = (await state.docs.latest_versions()).get(kind, 0)
    bodies: list[Mapping[str, Any]] = []
    for v in (a, b):
        doc = await state.docs.get(kind, v) if v else None
        if v and doc is None:
            return api_error(404, f"no version {v}", "not_found")
        bodies.append(doc.body if doc else {})
    if kind == AGENT_POLICY:
        bodies = [_redacted(x) for x in bodies]
    changes = diff_documents(bodies[0], bodies[1])
    out: dict[str, Any] = {"from": a, "to": b, "changes": [c.json() for c in changes]}
    if kind == POLICY:
        out.update(item_summary(changes))
    return json_response(out)

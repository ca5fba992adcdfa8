"""The exemption workflow's JSON API under /api/v1/exemptions.

Filing a request (POST /api/v1/exemptions) and reading one by its id need no admin token: requesters are
ordinary users, and an id is a random capability handed only to whoever filed it. Listing the queue,
deciding and revoking an approved override need the admin token; the reviewer is named by X-Tollhouse-Actor
(else "admin").
"""

from __future__ import annotations

from typing import Any

import orjson

from tollhouse.control.exemptions import ExemptionError, ExemptionProblems
from tollhouse.events.records import APPROVED, DENIED, PENDING, REVOKED
from tollhouse.gateway import exemptions
from tollhouse.gateway.admin import BadParameter, api_error, int_param
from tollhouse.gateway.client_address import client_address
from tollhouse.gateway.http import BodyTooLarge, Request, Response, json_response
from tollhouse.gateway.policy_api import actor
from tollhouse.gateway.state import GatewayState

_MAX_BODY = 64 * 1024
_STATUSES = (PENDING, APPROVED, DENIED, REVOKED)


def error_response(state: GatewayState, exc: ExemptionError) -> Response:
    """The JSON error: a field problem names the field (and lists them all); a duplicate names the request."""
    error: dict[str, Any] = {"message": str(exc), "code": exc.code}
    if isinstance(exc, ExemptionProblems):
        error["field"] = exc.field
        error["problems"] = [p.json() for p in exc.problems]
    if exc.existing is not None:
        error["id"] = exc.existing.id
        error["status_url"] = exemptions.status_url(state, exc.existing.id)
    if exc.limit is not None:
        error["limit"] = exc.limit
    return json_response({"error": error}, exc.status)


async def _json_object(request: Request, empty_ok: bool = False) -> dict[str, Any]:
    """The body as a JSON object (an empty body is {} when `empty_ok`); raises ExemptionError saying what is
    wrong with it."""
    try:
        raw = await request.body(_MAX_BODY)
        data = {} if empty_ok and not raw.strip() else orjson.loads(raw)
    except BodyTooLarge:
        raise ExemptionError(413, "request_too_large", f"request body too large: at most {_MAX_BODY} bytes") from None
    except orjson.JSONDecodeError as exc:
        raise ExemptionError(400, "malformed_json", f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ExemptionError(400, "bad_request", "request body must be a JSON object")
    return data


async def create(request: Request, state: GatewayState) -> Response:
    try:
        filed = await exemptions.file_request(state, await _json_object(request),
                                              client_address(request, state.settings.identity.trusted_proxies))
    except ExemptionError as exc:
        return error_response(state, exc)
    x = filed.exemption
    return json_response({"id": x.id, "status": x.status, "status_url": filed.status_url,
                          "exemption": exemptions.exemption_json(state, x)}, 201)


async def list_exemptions(request: Request, state: GatewayState) -> Response:
    query = request.query
    status = query.get("status") or None
    if status == "all":
        status = None
    if status is not None and status not in _STATUSES:
        return api_error(400, f"query parameter 'status' must be one of {', '.join(_STATUSES)} or all, "
                         f"got {status!r}", "bad_parameter")
    try:
        limit = int_param(query, "limit", 100, 1, 1000) or 100
    except BadParameter as exc:
        return api_error(400, str(exc), "bad_parameter")
    rows = await state.runner.run(lambda s: s.list_exemptions(status, limit))
    return json_response({"exemptions": [exemptions.exemption_json(state, x) for x in rows]})


async def get_exemption(request: Request, state: GatewayState) -> Response:
    exemption_id = request.params["id"]
    x = await state.runner.run(lambda s: s.exemption(exemption_id))
    if x is None:
        return api_error(404, f"no exemption request with id {exemption_id!r}", "not_found")
    return json_response({"exemption": exemptions.exemption_json(state, x)})


async def approve(request: Request, state: GatewayState) -> Response:
    return await _decide(request, state, exemptions.approve)


async def deny(request: Request, state: GatewayState) -> Response:
    return await _decide(request, state, exemptions.deny)


async def revoke(request: Request, state: GatewayState) -> Response:
    return await _decide(request, state, exemptions.revoke)


async def _decide(request: Request, state: GatewayState, action: exemptions.Decide) -> Response:
    try:
        data = await _json_object(request, empty_ok=True)
        decided = await action(state, request.params["id"], data, actor(request))
    except ExemptionError as exc:
        return error_response(state, exc)
    return json_response({"exemption": exemptions.exemption_json(state, decided)})

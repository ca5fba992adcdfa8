"""Console sessions over the API: who is signed in (GET /api/v1/console/sessions), ending one session
(POST /api/v1/console/sessions/{id}/revoke) or every session of a user (POST /api/v1/console/sessions/revoke:
someone left, a laptop was lost, a role was taken away). Copies of their cookies stop working at once here and
within about a second on every gateway sharing the store (gateway/session_revocations.py); signing in again starts
a new session."""

from __future__ import annotations

from datetime import UTC, datetime

from tollhouse.console.settings import MAX_SESSION_HOURS
from tollhouse.gateway.admin import ApiError
from tollhouse.gateway.http import Request, Response, json_response
from tollhouse.gateway.policy_api import actor, json_body
from tollhouse.gateway.session_revocations import SignedIn
from tollhouse.gateway.state import GatewayState

MAX_NAME = 320  # an email address at its longest
_SHAPE = ('body must be {"user": "NAME"}: the name the user signs in to the console as (an SSO user\'s email, '
          'or the name given at the admin-token sign-in), as the audit trail\'s console.sign_in entries show it')


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def session_json(row: SignedIn) -> dict[str, str]:
    return {"id": row.id, "user": row.name, "role": row.role, "via": row.via, "signed_in": _iso(row.issued_ms),
            "expires": _iso(row.expires_ms)}


async def list_sessions(request: Request, state: GatewayState) -> Response:
    return json_response({"sessions": [session_json(r) for r in await state.sessions.signed_in()]})


async def end_session(state: GatewayState, session_id: str, by: str) -> SignedIn | None:
    """End one session that still works (None: no such session); audited."""
    row = next((r for r in await state.sessions.signed_in() if r.id == session_id), None)
    if row is not None:
        await state.sessions.sign_out(row.session)
        state.audit.record("console.session_revoked", by, {"user": row.name, "role": row.role,
                                                          "signed_in": _iso(row.issued_ms)})
    return row


async def end_users_sessions(state: GatewayState, name: str, by: str) -> str:
    """End every session of `name` begun until now (whatever console.session_hours was then); audited. Returns
    the moment, ISO 8601."""
    at_ms = await state.sessions.revoke_user(name, MAX_SESSION_HOURS * 3600)
    revoked_before = _iso(at_ms)
    state.audit.record("console.sessions_revoked", by, {"user": name, "before": revoked_before})
    return revoked_before


async def revoke_session(request: Request, state: GatewayState) -> Response:
    row = await end_session(state, request.params["id"], actor(request))
    if row is None:
        raise ApiError(404, f"no console session that still works has the id {request.params['id']!r} "
                       "(GET /api/v1/console/sessions lists them)", "not_found")
    return json_response({"session": session_json(row), "revoked": True})


async def revoke_sessions(request: Request, state: GatewayState) -> Response:
    data = await json_body(request)
    if not isinstance(data, dict):
        raise ApiError(400, _SHAPE, "bad_request")
    unknown = sorted(set(data) - {"user"})
    if unknown:
        raise ApiError(400, f"unknown field(s) {', '.join(map(repr, unknown))}; {_SHAPE}", "bad_request")
    user = data.get("user")
    if not isinstance(user, str) or not user.strip():
        raise ApiError(400, _SHAPE, "bad_request")
    if len(user) > MAX_NAME:
        raise ApiError(400, f"user is {len(user)} characters long; a console user's name has at most {MAX_NAME}",
                       "bad_request")
    name = user.strip()
    return json_response({"user": name, "revoked_before": await end_users_sessions(state, name, actor(request))})

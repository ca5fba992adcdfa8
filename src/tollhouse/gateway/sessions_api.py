"""POST /api/v1/console/sessions/revoke: end every console session of a user, on every gateway sharing the store
(someone left, a laptop was lost, a role was taken away). Their copies of the cookie stop working at once here
and within about a second elsewhere (gateway/session_revocations.py); signing in again starts a new session."""

from __future__ import annotations

from datetime import UTC, datetime

from tollhouse.console.settings import MAX_SESSION_HOURS
from tollhouse.gateway.admin import ApiError
from tollhouse.gateway.http import Request, Response, json_response
from tollhouse.gateway.policy_api import actor, json_body
from tollhouse.gateway.state import GatewayState

MAX_NAME = 320  # an email address at its longest
_SHAPE = ('body must be {"user": "NAME"}: the name the user signs in to the console as (an SSO user\'s email, '
          'or the name given at the admin-token sign-in), as the audit trail\'s console.sign_in entries show it')


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
    # every session that may still be alive, whatever console.session_hours was when it began
    at_ms = await state.sessions.revoke_user(name, MAX_SESSION_HOURS * 3600)
    revoked_before = datetime.fromtimestamp(at_ms / 1000, UTC).isoformat(timespec="milliseconds")
    state.audit.record("console.sessions_revoked", actor(request), {"user": name, "before": revoked_before})
    return json_response({"user": name, "revoked_before": revoked_before})

"""Console sessions (/console/sessions; admin, auditor): who is signed in to the console, how and until when. An
admin ends one session, or every session of a person; the sessions end on every gateway sharing the store, copies
of their cookies included (gateway/session_revocations.py). Both are audited."""

from __future__ import annotations

from urllib.parse import quote

from tollhouse.console.forms import form_post, see_other
from tollhouse.console.pages import ADMIN, AUDIT, Page
from tollhouse.console.render import error_page, render
from tollhouse.gateway.console_session import ADMIN_ROLE, ConsoleUser
from tollhouse.gateway.http import Request, Response
from tollhouse.gateway.sessions_api import MAX_NAME, end_session, end_users_sessions
from tollhouse.gateway.state import GatewayState

PATH = "/console/sessions"
SMALL_FORM = 16 * 1024


async def sessions_page(request: Request, state: GatewayState, user: ConsoleUser) -> Response:
    rows = await state.sessions.signed_in()
    return render(request, state, user, "sessions.html", "Console sessions", sessions=rows,
                  may_end=user.role == ADMIN_ROLE, own=user.session.id if user.session is not None else "",
                  ended=request.query.get("ended", ""))


async def end_one(request: Request, state: GatewayState, user: ConsoleUser, form: dict[str, str]) -> Response:
    row = await end_session(state, request.params["id"], user.name)
    if row is None:
        return error_page(request, state, user, 404, "That session has already ended (signed out, ended by an "
                          "admin, or expired); nothing was changed.")
    return see_other(f"{PATH}?ended={quote(row.name)}")


async def end_all(request: Request, state: GatewayState, user: ConsoleUser, form: dict[str, str]) -> Response:
    name = form.get("user", "").strip()
    if not name or len(name) > MAX_NAME:
        return error_page(request, state, user, 400, f"Say whose sessions to end: the user's name, at most "
                          f"{MAX_NAME} characters; nothing was changed.")
    await end_users_sessions(state, name, user.name)
    return see_other(f"{PATH}?ended={quote(name)}")


PAGES = (
    Page("GET", PATH, sessions_page, AUDIT, "Sessions"),
    Page("POST", f"{PATH}/{{id}}/end", form_post(end_one, SMALL_FORM), ADMIN),
    Page("POST", f"{PATH}/end-user", form_post(end_all, SMALL_FORM), ADMIN),
)

"""What the console's form posts share: reading the urlencoded body, the CSRF check (a 400 page that says what
to do, nothing changed), redirects after a change, and htmx fragments (a template without the page layout)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from tollhouse.console import csrf
from tollhouse.console.pages import PageHandler
from tollhouse.console.render import PAGE_HEADERS, environment, error_page
from tollhouse.gateway.console_session import ConsoleUser
from tollhouse.gateway.exemption_console import cross_site
from tollhouse.gateway.http import BodyTooLarge, Request, Response, text_response
from tollhouse.gateway.state import GatewayState

MAX_FORM = 8 * 1024 * 1024  # a policy or directory document fits


class FormRefused(Exception):
    """A form post that must not proceed; `response` says why."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


async def checked_form(request: Request, state: GatewayState, user: ConsoleUser,
                       max_bytes: int = MAX_FORM) -> dict[str, str]:
    """The posted form's fields, once its CSRF token is checked; raises FormRefused (413 too large, 400 without
    a valid token: nothing was changed)."""
    try:
        raw = await request.body(max_bytes)
    except BodyTooLarge:
        raise FormRefused(error_page(request, state, user, 413,
                                     f"The form is larger than {max_bytes:,} bytes; nothing was changed.")) from None
    form = dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
    if not csrf.valid(request, state, form):
        raise FormRefused(error_page(request, state, user, 400,
                                     "This form's security token is missing or out of date (a form from another "
                                     "site, or from before you signed in again); nothing was changed. Reload the "
                                     "page and submit it again."))
    return form


FormHandler = Callable[[Request, GatewayState, ConsoleUser, dict[str, str]], Awaitable[Response]]


def form_post(handler: FormHandler, max_bytes: int = MAX_FORM) -> PageHandler:
    """A page handler for a form post: refused from another site (403) or without this session's CSRF token
    (400), before `handler` sees the form; nothing is changed either way."""

    async def page(request: Request, state: GatewayState, user: ConsoleUser) -> Response:
        if cross_site(request):
            return error_page(request, state, user, 403, "Refused: the form was posted from another site; nothing "
                              "was changed.")
        try:
            form = await checked_form(request, state, user, max_bytes)
        except FormRefused as exc:
            return exc.response
        return await handler(request, state, user, form)

    return page


def see_other(location: str) -> Response:
    return Response(303, b"", [("location", location), ("cache-control", "no-store")])


def fragment(state: GatewayState, template: str, status: int = 200, **context: Any) -> Response:
    """A piece of a page for htmx to swap in (no layout, same filters and escaping)."""
    html = environment(state.settings.ledger.timezone).get_template(template).render(**context)
    resp = text_response(html, "text/html; charset=utf-8", status)
    resp.headers += PAGE_HEADERS
    return resp

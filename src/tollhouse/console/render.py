"""Rendering console pages: one Jinja2 environment (autoescaped), the base context every page gets, money and
time filters, and the headers every page carries.

Pages never run inline script: the Content-Security-Policy allows scripts from /console/static/ only, so data a
chart needs goes into a `<script type="application/json" id=...>` element the page's static script reads.
"""

from __future__ import annotations

import datetime
import mimetypes
from collections.abc import Mapping, Sequence
from decimal import Decimal
from functools import cache
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

import jinja2

from tollhouse.console import csrf
from tollhouse.gateway.console_session import ConsoleUser
from tollhouse.gateway.http import Request, Response, text_response
from tollhouse.gateway.state import GatewayState
from tollhouse.ledger.types import NANO_PER_USD
from tollhouse.money import fmt_usd

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
PAGE_HEADERS = [("cache-control", "no-store"), ("x-frame-options", "DENY"), ("content-security-policy", CSP),
                ("x-content-type-options", "nosniff"), ("referrer-policy", "same-origin")]


def usd(value: float | int | Decimal | str | None) -> str:
    """Dollars as people read them, cents always shown so a column reads alike ("$9.00", "$12.34",
    "$1,200.00"), more digits where cents would hide the amount ("$0.000039"); "unpriced" for None (a model
    with no price)."""
    if value is None:
        return "unpriced"
    nano = int((Decimal(str(value)) * NANO_PER_USD).to_integral_value())
    shown = fmt_usd(nano)
    return shown if "." in shown else f"{shown}.00"


def count(value: int | float | None) -> str:
    """A count with thousands separators ("1,234,567")."""
    return "" if value is None else f"{int(value):,}"


def make_when(zone: ZoneInfo) -> Any:
    def when(value: int | float | str | datetime.datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
        """A time in the org's timezone; `value`: epoch ms, an ISO 8601 string or a datetime."""
        if value is None or value == "":
            return ""
        if isinstance(value, datetime.datetime):
            moment = value
        elif isinstance(value, str):
            moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        else:
            moment = datetime.datetime.fromtimestamp(value / 1000, datetime.UTC)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.UTC)
        return moment.astimezone(zone).strftime(fmt)
    return when


@cache
def environment(timezone: str) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("tollhouse.console", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    zone = ZoneInfo(timezone)
    env.filters.update(usd=usd, count=count, when=make_when(zone))
    env.globals.update(timezone=timezone)
    return env


def render(request: Request, state: GatewayState, user: ConsoleUser | None, template: str, title: str,
           status: int = 200, **context: Any) -> Response:
    """The page `template` (extending base.html) with the base context: user, navigation, org, CSRF token."""
    from tollhouse.console.registry import navigation  # the registry imports the page modules that import us

    timezone = state.settings.ledger.timezone
    html = environment(timezone).get_template(template).render(
        title=title, user=user, nav=navigation(user.role) if user else [], path=request.path,
        org=state.directory.current.org, enforcement=state.live_settings.current.enforcement.value,
        csrf_field=csrf.FIELD, csrf_token=csrf.token(request, state), **context)
    resp = text_response(html, "text/html; charset=utf-8", status)
    resp.headers += PAGE_HEADERS
    return resp


def public_page(request: Request, state: GatewayState, template: str, title: str, status: int = 200,
                headers: Sequence[tuple[str, str]] = (), **context: Any) -> Response:
    """A page anyone may open (the exemption requester's pages, the sign-in and what it answers): the console's
    layout, without navigation or the organisation's settings."""
    resp = render(request, state, None, template, title, status, **context)
    resp.headers += headers
    return resp


def notice(request: Request, state: GatewayState, title: str, status: int = 200, *, errors: Sequence[str] = (),
           paragraphs: Sequence[str] = (), links: Sequence[Mapping[str, str]] = (), refresh: str | None = None,
           headers: Sequence[tuple[str, str]] = ()) -> Response:
    """A short public page: what went wrong (`errors`), what to know (`paragraphs`), where to go (`links`: label,
    href and an optional id, joined by "or"); `refresh`: a same-site path the browser moves on to at once."""
    return public_page(request, state, "notice.html", title, status, headers, errors=errors, paragraphs=paragraphs,
                       links=links, refresh=refresh)


def error_page(request: Request, state: GatewayState, user: ConsoleUser | None, status: int,
               message: str) -> Response:
    return render(request, state, user, "error.html", {403: "Not allowed", 404: "Not found"}.get(status, "Error"),
                  status, message=message)


@cache
def _static(name: str) -> bytes | None:
    folder = resources.files("tollhouse.console").joinpath("static")
    item = folder.joinpath(name)
    return item.read_bytes() if item.is_file() else None


def static(name: str) -> Response:
    """A vendored script, style sheet or font under /console/static/ (public: no data in them)."""
    data = _static(name) if "/" not in name and not name.startswith(".") else None
    if data is None:
        return text_response(f"no such console file: {name}", status=404)
    kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if kind.startswith("text/") or kind == "application/javascript":
        kind += "; charset=utf-8"
    return Response(200, data, [("content-type", kind), ("cache-control", "public, max-age=3600"),
                                ("x-content-type-options", "nosniff")])

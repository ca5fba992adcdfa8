"""A console page's answer when a read it needs fails or its query is wrong: the error page, never a traceback."""

from __future__ import annotations

from tollhouse.console.render import error_page
from tollhouse.gateway.admin import ApiError
from tollhouse.gateway.console_session import ConsoleUser
from tollhouse.gateway.http import Request, Response
from tollhouse.gateway.state import GatewayState
from tollhouse.gateway.storage import StorageUnavailable


def failed(request: Request, state: GatewayState, user: ConsoleUser, exc: Exception) -> Response:
    if isinstance(exc, ApiError):
        return error_page(request, state, user, exc.response.status, str(exc))
    if isinstance(exc, StorageUnavailable):
        return error_page(request, state, user, 503, f"Usage cannot be read right now: {exc}. Reload shortly.")
    raise exc

"""Glue between a call and answer_style: what this call's block or soft-cap notice must look like."""

from __future__ import annotations

import secrets

from tollhouse.directory import Subject
from tollhouse.gateway import enforce
from tollhouse.gateway.answer_style import (
    BLOCK_STYLE_HEADER,
    NOTICE_HEADER,
    block_style,
    interactive_tool,
    soft_cap_notice,
)
from tollhouse.gateway.http import Request
from tollhouse.gateway.state import GatewayState
from tollhouse.policy.decide import Verdict
from tollhouse.providers.answers import Stamp
from tollhouse.providers.base import Endpoint


def _tool(request: Request) -> str | None:
    return interactive_tool(request.header("user-agent"), request.header("x-title"), request.header("http-referer"))


def block_as_message(request: Request, state: GatewayState, subject: Subject, endpoint: Endpoint, stream: bool,
                     ts_ms: int) -> enforce.AsMessage | None:
    """How a blocked call is answered: as an assistant message (the AsMessage to render) or as an error (None)."""
    style = block_style(state.settings.policy, subject.id, request.header(BLOCK_STYLE_HEADER), _tool(request))
    if style != "message":
        return None
    sse = request.query.get("alt") == "sse"
    return enforce.AsMessage(endpoint, stream, sse, Stamp(secrets.token_hex(12), ts_ms // 1000))


def notice(request: Request, state: GatewayState, subject: Subject, verdict: Verdict | None) -> str | None:
    """A soft cap's warning, when it is to be appended to this call's answer (soft_cap_notice: message)."""
    text = enforce.soft_cap_text(state, verdict)
    if text is None:
        return None
    how = soft_cap_notice(state.settings.policy, subject.id, request.header(NOTICE_HEADER), _tool(request))
    return text if how == "message" else None

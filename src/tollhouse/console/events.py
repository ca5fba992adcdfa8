"""One recorded call (/console/events/{id}), linked from the overview's blocked list: its attribution, decision,
tokens and cost (never captured content: that stays behind the events API)."""

from __future__ import annotations

from tollhouse.console.pages import ALL_ROLES, Page
from tollhouse.console.render import error_page, render
from tollhouse.events.model import event_json
from tollhouse.gateway.console_session import ConsoleUser
from tollhouse.gateway.http import Request, Response
from tollhouse.gateway.state import GatewayState
from tollhouse.gateway.storage import StorageUnavailable, read_store

FIELDS = ("id", "ts", "subject", "subject_kind", "team", "project", "cost_centre", "provider", "endpoint", "model",
          "requested_model", "status", "decision", "would", "rule_id", "input_tokens", "output_tokens", "cost_usd",
          "latency_ms", "error")


async def event_page(request: Request, state: GatewayState, user: ConsoleUser) -> Response:
    ident = request.params["id"]
    try:
        row, _ = await read_store(state.writer, state.runner.run, lambda s: s.event(ident))
    except StorageUnavailable as exc:
        return error_page(request, state, user, 503, f"The event cannot be read right now: {exc}. Reload shortly.")
    if row is None:
        return error_page(request, state, user, 404, f"There is no recorded call {ident}.")
    shown = event_json(row)
    return render(request, state, user, "event.html", f"Call {ident}",
                  fields=[(name, shown.get(name)) for name in FIELDS])


PAGES = (
    Page("GET", "/console/events/{id}", event_page, ALL_ROLES),
)

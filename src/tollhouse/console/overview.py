"""The overview page (/console/): for now the recent calls; the full overview is issue 18's."""

from __future__ import annotations

from tollhouse.alerts.console_banner import alert_banner
from tollhouse.console.pages import ALL_ROLES, Page
from tollhouse.console.render import render
from tollhouse.events.model import event_json
from tollhouse.gateway.console_session import ConsoleUser
from tollhouse.gateway.http import Request, Response
from tollhouse.gateway.state import GatewayState


async def overview(request: Request, state: GatewayState, user: ConsoleUser) -> Response:
    await state.writer.flush(2.0)  # never hang on failing storage
    rows = await state.runner.run(lambda s: s.list_events(200))
    return render(request, state, user, "overview.html", "Overview", events=[event_json(r) for r in rows],
                  banner=alert_banner(state))


PAGES = (
    Page("GET", "/console/", overview, ALL_ROLES, "Overview"),
)

"""A first, server-rendered console page: recent calls and totals (the full console comes later)."""

from __future__ import annotations

from html import escape

from tollhouse.alerts.console_banner import alert_banner
from tollhouse.events.model import event_json
from tollhouse.gateway.http import Request, Response, text_response
from tollhouse.gateway.state import GatewayState

STYLE = """body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}
td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left}th{background:#f4f4f4}
.num{text-align:right;font-variant-numeric:tabular-nums}"""


async def console(request: Request, state: GatewayState) -> Response:
    await state.writer.flush(2.0)  # never hang on failing storage
    rows = await state.runner.run(lambda s: s.list_events(200))
    events = [event_json(r) for r in rows]
    cols = ("ts", "subject", "team", "project", "provider", "model", "stream", "status", "input_tokens",
            "output_tokens", "cost_usd", "decision")
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="{"num" if isinstance(e[c], int | float) else ""}">'
            f"{escape('' if e[c] is None else str(e[c]))}</td>" for c in cols) + "</tr>"
        for e in events)
    total = sum(e["cost_usd"] or 0 for e in events)
    html = (f"<!doctype html><html><head><meta charset=utf-8><title>Tollhouse</title><style>{STYLE}</style>"
            f"</head><body><h1>Tollhouse</h1><p>Org <b>{escape(state.directory.current.org)}</b> · enforcement "
            f"<b>{state.live_settings.current.enforcement.value}</b> · last {len(events)} calls, ${total:.6f}</p>"
            f"<table><tr>{head}</tr>{body}</table></body></html>")
    html = html.replace("<h1>Tollhouse</h1>", "<h1>Tollhouse</h1>" + alert_banner(state), 1)  # issue 19
    return text_response(html, "text/html; charset=utf-8")

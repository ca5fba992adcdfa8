"""What the console shows about alerts: a banner naming each alert channel that keeps failing."""

from __future__ import annotations

from html import escape

from tollhouse.gateway.state import GatewayState


def alert_banner(state: GatewayState) -> str:
    """HTML: empty while every channel delivers."""
    section = state.health.current.get("alerts")
    if section is None:
        return ""
    health = section()
    if not isinstance(health, dict):
        return ""
    failing = [(name, ch) for name, ch in health.get("channels", {}).items() if ch.get("state") == "failing"]
    if not failing:
        return ""
    items = "".join(f"<li><b>{escape(name)}</b>: {ch['consecutive_failures']} failed attempts, {ch['pending']} "
                    f"alerts waiting; last error: {escape(str(ch['last_error']))}</li>" for name, ch in failing)
    return ('<div class="alert-banner" role="alert">'
            f"Alert channels failing (alerts are kept and retried until they are accepted):<ul>{items}</ul>"
            f'See <a href="/api/v1/alerts">/api/v1/alerts</a>.</div>')

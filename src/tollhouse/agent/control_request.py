"""An agent's JSON POST to its control plane: the one place the enrollment token and the agent's id go on it."""

from __future__ import annotations

from pyreqwest.client import Client
from pyreqwest.request import ConsumedRequest


def control_post(client: Client, url: str, token: str, agent_id: str, body: bytes) -> ConsumedRequest:
    """POST `body` (JSON) to `url` as the agent: bearer enrollment token, X-Tollhouse-Agent-Id."""
    return (client.post(url).header("authorization", f"Bearer {token}")
            .header("content-type", "application/json").header("x-tollhouse-agent-id", agent_id)
            .body_bytes(body).build())

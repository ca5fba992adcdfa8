"""Capture mode on the request path: whether a call's prompt and response text are kept.

`telemetry` (the default): metadata only, nothing of what was said is stored or leaves the machine.
`enterprise`: the prompt and the response text of every metered call are stored with its event (table
event_content) and an agent ships them to the control plane. Read per call, so a switch applies to the
next call without a restart.
"""

from __future__ import annotations

from tollhouse.config import CaptureMode
from tollhouse.gateway.state import GatewayState


def capturing(state: GatewayState) -> bool:
    """The capture mode in force now (live: the agent switches it from its control plane's agent policy)."""
    return state.live_settings.current.capture_mode is CaptureMode.enterprise

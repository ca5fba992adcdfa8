"""The settings that change while serving: the agent applies its control plane's agent policy here without a
restart. The gateway initialises them from its (frozen) Settings and publishes them as one immutable value
(`GatewayState.live_settings`, a Published[LiveSettings]); the agent publishes a new value whole
(`publish_live`); the request path reads `.current` once per call."""

from __future__ import annotations

from dataclasses import dataclass

from tollhouse.config import CaptureMode, Enforcement, Settings


@dataclass(frozen=True, slots=True)
class LiveSettings:
    enforcement: Enforcement
    capture_mode: CaptureMode
    upstream_proxy: str | None  # what the provider clients dial through (see state.rebuild_routes)

    @classmethod
    def of(cls, settings: Settings) -> LiveSettings:
        return cls(settings.enforcement, settings.capture_mode, settings.upstream_proxy)

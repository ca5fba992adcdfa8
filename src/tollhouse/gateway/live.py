"""The settings that change while serving: the agent applies its control plane's agent policy here without a
restart. The gateway initialises them from its (frozen) Settings; the request path reads them from here."""

from __future__ import annotations

from dataclasses import dataclass

from tollhouse.config import CaptureMode, Enforcement, Settings


@dataclass(slots=True)
class LiveSettings:
    enforcement: Enforcement
    capture_mode: CaptureMode
    upstream_proxy: str | None  # what the provider clients dial through (see state.rebuild_clients)

    @classmethod
    def of(cls, settings: Settings) -> LiveSettings:
        return cls(settings.enforcement, settings.capture_mode, settings.upstream_proxy)

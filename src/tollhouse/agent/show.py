"""`tollhouse config show`: the agent's effective settings as the agent would resolve them now, the control
plane's layer taken from the bundle cached in the data dir."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import platformdirs

from tollhouse.agent.apply import policy_content
from tollhouse.agent.cache import BundleCache
from tollhouse.agent.settings import AgentSettings, LocalLayers

DATA_DIR_ENV = "TOLLHOUSE_DATA_DIR"


def agent_data_dir(flag: Path | None, layers: LocalLayers) -> Path:
    """--data-dir, else TOLLHOUSE_DATA_DIR (environment, then managed file), else the user's data dir."""
    if flag is not None:
        return flag
    named = layers.env.get(DATA_DIR_ENV) or layers.managed.get(DATA_DIR_ENV)
    return Path(named) if named else Path(platformdirs.user_data_dir("tollhouse")) / "agent"


def effective_settings(layers: LocalLayers, data_dir: Path) -> AgentSettings:
    """Raises SettingsError naming each bad value and its layer."""
    cached = BundleCache(data_dir).load()
    return layers.resolve(policy_content(cached.bundle) if cached is not None else None)


def render_text(shown: Mapping[str, Mapping[str, str]]) -> str:
    width = max(len(name) for name in shown)
    return "\n".join(f"{name:<{width}}  {s['value'] or '(empty)':<40}  {s['source']}" for name, s in shown.items())

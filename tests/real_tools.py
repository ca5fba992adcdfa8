"""Driving the real coding agents (Claude Code, Codex CLI, Gemini CLI) non-interactively against a gateway.

They are installed by scripts/test from the npm registry into .cache/npm-tools; each run gets its own HOME (and
CODEX_HOME) in a temp dir and is pointed at the gateway with environment and config files only.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOOLS_BIN = REPO / ".cache" / "npm-tools" / "node_modules" / ".bin"
RUN_TIMEOUT_S = 40
_NOWHERE = "http://127.0.0.1:9"


@dataclass(frozen=True)
class Run:
    code: int
    output: str  # stdout and stderr together: what the engineer sees in the terminal
    seconds: float


def tool_path(name: str) -> Path:
    path = TOOLS_BIN / name
    if not path.exists():
        raise AssertionError(f"{path} is missing: scripts/test installs the real tools there "
                             "(npm install --prefix .cache/npm-tools @anthropic-ai/claude-code @openai/codex "
                             "@google/gemini-cli)")
    return path


def _env(home: Path, extra: dict[str, str]) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TERM", "SYSTEMROOT")}
    return {**keep, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "NO_COLOR": "1",
            # Loopback only: anything else goes to a proxy that is not there (the discard port) and fails at once.
            "HTTPS_PROXY": _NOWHERE, "HTTP_PROXY": _NOWHERE, "https_proxy": _NOWHERE, "http_proxy": _NOWHERE,
            "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost", "CI": "1", **extra}


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> Run:
    started = time.monotonic()
    try:
        done = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=RUN_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"") + (exc.stderr or b"")
        raise AssertionError(f"{argv[0]} did not finish in {RUN_TIMEOUT_S} s (retrying?); it printed:\n"
                             f"{out.decode('utf-8', 'replace')[-3000:]}") from None
    text = (done.stdout + done.stderr).decode("utf-8", "replace")
    return Run(done.returncode, text, time.monotonic() - started)


def claude(gateway_url: str, home: Path, prompt: str, model: str, key: str = "sk-ant-tools-test") -> Run:
    env = _env(home, {"ANTHROPIC_BASE_URL": f"{gateway_url}/anthropic", "ANTHROPIC_API_KEY": key,
                      "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1",
                      "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
                      "CLAUDE_CODE_DISABLE_LEGACY_MODEL_REMAP": "1"})
    return _run([str(tool_path("claude")), "-p", prompt, "--model", model], env, home)


def codex(gateway_url: str, home: Path, prompt: str, model: str, key: str = "sk-tools-test") -> Run:
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_text(
        f'model = "{model}"\nmodel_provider = "tollhouse"\n'
        "[model_providers.tollhouse]\n"
        'name = "Tollhouse"\n'
        f'base_url = "{gateway_url}/openai/v1"\n'
        'env_key = "TOLLHOUSE_TEST_KEY"\n'
        'wire_api = "responses"\n')
    env = _env(home, {"CODEX_HOME": str(codex_home), "TOLLHOUSE_TEST_KEY": key})
    return _run([str(tool_path("codex")), "exec", "--skip-git-repo-check", "-C", str(home), prompt], env, home)


def gemini(gateway_url: str, home: Path, prompt: str, model: str, key: str = "gemini-tools-test") -> Run:
    settings = home / ".gemini" / "settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps({"security": {"auth": {"selectedType": "gemini-api-key"}},
                                    "general": {"disableAutoUpdate": True},
                                    "privacy": {"usageStatisticsEnabled": False}}))
    env = _env(home, {"GOOGLE_GEMINI_BASE_URL": f"{gateway_url}/gemini", "GEMINI_API_KEY": key,
                      "GEMINI_CLI_TRUST_WORKSPACE": "true"})
    return _run([str(tool_path("gemini")), "-p", prompt, "-m", model], env, home)

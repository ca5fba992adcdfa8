"""The one place that picks how the caller is told about policy: a block as an error or as an assistant message,
a soft cap's warning as a header or also in the answer (pure: no I/O).

Precedence, first that says something other than `auto` wins: the caller's own header
(`X-Tollhouse-Block-Style`, `X-Tollhouse-Soft-Cap-Notice`), the person's or service's `policy.per_subject`
entry, `policy.block_style` / `policy.soft_cap_notice`. `auto` then means: `message` for the interactive tools
recognised by their User-Agent (or by the X-Title / HTTP-Referer headers tools send to OpenRouter-style
gateways), `error` / `header` for everything else (SDKs and programs keep their exceptions and untouched text).
"""

from __future__ import annotations

from typing import Literal, TypeVar
from urllib.parse import urlsplit

from tollhouse.config import BlockStyle, PolicyConfig, SoftCapNotice

BLOCK_STYLE_HEADER = "x-tollhouse-block-style"
NOTICE_HEADER = "x-tollhouse-soft-cap-notice"

# Lower-case User-Agent fragments of interactive tools (measured: claude-cli/2.1 "(external, sdk-cli)",
# codex_exec/0.171 and codex_cli_rs, GeminiCLI/0.61 and GeminiCLI-tui/0.61; the others from their sources).
_TOOL_AGENTS: tuple[tuple[str, str], ...] = (
    ("claude-cli/", "Claude Code"),
    ("claude-code", "Claude Code"),
    ("codex_", "Codex CLI"),
    ("codex-", "Codex CLI"),
    ("geminicli", "Gemini CLI"),
    ("gemini-cli", "Gemini CLI"),
    ("cursor/", "Cursor"),
    ("continue/", "Continue"),
    ("continuedev", "Continue"),
    ("cline/", "Cline"),
    ("roo-code", "Roo Code"),
    ("kilo-code", "Kilo Code"),
    ("aider/", "Aider"),
    ("zed/", "Zed"),
    ("windsurf", "Windsurf"),
    ("opencode/", "opencode"),
    ("githubcopilotchat", "Copilot Chat"),
)
# The app names tools send as X-Title, and the sites they send as HTTP-Referer, to OpenAI-compatible gateways.
_TOOL_TITLES = {"cline": "Cline", "aider": "Aider", "roo code": "Roo Code", "kilo code": "Kilo Code",
                "continue": "Continue", "zed": "Zed"}
_TOOL_SITES = {"cline.bot": "Cline", "aider.chat": "Aider", "roocode.com": "Roo Code", "kilocode.ai": "Kilo Code",
               "continue.dev": "Continue", "zed.dev": "Zed"}


def interactive_tool(user_agent: str | None, title: str | None = None, referer: str | None = None) -> str | None:
    """The interactive tool a request comes from (its name), or None for SDKs, programs and unknown callers."""
    ua = (user_agent or "").lower()
    for fragment, name in _TOOL_AGENTS:
        if fragment in ua:
            return name
    if title and (named := _TOOL_TITLES.get(title.strip().lower())):
        return named
    if referer:
        try:
            host = urlsplit(referer.strip()).hostname or ""
        except ValueError:  # not a URL (a caller's header: anything may come)
            host = ""
        for site, name in _TOOL_SITES.items():
            if host == site or host.endswith("." + site):
                return name
    return None


_Style = TypeVar("_Style", BlockStyle, SoftCapNotice)


def _parsed(kind: type[_Style], value: str | None) -> _Style | None:
    if not value:
        return None
    try:
        return kind(value.strip().lower())
    except ValueError:
        return None  # an unknown value in a caller's header: ignored, the configuration decides


def _pick(styles: tuple[_Style | None, ...], tool: str | None, otherwise: str) -> str:
    """The first style that is set; when that is `auto` (or none is): `message` for an interactive tool, else
    `otherwise`."""
    style = next((s for s in styles if s is not None), None)
    if style is None or style.value == "auto":
        return "message" if tool is not None else otherwise
    return style.value


def block_style(policy: PolicyConfig, subject_id: str, asked: str | None, tool: str | None
                ) -> Literal["error", "message"]:
    """How a blocked call from this subject (asked: its X-Tollhouse-Block-Style; tool: interactive_tool())
    is answered."""
    own = policy.per_subject.get(subject_id)
    styles = (_parsed(BlockStyle, asked), own.block_style if own is not None else None, policy.block_style)
    return "message" if _pick(styles, tool, "error") == "message" else "error"


def soft_cap_notice(policy: PolicyConfig, subject_id: str, asked: str | None, tool: str | None
                    ) -> Literal["header", "message"]:
    """Whether a soft cap's warning is also appended to this subject's answer."""
    own = policy.per_subject.get(subject_id)
    styles = (_parsed(SoftCapNotice, asked), own.soft_cap_notice if own is not None else None,
              policy.soft_cap_notice)
    return "message" if _pick(styles, tool, "header") == "message" else "header"

"""The request path's content step: inspect the prompt for the CONTENT_DLP rules that apply to the caller, in
every capture mode, and decide what of the prompt may be kept.

- No content rule applies to the subject: nothing is inspected (no cost); the prompt is kept as before (enterprise
  capture mode) or not at all (telemetry).
- Content rules apply: the whole prompt is inspected off the event loop within `limits.dlp_time_ms`
  (policy/dlp.py). In telemetry mode its text serves the inspection only and is dropped; in enterprise mode what is
  kept (event capture, and so the agent's spool and shipping) is the redacted text, each match replaced by
  `[redacted:<detector or rule id>]`. Logs name the rules and detectors that matched, never the text.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, NamedTuple

from tollhouse.directory import Subject
from tollhouse.gateway.state import GatewayState
from tollhouse.policy.dlp import Inspection, inspect, redact
from tollhouse.policy.engine import CompiledPolicy
from tollhouse.policy.rules import Rule
from tollhouse.providers.base import prompt_text

log = logging.getLogger("tollhouse.dlp")


class Content(NamedTuple):
    """What the content step found, for the policy and for the event. (A tuple: one is built per call.)"""

    prompt: str | None  # what of the prompt may be stored with the event (redacted), or None
    inspection: Inspection | None  # None: not inspected (no content rule applies, or no readable body)


NO_CONTENT = Content(None, None)


def _rules(policy: CompiledPolicy, subject: Subject) -> tuple[Rule, ...]:
    return () if policy.empty else policy.content_rules(subject)


async def inspect_request(state: GatewayState, policy: CompiledPolicy, parsed: dict[str, Any] | None,
                          subject: Subject, keep: bool) -> Content:
    """Inspect a metered call's prompt (`parsed`: its JSON body) for the content rules of `policy` (the call's
    version) that apply to `subject`. `keep`: enterprise capture, the prompt is kept (redacted)."""
    rules = _rules(policy, subject)
    if not rules:
        return Content(prompt_text(parsed) if keep and parsed is not None else None, None)
    if parsed is None:
        return NO_CONTENT  # no readable prompt (refused while enforcing)
    text = prompt_text(parsed, limit=sys.maxsize)  # all of it: the body is bounded by limits.max_body_bytes
    inspection = await inspect(text, rules, state.settings.limits.dlp_time_ms / 1000, spans=keep)
    for hit in inspection.hits:
        log.info("content rule %s matched (%s) in a prompt of %s", hit.rule_id, hit.name, subject.id)
    if inspection.timed_out:
        log.warning("content inspection of a %d-character prompt of %s exceeded limits.dlp_time_ms (%d ms); "
                    "rules not checked: %s", len(text), subject.id, state.settings.limits.dlp_time_ms,
                    ", ".join(sorted(inspection.unchecked)) or "none")
    return Content(redact(text, inspection) if keep else None, inspection)


async def redact_answer(state: GatewayState, policy: CompiledPolicy, text: str, subject: Subject) -> str:
    """The captured answer (enterprise capture mode) as it may be stored: what the subject's content rules match
    in it redacted like the prompt, inspected off the event loop within `limits.dlp_time_ms` (past it, none of
    the answer is kept)."""
    rules = _rules(policy, subject)
    if not rules:
        return text
    inspection = await inspect(text, rules, state.settings.limits.dlp_time_ms / 1000, spans=True)
    return redact(text, inspection)

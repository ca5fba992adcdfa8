"""Content inspection for CONTENT_DLP rules: bounded, off the event loop, and keeping none of what it found.

`inspect(prompt, rules, budget_s)` runs every rule's patterns (compiled with `regex`, see rules.py) in a worker
thread. `regex` releases the GIL while it matches (`concurrent=True`) and gives up at the deadline
(`timeout=`), so a pathological pattern or a huge prompt costs one thread about `budget_s` and never stalls the
event loop. (regex counts its timeout in the process's CPU time, C `clock()`: while other threads of the gateway
are busy an inspection is cut short sooner in wall-clock time, and later only if the machine starves the
process; the deadline checked between patterns is wall-clock.)

The result names what matched (rule ids, detector or pattern names, character spans) and whether the budget ran
out; it holds none of the prompt's text. `redact(prompt, inspection)` replaces each matched span with
`[redacted:<detector or rule id>]`, for what may be stored.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import regex

from tollhouse.policy.rules import Rule

MAX_SPANS = 10_000  # matches kept for redaction; past this nothing of the prompt is kept
_CLOCK_EVERY = 1024  # matches between two looks at the clock while collecting spans


class Hit(NamedTuple):
    """A rule that matched, and one of its patterns that did (a detector's name, or `patterns[i]`)."""

    rule_id: str
    name: str


class Span(NamedTuple):
    """Where a pattern matched: [start, end) in the prompt, and the label its redaction shows."""

    start: int
    end: int
    label: str  # the detector's name, or the rule id for the rule's own patterns


@dataclass(frozen=True, slots=True)
class Inspection:
    """What inspecting one prompt found. Never holds any of the prompt's text."""

    hits: tuple[Hit, ...] = ()
    spans: tuple[Span, ...] = ()  # every non-empty match (for redaction), when spans_complete
    timed_out: bool = False  # the budget ran out before every pattern had been run to the end
    unchecked: frozenset[str] = frozenset()  # rules with no match found before the budget ran out
    spans_complete: bool = True  # False: not asked for, timed out or too many matches: redact() keeps nothing

    @property
    def rule_ids(self) -> frozenset[str]:
        """The ids of the rules that matched."""
        return frozenset(h.rule_id for h in self.hits)


CLEAN = Inspection()


async def inspect(prompt: str, rules: Sequence[Rule], budget_s: float, *, spans: bool = True) -> Inspection:
    """Inspect `prompt` against the CONTENT_DLP `rules` in a worker thread, within `budget_s` seconds of matching.
    `spans`: also collect every match's span (for redact); without it each rule stops at its first match."""
    if not rules:
        return CLEAN
    return await asyncio.to_thread(scan, prompt, tuple(rules), budget_s, spans=spans)


def scan(prompt: str, rules: Sequence[Rule], budget_s: float, *, spans: bool = True,
         clock: Callable[[], float] = time.monotonic) -> Inspection:
    """The inspection itself, synchronously (it blocks for up to `budget_s`: call it through inspect() on a
    server)."""
    deadline = clock() + budget_s
    hits: list[Hit] = []
    found: list[Span] = []
    unchecked: set[str] = set()
    timed_out = False
    collect = spans  # still collecting spans: none are lost so far
    for rule in rules:
        hit = False
        for pattern, name in zip(rule.patterns, rule.pattern_names, strict=True):
            if hit and not collect:
                break  # the rule has matched and no spans are wanted: its other patterns change nothing
            left = deadline - clock()
            if timed_out or left <= 0:
                timed_out = True
                break
            label = rule.id if name.startswith("patterns[") else name
            if collect:
                matched, overflow, timed_out = _collect(pattern, prompt, left, label, found, deadline, clock)
                collect = not (overflow or timed_out)
            else:
                try:
                    matched = pattern.search(prompt, concurrent=True, timeout=left) is not None
                except TimeoutError:
                    matched, timed_out = False, True
            if matched:
                hit = True
                hits.append(Hit(rule.id, name))
        if timed_out and not hit:
            unchecked.add(rule.id)
    complete = collect and not timed_out
    return Inspection(tuple(hits), tuple(found) if complete else (), timed_out, frozenset(unchecked), complete)


def _collect(pattern: regex.Pattern[str], prompt: str, left: float, label: str, found: list[Span],
             deadline: float, clock: Callable[[], float]) -> tuple[bool, bool, bool]:
    """Add one pattern's matches to `found`. Returns (matched, too many matches, out of time)."""
    matched = False
    n = 0
    try:
        for m in pattern.finditer(prompt, concurrent=True, timeout=left):
            matched = True
            start, end = m.span()
            if end > start:
                if len(found) >= MAX_SPANS:
                    return True, True, False
                found.append(Span(start, end, label))
            n += 1
            if n % _CLOCK_EVERY == 0 and clock() >= deadline:
                return True, False, True
    except TimeoutError:
        return matched, False, True
    return matched, False, False


def redact(prompt: str, inspection: Inspection) -> str:
    """The prompt with every matched span replaced by `[redacted:<detector or rule id>]` (overlapping matches
    become one). When the spans are not all known (not collected, timed out, more than MAX_SPANS), nothing of the
    prompt is kept."""
    if not inspection.spans_complete:
        why = "content inspection exceeded limits.dlp_time_ms" if inspection.timed_out else "too many matches"
        return f"[redacted:{why}]"
    if not inspection.spans:
        return prompt
    out: list[str] = []
    pos = 0
    for span in sorted(inspection.spans):
        if span.start < pos:  # overlaps the one just redacted
            pos = max(pos, span.end)
            continue
        out += (prompt[pos:span.start], f"[redacted:{span.label}]")
        pos = span.end
    out.append(prompt[pos:])
    return "".join(out)

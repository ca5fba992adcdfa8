"""Pydantic's validation errors of a rule, told in our words: `rule <id>: <field path>: <what is wrong>`.

Pydantic's own texts never reach a user: each error type we can meet is translated here (field path,
what is wrong, a valid example); our field validators raise `FieldProblem`, whose text is ours already.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from tollhouse.policy.rule_conditions import CONDITION_TYPES, CONDITIONS, TimeWindowSpec
from tollhouse.policy.rule_fields import FieldProblem, shown
from tollhouse.policy.rule_schema import ActionSpec, RuleSpec

_TYPES = ", ".join(CONDITION_TYPES)
_OBJECTS = {
    "condition": 'must be an object such as {"type": "budget", "threshold": 500}',
    "condition.window": 'use an object such as {"days": [1,2,3,4,5], "hours": [8, 18]}',
    "action": 'must be an object such as {"type": "hard_stop", "message": "..."}',
}
_REQUIRED = {
    "id": "required: a unique, human-readable rule name",
    "condition.type": f"required; one of {_TYPES}",
    "condition.threshold": "required: the cap in USD, e.g. 500",
    "condition.provider": 'required: the one provider this cap counts, e.g. "openai"',
    "condition.providers": 'required: a non-empty list of providers, e.g. ["openai", "anthropic"]',
    "condition.window": 'required: an object such as {"days": [1,2,3,4,5], "hours": [8, 18]}',
}
_USAGE_THRESHOLD = "required: the most tokens (or requests) per window, e.g. 100000"


def quoted(name: str) -> str:
    """A field name that is not an identifier, quoted so the problem line stays unambiguous."""
    escaped = name.encode("unicode_escape").decode("ascii").replace("'", "\\x27").replace(":", "\\x3a")
    return f"'{escaped}'"


def _path(keys: Sequence[str | int], indexes: Sequence[str | int] = ()) -> str:
    out = ""
    for key in keys:
        text = key if isinstance(key, str) and key.isidentifier() else quoted(str(key))
        out = f"{out}.{text}" if out else text
    for index in indexes:
        out += f"[{index}]" if isinstance(index, int) else f".{index}"
    return out


def _model_at(keys: Sequence[str | int], tag: str | None) -> type[BaseModel] | None:
    if not keys:
        return RuleSpec
    if list(keys) == ["action"]:
        return ActionSpec
    if keys[0] == "condition" and tag in CONDITIONS:
        if len(keys) == 1:
            return CONDITIONS[tag]
        if list(keys) == ["condition", "window"]:
            return TimeWindowSpec
    return None


def _unknown(keys: Sequence[str | int], tag: str | None, why: str = "") -> str:
    model = _model_at(keys[:-1], tag)
    if model is None:
        return f"unknown field{why}"
    allowed = sorted(model.model_fields)
    close = difflib.get_close_matches(str(keys[-1]), allowed, n=1, cutoff=0.7)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown field{why}{hint}; allowed: {', '.join(allowed)}"


def _describe(error: Any) -> tuple[str, str]:
    keys: list[str | int] = list(error["loc"])
    kind: str = error["type"]
    ctx: dict[str, Any] = error.get("ctx") or {}
    tag: str | None = None
    if len(keys) >= 2 and keys[0] == "condition":
        tag = str(keys.pop(1))  # the union member: the condition's canonical type
    if kind == "value_error":
        exc = ctx.get("error")
        if isinstance(exc, FieldProblem):
            return _path(keys, exc.at), exc.what
        return _path(keys), str(exc)
    if kind == "extra_forbidden":
        return _path(keys), _unknown(keys, tag)
    if kind == "invalid_key":
        return _path(keys), _unknown(keys, tag, " (field names are strings)")
    if kind == "union_tag_invalid":
        return "condition.type", f"{shown(ctx.get('tag'))} is not a condition type; use one of {_TYPES}"
    if kind == "union_tag_not_found":
        if not isinstance(error.get("input"), dict):
            return "condition", _OBJECTS["condition"]
        return "condition.type", _REQUIRED["condition.type"]
    path = _path(keys)
    if kind == "missing":
        if path == "condition":
            path = "condition.type"
        if path == "condition.threshold" and tag == "usage":
            return path, _USAGE_THRESHOLD
        return path, _REQUIRED.get(path, "required")
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return path, _OBJECTS.get(path, "must be an object")
    return path, f"{shown(error.get('input'))} is not valid here"


def describe(label: str, error: ValidationError) -> list[str]:
    """One line per problem: `rule <label>: <field>: <what>`."""
    lines = []
    for item in error.errors(include_url=False):
        where, what = _describe(item)
        lines.append(f"rule {label}: {where}: {what}")
    return lines

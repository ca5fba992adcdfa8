"""Differences between two versions of a document, as the console's diff tables show them (control/diff.py's
changes, each value as indented JSON)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from tollhouse.control.diff import diff_documents, item_summary


def _shown(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


def diff_view(before: Mapping[str, Any], after: Mapping[str, Any], items: bool = True) -> dict[str, Any]:
    """{"changes": [{op, path, before, after}], "added", "removed", "changed"} (the last three: the ids of whole
    items of a list matched by id, e.g. rules; empty when `items` is False)."""
    changes = diff_documents(before, after)
    rows = [{"op": c.op, "path": c.dotted, "before": _shown(c.before) if c.op != "added" else "",
             "after": _shown(c.after) if c.op != "removed" else ""} for c in changes]
    summary = item_summary(changes) if items else {"added": [], "removed": [], "changed": []}
    return {"changes": rows, **summary}

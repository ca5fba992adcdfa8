"""Differences between two versions of a document, as the console's diff tables show them (control/diff.py's
changes, each value as indented JSON)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from tollhouse.console.render import error_page
from tollhouse.control.diff import diff_documents, item_summary
from tollhouse.events.records import DocumentVersion
from tollhouse.gateway.console_session import ConsoleUser
from tollhouse.gateway.http import Request, Response
from tollhouse.gateway.state import GatewayState


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


def version_number(raw: str | None) -> int | None:
    """A version number from a query or form field (0: the empty document); None for anything else."""
    return int(raw) if raw is not None and raw.isascii() and raw.isdigit() and len(raw) <= 18 else None


async def two_versions(request: Request, state: GatewayState, user: ConsoleUser, kind: str, what: str,
                       current: int) -> tuple[int, int, list[DocumentVersion | None]] | Response:
    """The versions `from` and `to` (default: `current`) of the `kind` document a diff page compares, with their
    stored documents (None for version 0, the empty one); or the 400/404 page saying what was wrong."""
    query = request.query
    a, b = version_number(query.get("from")), version_number(query.get("to") or str(current))
    if a is None or b is None:
        return error_page(request, state, user, 400, f"Give two version numbers: /console/{what}/diff?from=N&to=M "
                          f"(from 0 = the empty {what}).")
    docs = [await state.docs.get(kind, v) if v else None for v in (a, b)]
    for v, doc in zip((a, b), docs, strict=True):
        if v and doc is None:
            return error_page(request, state, user, 404, f"There is no {what} version {v}.")
    return a, b, docs

"""What changed between two versions of a document (a policy, an agent policy, a directory), for the audit
trail and the history views.

Objects are compared key by key (paths `a.b.c`). A list whose items are all objects with distinct string
`id`s is matched by id (`rules[r1].action.type`): a policy's rules are added, removed or changed by id, and
reordering them is no change. Any other list, and a value whose type changed, is one change of the whole value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

Op = Literal["added", "removed", "changed"]
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
_PLAIN_ID = re.compile(r"[^\[\]\"]+")


@dataclass(frozen=True, slots=True)
class Item:
    """A path segment: the list item with this id."""

    id: str


Segment = str | Item


@dataclass(frozen=True, slots=True)
class Change:
    op: Op
    path: tuple[Segment, ...]
    before: Any = None  # absent (None) when added
    after: Any = None  # absent (None) when removed

    @property
    def dotted(self) -> str:
        """`rules[r1].action.type`; keys and ids that would be ambiguous are JSON-quoted: `a["x.y"]`."""
        out = ""
        for seg in self.path:
            if isinstance(seg, Item):
                out += f"[{seg.id}]" if _PLAIN_ID.fullmatch(seg.id) else f"[{_quote(seg.id)}]"
            elif _PLAIN_KEY.fullmatch(seg):
                out += f".{seg}" if out else seg
            else:
                out += f"[{_quote(seg)}]"
        return out

    def _items(self) -> list[Item]:
        return [seg for seg in self.path if isinstance(seg, Item)]

    @property
    def item_id(self) -> str | None:
        """The id of the outermost matched item on the path (for a policy: the rule id)."""
        items = self._items()
        return items[0].id if items else None

    @property
    def whole_item(self) -> bool:
        """True when the change is the outermost matched item itself (added or removed), not a field in it."""
        return len(self._items()) == 1 and isinstance(self.path[-1], Item)

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op, "path": self.dotted}
        if self.item_id is not None:
            out["id"] = self.item_id
        if self.op != "added":
            out["before"] = self.before
        if self.op != "removed":
            out["after"] = self.after
        return out


def _quote(text: str) -> str:
    return orjson.dumps(text).decode()


def _canonical(value: Any) -> bytes:
    """Compare values as JSON: 1, 1.0 and true differ; key order does not matter."""
    return orjson.dumps(value, default=str, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


def _by_id(value: Any) -> dict[str, Mapping[str, Any]] | None:
    """The items of a list keyed by id, or None when it is not a list of objects with distinct string ids."""
    if not isinstance(value, list):
        return None
    out: dict[str, Mapping[str, Any]] = {}
    for item in value:
        if not isinstance(item, Mapping) or not isinstance(item.get("id"), str) or item["id"] in out:
            return None
        out[item["id"]] = item
    return out


def _diff(before: Any, after: Any, path: tuple[Segment, ...]) -> Iterator[Change]:
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        yield from _diff_keyed(before, after, path, str)
        return
    old, new = _by_id(before), _by_id(after)
    if old is not None and new is not None:
        yield from _diff_keyed(old, new, path, Item)
        return
    if _canonical(before) != _canonical(after):
        yield Change("changed", path, before, after)


def _diff_keyed(before: Mapping[Any, Any], after: Mapping[Any, Any], path: tuple[Segment, ...],
                segment: Callable[[Any], Segment]) -> Iterator[Change]:
    for key, value in before.items():
        here = (*path, segment(key))
        if key in after:
            yield from _diff(value, after[key], here)
        else:
            yield Change("removed", here, before=value)
    for key, value in after.items():
        if key not in before:
            yield Change("added", (*path, segment(key)), after=value)


def diff_documents(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[Change]:
    """Every change from `before` to `after`, in document order (removed and changed first, then added)."""
    return list(_diff(before, after, ()))


def item_summary(changes: Sequence[Change]) -> dict[str, list[str]]:
    """Ids of the outermost items added, removed and changed (for a policy: rule ids), each sorted."""
    out: dict[str, set[str]] = {"added": set(), "removed": set(), "changed": set()}
    for c in changes:
        if c.item_id is not None:
            out[c.op if c.whole_item else "changed"].add(c.item_id)
    return {op: sorted(ids) for op, ids in out.items()}

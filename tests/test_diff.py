"""Document diffs: policies by rule id, other documents key by key; JSON-ready for the audit trail."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollhouse.control.diff import Change, Item, diff_documents, item_summary

R1 = {"id": "r1", "scope": "org", "condition": {"type": "model", "operator": "in", "models": ["gpt-4o"]},
      "action": {"type": "hard_stop", "message": "no"}}
R2 = {"id": "r2", "scope": "team", "team": "platform", "condition": {"type": "COST_CENTRE_REQUIRED"},
      "severity": "BLOCK"}
R3 = {"id": "r3", "scope": "org", "condition": {"type": "budget", "threshold": 100}}


def _json(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    return [c.json() for c in diff_documents(before, after)]


@pytest.mark.parametrize(("before", "after", "expected"), [
    ([R1, R2], [R1, R2], []),
    ([R1, R2], [R2, R1], []),  # reordering is not a change
    ([R1], [R1, R2], [{"op": "added", "path": "rules[r2]", "id": "r2", "after": R2}]),
    ([R1, R2], [R2], [{"op": "removed", "path": "rules[r1]", "id": "r1", "before": R1}]),
    ([R1], [dict(R1, action={"type": "alert", "message": "no"})],
     [{"op": "changed", "path": "rules[r1].action.type", "id": "r1", "before": "hard_stop", "after": "alert"}]),
    ([R1], [dict(R1, condition={**R1["condition"], "models": ["gpt-4o", "o1"]})],
     [{"op": "changed", "path": "rules[r1].condition.models", "id": "r1", "before": ["gpt-4o"],
       "after": ["gpt-4o", "o1"]}]),
    ([R3], [dict(R3, enabled=False)], [{"op": "added", "path": "rules[r3].enabled", "id": "r3", "after": False}]),
    ([R2], [{k: v for k, v in R2.items() if k != "severity"}],
     [{"op": "removed", "path": "rules[r2].severity", "id": "r2", "before": "BLOCK"}]),
    ([R3], [dict(R3, condition={"type": "budget", "threshold": 100.0})],  # 100 -> 100.0 is a change
     [{"op": "changed", "path": "rules[r3].condition.threshold", "id": "r3", "before": 100, "after": 100.0}]),
    ([R1, R2, R3], [R3, dict(R1, scope="team", team="platform"), {"id": "r4", "scope": "org"}],
     [{"op": "changed", "path": "rules[r1].scope", "id": "r1", "before": "org", "after": "team"},
      {"op": "added", "path": "rules[r1].team", "id": "r1", "after": "platform"},
      {"op": "removed", "path": "rules[r2]", "id": "r2", "before": R2},
      {"op": "added", "path": "rules[r4]", "id": "r4", "after": {"id": "r4", "scope": "org"}}]),
])
def test_policy_rules_are_matched_by_id(before: list[Any], after: list[Any], expected: list[Any]) -> None:
    assert _json({"rules": before}, {"rules": after}) == expected


def test_policy_summary_names_rules() -> None:
    changes = diff_documents({"rules": [R1, R2, R3]},
                             {"rules": [dict(R1, enabled=False), R3, {"id": "r4", "scope": "org"}]})
    assert item_summary(changes) == {"added": ["r4"], "removed": ["r2"], "changed": ["r1"]}
    assert item_summary([]) == {"added": [], "removed": [], "changed": []}


@pytest.mark.parametrize(("before", "after", "expected"), [
    ({"a": 1}, {"a": 1}, []),
    ({"a": 1}, {"a": 2}, [{"op": "changed", "path": "a", "before": 1, "after": 2}]),
    ({"a": 1}, {"a": True}, [{"op": "changed", "path": "a", "before": 1, "after": True}]),
    ({"a": {"b": {"c": "x"}}}, {"a": {"b": {"c": "y"}}},
     [{"op": "changed", "path": "a.b.c", "before": "x", "after": "y"}]),
    ({"a": {"b": 1}}, {"a": 5}, [{"op": "changed", "path": "a", "before": {"b": 1}, "after": 5}]),
    ({"a": [1, 2]}, {"a": [2, 1]}, [{"op": "changed", "path": "a", "before": [1, 2], "after": [2, 1]}]),
    ({}, {"new": {"x": 1}}, [{"op": "added", "path": "new", "after": {"x": 1}}]),
    ({"gone": None}, {}, [{"op": "removed", "path": "gone", "before": None}]),
    ({"a.b": 1}, {"a.b": 2}, [{"op": "changed", "path": '["a.b"]', "before": 1, "after": 2}]),
    ({"x": {"odd key": 1}}, {"x": {"odd key": 2}}, [{"op": "changed", "path": 'x["odd key"]', "before": 1,
                                                     "after": 2}]),
    ({"teams": [{"id": "a.b]", "parent": None}]}, {"teams": [{"id": "a.b]", "parent": "p"}]},
     [{"op": "changed", "path": 'teams["a.b]"].parent', "id": "a.b]", "before": None, "after": "p"}]),
    # lists without distinct ids are compared whole
    ({"rules": [{"id": "r1"}, {"id": "r1"}]}, {"rules": [{"id": "r1"}]},
     [{"op": "changed", "path": "rules", "before": [{"id": "r1"}, {"id": "r1"}], "after": [{"id": "r1"}]}]),
    ({"rules": [{"scope": "org"}]}, {"rules": [{"scope": "team"}]},
     [{"op": "changed", "path": "rules", "before": [{"scope": "org"}], "after": [{"scope": "team"}]}]),
])
def test_generic_documents(before: dict[str, Any], after: dict[str, Any], expected: list[Any]) -> None:
    assert _json(before, after) == expected


def test_agent_policy_diff() -> None:
    before = {"update_policy": "notify-only", "maintenance_window": "", "upstream_proxy": ""}
    after = {"update_policy": "auto", "maintenance_window": "Sun 02:00-04:00", "upstream_proxy": ""}
    assert _json(before, after) == [
        {"op": "changed", "path": "update_policy", "before": "notify-only", "after": "auto"},
        {"op": "changed", "path": "maintenance_window", "before": "", "after": "Sun 02:00-04:00"}]


def test_nested_id_lists_name_the_outermost_item() -> None:
    before = {"teams": [{"id": "eng", "members": [{"id": "alice", "role": "dev"}]}]}
    after = {"teams": [{"id": "eng", "members": [{"id": "alice", "role": "lead"}, {"id": "bob"}]}]}
    changes = diff_documents(before, after)
    assert [c.dotted for c in changes] == ["teams[eng].members[alice].role", "teams[eng].members[bob]"]
    assert [c.item_id for c in changes] == ["eng", "eng"]
    assert not any(c.whole_item for c in changes)
    assert item_summary(changes) == {"added": [], "removed": [], "changed": ["eng"]}
    assert changes[1] == Change("added", ("teams", Item("eng"), "members", Item("bob")), after={"id": "bob"})


# -- properties --------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.sampled_from(["a", "b", "r1", "x.y"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["a", "b", "id", "c d"]), inner,
                                                                max_size=3)
    | st.lists(st.fixed_dictionaries({"id": st.sampled_from(["r1", "r2", "r3"])}, optional={"v": inner}),
               max_size=3),
    max_leaves=12)
documents = st.dictionaries(st.sampled_from(["rules", "a", "b"]), json_values, max_size=3)


@given(documents)
def test_a_document_does_not_differ_from_itself(doc: dict[str, Any]) -> None:
    assert diff_documents(doc, doc) == []


@given(documents, documents)
def test_changes_are_json_and_exist_exactly_when_the_documents_differ(a: dict[str, Any], b: dict[str, Any]
                                                                      ) -> None:
    changes = diff_documents(a, b)
    orjson.dumps([c.json() for c in changes])
    assert (changes == []) == (_ignoring_id_order(a) == _ignoring_id_order(b))
    assert [c.op for c in diff_documents(b, a)].count("added") == [c.op for c in changes].count("removed")


def _ignoring_id_order(value: Any) -> str:
    """Reference: objects compare key by key, id-lists as sets of items, anything else as exact JSON."""
    if isinstance(value, dict):
        return "{" + ",".join(sorted(f"{k!r}:{_ignoring_id_order(v)}" for k, v in value.items())) + "}"
    ids = [v.get("id") for v in value if isinstance(v, dict)] if isinstance(value, list) else []
    if isinstance(value, list) and len(ids) == len(value) and all(isinstance(i, str) for i in ids) \
            and len(set(ids)) == len(ids):
        return "[" + ",".join(sorted(_ignoring_id_order(v) for v in value)) + "]"
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()

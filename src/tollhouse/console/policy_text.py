"""The policy editor's text: rules as YAML (or JSON), checked as `tollhouse policy check` checks a rules file,
each problem located by line (of the rule, or of the field it names) so the editor can point at it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from tollhouse.config import DirectoryConfig
from tollhouse.gateway.policy_holder import RulesFileError, compile_rules
from tollhouse.policy.engine import CompiledPolicy

_SOURCE = "policy"
_PROBLEM = re.compile(r"rule (?P<label>.+?): (?P<path>[^:]+): ")


@dataclass(frozen=True, slots=True)
class Checked:
    rules: list[Any] | None  # the rules as written, when the text parses as a list of rules
    policy: CompiledPolicy | None  # compiled, when every rule validates
    problems: list[str]


def as_text(rules: list[Any]) -> str:
    """Rules as the editor shows them: YAML, keys in the order written."""
    return yaml.safe_dump(rules, sort_keys=False, allow_unicode=True, default_flow_style=False) if rules else "[]\n"


def _rules_of(data: Any) -> list[Any] | None:
    if isinstance(data, dict) and isinstance(data.get("policy"), dict):
        data = data["policy"]
    if isinstance(data, dict) and "rules" in data:
        data = data["rules"]
    return data if isinstance(data, list) else None


def _rules_node(node: yaml.Node | None) -> yaml.SequenceNode | None:
    """The YAML node of the rules list (the same unwrapping as _rules_of)."""
    for key in ("policy", "rules"):
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == key), node)
    return node if isinstance(node, yaml.SequenceNode) else None


def _find(node: yaml.Node, path: list[str]) -> yaml.Node:
    """The deepest node along `path` (mapping keys) that exists: a missing field points at its parent."""
    for key in path:
        if not isinstance(node, yaml.MappingNode):
            break
        found = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == key), None)
        if found is None:
            break
        node = found[1] if isinstance(found[1], yaml.MappingNode) else found[0]
    return node


def _locate(problem: str, items: dict[str, yaml.Node]) -> str:
    m = _PROBLEM.match(problem)
    if m is None or m.group("label") not in items:
        return problem
    path = [part for part in re.split(r"[.\[\]]", m.group("path")) if part and not part.isdigit()]
    node = _find(items[m.group("label")], path)
    return f"line {node.start_mark.line + 1}: {problem}"


def _item_nodes(text: str, rules: list[Any]) -> dict[str, yaml.Node]:
    """Each rule's node by the label problems use (its id, else #index)."""
    try:
        seq = _rules_node(yaml.compose(text))
    except yaml.YAMLError:
        return {}
    if seq is None:
        return {}
    out: dict[str, yaml.Node] = {}
    for i, (item, node) in enumerate(zip(rules, seq.value, strict=False)):
        rid = item.get("id") if isinstance(item, dict) else None
        out[rid if isinstance(rid, str) and rid else f"#{i}"] = node
    return out


def check(text: str, timezone: str, directory: DirectoryConfig) -> Checked:
    """Parse and validate the editor's text; every problem as `tollhouse policy check` words it, with its line."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = getattr(exc, "problem", None) or str(exc)
        return Checked(None, None, [f"{where}not valid YAML/JSON: {what}"])
    rules = _rules_of(data)
    if rules is None:
        return Checked(None, None, ['expected a list of rules (or {"rules": [...]}); an empty policy is []'])
    try:
        policy = compile_rules(rules, timezone, directory, 0, _SOURCE)
    except RulesFileError as exc:
        items = _item_nodes(text, rules)
        problems = [p.removeprefix(f"{_SOURCE}: ") for p in exc.problems]
        return Checked(rules, None, [_locate(p, items) for p in problems])
    return Checked(rules, policy, [])

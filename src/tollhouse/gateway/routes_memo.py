"""Stage classify, remembered: a gateway sees the same few paths over and over, and splitting, normalising
and classifying one is a pure function of (method, path as sent), so each answer is kept (bounded)."""

from __future__ import annotations

from typing import NamedTuple

from tollhouse.providers.base import Endpoint
from tollhouse.providers.classify import EndpointClass, classify
from tollhouse.providers.family import Family
from tollhouse.providers.paths import PathError, decoded, split_provider

_LIMIT = 4096  # distinct paths remembered; past it the memo starts again (ids in paths make them unbounded)


class SplitPath(NamedTuple):
    provider_id: str
    forward_path: str  # normalised and re-encoded: judged, and exactly what is forwarded
    path: str  # its decoded form (model names in paths are read from it)
    error: str | None  # the path cannot be forwarded (it leaves the provider's root, a bad escape, ...)


class Classes(NamedTuple):
    endpoint: Endpoint
    endpoint_name: str  # endpoint.value
    endpoint_class: str  # metered | governed | free | unknown
    unknown: bool


class RouteMemo:
    """Memo of `split_provider` and `classify` (pure functions of their arguments)."""

    __slots__ = ("_classes", "_splits")

    def __init__(self) -> None:
        self._splits: dict[str, SplitPath] = {}
        self._classes: dict[tuple[Family, str, str], Classes] = {}

    def split(self, raw_path: str, decoded_path: str) -> SplitPath:
        found = self._splits.get(raw_path)
        if found is None:
            try:
                provider_id, forward_path = split_provider(raw_path)
                found = SplitPath(provider_id, forward_path, decoded(forward_path), None)
            except PathError as exc:
                found = SplitPath(decoded_path[1:].partition("/")[0], "/", "/", str(exc))
            if len(self._splits) >= _LIMIT:
                self._splits.clear()
            self._splits[raw_path] = found
        return found

    def classify(self, family: Family, method: str, forward_path: str) -> Classes:
        key = (family, method, forward_path)
        found = self._classes.get(key)
        if found is None:
            route = classify(family, method, forward_path)
            found = Classes(route.endpoint, route.endpoint.value, route.endpoint_class.value,
                            route.endpoint_class is EndpointClass.unknown)
            if len(self._classes) >= _LIMIT:
                self._classes.clear()
            self._classes[key] = found
        return found

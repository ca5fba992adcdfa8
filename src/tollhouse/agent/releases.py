"""The release index the agent updater reads (pure parsing; fetching is the updater's job).

A JSON document, at an http(s):// URL or a file path (the agent policy's `release_index`):

    {
      "index_url": "https://pypi.example.com/simple/",      optional defaults for every release:
      "find_links": "https://releases.example.com/wheels/",   where pip looks, and whether it
      "no_index": false,                                      may look anywhere else
      "releases": [
        {"version": "v0.2.0", "channel": "stable", "requirement": "tollhouse==0.2.0",
         "index_url": "...", "find_links": "...", "no_index": false, "published": "2026-01-10T00:00:00Z"},
        {"version": "v0.3.0-beta.1"}
      ]
    }

Only `version` is required. `channel`, when given, must agree with the version (`-beta.X` is beta).
`requirement` is what `pip install` gets (default `tollhouse==<version>`, PEP 440: v0.3.0-beta.1 ->
`tollhouse==0.3.0b1`). A relative `index_url` / `find_links` is taken relative to the index itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import orjson

from tollhouse.control.agent_policy import redact_url
from tollhouse.control.version import Version, VersionParseError, parse_version

_PEP440_BETA = re.compile(r"b([0-9]+)$")
_EXAMPLE = '{"releases": [{"version": "v0.2.0", "requirement": "tollhouse==0.2.0"}]}'


class ReleaseIndexError(ValueError):
    """A release index that cannot be read or is written wrong; names the source and every bad field."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__("\n".join(f"release index {source}: {p}" for p in problems))
        self.source = source
        self.problems = tuple(problems)


def to_pep440(version: Version) -> str:
    base = f"{version.major}.{version.minor}.{version.patch}"
    return base if version.beta is None else f"{base}b{version.beta}"


def from_pep440(text: str) -> Version:
    """`0.1.0` -> v0.1.0, `0.2.0b3` -> v0.2.0-beta.3 (the package's `__version__` as an agent version)."""
    return parse_version("v" + _PEP440_BETA.sub(r"-beta.\1", text.strip()))


@dataclass(frozen=True, slots=True)
class Release:
    version: Version
    requirement: str  # the `pip install` target
    index_url: str | None = None
    find_links: str | None = None
    no_index: bool = False
    published: str | None = None

    @property
    def channel(self) -> str:
        return "beta" if self.version.is_beta else "stable"


def _resolve(location: str, base: str) -> str:
    """`location` as given when absolute; else relative to the index's own URL or directory."""
    if urlsplit(location).scheme or Path(location).is_absolute():
        return location
    if urlsplit(base).scheme in ("http", "https", "file"):
        return urljoin(base, location)
    return str(Path(base).parent / location)


class _Fields:
    """Reads one object's fields, collecting problems instead of stopping at the first."""

    def __init__(self, data: dict[str, object], where: str, problems: list[str]) -> None:
        self.data, self.where, self.problems = data, where, problems

    def text(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is None or (isinstance(value, str) and value.strip()):
            return value.strip() if isinstance(value, str) else None
        self.problems.append(f"{self.where}{key}: {orjson.dumps(value).decode()[:60]} is not a non-empty string")
        return None

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if isinstance(value, bool):
            return value
        self.problems.append(f"{self.where}{key}: {orjson.dumps(value).decode()[:60]} is not true or false")
        return default


@dataclass(frozen=True, slots=True)
class _Defaults:
    index_url: str | None
    find_links: str | None
    no_index: bool


def _release(entry: object, n: int, defaults: _Defaults, base: str, problems: list[str]) -> Release | None:
    where = f"releases[{n}]."
    if not isinstance(entry, dict):
        problems.append(f"releases[{n}]: expected an object such as {{\"version\": \"v0.2.0\"}}")
        return None
    fields = _Fields(entry, where, problems)
    unknown = sorted(set(entry) - {"version", "channel", "requirement", "index_url", "find_links", "no_index",
                                   "published"})
    if unknown:
        problems.append(f"{where}{unknown[0]}: unknown field; known: version, channel, requirement, index_url, "
                        "find_links, no_index, published")
    text = fields.text("version")
    if text is None:
        if "version" not in entry:
            problems.append(f"{where}version: missing; example: \"v0.2.0\"")
        return None
    try:
        version = parse_version(text)
    except VersionParseError as exc:
        problems.append(f"{where}version: {exc}")
        return None
    channel = fields.text("channel")
    expected = "beta" if version.is_beta else "stable"
    if channel is not None and channel != expected:
        problems.append(f"{where}channel: {channel!r} does not match version {version} (a {expected} release)")
    index_url = fields.text("index_url") or defaults.index_url
    find_links = fields.text("find_links") or defaults.find_links
    return Release(
        version=version,
        requirement=fields.text("requirement") or f"tollhouse=={to_pep440(version)}",
        index_url=_resolve(index_url, base) if index_url else None,
        find_links=_resolve(find_links, base) if find_links else None,
        no_index=fields.flag("no_index", defaults.no_index),
        published=fields.text("published"),
    )


def parse_release_index(raw: bytes, source: str) -> list[Release]:
    """The releases in a JSON release index read from `source` (for messages and relative locations)."""
    shown = redact_url(source)
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ReleaseIndexError(shown, [f"not JSON ({exc}); example: {_EXAMPLE}"]) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("releases"), list):
        raise ReleaseIndexError(shown, [f"expected an object with a \"releases\" list; example: {_EXAMPLE}"])
    problems: list[str] = []
    top = _Fields(doc, "", problems)
    defaults = _Defaults(top.text("index_url"), top.text("find_links"), top.flag("no_index", False))
    releases: list[Release] = []
    seen: set[Version] = set()
    for n, entry in enumerate(doc["releases"]):
        release = _release(entry, n, defaults, source, problems)
        if release is not None and release.version in seen:
            problems.append(f"releases[{n}].version: {release.version} is listed twice")
        elif release is not None:
            seen.add(release.version)
            releases.append(release)
    if problems:
        raise ReleaseIndexError(shown, problems)
    return releases

"""The organisation's directory, compiled at start-up into lookups for the request path."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from tollhouse.config import DirectoryConfig, Person


@dataclass(frozen=True, slots=True)
class Subject:
    """Who a call is attributed to."""

    id: str
    kind: str  # employee | contractor | service | unknown
    team: str | None
    teams: tuple[str, ...]  # the team and its ancestors, nearest first
    project: str | None
    cost_centre: str | None


class Directory:
    """Lookups over one directory version, immutable: a new version is a new Directory, published whole (see
    gateway.directory_holder), so a call that took one sees one version throughout. The Subject memo is a cache
    of this immutable value, never shared between versions."""

    __slots__ = ("_cache", "_parents", "_people", "_projects", "_services", "_team_cc", "config", "org",
                 "people_by_key_hash", "version")

    def __init__(self, cfg: DirectoryConfig, version: int = 0) -> None:
        self.config = cfg
        self.version = version
        self.org = cfg.org
        self._parents = {t.id: t.parent for t in cfg.teams}
        self._team_cc = {t.id: t.cost_centre for t in cfg.teams}
        self._projects = {p.id: p for p in cfg.projects}
        self._people: dict[str, Person] = {p.id: p for p in cfg.people}
        self._services = {s.id: s for s in cfg.services}
        self.people_by_key_hash: Mapping[str, str] = MappingProxyType({
            digest: p.id for p in cfg.people for digest in p.provider_key_sha256
        })
        self._cache: dict[tuple[str, str | None], Subject] = {}

    def team_chain(self, team: str | None) -> tuple[str, ...]:
        chain: list[str] = []
        node = team
        while node is not None and node in self._parents:
            chain.append(node)
            node = self._parents[node]
        return tuple(chain)

    def descendants(self, team: str) -> tuple[str, ...]:
        """The team and every team below it."""
        return tuple(t for t in self._parents if team in self.team_chain(t))

    def has_project(self, project: str) -> bool:
        return project in self._projects

    def project_ids(self) -> list[str]:
        return sorted(self._projects)

    @property
    def names_anyone(self) -> bool:
        """The directory names at least one person or service."""
        return bool(self._people or self._services)

    def knows(self, subject_id: str) -> bool:
        """Whether the directory names this person or service."""
        return subject_id in self._people or subject_id in self._services

    def subject_ids(self) -> list[str]:
        """Every person and service the directory names."""
        return [*self._people, *self._services]

    def subject(self, subject_id: str, project: str | None = None) -> Subject:
        """Resolve a subject (person, service or unknown) and the project the call is for."""
        key = (subject_id, project)
        found = self._cache.get(key)
        if found is not None:
            return found
        found = self._resolve(subject_id, project)
        if len(self._cache) < 100_000:
            self._cache[key] = found
        return found

    def _resolve(self, subject_id: str, project: str | None) -> Subject:
        person = self._people.get(subject_id)
        service = self._services.get(subject_id)
        team: str | None = None
        own_cc: str | None = None
        kind = "unknown"
        if person is not None:
            kind, team, own_cc = person.kind, person.team, person.cost_centre
            if project is None and len(person.projects) == 1:
                project = person.projects[0]
        elif service is not None:
            kind, team, own_cc = "service", service.team, service.cost_centre
            project = project or service.project
        proj = self._projects.get(project) if project else None
        if proj is not None and team is None:
            team = proj.team
        chain = self.team_chain(team)
        cost_centre = own_cc or (proj.cost_centre if proj else None)
        if cost_centre is None:
            cost_centre = next((cc for t in chain if (cc := self._team_cc.get(t))), None)
        return Subject(id=subject_id, kind=kind, team=team, teams=chain, project=project,
                       cost_centre=cost_centre)

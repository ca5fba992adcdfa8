"""Agent release versions: `vN.M.K` (stable) and `vN.M.K-beta.X` (beta); a beta sorts before its release."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

import orjson

_NUMBER = r"(0|[1-9][0-9]*)"
_FORM = re.compile(rf"v{_NUMBER}\.{_NUMBER}\.{_NUMBER}(?:-beta\.{_NUMBER})?")
EXAMPLE = '"v1.2.3" or "v1.2.3-beta.4"'


class VersionParseError(ValueError):
    """A version written wrong; the message shows a valid example."""


@total_ordering
@dataclass(frozen=True, slots=True)
class Version:
    major: int
    minor: int
    patch: int
    beta: int | None = None  # None: a stable release

    def __str__(self) -> str:
        return f"v{self.major}.{self.minor}.{self.patch}" + ("" if self.beta is None else f"-beta.{self.beta}")

    @property
    def is_beta(self) -> bool:
        return self.beta is not None

    def _key(self) -> tuple[int, int, int, int, int]:
        return (self.major, self.minor, self.patch, 1 if self.beta is None else 0, self.beta or 0)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()


def parse_version(text: str) -> Version:
    match = _FORM.fullmatch(text.strip())
    if match is None:
        raise VersionParseError(f"{orjson.dumps(text).decode()} is not vN.M.K or vN.M.K-beta.X; example: {EXAMPLE}")
    major, minor, patch, beta = match.groups()
    return Version(int(major), int(minor), int(patch), None if beta is None else int(beta))

"""The base of every rule condition: a strict pydantic model (unknown keys are errors) that compiles
itself into the engine's `Rule`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from tollhouse.policy.compiled import Rule


class CompileProblem(Exception):
    """A rule that validated but cannot be compiled in this policy (the policy's default zone is unknown)."""

    def __init__(self, field: str, what: str) -> None:
        super().__init__(f"{field}: {what}")
        self.field = field
        self.what = what


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    TYPE: ClassVar[str]
    type: str  # as written; TYPE is its canonical name

    def compile(self, common: Mapping[str, Any], redirect_to: str | None, tz: str) -> Rule:
        raise NotImplementedError

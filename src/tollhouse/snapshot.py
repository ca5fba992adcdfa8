"""Live state as snapshots: one primitive for everything that changes while the gateway serves.

A `Published[T]` holds one immutable value. Readers take `.current` (a plain attribute: one load, no lock) once
per call and keep using what they took; a writer builds a whole new value and `publish()`es it. The old value
is never mutated, so a reader that took it goes on seeing exactly that version (a call in flight finishes under
the policy and directory it started with). Subscribers are told synchronously, in the order they subscribed.

Published values must be immutable: frozen dataclasses, tuples, frozensets, MappingProxyType, or classes with
no mutators (a memo cache of an immutable value is fine). `publish()` refuses the obvious mutable ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

_MUTABLE = (dict, list, set, bytearray)


class MutableSnapshot(TypeError):
    """A value that can change in place was offered as a snapshot."""


def mutable_kind(value: object) -> str | None:
    """Why `value` cannot be a snapshot (it can change in place), or None. Shallow: checks the value itself."""
    if isinstance(value, _MUTABLE):
        return f"a {type(value).__name__} (publish a tuple, frozenset or types.MappingProxyType instead)"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        params = getattr(type(value), "__dataclass_params__", None)
        if params is not None and not params.frozen:
            return f"a {type(value).__name__}, a dataclass that is not frozen (declare it @dataclass(frozen=True))"
    return None


class Published(Generic[T]):
    """One immutable value, replaced whole. `current` is the value in force now: read it once per call."""

    __slots__ = ("_subscribers", "current")

    def __init__(self, initial: T) -> None:
        _check(initial)
        self.current: T = initial
        self._subscribers: tuple[Callable[[T], None], ...] = ()

    def publish(self, new: T) -> T:
        """Put `new` in force (the previous value is left as it was) and tell every subscriber, synchronously.
        Returns the previous value. Every subscriber runs even when one raises; the first error is then raised
        (the new value stays in force)."""
        _check(new)
        old = self.current
        self.current = new
        error: Exception | None = None
        for callback in self._subscribers:
            try:
                callback(new)
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error
        return old

    def subscribe(self, callback: Callable[[T], None]) -> Callable[[], None]:
        """Call `callback(new)` on every later publish. Returns the function that unsubscribes it."""
        self._subscribers = (*self._subscribers, callback)

        def unsubscribe() -> None:
            self._subscribers = tuple(c for c in self._subscribers if c is not callback)

        return unsubscribe


def _check(value: object) -> None:
    why = mutable_kind(value)
    if why is not None:
        raise MutableSnapshot(f"a snapshot must be immutable, and this value is {why}")

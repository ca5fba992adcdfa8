"""An append-only journal of events not yet in the store, so `kill -9` loses nothing.

Each recorded event is appended to the current segment before its call is answered (one `write`
syscall, no fsync: the OS keeps it when the process dies). When the writer takes a batch it starts a
new segment; once the batch is committed to the store, the segments it covered are deleted.
At start-up, leftover segments are replayed into the store (idempotent by event id) and deleted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import orjson

from tollhouse.events.model import COLUMNS, CallEvent, Capture

log = logging.getLogger("tollhouse.events")


class Journal:
    def __init__(self, directory: Path) -> None:
        self._dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        existing = [int(p.stem.split("-")[1]) for p in directory.glob("segment-*.jsonl")]
        self._seq = max(existing, default=0)
        self._covered: list[Path] = []  # segments whose events are all in the writer's hands
        self._path, self._fd = self._open_next()

    def _open_next(self) -> tuple[Path, int]:
        self._seq += 1
        path = self._dir / f"segment-{self._seq:010d}.jsonl"
        return path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def append(self, event: CallEvent, capture: Capture | None = None) -> None:
        """One write syscall, no fsync: the OS keeps it if the process dies. A line is the event's columns,
        then its captured [prompt, response] when there is one."""
        row = tuple(event) if capture is None else (*event, tuple(capture))
        os.write(self._fd, orjson.dumps(row) + b"\n")

    def rotate(self) -> None:
        """Called when the writer takes everything pending: later events go to a new segment."""
        os.close(self._fd)
        self._covered.append(self._path)
        self._path, self._fd = self._open_next()

    def committed(self) -> None:
        """Everything taken so far is in the store: drop the segments that held it."""
        for path in self._covered:
            path.unlink(missing_ok=True)
        self._covered.clear()

    def close(self, drained: bool) -> None:
        os.close(self._fd)
        if drained:
            self.committed()
            self._path.unlink(missing_ok=True)


class Leftover(NamedTuple):
    path: Path
    events: list[CallEvent]
    captures: dict[str, Capture]  # event id → captured content


def leftover_events(directory: Path) -> Iterator[Leftover]:
    """Events of segments a previous process left behind (a torn last line is skipped)."""
    for path in sorted(directory.glob("segment-*.jsonl")):
        out = Leftover(path, [], {})
        for line in path.read_bytes().splitlines():
            try:
                row = orjson.loads(line)
                event = CallEvent(*row[:len(COLUMNS)])
                if len(row) > len(COLUMNS):
                    out.captures[event.id] = Capture(*row[len(COLUMNS)])
            except (orjson.JSONDecodeError, TypeError):
                log.warning("skipping a torn journal line in %s", path)
                continue
            out.events.append(event)
        yield out

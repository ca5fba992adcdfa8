"""An append-only journal of events not yet in the store, so `kill -9` loses nothing.

Each recorded event is appended to the current segment before its call is answered. A segment is a
file mapped into memory (MAP_SHARED), so an append is a copy into the page cache: no syscall and no
release of the GIL on the request path, and the OS keeps the pages when the process dies (no fsync:
as with a plain write, a power cut may lose the last events). A segment holds lines up to its write
position and zero bytes after it. When the writer takes a batch it starts a new segment; once the
batch is committed to the store, the segments it covered are deleted. At start-up, leftover segments
are replayed into the store (idempotent by event id) and deleted.
"""

from __future__ import annotations

import logging
import mmap
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import orjson

from tollhouse.events.model import COLUMNS, CallEvent, Capture

log = logging.getLogger("tollhouse.events")

SEGMENT_BYTES = 4 << 20  # a segment's mapped size; a bigger line (captured content) gets a segment of its own size


class _Segment:
    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)  # sparse: pages are allocated as lines land in them
            self.map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.free = size

    def close(self) -> None:
        used = len(self.map) - self.free
        self.map.close()
        os.truncate(self.path, used)  # the file ends at its last line (replay needs no trimming)


class Journal:
    def __init__(self, directory: Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        self._dir = directory
        self._segment_bytes = segment_bytes
        directory.mkdir(parents=True, exist_ok=True)
        existing = [int(p.stem.split("-")[1]) for p in directory.glob("segment-*.jsonl")]
        self._seq = max(existing, default=0)
        self._covered: list[Path] = []  # segments whose events are all in the writer's hands
        self._filled: list[Path] = []  # full segments whose events the writer has not taken yet
        self._segment = self._open_next(segment_bytes)

    def _open_next(self, size: int) -> _Segment:
        self._seq += 1
        return _Segment(self._dir / f"segment-{self._seq:010d}.jsonl", size)

    def append(self, event: CallEvent, capture: Capture | None = None) -> None:
        """A copy into mapped memory: the OS keeps it if the process dies. A line is the event's columns,
        then its captured [prompt, response] when there is one."""
        row = tuple(event) if capture is None else (*event, tuple(capture))
        line = orjson.dumps(row) + b"\n"
        segment = self._segment
        if len(line) > segment.free:
            segment.close()
            self._filled.append(segment.path)
            segment = self._segment = self._open_next(max(self._segment_bytes, len(line)))
        segment.map.write(line)
        segment.free -= len(line)

    def rotate(self) -> None:
        """Called when the writer takes everything pending: later events go to a new segment."""
        self._segment.close()
        self._covered += [*self._filled, self._segment.path]
        self._filled.clear()
        self._segment = self._open_next(self._segment_bytes)

    def committed(self) -> None:
        """Everything taken so far is in the store: drop the segments that held it."""
        for path in self._covered:
            path.unlink(missing_ok=True)
        self._covered.clear()

    def close(self, drained: bool) -> None:
        self._segment.close()
        if drained:
            self.committed()
            self._segment.path.unlink(missing_ok=True)


class Leftover(NamedTuple):
    path: Path
    events: list[CallEvent]
    captures: dict[str, Capture]  # event id → captured content


def leftover_events(directory: Path) -> Iterator[Leftover]:
    """Events of segments a previous process left behind (a torn last line is skipped)."""
    for path in sorted(directory.glob("segment-*.jsonl")):
        out = Leftover(path, [], {})
        for line in path.read_bytes().rstrip(b"\0").splitlines():  # a killed process leaves zeros
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

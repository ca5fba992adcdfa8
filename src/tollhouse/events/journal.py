"""An append-only journal of events not yet in the store, so `kill -9` loses nothing.

Each recorded event is appended to the current segment before its call is answered. A segment is a
file mapped into memory (MAP_SHARED), so an append is a copy into the page cache: no syscall and no
release of the GIL on the request path, and the OS keeps the pages when the process dies (no fsync:
as with a plain write, a power cut may lose the last events). A segment holds lines up to its write
position and zero bytes after it. When the writer takes a batch it starts a new segment; once the
batch is committed to the store, the segments it covered are deleted. At start-up, leftover segments
are replayed into the store (idempotent by event id) and deleted.

Storage faults never reach the request path as a crash: a segment's space is reserved when it is
created (`posix_fallocate`), so no write into the mapping ever touches a page the file system has not
backed (on a full tmpfs that would be SIGBUS). When a segment cannot be created (disk full, read-only,
quota), the journal is *down*: `append` returns False at once (the caller keeps the event in memory)
and `error` says why; the writer calls `rotate` again later, which brings it back when the disk is.

A call in flight journals an *intent* first (a provisional event, `usage_source` "reserved", see
`EventWriter.begin`); its final event carries the same id and supersedes it at replay (`recover`).

File-system work that need not happen on the request path does not: a segment the journal is done with
(taken by the writer, or full) is only set aside, and `close_retired` unmaps and trims it later; `committed`
deletes files; `prepare_spare` creates (allocates and maps) the segment the next rotation starts, under a
name the previous rotation reserved. The writer runs these three on its store thread, next to the batch's
commit, while the event loop keeps serving calls; the writer never rotates while that job runs. Only these
three may run on another thread: besides the spare and the deletion lists, which only they and `rotate`
touch, they share with `append` only the `_retired` deque, whose appends and pops are atomic. A retired
segment's lines are already in the page cache: closing it later changes nothing a replay would read. A
spare holds no line until a rotation takes it (a killed process may leave one, empty: replay skips it).
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import orjson

from tollhouse.events.model import COLUMNS, CallEvent, Capture

log = logging.getLogger("tollhouse.events")

SEGMENT_BYTES = 4 << 20  # a segment's mapped size; a bigger line (captured content) gets a segment of its own size
PROVISIONAL = "reserved"  # usage_source of an intent record: the call was forwarded, its outcome not yet known


def journal_line(event: CallEvent, capture: Capture | None = None) -> bytes:
    """A line is the event's columns, then its captured [prompt, response] when there is one."""
    return row_line(tuple(event) if capture is None else (*event, tuple(capture)))


def row_line(row: tuple[object, ...]) -> bytes:
    """The journal line of a row: an event's columns in order (the caller may build them as a plain tuple)."""
    return orjson.dumps(row) + b"\n"


class _Segment:
    """A file of `size` bytes, every one of them allocated before it is mapped. Raises OSError."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)  # never another process's segment
        try:
            os.ftruncate(self._fd, size)
            os.posix_fallocate(self._fd, 0, size)  # ENOSPC here, never SIGBUS in a later write
            self.map = mmap.mmap(self._fd, size)
        except BaseException:
            os.close(self._fd)
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
            raise
        self.free = size

    def close(self) -> None:
        used = len(self.map) - self.free
        self.map.close()
        try:
            os.ftruncate(self._fd, used)  # the file ends at its last line (replay needs no trimming)
        except OSError:
            pass  # read-only by now: the zero padding stays, and replay skips it
        finally:
            os.close(self._fd)


class Journal:
    def __init__(self, directory: Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        self._dir = directory
        self._segment_bytes = segment_bytes
        self._covered: list[Path] = []  # segments whose events are all in the writer's hands
        self._filled: list[Path] = []  # full segments whose events the writer has not taken yet
        self._undeleted: list[Path] = []  # committed segments the file system would not let us delete yet
        self._retired: deque[_Segment] = deque()  # segments written to for the last time, not closed yet
        self._spare: _Segment | None = None  # made ahead off the loop: the next rotation starts it
        self._spare_path: Path | None = None  # the name reserved for the next spare
        self._segment: _Segment | None = None
        self.error: str | None = None  # why the journal is down (None: it is up)
        self._seq = 0
        try:
            directory.mkdir(parents=True, exist_ok=True)
            existing = [int(p.stem.split("-")[1]) for p in directory.glob("segment-*.jsonl")]
            self._seq = max(existing, default=0)
        except OSError as exc:
            self._down(exc)
            return
        self._segment = self._open_next(segment_bytes)

    @property
    def up(self) -> bool:
        return self._segment is not None

    def _down(self, exc: OSError) -> None:
        error = f"cannot create a journal segment in {self._dir}: {exc.strerror or exc}"
        if error != self.error:
            log.error("%s; events are held in memory until it can (it is retried automatically)", error)
        self.error = error

    def _open_next(self, size: int) -> _Segment | None:
        try:
            if self.error is not None:  # coming back: the directory may have gone with the disk
                self._dir.mkdir(parents=True, exist_ok=True)
            while True:
                self._seq += 1
                try:
                    segment = _Segment(self._dir / f"segment-{self._seq:010d}.jsonl", size)
                    break
                except FileExistsError:  # left by an earlier run we could not list: keep it for replay
                    continue
        except OSError as exc:
            self._down(exc)
            return None
        if self.error is not None:
            log.warning("the journal in %s is writable again", self._dir)
            self.error = None
        return segment

    def append(self, event: CallEvent, capture: Capture | None = None) -> bool:
        """A copy into mapped memory: the OS keeps it if the process dies. False: the journal is down
        (nothing was written; the caller keeps the event)."""
        return self.append_line(journal_line(event, capture))

    def append_line(self, line: bytes) -> bool:
        segment = self._segment
        if segment is None:
            return False
        if len(line) > segment.free:
            self._retired.append(segment)
            self._filled.append(segment.path)
            segment = self._segment = self._open_next(max(self._segment_bytes, len(line)))
            if segment is None:
                return False
        segment.map.write(line)
        segment.free -= len(line)
        return True

    def rotate(self, carry: Iterable[bytes] = ()) -> bool:
        """Called when the writer takes everything pending: later events go to a new segment, which
        starts with the `carry` lines (the intents of calls still in flight, whose old segments are
        about to be deleted). Also brings a down journal back up. False: it is (still) down."""
        if self._segment is not None:
            self._retired.append(self._segment)
            self._covered.append(self._segment.path)
        self._covered += self._filled
        self._filled.clear()
        spare, self._spare = self._spare, None
        if spare is not None and self.error is not None:
            log.warning("the journal in %s is writable again", self._dir)
            self.error = None
        self._segment = spare or self._open_next(self._segment_bytes)
        if self._segment is None:
            return False
        self._seq += 1
        self._spare_path = self._dir / f"segment-{self._seq:010d}.jsonl"
        return all(self.append_line(line) for line in carry)

    def prepare_spare(self) -> None:
        """Create the segment the next rotation starts, under the name the last one reserved (if that fails, the
        rotation creates one itself, and says what is wrong). May run on another thread (see the module's doc)."""
        path, self._spare_path = self._spare_path, None
        if path is None or self._spare is not None:
            return
        try:
            self._spare = _Segment(path, self._segment_bytes)
        except OSError:
            return

    def adopt(self, paths: list[Path]) -> None:
        """Segments an earlier run left, whose events the writer now holds: deleted once they are stored."""
        self._filled[:0] = paths

    def close_retired(self) -> None:
        """Unmap and trim the segments set aside (their file ends at their last line). May run on another
        thread (see the module's doc)."""
        while self._retired:
            self._retired.popleft().close()

    def committed(self) -> None:
        """Everything taken so far is in the store: drop the segments that held it. May run on another
        thread (see the module's doc)."""
        self._undeleted += self._covered
        self._covered.clear()
        kept: list[Path] = []
        for path in self._undeleted:
            try:
                path.unlink(missing_ok=True)
            except OSError:  # read-only for now: deleted at a later commit (a replay would skip its events)
                kept.append(path)
        self._undeleted = kept

    def close(self, drained: bool) -> None:
        self.close_retired()
        spare, self._spare = self._spare, None
        if spare is not None:  # it holds nothing
            spare.close()
            with contextlib.suppress(OSError):
                spare.path.unlink()
        if self._segment is not None:
            self._segment.close()
        if drained:
            if self._segment is not None:
                self._covered.append(self._segment.path)
            self._covered += self._filled
            self.committed()


class Leftover(NamedTuple):
    path: Path
    events: list[CallEvent]
    captures: dict[str, Capture]  # event id → captured content


class Recovered(NamedTuple):
    events: list[CallEvent]  # one per id: the final event, or the intent of a call that never finished
    captures: dict[str, Capture]
    paths: list[Path]  # the segments they came from (delete once the events are stored)


def leftover_events(directory: Path) -> Iterable[Leftover]:
    """Events of segments a previous process left behind (a torn last line is skipped)."""
    for path in sorted(directory.glob("segment-*.jsonl")):
        out = Leftover(path, [], {})
        for line in path.read_bytes().rstrip(b"\0").splitlines():  # a killed process leaves zeros
            if not line.strip(b"\0"):
                continue
            try:
                row = orjson.loads(line)
                # The captured [prompt, response] (a list) follows the columns; a line written before a column
                # was added has fewer of them (the later ones have defaults).
                captured = row.pop() if row and isinstance(row[-1], list) else None
                event = CallEvent(*row[:len(COLUMNS)])
                if captured is not None:
                    out.captures[event.id] = Capture(*captured)
            except (orjson.JSONDecodeError, TypeError):
                log.warning("skipping a torn journal line in %s", path)
                continue
            out.events.append(event)
        yield out


def recover(directory: Path) -> Recovered:
    """Every event the segments of `directory` hold, an intent superseded by its call's final event
    wherever that is (a later segment included)."""
    events: dict[str, CallEvent] = {}
    captures: dict[str, Capture] = {}
    paths: list[Path] = []
    for left in leftover_events(directory):
        paths.append(left.path)
        for event in left.events:
            known = events.get(event.id)
            if known is None or known.usage_source == PROVISIONAL:
                events[event.id] = event
        captures.update(left.captures)
    return Recovered(list(events.values()), captures, paths)

"""The kill -9 journal: memory-mapped segments that a dead process leaves readable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from shipping import call
from tollhouse.events.journal import Journal, leftover_events
from tollhouse.events.model import Capture


def test_events_spill_into_new_segments_and_replay_in_order(tmp_path: Path) -> None:
    journal = Journal(tmp_path, segment_bytes=1024)
    big = Capture("p" * 5000, "r")  # bigger than a segment: it gets one of its own size
    for n in range(20):
        journal.append(call(n), big if n == 7 else None)
    segments = sorted(tmp_path.glob("segment-*.jsonl"))
    assert len(segments) > 3
    replayed = [(e.id, cap) for left in leftover_events(tmp_path) for e in left.events
                for cap in [left.captures.get(e.id)]]
    assert [i for i, _ in replayed] == [call(n).id for n in range(20)]
    assert [cap for _, cap in replayed if cap is not None] == [big]


def test_taken_and_committed_segments_are_deleted_and_later_events_kept(tmp_path: Path) -> None:
    journal = Journal(tmp_path, segment_bytes=1024)
    for n in range(10):
        journal.append(call(n))
    journal.rotate()  # the writer took events 0-9
    journal.append(call(10))
    journal.committed()  # 0-9 are in the store
    left = [e.id for leftover in leftover_events(tmp_path) for e in leftover.events]
    assert left == [call(10).id]
    journal.close(drained=True)
    assert not list(tmp_path.glob("segment-*"))


def test_a_process_killed_after_appending_leaves_every_event(tmp_path: Path) -> None:
    tests = Path(__file__).parent
    code = (f"import os, sys; sys.path.insert(0, {str(tests)!r})\n"
            "from pathlib import Path\nfrom shipping import call\nfrom tollhouse.events.journal import Journal\n"
            f"j = Journal(Path({str(tmp_path)!r}))\nfor n in range(500): j.append(call(n))\n"
            "os.kill(os.getpid(), 9)\n")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ}, capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    [segment] = tmp_path.glob("segment-*.jsonl")
    assert segment.stat().st_size > 500 * 100  # mapped size, zero padded after the last line
    assert [e.id for left in leftover_events(tmp_path) for e in left.events] == [call(n).id for n in range(500)]

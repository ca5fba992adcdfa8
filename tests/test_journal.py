"""The kill -9 journal: memory-mapped segments that a dead process leaves readable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shipping import call
from tollhouse.events.journal import PROVISIONAL, Journal, journal_line, leftover_events, recover
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


def test_an_intent_is_superseded_by_its_final_event_in_any_later_segment(tmp_path: Path) -> None:
    journal = Journal(tmp_path, segment_bytes=1024)
    intent = call(1)._replace(status=0, usage_source=PROVISIONAL, cost_nusd=10**8)
    unfinished = call(2)._replace(status=0, usage_source=PROVISIONAL, cost_nusd=10**8)
    journal.append(intent)
    journal.append(unfinished)
    journal.rotate([journal_line(intent), journal_line(unfinished)])  # still in flight: carried over
    journal.committed()  # the first segment goes; the intents live on in the new one
    for n in range(10, 30):  # spill into more segments
        journal.append(call(n))
    journal.append(call(1))  # the final event of the first call
    events, _, paths = recover(tmp_path)
    by_id = {e.id: e for e in events}
    assert len(events) == 22 and len(paths) > 1
    assert by_id[call(1).id] == call(1)  # the final one, never the intent
    assert by_id[call(2).id] == unfinished  # no final: stored as it is, at its worst case


def test_a_full_file_system_takes_the_journal_down_not_the_process(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        journal = Journal(mnt, segment_bytes=128 * 1024)
        assert journal.up
        blocker = mnt / "filler"
        blocker.write_bytes(b"x" * (120 * 1024))
        written = sum(journal.append(call(n)) for n in range(2000))  # the reserved segment fills, then no more
        assert 100 < written < 2000 and not journal.up
        assert journal.error is not None and "No space left on device" in journal.error and str(mnt) in journal.error
        assert not journal.rotate()  # still full: nothing half-made is left behind
        assert len(list(mnt.glob("segment-*.jsonl"))) == 1
        blocker.unlink()
        assert journal.rotate() and journal.up and journal.error is None
        assert journal.append(call(5000))
    finally:
        subprocess.run(["umount", "-l", str(mnt)])

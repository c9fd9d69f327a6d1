"""Offset bookkeeping: never commit past the start of an open run."""

from __future__ import annotations

from spt_stream.core.offsets import OffsetTracker
from spt_stream.protocols import Position


def _pos(off: int, part: int = 0) -> Position:
    return Position(topic="t", partition=part, offset=off)


def test_no_open_run_commits_after_last_handled() -> None:
    """With no run open, the next offset after the last handled one is committable."""
    tr = OffsetTracker()
    for off in range(5):
        tr.handled(_pos(off))
    assert tr.committable() == {("t", 0): 5}


def test_open_run_pins_commit_at_its_start() -> None:
    """While a run is open, the commit point stays at its start document's offset."""
    tr = OffsetTracker()
    tr.handled(_pos(0))
    tr.run_opened("a", _pos(1))
    for off in range(1, 10):
        tr.handled(_pos(off))
    assert tr.committable() == {("t", 0): 1}
    tr.run_closed("a")
    assert tr.committable() == {("t", 0): 10}


def test_interleaved_runs_and_partitions() -> None:
    """The oldest open run on a partition pins it; other partitions move independently."""
    tr = OffsetTracker()
    tr.run_opened("a", _pos(2))
    tr.run_opened("b", _pos(5))
    tr.run_opened("c", _pos(0, part=1))
    tr.handled(_pos(9))
    tr.handled(_pos(3, part=1))
    tr.run_closed("a")
    assert tr.committable() == {("t", 0): 5, ("t", 1): 0}
    tr.run_closed("c")
    assert tr.committable()[("t", 1)] == 4


def test_only_moved_partitions_reported() -> None:
    """After mark_committed, an unchanged partition is not reported again."""
    tr = OffsetTracker()
    tr.handled(_pos(3))
    first = tr.committable()
    tr.mark_committed(first)
    assert tr.committable() == {}
    tr.handled(_pos(4))
    assert tr.committable() == {("t", 0): 5}


def test_positions_without_kafka_are_ignored() -> None:
    """In-process and file positions carry no offsets and never produce commits."""
    tr = OffsetTracker()
    tr.handled(None)
    tr.handled(Position(file="x.jsonl", line=3))
    tr.run_opened("a", None)
    assert tr.committable() == {}

"""Which Kafka offsets the engine may commit.

Delivery contract (at-least-once into idempotent sinks): an offset is committed only when every
document before it has had its full effect in the sinks. A run in progress holds state in memory
(its start and descriptors, a step-scan sweep being assembled, frames waiting in the batcher), so
the committable offset on a partition never passes the START document of a run that is still open
there. After a crash the engine re-reads every open run from its start; the sinks skip the frames
they already hold (idempotent on ``(run_uid, seq_num)``), and the trace ends identical to an
uninterrupted run. Runs are short compared with Kafka retention at beamlines (minutes to hours),
so the re-read costs seconds at backlog speed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from spt_stream.protocols import Position

__all__ = ["OffsetTracker", "TopicPartition"]

TopicPartition = tuple[str, int]


@dataclass
class OffsetTracker:
    """Track handled offsets and open runs per partition (pure bookkeeping, no Kafka)."""

    #: Highest offset handled per partition.
    _last: dict[TopicPartition, int] = field(default_factory=dict)
    #: Offset of the start document of every open run, per partition.
    _open: dict[TopicPartition, dict[str, int]] = field(default_factory=dict)
    #: Partition of each open run.
    _run_tp: dict[str, TopicPartition] = field(default_factory=dict)
    #: What was last handed to commit, per partition.
    _committed: dict[TopicPartition, int] = field(default_factory=dict)

    @staticmethod
    def _tp(position: Position | None) -> TopicPartition | None:
        if position is None or position.topic is None or position.partition is None:
            return None
        if position.offset is None:
            return None
        return (position.topic, position.partition)

    def handled(self, position: Position | None) -> None:
        """A document (or undecodable message) at ``position`` has been handled."""
        tp = self._tp(position)
        if tp is None or position is None or position.offset is None:
            return
        if position.offset > self._last.get(tp, -1):
            self._last[tp] = position.offset

    def run_opened(self, run_uid: str, position: Position | None) -> None:
        """The start document of ``run_uid`` was read at ``position``."""
        tp = self._tp(position)
        if tp is None or position is None or position.offset is None:
            return
        self._open.setdefault(tp, {})[run_uid] = position.offset
        self._run_tp[run_uid] = tp

    def run_closed(self, run_uid: str) -> None:
        """Every effect of ``run_uid`` is durable in the sinks (call after their flush)."""
        tp = self._run_tp.pop(run_uid, None)
        if tp is not None:
            self._open.get(tp, {}).pop(run_uid, None)

    def open_runs(self) -> list[str]:
        return list(self._run_tp)

    def committable(self) -> dict[TopicPartition, int]:
        """Next offset to read per partition, as Kafka commits mean it (only what moved)."""
        out: dict[TopicPartition, int] = {}
        for tp, last in self._last.items():
            opened = self._open.get(tp)
            nxt = min(opened.values()) if opened else last + 1
            if nxt > self._committed.get(tp, -1):
                out[tp] = nxt
        return out

    def mark_committed(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, off in offsets.items():
            self._committed[tp] = max(off, self._committed.get(tp, -1))

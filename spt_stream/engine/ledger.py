"""The engine's record of runs: open ones with their counts, and the last finished ones.

One place answers "which runs is the engine writing, how far is each, which frames of a resumed
run are already in the primary trace" for the engine, its status view and its metrics. (Frame
assembly keeps its own per-run document state, the offset tracker its per-run start offsets,
and each sink its open stores: each holds what only it needs, keyed by the same run uid.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from spt_stream.core.frames import RunInfo

__all__ = ["RunLedger", "RunProgress"]

#: Finished runs kept for the status view.
_KEEP_FINISHED = 32


@dataclass
class RunProgress:
    """Per-run state the engine keeps (and shows in the status view)."""

    info: RunInfo
    frames: int = 0
    duplicates: int = 0
    first_time: float = field(default_factory=time.time)
    last_time: float = 0.0
    status: str = "running"
    #: seq_nums the primary trace already holds (a resumed run): skipped before the model.
    skip: set[int] = field(default_factory=set)


class RunLedger:
    """Open runs by uid, and the most recent finished ones."""

    def __init__(self) -> None:
        self._open: dict[str, RunProgress] = {}
        self._finished: list[RunProgress] = []

    def open(self, info: RunInfo) -> RunProgress:
        progress = RunProgress(info=info)
        self._open[info.run_uid] = progress
        return progress

    def get(self, run_uid: str) -> RunProgress | None:
        return self._open.get(run_uid)

    def finish(self, run_uid: str, status: str) -> RunProgress | None:
        """Move a run to the finished ones with its final status (None: it was not open)."""
        progress = self._open.pop(run_uid, None)
        if progress is not None:
            progress.status = status
            self._finished.append(progress)
            del self._finished[:-_KEEP_FINISHED]
        return progress

    def wrote(self, run_uid: str, frames: int, last_time: float) -> None:
        progress = self._open.get(run_uid)
        if progress is not None:
            progress.frames += frames
            progress.last_time = last_time

    def __len__(self) -> int:
        return len(self._open)

    def __bool__(self) -> bool:
        return bool(self._open)

    def status_rows(self, finished: int = 8) -> list[dict[str, Any]]:
        """The last ``finished`` finished runs then the open ones, for the status view."""
        return [
            {
                "run_uid": p.info.run_uid,
                "element": p.info.element,
                "frames": p.frames,
                "duplicates": p.duplicates,
                "status": p.status,
            }
            for p in [*self._finished[-finished:], *self._open.values()]
        ]

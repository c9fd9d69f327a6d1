"""The engine's offset commits around a run's stop document (real model, real Zarr sink)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from spt_stream.config import load_settings
from spt_stream.core.offsets import TopicPartition
from spt_stream.engine import Engine
from spt_stream.engine.pipeline import ModelRunner
from spt_stream.protocols import Position
from spt_stream.sinks.deadletter import MemoryDeadLetter
from spt_stream.sinks.threaded import ZarrSink
from spt_stream.sinks.zarr_trace import committed_seq_nums
from tests._spectra_docs import compose_docs


def test_commit_at_stop_covers_the_stop_document(tmp_path: Path) -> None:
    """The commit a run's stop triggers points past the stop itself, so a restart right after
    it does not re-read a stop whose run is already closed (a spurious dead-letter record)."""
    commits: list[dict[TopicPartition, int]] = []

    def commit(offsets: Mapping[TopicPartition, int]) -> bool:
        commits.append(dict(offsets))
        return True

    settings = load_settings(None, {"zarr": {"root": tmp_path}})
    engine = Engine(
        settings,
        ModelRunner(None, device="cpu"),
        ZarrSink(tmp_path),
        dead_letter=MemoryDeadLetter(),
        commit=commit,
        commit_interval_s=3600.0,  # only the stop document commits here
    )
    uid, docs = compose_docs(12, seed=3)
    for offset, (name, doc) in enumerate(docs):
        engine(name, doc, Position("t", 0, offset))
        if name != "stop":
            assert commits == [], name  # nothing past an open run's start
    engine.commit_now()  # commits run on their own thread: wait for them
    assert commits == [{("t", 0): len(docs)}]
    engine.close()
    assert committed_seq_nums(tmp_path / f"{uid}.zarr").tolist() == list(range(1, 13))
    assert engine.ingest.counts.rejected == 0

"""Tiled frozen while a run streams through the engine: the Zarr trace keeps up, the offsets wait.

The engine (packaged model, Zarr primary trace, the Tiled trace writer with its default
queue) gets a run with Kafka positions while the test Tiled server is frozen with SIGSTOP.
Asserted while frozen: every document is handled (the transport's thread never waits on Tiled:
flushes and commits run on the engine's commit thread), the Zarr trace holds every frame, and no
offset past the run's start is committed (Tiled has not flushed what the offsets cover). Once
the server resumes: the commit past the stop document happens, and the Tiled table holds every
frame exactly once, finalized.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from spt_stream.config import load_settings
from spt_stream.core.offsets import TopicPartition
from spt_stream.engine import Engine
from spt_stream.engine.pipeline import ModelRunner
from spt_stream.protocols import Position
from spt_stream.sinks.base import TraceSink
from spt_stream.sinks.deadletter import MemoryDeadLetter
from spt_stream.sinks.threaded import ZarrSink
from spt_stream.sinks.tiled_trace import TiledTraceWriter
from spt_stream.sinks.zarr_trace import committed_seq_nums
from tests._spectra_docs import compose_docs

N_FRAMES = 60
#: Bound on any single wait (a hang fails the test instead of hanging it).
WAIT_S = 60.0
#: Bound on feeding the run while Tiled is frozen (60 frames take ~2 s here).
FEED_S = 20.0


def test_frozen_tiled_holds_the_offsets_not_the_frames(tmp_path: Path, tiled_server: Any) -> None:
    from tiled.client import from_uri

    url, api_key = tiled_server
    commits: list[dict[TopicPartition, int]] = []

    def commit(offsets: Mapping[TopicPartition, int]) -> bool:
        commits.append(dict(offsets))
        return True

    tiled = TiledTraceWriter(
        url, api_key, parent=f"frozen-{uuid.uuid4().hex[:8]}", request_timeout=1.0
    )
    sinks: list[TraceSink] = [ZarrSink(tmp_path), tiled]
    settings = load_settings(
        None,
        {"dead_letter": {"path": None}, "batch": {"max_size": 8, "max_latency_ms": 3_600_000}},
    )
    engine = Engine(
        settings,
        ModelRunner(None, device="cpu"),
        sinks[0],
        sinks[1:],
        dead_letter=MemoryDeadLetter(),
        commit=commit,
        commit_interval_s=0.05,
    )
    uid, docs = compose_docs(N_FRAMES, seed=12)
    positions = [Position("t", 0, i) for i in range(len(docs))]
    head = 2 + 8  # start, descriptor, one batch written while Tiled is up
    for (name, doc), pos in zip(docs[:head], positions[:head], strict=True):
        engine(name, doc, pos)
    engine.flush_sinks()
    tiled_server.pause()
    try:
        feeder = threading.Thread(
            target=lambda: [
                engine(name, doc, pos)
                for (name, doc), pos in zip(docs[head:], positions[head:], strict=True)
            ],
            daemon=True,
        )
        feeder.start()
        # Below the 30 s a sink flush may wait: a transport thread that flushed Tiled itself
        # (as the engine did before its commit thread) would still be waiting here.
        feeder.join(FEED_S)
        assert not feeder.is_alive(), "the engine waited on the frozen Tiled server"
        for _ in range(5):  # periodic work while frozen: commit jobs start, none can finish
            engine.tick()
        sinks[0].flush(WAIT_S)
        assert committed_seq_nums(tmp_path / f"{uid}.zarr").tolist() == list(range(1, N_FRAMES + 1))
        assert all(off == {("t", 0): 0} for off in commits), commits  # not past the start
    finally:
        tiled_server.resume()
    engine.commit_now()
    assert commits[-1] == {("t", 0): len(docs)}  # past the stop, once Tiled flushed
    engine.close()
    node = from_uri(url, api_key=api_key, remember_me=False)["/".join(tiled.parent)][uid]
    seq = np.asarray(node["trace"].read()["seq_num"]).tolist()
    assert sorted(seq) == list(range(1, N_FRAMES + 1))
    assert node.metadata["status"] == "success"

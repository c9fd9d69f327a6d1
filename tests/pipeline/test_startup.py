"""Start-up and run set-up off the frame path (issue 18, items 2 and 3).

* The engine pays its first-use costs (edge database, normalization and classical plans,
  smoothing matrices, the sinks' metadata and libraries) in ``build_pipeline``, before any
  source reads: the first frame of the first run finds them ready.
* A run's set-up in a sink behind a queue (the Zarr store's creation, the previous run's
  finalize still running) never makes the engine wait.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from spt_stream.classical import features
from spt_stream.config import load_settings
from spt_stream.core.grid import edge_energy
from spt_stream.engine import Engine
from spt_stream.engine.pipeline import ModelRunner, build_pipeline
from spt_stream.normalize import _core, _energy_axis
from spt_stream.sinks.rows import TraceRows
from spt_stream.sinks.threaded import ThreadedSink
from tests._spectra_docs import compose_docs


@pytest.fixture(scope="module")
def model() -> ModelRunner:
    """The packaged default model (eager), loaded once for the module."""
    return ModelRunner(None, device="cpu")


def _cold_caches() -> None:
    """Forget what earlier tests in this process computed (a fresh engine process has none)."""
    edge_energy.cache_clear()
    features._plan.cache_clear()
    _core._plan_cached.cache_clear()
    _energy_axis._smoothing_matrix_cached.cache_clear()


def _misses() -> dict[str, int]:
    return {
        "edge_energy": edge_energy.cache_info().misses,
        "classical plan": features._plan.cache_info().misses,
        "normalization plan": _core._plan_cached.cache_info().misses,
    }


def test_first_frame_finds_the_frame_path_warm(tmp_path: Path, model: ModelRunner) -> None:
    """After ``build_pipeline`` (before any document) the first frames of a quick-XAS run look
    up no edge energy and build no normalization or classical plan: all were made at start-up
    (before: the first frame imported and opened the X-ray database and built every plan,
    ~1 s under load with the RunEngine waiting). The warm-up leaves no trace, run or frame."""
    _cold_caches()
    root = tmp_path / "traces"
    settings = load_settings(None, {"zarr": {"root": root}, "dead_letter": {"path": None}})
    pipe = build_pipeline(settings, model=model)
    try:
        engine = pipe.engine
        assert engine.warmed_up
        assert engine.snapshot()["frames"] == 0
        assert not engine.runs
        uid, docs = compose_docs(4, seed=3)
        before = _misses()
        for name, doc in docs:
            engine(name, doc)
        engine.idle()
        assert _misses() == before
        assert engine.snapshot()["frames"] == 4
        engine.flush_sinks()
    finally:
        pipe.close()
    assert sorted(p.name for p in root.iterdir() if p.suffix == ".zarr") == [f"{uid}.zarr"]


class _Recording:
    """A sink that records its calls; ``warm_up`` takes the rows the engine built."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.warm_rows: TraceRows | None = None

    def warm_up(self, rows: TraceRows | None) -> None:
        self.calls.append("warm_up")
        self.warm_rows = rows

    def open_run(self, run_uid: str, attrs: Mapping[str, Any]) -> None:
        self.calls.append("open_run")

    def write(self, run_uid: str, rows: TraceRows) -> None:
        self.calls.append("write")

    def finalize(self, run_uid: str, status: str) -> None:
        self.calls.append("finalize")

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self) -> None:
        pass

    @property
    def stats(self) -> Mapping[str, int | float]:
        return {}


def test_sinks_are_warmed_with_real_rows_before_any_document(model: ModelRunner) -> None:
    """Every sink with a ``warm_up`` gets the rows of a synthetic frame (the model's columns,
    the classical stage's, normalization's) once, before the first document; through a
    ThreadedSink too (on its thread)."""
    settings = load_settings(None, {"dead_letter": {"path": None}})
    direct, inner = _Recording(), _Recording()
    queued = ThreadedSink(inner, name="queued")
    engine = Engine(settings, model, direct, [queued])
    try:
        engine.warm_up()
        for sink in (direct, inner):
            assert sink.calls == ["warm_up"]
            rows = sink.warm_rows
            assert rows is not None
            assert len(rows) == 2
            assert {"os", "os_std", "ood_score", "os_edge", "e0", "flags"} <= set(rows.columns)
            assert "norm" in rows.arrays
            assert np.isfinite(rows.columns["e0"]).all()
        assert not engine.runs
        assert engine.snapshot()["frames"] == 0
    finally:
        engine.close()


class _SlowOpen(_Recording):
    """open_run and finalize wait for ``gate`` (a store slow to create, a finalize still
    consolidating the previous run)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def open_run(self, run_uid: str, attrs: Mapping[str, Any]) -> None:
        self.gate.wait(30)
        super().open_run(run_uid, attrs)

    def finalize(self, run_uid: str, status: str) -> None:
        self.gate.wait(30)
        super().finalize(run_uid, status)


def test_run_set_up_never_makes_the_engine_wait(model: ModelRunner) -> None:
    """A run's start, frames and stop go through the engine while its sink (behind a queue)
    still creates the run's store; then everything lands in order. Before, ``open_run`` waited
    on the sink thread: the run's first frames paid for the store (and for the previous run's
    finalize queued before it)."""
    settings = load_settings(None, {"dead_letter": {"path": None}})
    inner = _SlowOpen()
    sink = ThreadedSink(inner, name="slow")
    engine = Engine(settings, model, sink)
    _, docs = compose_docs(3, seed=4)
    done = threading.Event()

    def feed() -> None:
        for name, doc in docs:
            engine(name, doc)
        engine.idle()
        done.set()

    feeder = threading.Thread(target=feed, daemon=True)
    t0 = time.monotonic()
    feeder.start()
    try:
        assert done.wait(20), "the engine waited for the sink's open_run"
        assert time.monotonic() - t0 < 20
        assert inner.calls == []  # the sink has not even opened the run yet
        assert engine.snapshot()["frames"] == 3
    finally:
        inner.gate.set()
        feeder.join(30)
        sink.flush(30)
        engine.close()
    assert inner.calls[0] == "open_run"
    assert "write" in inner.calls


@pytest.mark.kafka
def test_feedback_warm_up_fetches_metadata_and_sends_nothing(kafka_bootstrap: str) -> None:
    """The feedback producer knows its topic's partitions before the first frame (here a topic
    created after the producer: its first send would wait for the metadata on the frame path),
    and the warm-up's messages are built, never sent."""
    import uuid

    from spt_stream.devtools.broker import create_topic
    from spt_stream.feedback.publisher import FeedbackPublisher
    from tests.integration.test_feedback_publisher import make_rows, read_topic

    topic = f"test.feedback-warm-up.{uuid.uuid4().hex[:8]}"
    pub = FeedbackPublisher(
        kafka_bootstrap, frame_topic=topic, documents_topic=None, model_name="spt-test 0.1"
    )
    try:
        create_topic(kafka_bootstrap, topic, partitions=1)
        assert pub._producer._metadata.partitions_for_topic(topic) is None
        pub.warm_up(make_rows(1, 2))
        assert pub._producer._metadata.partitions_for_topic(topic) == {0}
        pub.flush(10)
        assert pub.stats["frames_published"] == 0
    finally:
        pub.close()
    assert read_topic(kafka_bootstrap, topic, 1, timeout_s=2.0) == []

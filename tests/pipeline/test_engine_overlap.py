"""The engine's model thread (``batch.overlap``): same trace as without it, errors surface on the
transport's thread, the compute-thread cap reaches the model thread, and compiled-model batch
shapes stay bounded."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from threadpoolctl import threadpool_info  # type: ignore[import-untyped]

from spt_stream.config import load_settings
from spt_stream.engine import Engine
from spt_stream.engine.pipeline import ModelRunner, Pipeline, build_pipeline
from spt_stream.errors import SinkError
from spt_stream.model.predictor import Predictor
from spt_stream.sinks.rows import Column2D, TraceRows
from spt_stream.sinks.zarr_trace import open_trace
from tests.pipeline.test_engine_live_path import _run_documents


@pytest.fixture(scope="module")
def model() -> ModelRunner:
    """The packaged default model, one compute thread, loaded once for the module."""
    return ModelRunner(None, device="cpu", threads=1)


def _feed(engine: Engine, docs: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
    for name, doc in docs:
        engine(name, doc)


def _stop(uid: str) -> dict[str, Any]:
    return {"uid": "stop-" + uid, "run_start": uid, "time": 2e9, "exit_status": "success"}


def test_overlap_writes_the_same_trace(tmp_path: Path, model: ModelRunner) -> None:
    """100 frames in batches of 8 with and without the model thread: identical Zarr traces
    (same rows in the same order, model outputs bit-identical: same batches, same model)."""
    docs = _run_documents(100)
    uid = docs[0][1]["uid"]
    traces = {}
    for overlap in (False, True):
        root = tmp_path / f"overlap-{overlap}"
        settings = load_settings(
            None,
            {
                "zarr": {"root": root},
                "dead_letter": {"path": None},
                "batch": {"max_size": 8, "max_latency_ms": 3_600_000, "overlap": overlap},
            },
        )
        pipe = build_pipeline(settings, model=model)
        _feed(pipe.engine, [*docs, ("stop", _stop(uid))])
        pipe.close()
        traces[overlap] = open_trace(root / f"{uid}.zarr").load()
    a, b = traces[False], traces[True]
    assert a["seq_num"].values.tolist() == list(range(1, 101))
    assert b["seq_num"].values.tolist() == a["seq_num"].values.tolist()
    for name in ("os", "os_std", "cn", "e0", "ood_score", "norm", "os_probs"):
        np.testing.assert_array_equal(b[name].values, a[name].values, err_msg=name)
    assert a.attrs["status"] == b.attrs["status"] == "success"


def test_auto_overlap_stays_off_for_a_model_that_holds_the_lock(
    tmp_path: Path, model: ModelRunner
) -> None:
    """``batch.overlap: auto`` (the default) runs the eager model on the transport's thread: its
    forward pass takes the interpreter lock back after every operator, so a second thread would
    slow it (the AOT model's case, where auto turns the thread on: tests/pipeline/test_aot.py)."""
    settings = load_settings(None, {"zarr": {"root": tmp_path}, "dead_letter": {"path": None}})
    assert settings.batch.overlap == "auto"
    assert model.info["backend"] == "eager"
    assert not model.lock_free
    pipe = build_pipeline(settings, model=model)
    assert pipe.engine._worker is None
    pipe.close()


class _FailingPrimary:
    """A primary sink whose writes fail after ``ok`` of them."""

    def __init__(self, ok: int) -> None:
        self.ok = ok
        self.rows: list[int] = []

    def open_run(self, run_uid: str, attrs: Mapping[str, Any]) -> None:
        pass

    def write(self, run_uid: str, rows: TraceRows) -> None:
        if self.ok <= 0:
            raise SinkError("disk full (test)", run_uid=run_uid)
        self.ok -= 1
        self.rows.extend(rows.seq_num.tolist())

    def finalize(self, run_uid: str, status: str) -> None:
        pass

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_failed_batch_is_raised_on_the_transport_thread(
    model: ModelRunner, caplog: pytest.LogCaptureFixture
) -> None:
    """The primary trace failing on the model thread is raised to the caller at its next call
    into the engine (as the synchronous engine raises it from the same call), never lost in
    the background: a failure that happens while an earlier one is still unreported is logged
    as an error instead. Later batches are still written."""
    settings = load_settings(
        None,
        {
            "dead_letter": {"path": None},
            "batch": {"max_size": 4, "max_latency_ms": 3_600_000, "overlap": True},
        },
    )
    sink = _FailingPrimary(ok=1)
    engine = Engine(settings, model, sink)
    docs = _run_documents(12)
    raised = 0
    for name, doc in docs:
        try:
            engine(name, doc)
        except SinkError:
            raised += 1
    try:
        engine.drain()
    except SinkError:
        raised += 1
    # batch 1 (seq 1-4) written; batches 2 and 3 fail: each raised or logged, once
    assert sink.rows == [1, 2, 3, 4]
    logged = sum("batch failed" in r.getMessage() for r in caplog.records)
    assert raised >= 1
    assert raised + logged == 2
    sink.ok = 10
    _feed(engine, _run_documents(4))
    engine.close()
    assert len(sink.rows) == 8


class _ThreadProbe:
    """A predictor that records, on the thread running it, the OpenMP pool size in force."""

    def __init__(self, inner: ModelRunner) -> None:
        self.inner = inner
        self.seen: list[tuple[str, int]] = []

    @property
    def info(self) -> Mapping[str, Any]:
        return self.inner.info

    def thread_init(self) -> None:
        self.inner.thread_init()

    def predict_columns(
        self, norm: np.ndarray[Any, Any], elements: Sequence[str | None]
    ) -> tuple[dict[str, np.ndarray[Any, Any]], dict[str, Column2D]]:
        omp = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "openmp"]
        self.seen.append((threading.current_thread().name, max(omp) if omp else -1))
        return self.inner.predict_columns(norm, elements)


def _probed_pipeline(tmp_path: Path, model: ModelRunner) -> tuple[_ThreadProbe, Pipeline]:
    """Batches of 4 (released by size only), the model thread on, ``model`` behind a probe."""
    settings = load_settings(
        None,
        {
            "zarr": {"root": tmp_path},
            "dead_letter": {"path": None},
            "batch": {"max_size": 4, "max_latency_ms": 3_600_000, "overlap": True},
        },
    )
    probe = _ThreadProbe(model)
    pipe = build_pipeline(settings, model=probe)  # type: ignore[arg-type]
    probe.seen.clear()  # the start-up warm-up's calls (main thread, before any document)
    return probe, pipe


def test_model_thread_gets_the_compute_thread_cap(tmp_path: Path, model: ModelRunner) -> None:
    """OpenMP's pool size is per thread: the model thread must apply the cap itself, or torch
    runs one thread per core there (measured 5-10x slower on the loaded 2-core machine)."""
    probe, pipe = _probed_pipeline(tmp_path, model)
    docs = _run_documents(8)
    _feed(pipe.engine, docs)
    pipe.close()
    assert probe.seen, "the model never ran"
    assert {name for name, _ in probe.seen} == {"spt-model"}
    assert {n for _, n in probe.seen} <= {model.threads, -1}, probe.seen


def test_full_batches_go_to_the_model_thread_partial_ones_stay(
    tmp_path: Path, model: ModelRunner
) -> None:
    """With the model thread on, a full batch (a backlog) runs there; a partial batch (live
    rates) runs on the transport's thread when the model thread has nothing in hand: no
    hand-over between threads per frame, and the trace keeps its order."""
    probe, pipe = _probed_pipeline(tmp_path, model)
    docs = _run_documents(6)
    uid = docs[0][1]["uid"]
    _feed(pipe.engine, docs[:6])  # start, descriptor, 4 events: one full batch
    pipe.engine.drain()
    _feed(pipe.engine, docs[6:])  # 2 events, released as a partial batch by idle()
    pipe.engine.idle()
    _feed(pipe.engine, [("stop", _stop(uid))])
    pipe.close()
    here = threading.current_thread().name
    assert [name for name, _ in probe.seen] == ["spt-model", here]
    ds = open_trace(tmp_path / f"{uid}.zarr").load()
    assert ds["seq_num"].values.tolist() == [1, 2, 3, 4, 5, 6]


def test_compiled_batch_shapes_are_bounded() -> None:
    """A compiled model runs powers of four up to the engine's batch size (a handful of static
    shapes, all compiled at warm-up), and every batch size pads to the next one."""
    pred = Predictor.from_checkpoint(None, device="cpu")
    assert pred.bucket_sizes(64) == (1, 4, 16, 64)
    assert pred.bucket_sizes(100) == (1, 4, 16, 64, 256)
    assert pred.bucket_sizes() == (1, 4, 16, 64, 256, 512)
    assert [pred._padded(b) for b in (1, 2, 4, 5, 17, 64, 65, 512)] == [
        1, 4, 4, 16, 64, 64, 256, 512,
    ]  # fmt: skip


def test_trim_heap_runs_here() -> None:
    """The heap trim the engine does between runs works on this (glibc) machine."""
    from spt_stream.core._memory import trim_heap

    assert trim_heap() is True

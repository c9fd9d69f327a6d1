"""The live path's latency knobs: the engine's ``idle`` hook, the Zarr sink's write delay and
the compute-thread cap (see docs/BENCHMARKS.md, live engine, for what each one is worth)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from event_model import compose_run

from spt_stream.config import load_settings
from spt_stream.core.grid import edge_energy
from spt_stream.devtools.demo.experiment import SCAN_REL, endmember_spectra
from spt_stream.engine.pipeline import ModelRunner, build_pipeline, limit_compute_threads
from spt_stream.sinks.rows import TraceRows
from spt_stream.sinks.threaded import ThreadedSink
from spt_stream.sinks.zarr_trace import committed_seq_nums, trace_path


@pytest.fixture(scope="module")
def model() -> ModelRunner:
    """The packaged default model, loaded once for the module."""
    return ModelRunner(None, device="cpu")


def _run_documents(n: int) -> list[tuple[str, dict[str, Any]]]:
    """A quick-XAS run described by md["spt"]: start, descriptor, ``n`` events (no stop)."""
    grid = SCAN_REL + edge_energy("Co")
    co3, _ = endmember_spectra()
    spt = {"element": "Co", "edge": "K", "spectrum": "det_mu", "energy": "det_energy"}
    bundle = compose_run(metadata={"spt": spt})
    desc = bundle.compose_descriptor(
        name="primary",
        data_keys={"det_mu": {"source": "sim", "dtype": "array", "shape": [len(grid)]}},
        configuration={
            "det": {
                "data": {"det_energy": grid},
                "timestamps": {"det_energy": 0.0},
                "data_keys": {
                    "det_energy": {"source": "sim", "dtype": "array", "shape": [len(grid)]}
                },
            }
        },
        object_keys={"det": ["det_mu"]},
    )
    docs: list[tuple[str, dict[str, Any]]] = [
        ("start", dict(bundle.start_doc)),
        ("descriptor", dict(desc.descriptor_doc)),
    ]
    for i in range(n):
        mu = 0.35 + 0.85 * co3 + 0.001 * i
        docs.append(
            ("event", dict(desc.compose_event(data={"det_mu": mu}, timestamps={"det_mu": 0.0})))
        )
    return docs


def test_idle_runs_the_held_frames_at_once(tmp_path: Path, model: ModelRunner) -> None:
    """With a latency cap far in the future, frames wait in the batcher until the transport
    says it has caught up (``idle``); then they are analysed and reach the trace."""
    settings = load_settings(
        None,
        {
            "zarr": {"root": tmp_path},
            "dead_letter": {"path": None},
            "batch": {"max_size": 64, "max_latency_ms": 3_600_000},
        },
    )
    pipe = build_pipeline(settings, model=model)
    engine = pipe.engine
    docs = _run_documents(5)
    uid = docs[0][1]["uid"]
    for name, doc in docs:
        engine(name, doc)
    assert engine.snapshot()["frames"] == 0
    assert engine.snapshot()["pending"] == 5
    engine.idle()
    assert engine.snapshot()["pending"] == 0
    engine.drain()  # the model thread has written them
    assert engine.snapshot()["frames"] == 5
    assert engine.snapshot()["pending"] == 0
    engine.flush_sinks()
    assert sorted(committed_seq_nums(trace_path(tmp_path, uid)).tolist()) == [1, 2, 3, 4, 5]
    engine.idle()  # nothing held: a no-op
    assert engine.snapshot()["frames"] == 5
    pipe.close()


class _Recorder:
    """A synchronous sink that records the size of every write it gets."""

    def __init__(self) -> None:
        self.writes: list[int] = []

    def open_run(self, run_uid: str, attrs: Mapping[str, Any]) -> None:
        pass

    def write(self, run_uid: str, rows: TraceRows) -> None:
        self.writes.append(len(rows))

    def finalize(self, run_uid: str, status: str) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _rows(start: int, n: int) -> TraceRows:
    seq = np.arange(start, start + n, dtype=np.int64)
    return TraceRows(seq_num=seq, time=1.7e9 + seq.astype(np.float64), columns={"os": seq * 0.1})


def test_write_delay_coalesces_small_batches_and_flush_ends_the_wait() -> None:
    """Small writes arriving within ``max_delay_s`` become one inner write; a flush does not
    wait out the delay (it would time out after 10 s of a 600 s delay otherwise)."""
    inner = _Recorder()
    sink = ThreadedSink(inner, coalesce_rows=1000, max_delay_s=600.0)
    for start in range(0, 12, 3):
        sink.write("r1", _rows(start, 3))
    sink.flush(timeout=10.0)
    assert inner.writes == [12]
    sink.write("r1", _rows(12, 2))
    sink.flush(timeout=10.0)
    assert inner.writes == [12, 2]
    sink.close()


def test_write_delay_stops_at_coalesce_rows() -> None:
    """A write is made as soon as ``coalesce_rows`` rows are held, delay or not."""
    inner = _Recorder()
    sink = ThreadedSink(inner, coalesce_rows=6, max_delay_s=600.0)
    for start in range(0, 12, 3):
        sink.write("r1", _rows(start, 3))
    sink.flush(timeout=10.0)
    assert inner.writes == [6, 6]
    sink.close()


def test_limit_compute_threads_caps_torch() -> None:
    """An explicit cap is applied to torch; the default leaves one core (at least one)."""
    before = torch.get_num_threads()
    try:
        assert limit_compute_threads(1) == 1
        assert torch.get_num_threads() == 1
        auto = limit_compute_threads(None)
        assert auto == max(1, len(os.sched_getaffinity(0)) - 1)
        assert torch.get_num_threads() == auto
    finally:
        torch.set_num_threads(before)

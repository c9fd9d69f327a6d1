"""The engine end to end: real RunEngine + ophyd devices -> engine -> Zarr trace.

In process (``RE.subscribe``), through a real broker (Kafka wire format, offset commits, feedback
topic), and live vs replay (the same documents replayed from bluesky JSONL give the same trace).
Uses the packaged default SPT checkpoint.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import xarray as xr
from bluesky import RunEngine
from bluesky.callbacks.json_writer import JSONLinesWriter
from event_model import sanitize_doc
from kafka import KafkaConsumer

import spt_stream
from spt_stream.config import EngineSettings, load_settings
from spt_stream.devtools.demo.experiment import (
    DelithiationCell,
    QuickXASDetector,
    delithiation_plan,
)
from spt_stream.engine.pipeline import ModelRunner, build_pipeline
from spt_stream.sinks.deadletter import MemoryDeadLetter
from spt_stream.sinks.zarr_trace import open_trace
from spt_stream.transports.inprocess import InProcessConsumer
from spt_stream.transports.jsonl import replay_jsonl
from spt_stream.transports.kafka import KafkaDocumentSource
from spt_stream.transports.publish import KafkaDocumentPublisher

SCHEMA = json.loads(
    (Path(spt_stream.__file__).parent / "schemas" / "frame_feedback.schema.json").read_text()
)


@pytest.fixture(scope="module")
def model() -> ModelRunner:
    """The packaged default model, loaded once for the module."""
    return ModelRunner(None, device="cpu")


def _settings(root: Path, **over: Any) -> EngineSettings:
    return load_settings(
        None,
        {"zarr": {"root": root}, "dead_letter": {"path": None}, **over},
    )


def _experiment(frames: int, rate: float = 200.0) -> tuple[RunEngine, Any]:
    cell = DelithiationCell(name="cell", duration_s=frames / rate)
    det = QuickXASDetector(name="qxas", cell=cell, seed=1)
    RE = RunEngine({}, call_returns_result=True)
    return RE, delithiation_plan(det, cell, frames=frames, rate_hz=rate)


def _trace_vars(path: Path) -> xr.Dataset:
    return open_trace(path).load()


def test_in_process_run_yields_every_frame_once(tmp_path: Path, model: ModelRunner) -> None:
    """RE.subscribe -> engine: one row per event, scalars and descriptors present, finalized."""
    pipe = build_pipeline(_settings(tmp_path), model=model, dead_letter=MemoryDeadLetter())
    RE, plan = _experiment(40)
    RE.subscribe(InProcessConsumer(pipe.engine))
    uid = RE(plan).run_start_uids[0]
    pipe.close()
    ds = _trace_vars(tmp_path / f"{uid}.zarr")
    assert ds.sizes["time"] == 40
    assert ds["seq_num"].values.tolist() == list(range(1, 41))
    for name in ("os", "os_std", "cn", "e0", "ood_score", "flags", "cell_potential"):
        assert name in ds.variables, name
    assert np.isfinite(ds["os"].values).all()
    assert (ds["os_std"].values >= 0).all()
    assert ds["norm"].shape == (40, 224)
    assert ds["os_probs"].shape[0] == 40
    assert np.allclose(ds["os_probs"].sum("os_class").values, 1.0, atol=1e-3)
    # the classical stage beside the network: edge features, os_edge, run-relative os_delta
    for name in ("e_half", "wl_energy", "wl_height", "pre_centroid", "pre_area"):
        assert name in ds.variables, name
    for name in ("os_edge", "os_delta"):
        assert np.isfinite(ds[name].values).all(), name
        assert (ds[f"{name}_std"].values > 0).all(), name
    assert ds["os_delta"].values[0] == 0.0  # the first frame is its own reference
    assert ds.attrs["status"] == "success"
    assert ds.attrs["element"] == "Co"
    assert ds.attrs["model"]["sha256"] == model.info["sha256"]


def test_kafka_live_commits_and_feedback(
    tmp_path: Path, model: ModelRunner, kafka_bootstrap: str, kafka_topic: str
) -> None:
    """RE -> wire format -> broker -> engine: trace complete, offsets committed past the run,
    one schema-valid feedback message per frame."""
    feedback = f"{kafka_topic}.feedback"
    settings = _settings(
        tmp_path,
        kafka={"bootstrap_servers": kafka_bootstrap, "topics": (kafka_topic,), "group_id": "g1"},
        feedback={"topic": feedback},
    )
    source = KafkaDocumentSource(settings.kafka)
    pipe = build_pipeline(settings, model=model, commit=source.commit)
    stop = threading.Event()
    worker = threading.Thread(target=source.run, args=(pipe.engine, stop), daemon=True)
    worker.start()
    RE, plan = _experiment(30, rate=50.0)
    pub = KafkaDocumentPublisher(kafka_bootstrap, kafka_topic)
    RE.subscribe(pub)
    uid = RE(plan).run_start_uids[0]
    pub.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        runs = {r["run_uid"]: r["status"] for r in pipe.engine.snapshot()["runs"]}
        if runs.get(uid) == "success":
            break
        time.sleep(0.05)
    stop.set()
    worker.join(20)
    pipe.close()
    committed = source.committed(kafka_topic, 0)
    source.close()
    ds = _trace_vars(tmp_path / f"{uid}.zarr")
    assert ds.sizes["time"] == 30
    assert committed == pub.sent  # every document of the finished run is committed
    consumer = KafkaConsumer(
        feedback,
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
    )
    messages = [json.loads(m.value) for m in consumer]
    consumer.close()
    assert sorted(m["seq_num"] for m in messages) == list(range(1, 31))
    for m in messages:
        jsonschema.validate(m, SCHEMA)
        assert m["run_uid"] == uid
    os_trace = dict(zip(ds["seq_num"].values.tolist(), ds["os"].values.tolist(), strict=True))
    for m in messages:
        assert m["descriptors"]["os"]["value"] == pytest.approx(os_trace[m["seq_num"]], abs=1e-5)
        assert {"os_edge", "os_delta"} <= set(m["descriptors"])
        assert m["descriptors"]["os_delta"]["units"] == "formal charge (e)"
        assert np.isfinite(m["classical"]["e_half"])


def test_replay_gives_the_live_trace(tmp_path: Path, model: ModelRunner) -> None:
    """The same documents, live (in process) and replayed from bluesky JSONL: equal traces."""
    live_root, replay_root, jsonl_dir = tmp_path / "live", tmp_path / "replay", tmp_path / "jl"
    jsonl_dir.mkdir()
    pipe = build_pipeline(_settings(live_root), model=model, dead_letter=MemoryDeadLetter())
    RE, plan = _experiment(25)
    RE.subscribe(InProcessConsumer(pipe.engine))
    writer = JSONLinesWriter(str(jsonl_dir))
    RE.subscribe(lambda name, doc: writer(name, sanitize_doc(doc)))
    uid = RE(plan).run_start_uids[0]
    pipe.close()
    (jsonl,) = jsonl_dir.glob("*.jsonl")
    pipe2 = build_pipeline(_settings(replay_root), model=model, dead_letter=MemoryDeadLetter())
    stats = replay_jsonl(jsonl, pipe2.engine)
    pipe2.close()
    assert stats.rejected == 0
    live = _trace_vars(live_root / f"{uid}.zarr")
    again = _trace_vars(replay_root / f"{uid}.zarr")
    assert set(live.variables) == set(again.variables)
    descriptors = model.info["descriptors"]
    model_outputs = {
        str(n) for n in live.variables for d in descriptors if n == d or str(n).startswith(d + "_")
    } | {"ood_score", "ood"}
    # the classical stage reads the float32 model input: float32 round-off too
    model_outputs |= {str(n) for n in live.variables if str(n).startswith(("os_", "e_half"))}
    model_outputs |= {"wl_energy", "wl_height", "pre_centroid", "pre_area"}
    for name in live.variables:
        a, b = live[name].values, again[name].values
        # Micro-batch boundaries depend on timing (live batches are smaller), and BLAS sums in
        # a batch-size-dependent order: the normalization agrees to float64 round-off, the
        # network to float32 round-off (amplified in std of peaked class distributions).
        # Identity, time, event scalars, flags and integer columns are bit-identical.
        if name in model_outputs and a.dtype.kind == "f":
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-4, err_msg=name)
        elif a.dtype.kind == "f" and name not in ("time",) and not name.startswith("cell_"):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=name)
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)

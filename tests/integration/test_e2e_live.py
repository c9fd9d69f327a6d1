"""The product's main path, end to end, with every part real and live.

A bluesky ``RunEngine`` reads the demo's ophyd devices (:class:`DelithiationCell`,
:class:`QuickXASDetector`: Co K-edge spectra while a LiCoO2 cathode charges, ``md["spt"]`` in the
start document) and publishes its documents with bluesky-kafka's own ``Publisher`` to a topic on
the test broker. ``spt-stream run`` (a subprocess, as a user starts it) consumes that topic live:
it is started first and the RunEngine runs only once the engine holds its partition (its log says
``partitions assigned``), so the frames are analysed as they arrive, not read from a backlog. The
engine writes the Zarr trace, a Tiled table (real Tiled server) and two feedback topics; it stops
by itself after ``--stop-after-idle`` seconds without a message.

Two test agents listen while the experiment runs: a plain Kafka consumer of the per-frame topic
that validates every message against the committed JSON Schema and the pydantic model, and
bluesky-kafka's ``RemoteDispatcher`` on the derived-documents topic.

Asserted, for each of the two raw runs: the Zarr trace, the Tiled table, the frame topic and the
derived run each hold every frame (``seq_num`` 1..N) exactly once; the statuses are ``success``;
the derived run names the raw run and the model and its stop comes after all its events; the
numbers agree across the outputs (the same frame's event time, oxidation state and cell potential
in Zarr, Tiled, the frame messages and the derived events); every document the RunEngine emitted
was delivered; nothing was dead-lettered; and the first feedback reached the agent before the
RunEngine had finished (live, not after the fact). Per-frame latencies are printed (``-s``), not
asserted: on a shared 2-core machine they measure the machine's load as much as the engine.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import numpy as np
import pytest
import xarray as xr

from spt_stream.devtools.broker import create_topic
from spt_stream.devtools.tiled_server import TiledServer
from spt_stream.feedback.derived import derived_run_uid
from spt_stream.feedback.message import FrameFeedback
from spt_stream.feedback.publisher import PURPOSE
from spt_stream.sinks.zarr_trace import open_trace
from tests._procs import wait_until as _wait_until

SPT_BIN = Path(sys.executable).with_name("spt-stream")
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "spt_stream/schemas/frame_feedback.schema.json"
#: Frames per run and runs per test (kept small: the whole test must stay well under 60 s).
FRAMES = 40
RUNS = 2
#: Acquisition rate of the simulated quick-XAS detector (plan delay 1/RATE_HZ between frames).
RATE_HZ = 25.0
#: The engine stops after this many seconds without a message once the runs are in.
IDLE_S = 4.0
#: Bound on every single wait (engine start, group join, drain, agents).
WAIT_S = 40.0
#: A topic read to its end is one that has delivered nothing for this long (every producer of it
#: has flushed and exited before the wait starts).
QUIET_S = 1.0
#: Every output must hold each of these frames of each run exactly once.
EXPECTED_SEQ = list(range(1, FRAMES + 1))


@functools.cache
def packaged_model() -> tuple[str, str, str, str]:
    """Name, version and sha256 of the packaged checkpoint (what ``spt-stream run`` loads), and
    ``"<name> <version>"``, the model string of frame messages and derived-run uids."""
    import hashlib

    from spt_stream.model.checkpoint import default_checkpoint_path, read_metadata

    path = default_checkpoint_path()
    meta = read_metadata(path)
    name, version = str(meta["name"]), str(meta["code_version"])
    return name, version, hashlib.sha256(path.read_bytes()).hexdigest(), f"{name} {version}"


def wait_until(cond: Callable[[], bool], what: str, proc: subprocess.Popen[str], log: Path) -> None:
    _wait_until(cond, what, proc, timeout_s=WAIT_S, log=log)


class FrameAgent(threading.Thread):
    """A test agent on the per-frame feedback topic: a plain kafka-python consumer (no group,
    partition 0 from the beginning) that validates each message against the committed JSON
    Schema and :class:`FrameFeedback` as it arrives. After :meth:`finish` (the engine has
    exited, its producer flushed) it reads on until the topic has been quiet for ``QUIET_S``, so
    a duplicate published late is still seen. (Tansu 0.6.0 reports a partition's end offset as
    the base offset of its last batch + 1, short of the real end: it cannot be used here.)"""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(name="frame-agent", daemon=True)
        self.bootstrap, self.topic = bootstrap, topic
        self.schema = json.loads(SCHEMA_PATH.read_text())
        self.frames: list[FrameFeedback] = []
        self.keys: list[bytes | None] = []
        self.offsets: list[int] = []
        self.errors: list[str] = []
        self.first_arrival: float | None = None
        self._finish = threading.Event()
        self._deadline = time.monotonic() + 2 * WAIT_S

    def finish(self) -> None:
        self._finish.set()

    def run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        tp = TopicPartition(self.topic, 0)
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=10,
        )
        consumer.assign([tp])
        last = time.monotonic()
        try:
            while time.monotonic() < self._deadline:
                for batch in consumer.poll(timeout_ms=100).values():
                    last = time.monotonic()
                    for rec in batch:
                        self.offsets.append(int(rec.offset))
                        self._take(rec.key, rec.value)
                if self._finish.is_set() and time.monotonic() - last > QUIET_S:
                    return
            self.errors.append("frame agent timed out")
        except Exception as exc:  # surfaced by the test
            self.errors.append(repr(exc))
        finally:
            consumer.close()

    def _take(self, key: bytes | None, value: bytes) -> None:
        if self.first_arrival is None:
            self.first_arrival = time.monotonic()
        try:
            payload = json.loads(value)
            jsonschema.validate(payload, self.schema)
            self.frames.append(FrameFeedback.model_validate(payload))
            self.keys.append(key)
        except Exception as exc:  # a message an agent could not read
            self.errors.append(f"invalid frame message {value[:200]!r}: {exc}")


class DerivedRunAgent(threading.Thread):
    """A test agent on the derived-documents topic: bluesky-kafka's ``RemoteDispatcher`` (its
    own consumer group, from the earliest offset), polling until it has seen ``runs`` stops."""

    def __init__(self, bootstrap: str, topic: str, runs: int) -> None:
        super().__init__(name="derived-agent", daemon=True)
        import bluesky_kafka  # the ecosystem's consumer (dev extra); missing = a failure

        self.runs = runs
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.errors: list[str] = []
        self._abort = threading.Event()
        self._deadline = time.monotonic() + 2 * WAIT_S
        self.dispatcher = bluesky_kafka.RemoteDispatcher(
            topics=[topic],
            bootstrap_servers=bootstrap,
            group_id=f"e2e-agent-{uuid.uuid4().hex[:8]}",
            consumer_config={"auto.offset.reset": "earliest", "session.timeout.ms": 6000},
        )
        self.dispatcher.subscribe(lambda name, doc: self.received.append((name, doc)))

    def abort(self) -> None:
        """Stop polling now (the test failed before the derived runs could be complete)."""
        self._abort.set()

    def stops(self) -> int:
        return sum(1 for name, _ in self.received if name == "stop")

    def run(self) -> None:
        try:
            self.dispatcher.start(
                continue_polling=lambda: (
                    self.stops() < self.runs
                    and time.monotonic() < self._deadline
                    and not self._abort.is_set()
                )
            )
        except Exception as exc:  # surfaced by the test
            self.errors.append(repr(exc))
        if self.stops() < self.runs:
            self.errors.append(f"derived agent saw {self.stops()} of {self.runs} stops")


def count_records(bootstrap: str, topic: str) -> int:
    """How many records partition 0 of ``topic`` holds, read from the beginning until it has
    been quiet for ``QUIET_S`` (call once every producer has flushed)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=10
    )
    consumer.assign([TopicPartition(topic, 0)])
    n, last, deadline = 0, time.monotonic(), time.monotonic() + WAIT_S
    try:
        while time.monotonic() - last < QUIET_S and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=100).values():
                n, last = n + len(batch), time.monotonic()
    finally:
        consumer.close()
    return n


class Experiment:
    """The demo's devices and a RunEngine publishing through bluesky-kafka's ``Publisher``.

    Built before the engine starts (the detector simulates its end-member spectra, ~2 s), so
    that the engine's idle clock does not run while the test is still setting up."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from bluesky import RunEngine
        from bluesky_kafka import Publisher

        from spt_stream.devtools.demo.experiment import DelithiationCell, QuickXASDetector

        self.cell = DelithiationCell(name="cell", duration_s=FRAMES / RATE_HZ)
        self.det = QuickXASDetector(name="qxas", cell=self.cell, seed=11)
        self.publisher = Publisher(
            topic=topic,
            bootstrap_servers=bootstrap,
            key=str(uuid.uuid4()),
            # bounds flush(): a message not delivered in 10 s fails (and is counted) instead
            producer_config={"acks": 1, "linger.ms": 0, "message.timeout.ms": 10000},
            on_delivery=self._delivered,
            flush_on_stop_doc=True,
        )
        self.delivered = 0
        self.delivery_errors: list[str] = []
        self.emitted: list[tuple[str, dict[str, Any]]] = []
        self.RE = RunEngine({})
        self.RE.subscribe(lambda name, doc: self.emitted.append((name, doc)))  # type: ignore[no-untyped-call]
        self.RE.subscribe(self.publisher)  # type: ignore[no-untyped-call]

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.delivery_errors.append(str(err))

    def acquire(self) -> None:
        """Run the delithiation plan ``RUNS`` times (``FRAMES`` spectra each) and flush."""
        from spt_stream.devtools.demo.experiment import delithiation_plan

        for _ in range(RUNS):
            self.RE(delithiation_plan(self.det, self.cell, frames=FRAMES, rate_hz=RATE_HZ))
        self.publisher.flush()


@pytest.mark.kafka
def test_runengine_to_every_output_live(
    kafka_bootstrap: str, kafka_topic: str, tiled_server: TiledServer, tmp_path: Path
) -> None:
    """Two runs of the simulated operando experiment go RunEngine -> bluesky-kafka -> broker ->
    ``spt-stream run`` -> Zarr, Tiled, per-frame feedback and a derived run: each output holds
    every frame of each run exactly once, finalized ``success``, and all agree on the values."""
    url, api_key = tiled_server
    frames_topic = f"{kafka_topic}.feedback"
    docs_topic = f"{kafka_topic}.derived"
    for t in (frames_topic, docs_topic):
        create_topic(kafka_bootstrap, t, partitions=1)
    zarr_root = tmp_path / "traces"
    log_path = tmp_path / "engine.log"

    experiment = Experiment(kafka_bootstrap, kafka_topic)
    frame_agent = FrameAgent(kafka_bootstrap, frames_topic)
    derived_agent = DerivedRunAgent(kafka_bootstrap, docs_topic, RUNS)
    frame_agent.start()
    derived_agent.start()

    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                str(SPT_BIN), "run",
                "--bootstrap-servers", kafka_bootstrap,
                "--topic", kafka_topic,
                "--group-id", f"e2e-{uuid.uuid4().hex[:8]}",
                "--zarr", str(zarr_root),
                "--tiled-url", url,
                "--feedback-topic", frames_topic,
                "--feedback-documents-topic", docs_topic,
                "--no-status",
                "--stop-after-idle", str(IDLE_S),
                "--log-level", "INFO",
            ],
            cwd=tmp_path,  # the default dead-letter file lands here
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "SPT_DEVICE": "cpu", "SPT_TILED_API_KEY": api_key, "COLUMNS": "500"},
        )  # fmt: skip
    rc: int | None = None
    try:
        # live: the RunEngine starts only once the engine's consumer group holds the partition
        wait_until(
            lambda: f"partitions assigned: {kafka_topic}[0]" in log_path.read_text(),
            "the engine's consumer group assignment",
            proc,
            log_path,
        )
        t_acquire = time.monotonic()
        experiment.acquire()
        acquire_s = time.monotonic() - t_acquire
        try:
            rc = proc.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"spt-stream run did not stop after idling:\n{log_path.read_text()}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        frame_agent.finish()
        frame_agent.join(WAIT_S)
        derived_agent.join(WAIT_S if rc == 0 else 0.0)
        derived_agent.abort()  # a no-op when it has seen every stop
        derived_agent.join(WAIT_S)
    engine_out = log_path.read_text()
    assert rc == 0, engine_out
    assert not frame_agent.is_alive()
    assert not derived_agent.is_alive()
    assert frame_agent.errors == [], frame_agent.errors
    assert derived_agent.errors == [], derived_agent.errors
    # the engine rejected nothing: no dead letter
    dead_letter = tmp_path / "spt-dead-letter.jsonl"
    assert not dead_letter.exists() or dead_letter.read_text() == "", dead_letter.read_text()

    emitted = experiment.emitted
    # what the RunEngine produced, and that bluesky-kafka put all of it on the broker
    starts = [doc for name, doc in emitted if name == "start"]
    assert len(starts) == RUNS
    assert all(s["spt"]["element"] == "Co" for s in starts)
    assert [n for n, _ in emitted].count("event") == RUNS * FRAMES
    assert experiment.delivery_errors == []
    assert experiment.delivered == len(emitted)
    raw_uids = [str(s["uid"]) for s in starts]
    event_times = raw_event_times(emitted)
    # the first feedback reached the agent while the RunEngine was still acquiring: live
    assert frame_agent.first_arrival is not None
    first_feedback_s = frame_agent.first_arrival - t_acquire
    assert first_feedback_s < acquire_s, "no feedback before the acquisition ended"

    traces = {uid: assert_zarr_trace(zarr_root, uid, event_times[uid]) for uid in raw_uids}
    for uid in raw_uids:
        assert_tiled_table(url, api_key, uid, traces[uid])
    assert_frame_feedback(frame_agent, raw_uids, traces)
    assert len(derived_agent.received) == count_records(kafka_bootstrap, docs_topic)
    assert_derived_runs(derived_agent.received, raw_uids, traces)
    # measured, not asserted (machine load decides it): event time -> feedback published
    lag = {
        uid: np.array(
            [f.analysis_time - f.event_time for f in frame_agent.frames if f.run_uid == uid]
        )
        for uid in raw_uids
    }
    summary = re.search(r"frames analysed.*", engine_out)
    print(
        f"\ne2e: {RUNS * FRAMES} frames acquired in {acquire_s:.2f} s; first feedback after "
        f"{first_feedback_s:.2f} s; event->feedback per run (p50/max s): "
        + ", ".join(f"{np.median(v):.2f}/{v.max():.2f}" for v in lag.values())
        + f"; {len(derived_agent.received)} derived documents; "
        f"engine: {summary.group(0) if summary else '?'}"
    )


def raw_event_times(emitted: list[tuple[str, dict[str, Any]]]) -> dict[str, list[float]]:
    """Raw run uid -> the ``time`` of its events in seq_num order, as the RunEngine emitted."""
    run_of = {d["uid"]: d["run_start"] for n, d in emitted if n == "descriptor"}
    out: dict[str, dict[int, float]] = {}
    for name, doc in emitted:
        if name == "event":
            out.setdefault(run_of[doc["descriptor"]], {})[int(doc["seq_num"])] = float(doc["time"])
    return {uid: [times[s] for s in EXPECTED_SEQ] for uid, times in out.items()}


def unix_seconds(trace: xr.Dataset) -> np.ndarray[Any, Any]:
    """The trace's ``time`` (CF-decoded to datetime64 by xarray) as UNIX seconds."""
    ns = trace["time"].values.astype("datetime64[ns]").astype(np.int64)
    return np.asarray(ns / 1e9, dtype=np.float64)


def assert_zarr_trace(root: Path, raw_uid: str, event_times: list[float]) -> xr.Dataset:
    """The Zarr trace (the store of record) holds seq_num 1..FRAMES once each, each row with
    its raw event's time, finalized ``success``, with a finite oxidation state for every frame.
    Returns it, loaded."""
    trace = open_trace(root / f"{raw_uid}.zarr").load()
    assert trace["seq_num"].values.tolist() == EXPECTED_SEQ
    np.testing.assert_allclose(unix_seconds(trace), event_times, rtol=0, atol=1e-6)
    assert trace.attrs["status"] == "success"
    assert trace.attrs["n_rows"] == FRAMES
    assert np.isfinite(trace["os"].values).all()
    assert np.isfinite(trace["cell_potential"].values).all()
    return trace


def assert_tiled_table(url: str, api_key: str, raw_uid: str, trace: xr.Dataset) -> None:
    """Tiled holds one container named by the raw run uid, its metadata names the run and its
    final status, and its table holds every seq_num once with Zarr's values."""
    from tiled.client import from_uri

    node = from_uri(url, api_key=api_key, remember_me=False)[raw_uid]
    assert node.metadata["raw_run_uid"] == raw_uid
    assert node.metadata["status"] == "success"
    table = node["trace"].read().sort_values("seq_num")
    assert table["seq_num"].tolist() == EXPECTED_SEQ  # sorted: once each, none missing
    np.testing.assert_allclose(table["os"].to_numpy(), trace["os"].values, rtol=0, atol=1e-6)
    np.testing.assert_allclose(table["os_std"].to_numpy(), trace["os_std"].values, atol=1e-6)
    np.testing.assert_allclose(
        table["cell_potential"].to_numpy(), trace["cell_potential"].values, rtol=1e-12
    )


def assert_frame_feedback(
    agent: FrameAgent, raw_uids: list[str], traces: dict[str, xr.Dataset]
) -> None:
    """The per-frame topic holds exactly RUNS * FRAMES messages (offsets 0..n-1, all valid),
    keyed by their run, each (run_uid, seq_num) once and in order, with Zarr's values."""
    _, _, _, model = packaged_model()
    assert agent.offsets == list(range(RUNS * FRAMES))
    by_run: dict[str, list[FrameFeedback]] = {u: [] for u in raw_uids}
    for frame, key in zip(agent.frames, agent.keys, strict=True):
        assert frame.run_uid in by_run, frame.run_uid
        assert key == frame.run_uid.encode()  # one run's messages share a partition, in order
        by_run[frame.run_uid].append(frame)
    for uid, frames in by_run.items():
        trace = traces[uid]
        assert [f.seq_num for f in frames] == EXPECTED_SEQ
        assert all(f.element == "Co" and f.edge == "K" and f.model == model for f in frames)
        for f, z_os, z_std, z_pot in zip(
            frames,
            trace["os"].values,
            trace["os_std"].values,
            trace["cell_potential"].values,
            strict=True,
        ):
            assert f.event_time == pytest.approx(unix_seconds(trace)[f.seq_num - 1], abs=1e-6)
            assert f.descriptors["os"].value == pytest.approx(float(z_os), abs=1e-6)
            assert f.descriptors["os"].std == pytest.approx(float(z_std), abs=1e-6)
            assert f.scalars["cell_potential"] == pytest.approx(float(z_pot), rel=1e-12)


def assert_derived_runs(
    received: list[tuple[str, dict[str, Any]]],
    raw_uids: list[str],
    traces: dict[str, xr.Dataset],
) -> None:
    """What RemoteDispatcher received is one valid derived run per raw run, in acquisition
    order: a start naming the raw run and the model, a descriptor, event pages covering every
    raw seq_num once (with Zarr's oxidation states), then the stop, ``success``, with no
    'not confirmed in Tiled' reason (the engine waited for Tiled before publishing it)."""
    from event_model import DocumentNames, schema_validators

    name, version, sha, model = packaged_model()
    for doc_name, doc in received:
        schema_validators[DocumentNames[doc_name]].validate(doc)
    derived_starts = [d for n, d in received if n == "start"]
    assert [d["spt_raw_run_uid"] for d in derived_starts] == raw_uids
    for raw_uid, start in zip(raw_uids, derived_starts, strict=True):
        assert start["uid"] == derived_run_uid(raw_uid, model)
        assert start["purpose"] == PURPOSE
        assert start["spt_model"]["name"] == name
        assert start["spt_model"]["version"] == version
        assert start["spt_model"]["sha256"] == sha
        descriptors = {
            d["uid"] for n, d in received if n == "descriptor" and d["run_start"] == start["uid"]
        }
        run_docs = [
            (n, d)
            for n, d in received
            if d.get("uid") == start["uid"]
            or d.get("run_start") == start["uid"]
            or d.get("descriptor") in descriptors
        ]
        names = [n for n, _ in run_docs]
        assert names[:2] == ["start", "descriptor"], names
        assert names[-1] == "stop", names
        assert set(names[2:-1]) == {"event_page"}, names
        pages = [d for n, d in run_docs if n == "event_page"]
        stop = run_docs[-1][1]
        assert stop["exit_status"] == "success"
        assert stop["reason"] == ""
        assert stop["num_events"] == {"primary": FRAMES}
        raw_seq = [int(s) for p in pages for s in p["data"]["raw_seq_num"]]
        assert sorted(raw_seq) == EXPECTED_SEQ
        os_by_seq = dict(zip(raw_seq, (v for p in pages for v in p["data"]["os"]), strict=True))
        z_os = traces[raw_uid]["os"].values
        np.testing.assert_allclose([os_by_seq[s] for s in EXPECTED_SEQ], z_os, atol=1e-6)

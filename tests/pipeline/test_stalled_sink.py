"""A stalled sink: the engine slows its producer instead of buffering, and says so.

A real :class:`~spt_stream.engine.Engine` (packaged model, Zarr primary trace) is fed a run of
simulated Co K-edge frames from a producer thread, the way the Kafka source calls it
(synchronously, one document at a time), while one of its sinks cannot write:

* a :class:`~spt_stream.sinks.threaded.ThreadedSink` (bounded queue of ``QUEUE`` write batches)
  over a Zarr trace writer whose ``write`` waits on a gate;
* the :class:`~spt_stream.sinks.tiled_trace.TiledTraceWriter` (bounded queue of ``TILED_ROWS``
  rows, ``on_full="block"``) against the test Tiled server frozen with SIGSTOP.

Asserted while stalled: the producer stops advancing with at most the bounded number of frames
past the stalled sink (memory is bounded by the queue, measured by its high-water mark, never
above its capacity); the stall is visible *while it lasts* in ``Engine.snapshot()``
(``backpressure``, per-sink ``blocked``/``queue_depth``/``blocked_s``) and in the Prometheus
exposition (``spt_sink_blocked``, ``spt_sink_queue_depth``, ``spt_sink_blocked_seconds_total``
growing). Once the sink is released: every frame is written exactly once (each ``seq_num``
handed to the inner writer once; the stores hold 1..N), nothing dropped, no backpressure left.
"""

from __future__ import annotations

import io
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from spt_stream.config import EngineSettings, load_settings
from spt_stream.engine import Engine
from spt_stream.engine.pipeline import ModelRunner
from spt_stream.engine.status import render_status
from spt_stream.sinks.base import TraceSink
from spt_stream.sinks.deadletter import MemoryDeadLetter
from spt_stream.sinks.rows import TraceRows
from spt_stream.sinks.threaded import ThreadedSink, ZarrSink
from spt_stream.sinks.tiled_trace import TiledTraceWriter
from spt_stream.sinks.zarr_trace import WriteResult, ZarrTraceWriter, open_trace
from tests._spectra_docs import Docs, compose_docs

#: Frames per micro-batch (one sink write per batch).
BATCH = 8
#: Capacity of the stalled ThreadedSink's queue (write batches).
QUEUE = 3
#: Capacity of the Tiled writer's queue (rows).
TILED_ROWS = 3 * BATCH
N_FRAMES = 120
#: Batches the engine itself can hold past a stalled sink: the batch in the hung write (sink
#: thread), the one being handed to the full queue, and the model stage's waiting and
#: submitted batches (``spt_stream.engine``: one batch runs while the next waits).
IN_FLIGHT = 4
#: Bound on any single wait (a hang fails the test instead of hanging it).
WAIT_S = 30.0


@pytest.fixture(scope="module")
def model() -> ModelRunner:
    """The packaged default model, loaded once for the module."""
    return ModelRunner(None, device="cpu")


def settings(root: Path) -> EngineSettings:
    # a latency cap far away: batches are cut by size only, so each holds BATCH frames
    return load_settings(
        None,
        {
            "zarr": {"root": root},
            "dead_letter": {"path": None},
            "batch": {"max_size": BATCH, "max_latency_ms": 60_000.0},
        },
    )


def wait_for(cond: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


class GatedZarrWriter(ZarrTraceWriter):
    """A Zarr trace writer whose ``write`` waits until ``gate`` is set (a stalled disk or
    service); records every ``seq_num`` it is handed, to prove each arrives exactly once."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, fsync=False)
        self.gate = threading.Event()
        self.handed: list[int] = []

    def write(self, run_uid: str, rows: TraceRows) -> WriteResult:
        if not self.gate.wait(WAIT_S):
            raise TimeoutError("the test never opened the gate")
        self.handed.extend(rows.seq_num.tolist())
        return super().write(run_uid, rows)


class Producer:
    """Feeds documents to the engine from its own thread, as the Kafka source does."""

    def __init__(self, engine: Engine, docs: Docs) -> None:
        self.engine, self.docs = engine, docs
        self.delivered = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="producer", daemon=True)

    def _run(self) -> None:
        try:
            for name, doc in self.docs:
                self.engine(name, doc)
                self.delivered += 1
            self.engine.idle()
        except BaseException as exc:  # reported by join()
            self.error = exc

    def start(self) -> Producer:
        self.thread.start()
        return self

    def join(self) -> None:
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive(), "producer still blocked after the sink was released"
        if self.error is not None:
            raise self.error


def settled(producer: Producer, engine: Engine, hold_s: float = 0.5) -> int:
    """Wait until the producer has made no progress for ``hold_s``; return frames ingested."""
    deadline = time.monotonic() + WAIT_S
    last = (-1, -1)
    while time.monotonic() < deadline:
        now = (producer.delivered, engine.ingest.counts.frames)
        if now == last:
            return now[1]
        last = now
        time.sleep(hold_s)
    pytest.fail("the producer never stopped: nothing holds it back")


def metric(engine: Engine, name: str, sink: str) -> float:
    """One sample of the engine's Prometheus exposition (text format, parsed)."""
    text = engine.metrics.exposition().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("sink") == sink:
                return float(sample.value)
    raise AssertionError(f"{name}{{sink={sink!r}}} not exposed")


def queue_of(snapshot: Mapping[str, Any], sink: str) -> Mapping[str, Any]:
    found = [q for q in snapshot["sinks"] if q["name"] == sink]
    assert len(found) == 1, snapshot["sinks"]
    return found[0]


def assert_backpressure_visible(engine: Engine, sink: str, capacity: int) -> None:
    """The stall in progress shows in the snapshot, the status screen and the metrics, and its
    blocked seconds grow while it lasts (not only once the wait ends)."""
    snap = engine.snapshot()
    assert snap["backpressure"] is True
    console = Console(record=True, width=160, file=io.StringIO())
    console.print(render_status(snap, 0.0, None))
    screen = console.export_text()
    assert "backpressure" in screen
    assert f"{sink} " in screen
    assert "BLOCKED" in screen
    q = queue_of(snap, sink)
    assert q["blocked"] is True
    assert q["queue_capacity"] == capacity
    assert 0 < q["queue_depth"] <= capacity
    assert q["queue_high_water"] <= capacity
    assert metric(engine, "spt_sink_blocked", sink) == 1.0
    assert metric(engine, "spt_sink_queue_capacity", sink) == capacity
    assert metric(engine, "spt_sink_queue_depth", sink) == q["queue_depth"]
    first = metric(engine, "spt_sink_blocked_seconds_total", sink)
    assert first > 0.2
    time.sleep(0.3)
    assert metric(engine, "spt_sink_blocked_seconds_total", sink) >= first + 0.25
    assert queue_of(engine.snapshot(), sink)["blocked_s"] >= first + 0.25


def test_stalled_threaded_sink_holds_the_producer(tmp_path: Path, model: ModelRunner) -> None:
    """A ThreadedSink whose writes hang: at most QUEUE + IN_FLIGHT batches get past it, the
    producer waits, the wait shows as backpressure; released, all N frames land exactly once
    in both stores."""
    uid, docs = compose_docs(N_FRAMES, seed=3)
    gated = GatedZarrWriter(tmp_path / "stalled")
    stalled = ThreadedSink(gated, name="stalled", queue_size=QUEUE, coalesce_rows=BATCH)
    sinks: list[TraceSink] = [ZarrSink(tmp_path / "primary"), stalled]
    dead = MemoryDeadLetter()
    engine = Engine(settings(tmp_path), model, sinks[0], sinks[1:], dead_letter=dead)
    producer = Producer(engine, docs).start()
    try:
        ingested = settled(producer, engine)
        assert producer.thread.is_alive()
        assert producer.delivered < len(docs)
        # bounded: what got past the stalled sink is what its queue and thread can hold
        assert ingested <= (QUEUE + IN_FLIGHT) * BATCH
        stats = stalled.stats
        print(f"stalled ThreadedSink: {ingested} frames ingested, {dict(stats)}")
        assert stats["queue_depth"] == stats["queue_high_water"] == QUEUE
        assert stats["rows"] == 0
        assert_backpressure_visible(engine, "stalled", QUEUE)
    finally:
        gated.gate.set()
    producer.join()
    engine.close()
    snap = engine.snapshot()
    assert snap["backpressure"] is False
    assert queue_of(snap, "stalled")["queue_high_water"] <= QUEUE
    assert queue_of(snap, "stalled")["blocked"] is False
    assert metric(engine, "spt_sink_blocked", "stalled") == 0.0
    assert sorted(gated.handed) == list(range(1, N_FRAMES + 1))  # each seq_num handed once
    for root in ("primary", "stalled"):
        ds = open_trace(tmp_path / root / f"{uid}.zarr").load()
        assert ds["seq_num"].values.tolist() == list(range(1, N_FRAMES + 1)), root
        assert ds.attrs["status"] == "success", root
    assert dead.records == []


def test_hung_tiled_server_holds_the_producer(
    tmp_path: Path, model: ModelRunner, tiled_server: Any
) -> None:
    """Tiled frozen (SIGSTOP) mid-run behind a TILED_ROWS-row queue that blocks: the queue never
    holds more than its capacity, the producer waits, the wait is visible; resumed, every frame
    reaches the Tiled table exactly once with no gap."""
    from tiled.client import from_uri

    url, api_key = tiled_server
    uid, docs = compose_docs(N_FRAMES, seed=4)
    tiled = TiledTraceWriter(
        url,
        api_key,
        parent=f"stall-{uuid.uuid4().hex[:8]}",
        queue_size=TILED_ROWS,
        on_full="block",
        block_timeout=WAIT_S,
        retry_initial=0.2,
        retry_max=1.0,
        request_timeout=1.0,
    )
    sinks: list[TraceSink] = [ZarrSink(tmp_path / "primary"), tiled]
    engine = Engine(settings(tmp_path), model, sinks[0], sinks[1:], dead_letter=MemoryDeadLetter())
    first = 2 + 2 * BATCH  # start, descriptor, two batches written while Tiled is up
    for name, doc in docs[:first]:
        engine(name, doc)
    wait_for(lambda: tiled.stats["rows_written"] == 2 * BATCH, "the first rows in Tiled")
    tiled_server.pause()
    try:
        producer = Producer(engine, docs[first:]).start()
        ingested = settled(producer, engine)
        assert producer.thread.is_alive()
        # the rows Tiled's queue holds, plus the batches in flight in the engine
        assert ingested - 2 * BATCH <= TILED_ROWS + IN_FLIGHT * BATCH
        stats = tiled.stats
        print(f"hung Tiled: {ingested} frames ingested, {dict(stats)}")
        assert 0 < stats["queue_depth"] <= TILED_ROWS
        assert stats["queue_high_water"] <= TILED_ROWS
        assert_backpressure_visible(engine, "tiled", TILED_ROWS)
    finally:
        tiled_server.resume()
    producer.join()
    engine.close()
    stats = tiled.stats
    assert stats["rows_dropped"] == 0
    assert stats["queue_high_water"] <= TILED_ROWS
    assert engine.snapshot()["backpressure"] is False
    node = from_uri(url, api_key=api_key, remember_me=False)["/".join(tiled.parent)][uid]
    seq = np.asarray(node["trace"].read()["seq_num"]).tolist()
    assert sorted(seq) == list(range(1, N_FRAMES + 1))  # every frame once, none twice
    assert node.metadata["gaps"]["rows"] == 0
    assert node.metadata["status"] == "success"

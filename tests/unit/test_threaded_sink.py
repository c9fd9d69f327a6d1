"""ThreadedSink / ZarrSink: background writes, coalescing, error surfacing, resume."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from spt_stream.errors import SinkError, SinkTimeoutError, SptValueError
from spt_stream.sinks.rows import TraceRows
from spt_stream.sinks.threaded import QueuePolicy, ThreadedSink, ZarrSink, _Call
from spt_stream.sinks.zarr_trace import open_trace


def _rows(start: int, n: int) -> TraceRows:
    seq = np.arange(start, start + n, dtype=np.int64)
    return TraceRows(seq_num=seq, time=1.7e9 + seq.astype(np.float64), columns={"os": seq * 0.1})


class _Recorder:
    """A synchronous sink that records calls and can be told to fail."""

    def __init__(self) -> None:
        self.writes: list[int] = []
        self.fail_on: int | None = None
        self.flushed = 0

    def open_run(self, run_uid: str, attrs: Mapping[str, Any]) -> None:
        pass

    def write(self, run_uid: str, rows: TraceRows) -> None:
        if self.fail_on is not None and self.fail_on in set(rows.seq_num.tolist()):
            raise OSError("disk full")
        self.writes.append(len(rows))

    def finalize(self, run_uid: str, status: str) -> None:
        pass

    def flush(self) -> None:
        self.flushed += 1

    def close(self) -> None:
        pass


def test_zarr_sink_writes_everything_once_and_resumes(tmp_path: Path) -> None:
    """Rows written through the thread land once; a new sink reports committed seq_nums."""
    sink = ZarrSink(tmp_path, block_rows=16)
    sink.open_run("r1", {"element": "Co"})
    for start in range(0, 100, 10):
        sink.write("r1", _rows(start, 10))
    sink.write("r1", _rows(50, 10))  # re-delivery
    sink.finalize("r1", "success")
    sink.flush()
    sink.close()
    ds = open_trace(tmp_path / "r1.zarr")
    assert ds.sizes["time"] == 100
    assert np.array_equal(ds["seq_num"].values, np.arange(100))
    again = ZarrSink(tmp_path)
    assert again.committed_seq_nums("r1") == set(range(100))
    assert again.committed_seq_nums("never") == set()
    again.close()


def test_backlog_is_coalesced_into_fewer_writes() -> None:
    """Batches queued while the thread is busy are joined into larger writes."""
    inner = _Recorder()
    sink = ThreadedSink(inner, coalesce_rows=1000, queue_size=256)
    gate = threading.Event()
    sink._put(_Call(gate.wait, Future()))  # hold the thread so a backlog builds up behind it
    for start in range(0, 200, 4):
        sink.write("r", _rows(start, 4))
    gate.set()
    sink.flush()
    assert sum(inner.writes) == 200
    assert len(inner.writes) < 50
    sink.close()


def test_failure_surfaces_at_flush_then_clears() -> None:
    """An inner write failure is raised by the next flush (so offsets are not committed)."""
    inner = _Recorder()
    inner.fail_on = 7
    sink = ThreadedSink(inner, name="rec")
    sink.write("r", _rows(0, 10))
    with pytest.raises(SinkError, match="disk full"):
        sink.flush()
    inner.fail_on = None
    sink.write("r", _rows(10, 10))
    sink.flush()  # no stale error
    assert sink.stats["failures"] == 1
    sink.close()


def test_a_slow_sink_times_out_as_a_typed_timeout() -> None:
    """A flush the sink thread cannot answer in time raises SinkTimeoutError (a SinkError and a
    TimeoutError): the engine keeps the offsets for a later flush instead of failing."""
    inner = _Recorder()
    sink = ThreadedSink(inner, name="slow")
    gate = threading.Event()
    sink._put(_Call(gate.wait, Future()))  # the sink thread is busy until the gate opens
    with pytest.raises(SinkTimeoutError, match="no answer within") as caught:
        sink.flush(timeout=0.2)
    assert isinstance(caught.value, SinkError)
    assert isinstance(caught.value, TimeoutError)
    gate.set()
    sink.flush()
    sink.close()


# ---------------------------------------------------------------------------- QueuePolicy


def _held(sink: ThreadedSink) -> threading.Event:
    """Hold the sink thread on a call until the returned gate opens."""
    gate = threading.Event()
    sink._put(_Call(gate.wait, Future()))
    return gate


def test_rows_policy_counts_rows_including_the_write_in_flight() -> None:
    """unit="rows": the capacity is in rows, a batch into an empty queue always fits, calls weigh
    nothing, and rows stay counted until their write has ended (the write in flight too)."""
    inner = _Recorder()
    wrote = threading.Event()
    release = threading.Event()
    original = inner.write

    def slow_write(run_uid: str, rows: TraceRows) -> None:
        wrote.set()
        release.wait(10)
        original(run_uid, rows)

    inner.write = slow_write  # type: ignore[method-assign]
    policy = QueuePolicy(unit="rows", on_full="drop")
    sink = ThreadedSink(inner, queue_size=10, coalesce_rows=4, policy=policy)
    sink.write("r", _rows(0, 25))  # larger than the capacity: fits an empty queue
    assert wrote.wait(5)
    assert sink.stats["queue_depth"] == 25  # in flight, still counted
    dropped: list[int] = []
    sink._on_drop = lambda run, rows, reason: dropped.append(len(rows))
    sink.write("r", _rows(25, 1))
    assert dropped == [1]
    sink.open_run("r2", {})  # a call: weight 0, never refused
    release.set()
    sink.flush(timeout=5)
    assert sink.stats["queue_depth"] == 0
    assert sink.stats["queue_high_water"] == 25
    assert inner.writes == [25]
    sink.close()


def test_drop_policy_hands_dropped_rows_to_the_callback() -> None:
    """on_full="drop": a write that does not fit is dropped at once, given to on_drop with the
    reason, and never reaches the inner sink; the ones that fit all land."""
    inner = _Recorder()
    dropped: list[tuple[str, list[int], str]] = []
    sink = ThreadedSink(
        inner,
        queue_size=8,
        policy=QueuePolicy(unit="rows", on_full="drop"),
        on_drop=lambda run, rows, reason: dropped.append((run, rows.seq_num.tolist(), reason)),
    )
    gate = _held(sink)
    for start in range(0, 20, 4):
        sink.write("r", _rows(start, 4))
    assert sink.stats["blocked"] == 0
    gate.set()
    sink.flush(timeout=5)
    assert sum(inner.writes) == 8
    assert dropped == [("r", list(range(s, s + 4)), "queue full") for s in (8, 12, 16)]
    sink.close()


def test_block_policy_waits_then_drops_and_shows_the_wait() -> None:
    """on_full="block" with block_timeout: a write waits that long for room (visible in stats
    as blocked while it waits), then is dropped; with room made in time it is queued."""
    inner = _Recorder()
    dropped: list[int] = []
    sink = ThreadedSink(
        inner,
        queue_size=4,
        policy=QueuePolicy(unit="rows", on_full="block", block_timeout=0.3),
        on_drop=lambda run, rows, reason: dropped.append(len(rows)),
    )
    gate = _held(sink)
    sink.write("r", _rows(0, 4))
    done = threading.Event()

    def write_late() -> None:
        sink.write("r", _rows(4, 4))
        done.set()

    threading.Thread(target=write_late).start()
    time.sleep(0.1)
    stats = sink.stats
    assert stats["blocked"] == 1
    assert stats["blocked_s"] > 0.05
    assert done.wait(5)
    assert dropped == [4]
    assert sink.stats["blocked"] == 0
    assert sink.stats["blocked_s"] >= 0.3
    # room made while a write waits: it is queued, not dropped
    late = threading.Thread(target=sink.write, args=("r", _rows(8, 4)))
    late.start()
    time.sleep(0.05)
    gate.set()
    late.join(5)
    sink.flush(timeout=5)
    assert dropped == [4]
    assert sum(inner.writes) == 8
    sink.close()


def test_max_rows_per_write_caps_coalescing() -> None:
    """A backlog is joined into writes that never exceed max_rows_per_write (a batch that would
    take one past it starts the next write), and batches of another run are not joined."""
    inner = _Recorder()
    policy = QueuePolicy(unit="rows", max_rows_per_write=10)
    sink = ThreadedSink(inner, queue_size=1000, coalesce_rows=10, policy=policy)
    gate = _held(sink)
    for start in range(0, 36, 4):
        sink.write("r", _rows(start, 4))
    sink.write("other", _rows(100, 4))
    gate.set()
    sink.flush(timeout=5)
    assert inner.writes == [8, 8, 8, 8, 4, 4]
    assert sink.pending == 0
    sink.close()


def test_policy_rejects_bad_settings() -> None:
    with pytest.raises(SptValueError):
        QueuePolicy(on_full="spill")  # type: ignore[arg-type]
    with pytest.raises(SptValueError):
        QueuePolicy(block_timeout=-1)
    with pytest.raises(SptValueError):
        QueuePolicy(max_rows_per_write=0)


def test_repeated_flushes_of_a_stuck_sink_queue_one_flush() -> None:
    """Flushes that time out on a stuck sink, with nothing queued since, wait on the same queued
    flush instead of queueing one each."""
    inner = _Recorder()
    sink = ThreadedSink(inner, name="stuck")
    gate = _held(sink)
    for _ in range(5):
        with pytest.raises(SinkTimeoutError):
            sink.flush(timeout=0.01)
    assert len(sink._queue) == 1
    sink.write("r", _rows(0, 2))
    with pytest.raises(SinkTimeoutError):
        sink.flush(timeout=0.01)
    assert len(sink._queue) == 3  # the write came after the queued flush: a new one behind it
    gate.set()
    sink.flush(timeout=5)
    assert inner.flushed == 2
    sink.close()

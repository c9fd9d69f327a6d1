"""ThreadedSink / ZarrSink: background writes, coalescing, error surfacing, resume."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from spt_stream.errors import SinkError, SinkTimeoutError
from spt_stream.sinks.rows import TraceRows
from spt_stream.sinks.threaded import ThreadedSink, ZarrSink, _Call
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

"""TiledTraceWriter against a real Tiled server (tests/plugins/tiled.py)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import tiled.server  # noqa: F401  (the tiled-server extra; missing = a failure, not a skip)

from spt_stream.errors import SinkError
from spt_stream.sinks.arrow_rows import TableLayout, merge_ranges, seq_ranges
from spt_stream.sinks.base import TraceSink
from spt_stream.sinks.rows import Column2D, TraceRows
from spt_stream.sinks.tiled_trace import TiledTraceWriter

CLASSES = np.array([2.0, 3.0, 4.0])
GRID = np.linspace(-20.0, 60.0, 100)


def make_rows(first: int, n: int) -> TraceRows:
    """n frames with seq_num first..first+n-1: descriptors, probs (3 classes), a spectrum."""
    seq = np.arange(first, first + n, dtype=np.int64)
    probs = np.tile([0.1, 0.7, 0.2], (n, 1))
    return TraceRows(
        seq_num=seq,
        time=1.7e9 + seq.astype(np.float64),
        columns={
            "os": 3.0 + 0.01 * seq,
            "os_std": np.full(n, 0.1),
            "ood_score": np.ones(n),
            "flags": np.zeros(n, dtype=np.int64),
            "potential": np.linspace(3.0, 4.0, n),
        },
        arrays={
            "os_probs": Column2D(probs, "os_class", CLASSES),
            "norm": Column2D(np.ones((n, GRID.size)), "energy_rel", GRID),
        },
    )


def read_seq(url: str, api_key: str, run_uid: str) -> np.ndarray[Any, Any]:
    """The seq_num column of a run's table as stored on the server."""
    from tiled.client import from_uri

    client = from_uri(url, api_key=api_key, remember_me=False)
    return np.asarray(client[run_uid]["trace"].read()["seq_num"])


def test_layout_flattens_narrow_and_skips_wide_columns() -> None:
    """2-D columns up to max_flat_width become <name>_<j> columns; wider ones are skipped."""
    layout = TableLayout.from_rows(make_rows(0, 4), max_flat_width=32)
    assert layout.schema.names[:2] == ["seq_num", "time"]
    assert {"os_probs_0", "os_probs_1", "os_probs_2"} <= set(layout.schema.names)
    assert layout.skipped == ["norm"]
    assert layout.flattened["os_probs"]["coord"] == [2.0, 3.0, 4.0]
    later = TraceRows(seq_num=np.array([9]), time=np.array([1.0]), columns={"new": np.ones(1)})
    table, ignored = layout.to_table(later)
    assert ignored == ["new"]
    assert table.column("os").null_count == 1
    assert table.schema.field("flags").type == pa.int64()


def test_seq_ranges_and_merge() -> None:
    """Gap ranges are compressed, merged and capped without hiding any gap."""
    assert seq_ranges([5, 1, 2, 3, 7]) == [[1, 3], [5, 5], [7, 7]]
    assert merge_ranges([[1, 3]], [[4, 6], [9, 9]]) == [[1, 6], [9, 9]]
    capped = merge_ranges([], [[i * 10, i * 10] for i in range(10)], limit=3)
    assert capped == [[0, 0], [10, 10], [20, 90]]


def test_rows_once_with_metadata_and_status(tiled_server: Any) -> None:
    """Every row lands once with seq_num; metadata names the run and the final status."""
    url, api_key = tiled_server
    run_uid = str(uuid.uuid4())
    with TiledTraceWriter(url, api_key) as writer:
        assert isinstance(writer, TraceSink)
        writer.open_run(run_uid, {"element": "Co", "edge": "K", "model": {"name": "spt-test"}})
        for first in (0, 5, 12):
            writer.write(run_uid, make_rows(first, 5 if first < 12 else 3))
        writer.flush(timeout=30)
        assert writer.finalize_and_wait(run_uid, "success", timeout=30)
        stats = writer.stats
    assert stats["rows_written"] == 13
    assert stats["rows_dropped"] == 0
    from tiled.client import from_uri

    node = from_uri(url, api_key=api_key, remember_me=False)[run_uid]
    frame = node["trace"].read()
    assert sorted(frame["seq_num"]) == [*range(10), 12, 13, 14]
    assert "os_probs_1" in frame.columns
    assert "norm_0" not in frame.columns
    np.testing.assert_allclose(frame["os_probs_1"], 0.7)
    md = node.metadata
    assert md["raw_run_uid"] == run_uid
    assert md["element"] == "Co"
    assert md["model"] == {"name": "spt-test"}
    assert md["status"] == "success"
    assert md["rows_written"] == 13
    assert md["gaps"]["rows"] == 0
    assert md["trace"]["skipped"] == ["norm"]


def test_redelivered_batches_are_not_duplicated(tiled_server: Any) -> None:
    """A batch delivered twice, and again by a new writer resuming the run, adds no rows."""
    url, api_key = tiled_server
    run_uid = str(uuid.uuid4())
    with TiledTraceWriter(url, api_key) as writer:
        writer.open_run(run_uid, {})
        writer.write(run_uid, make_rows(0, 8))
        writer.write(run_uid, make_rows(0, 8))  # re-delivered
        writer.write(run_uid, make_rows(6, 6))  # overlaps by 2
        writer.flush(timeout=30)
        assert writer.stats["rows_duplicate"] == 10
    with TiledTraceWriter(url, api_key) as resumed:  # e.g. engine restart from older offsets
        resumed.open_run(run_uid, {})
        resumed.write(run_uid, make_rows(4, 14))
        assert resumed.finalize_and_wait(run_uid, "success", timeout=30)
    seq = read_seq(url, api_key, run_uid)
    assert sorted(seq) == list(range(18))


def test_unreachable_tiled_never_blocks_the_caller() -> None:
    """With nothing listening, writes return within the block timeout and overflow is a gap."""
    from spt_stream.devtools.broker import find_free_port

    writer = TiledTraceWriter(
        f"http://127.0.0.1:{find_free_port()}",
        "nokey",
        queue_size=10,
        on_full="block",
        block_timeout=0.05,
    )
    try:
        writer.open_run("run-x", {})
        t0 = time.monotonic()
        for first in range(0, 40, 5):
            writer.write("run-x", make_rows(first, 5))
        elapsed = time.monotonic() - t0
        stats = writer.stats
        assert stats["rows_accepted"] + stats["rows_dropped"] == 40
        assert stats["rows_dropped"] >= 25  # queue holds at most 10 rows (+1 batch in flight)
        assert elapsed < 8 * 0.05 + 2.0  # bounded by the block timeout, not by Tiled
        with pytest.raises(SinkError, match="timed out"):
            writer.flush(timeout=0.2)
    finally:
        writer.close(timeout=0.5)


def test_hung_server_gap_resync_and_catch_up(tiled_server: Any) -> None:
    """Tiled hangs mid-run (SIGSTOP): the caller is not held up, overflow is recorded as a gap
    in the run's metadata, an append that timed out after reaching the server is not
    duplicated (seq_num read back before retrying), and queued rows land once it is back."""
    url, api_key = tiled_server
    run_uid = str(uuid.uuid4())
    writer = TiledTraceWriter(
        url,
        api_key,
        queue_size=20,
        on_full="drop",
        retry_initial=0.2,
        retry_max=1.0,
        request_timeout=1.0,
    )
    try:
        writer.open_run(run_uid, {"element": "Ni"})
        writer.write(run_uid, make_rows(0, 10))
        writer.flush(timeout=30)
        tiled_server.pause()
        for first in range(10, 60, 10):  # 50 rows into a 20-row queue: some must drop
            writer.write(run_uid, make_rows(first, 10))
            time.sleep(0.3)
        dropped = writer.stats["rows_dropped"]
        assert dropped >= 20
        tiled_server.resume()
        writer.flush(timeout=60)
        assert writer.finalize_and_wait(run_uid, "success", timeout=30)
        stats = writer.stats
    finally:
        tiled_server.resume()
        writer.close(timeout=5)
    assert stats["failures"] >= 1
    assert stats["resyncs"] >= 1
    seq = sorted(read_seq(url, api_key, run_uid))
    from tiled.client import from_uri

    md = from_uri(url, api_key=api_key, remember_me=False)[run_uid].metadata
    assert len(seq) == len(set(seq)) == 60 - dropped
    assert md["gaps"]["rows"] == dropped
    gap_seq = {s for lo, hi in md["gaps"]["ranges"] for s in range(lo, hi + 1)}
    assert gap_seq.isdisjoint(seq)
    assert gap_seq | set(seq) == set(range(60))
    assert md["gaps"]["reasons"] == {"queue full": dropped}
    assert md["gaps"]["failures"] >= 1
    assert md["status"] == "success"

"""The Zarr trace writer: layout, idempotency, live reading, finalization and crash safety.

Everything here runs against real Zarr stores on disk; the crash test SIGKILLs real writer
processes at seeded random moments and checks the store a restarted writer leaves behind.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from spt_stream.errors import SinkError, SptValueError
from spt_stream.sinks.rows import Column2D, TraceRows
from spt_stream.sinks.zarr_trace import (
    INT_FILL,
    TIME_UNITS,
    ZarrTraceWriter,
    committed_seq_nums,
    open_trace,
    trace_path,
)
from tests._trace_rows import (
    CLASSES,
    GRID,
    T0,
    expected_norm,
    expected_os,
    expected_potential,
    make_rows,
    write_sequence,
)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ---------------------------------------------------------------------------- basic layout


def test_write_layout_and_read_back(tmp_path: Path) -> None:
    """Rows written in batches come back through open_trace with the documented layout
    (docs/CONTRACTS.md)."""
    with ZarrTraceWriter(tmp_path, block_rows=8) as w:
        assert w.open_run("r1", {"element": "Co", "edge": "K", "model": {"name": "spt"}}) == 0
        r1 = w.write("r1", make_rows(range(0, 5)))
        r2 = w.write("r1", make_rows(range(5, 19)))
        assert (r1.written, r2.written, r2.n_rows) == (5, 14, 19)
    ds = open_trace(trace_path(tmp_path, "r1"))
    assert ds.sizes["time"] == 19
    np.testing.assert_array_equal(ds.seq_num.values, np.arange(19))
    np.testing.assert_allclose(ds.os.values, expected_os(np.arange(19)))
    assert ds.norm.dims == ("time", "energy_rel")
    assert ds.os_probs.dims == ("time", "os_class")
    np.testing.assert_allclose(ds.energy_rel.values, GRID)
    np.testing.assert_array_equal(ds.os_class.values, CLASSES)
    assert ds.energy_rel.attrs["units"] == "eV"
    assert ds.os.attrs["long_name"] == "oxidation state"
    assert ds.norm.dtype == np.float32
    # time is float seconds on disk with CF units; xarray decodes it to datetime64
    assert ds.time.dtype.kind == "M"
    t0 = np.datetime64(int(T0 * 1e9), "ns")
    assert ds.time.values[0] == t0
    raw = zarr.open_group(str(trace_path(tmp_path, "r1")), mode="r")
    time_arr = raw["time"]
    assert isinstance(time_arr, zarr.Array)
    assert time_arr.dtype == np.float64
    assert time_arr.attrs["units"] == TIME_UNITS
    assert ds.attrs["element"] == "Co"
    assert ds.attrs["model"] == {"name": "spt"}
    assert ds.attrs["status"] == "open"
    assert ds.attrs["n_rows"] == 19
    assert ds.attrs["run_uid"] == "r1"
    assert "spt_stream_version" in ds.attrs
    # while live the raw arrays are over-allocated to whole blocks, padded with fill values
    live = xr.open_zarr(trace_path(tmp_path, "r1"), consolidated=False)
    assert live.sizes["time"] == 24
    assert (live.seq_num.values[19:] == -1).all()


def test_idempotent_on_seq_num(tmp_path: Path) -> None:
    """Re-delivered rows, overlapping batches and in-batch duplicates are written once."""
    w = ZarrTraceWriter(tmp_path, block_rows=4)
    w.open_run("r2")
    assert w.write("r2", make_rows(range(0, 6))).written == 6
    again = w.write("r2", make_rows(range(0, 6)))
    assert (again.written, again.duplicates) == (0, 6)
    overlap = w.write("r2", make_rows(range(4, 10)))
    assert (overlap.written, overlap.duplicates) == (4, 2)
    dup_inside = w.write("r2", make_rows([10, 11, 10, 12, 11]))
    assert (dup_inside.written, dup_inside.duplicates) == (3, 2)
    assert w.stats("r2").duplicates == 10
    w.close()
    ds = open_trace(trace_path(tmp_path, "r2"))
    np.testing.assert_array_equal(ds.seq_num.values, np.arange(13))
    np.testing.assert_allclose(ds.os.values, expected_os(np.arange(13)))


def test_new_column_mid_run_and_missing_values(tmp_path: Path) -> None:
    """A column first seen mid-run is NaN before; columns absent from a batch are filled."""
    w = ZarrTraceWriter(tmp_path, block_rows=4)
    w.open_run("r3")
    w.write("r3", make_rows(range(0, 6)))
    w.write("r3", make_rows(range(6, 9), new_col_from=6))  # "potential" appears
    w.write(
        "r3",
        TraceRows(  # a batch that lacks most columns, including the int one
            seq_num=np.array([9, 10]),
            time=np.array([T0, T0 + 1]),
            columns={"os": np.array([1.0, 2.0])},
        ),
    )
    w.close()
    ds = open_trace(trace_path(tmp_path, "r3"))
    pot = ds.potential.values
    assert np.isnan(pot[:6]).all()
    assert np.isnan(pot[9:]).all()
    np.testing.assert_allclose(pot[6:9], expected_potential(np.arange(6, 9)))
    # int column: stored with INT_FILL declared as _FillValue, so xarray shows NaN
    flags = ds.flags.values
    np.testing.assert_array_equal(flags[:9], np.arange(9) % 4)
    assert np.isnan(flags[9:]).all()
    raw = zarr.open_group(str(trace_path(tmp_path, "r3")), mode="r")
    flags_arr = raw["flags"]
    assert isinstance(flags_arr, zarr.Array)
    assert flags_arr[9] == INT_FILL
    assert ds.ood.dtype == bool
    assert not ds.ood.values[9:].any()
    assert np.isnan(ds.norm.values[9:]).all()
    assert np.isnan(ds.os_std.values[9:]).all()


def test_rows_from_records_fill_nan() -> None:
    """from_records turns scalars missing from some events into NaN and keeps full ones typed."""
    rows = TraceRows.from_records(
        [1, 2, 3],
        [T0, T0 + 1, T0 + 2],
        [{"potential": 3.1, "count": 1}, {"count": 2}, {"potential": 3.3, "count": 3}],
    )
    np.testing.assert_array_equal(rows.columns["count"], [1, 2, 3])
    assert rows.columns["count"].dtype == np.int64
    pot = rows.columns["potential"]
    assert pot[0] == 3.1
    assert np.isnan(pot[1])
    assert pot[2] == 3.3


def test_rows_unseen_keeps_first_new_occurrences() -> None:
    """What every sink writes of a batch: each seq_num's first row, unless already written."""
    rows = make_rows([5, 6, 5, 7, 8, 7])
    assert rows.unseen({6, 100}).tolist() == [True, False, False, True, True, False]
    assert rows.unseen(set()).tolist() == [True, True, False, True, True, False]


def test_rows_concat_and_take() -> None:
    """concat joins parts (NaN where a part lacks a column); take selects rows."""
    a = make_rows([0, 1])
    b = make_rows([2], new_col_from=0)
    both = TraceRows.concat([a, b])
    assert len(both) == 3
    assert np.isnan(both.columns["potential"][:2]).all()
    assert both.arrays["norm"].values.shape == (3, 224)
    sub = both.take([2, 0])
    np.testing.assert_array_equal(sub.seq_num, [2, 0])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"seq_num": np.array([1.5]), "time": np.array([T0])},
        {"seq_num": np.array([1, 2]), "time": np.array([T0])},
        {"seq_num": np.array([1]), "time": np.array([np.nan])},
        {"seq_num": np.array([1]), "time": np.array([T0]), "columns": {"time": [1.0]}},
        {"seq_num": np.array([1]), "time": np.array([T0]), "columns": {"a/b": [1.0]}},
        {"seq_num": np.array([1]), "time": np.array([T0]), "columns": {"x": [1.0, 2.0]}},
        {"seq_num": np.array([1]), "time": np.array([T0]), "columns": {"x": ["text"]}},
        {
            "seq_num": np.array([1]),
            "time": np.array([T0]),
            "columns": {"os_class": [1.0]},
            "arrays": {"p": Column2D(np.ones((1, 7)), "os_class", CLASSES)},
        },
    ],
)
def test_rows_validation(kwargs: dict[str, object]) -> None:
    """Malformed batches are refused at construction with SptValueError."""
    with pytest.raises(SptValueError):
        TraceRows(**kwargs)  # type: ignore[arg-type]


def test_column_contradictions_raise_sink_error(tmp_path: Path) -> None:
    """A 2-D column changing width or coordinate, or a float into an int column, is refused."""
    w = ZarrTraceWriter(tmp_path, block_rows=4)
    w.open_run("r4")
    w.write("r4", make_rows([0, 1]))
    wider = TraceRows(
        seq_num=np.array([5]),
        time=np.array([T0]),
        arrays={"os_probs": Column2D(np.ones((1, 8)), "os_class", np.arange(8))},
    )
    with pytest.raises(SinkError, match="os_class") as info:
        w.write("r4", wider)
    assert info.value.run_uid == "r4"
    shifted = TraceRows(
        seq_num=np.array([5]),
        time=np.array([T0]),
        arrays={"norm": Column2D(np.ones((1, 224)), "energy_rel", GRID + 1.0)},
    )
    with pytest.raises(SinkError, match="energy_rel"):
        w.write("r4", shifted)
    floaty = TraceRows(
        seq_num=np.array([5]), time=np.array([T0]), columns={"flags": np.array([0.5])}
    )
    with pytest.raises(SinkError, match="flags"):
        w.write("r4", floaty)
    # the store is still good and accepts the next valid batch
    assert w.write("r4", make_rows([2, 3])).n_rows == 4
    w.close()
    np.testing.assert_array_equal(committed_seq_nums(trace_path(tmp_path, "r4")), [0, 1, 2, 3])


def test_bad_run_uid_attrs_and_unopened_run(tmp_path: Path) -> None:
    """Unsafe run uids, reserved or non-JSON attributes and unknown runs raise SinkError."""
    w = ZarrTraceWriter(tmp_path)
    with pytest.raises(SinkError):
        w.open_run("../escape")
    with pytest.raises(SinkError, match="n_rows"):
        w.open_run("ok", {"n_rows": 5})
    with pytest.raises(SinkError, match="JSON"):
        w.open_run("ok", {"config": {"x": np.float32(1.0)}})
    with pytest.raises(SinkError, match="never opened"):
        w.write("nope", make_rows([0]))
    with pytest.raises(SinkError, match="status"):
        w.finalize("ok", "done")


def test_finalize_trims_and_consolidates(tmp_path: Path) -> None:
    """finalize trims to n_rows, records status, consolidates; plain open_zarr shows the rows."""
    w = ZarrTraceWriter(tmp_path, block_rows=16)
    w.open_run("r5", {"element": "Fe"})
    w.write("r5", make_rows(range(0, 21), new_col_from=0))
    assert w.finalize("r5", "success") == 21
    assert "r5" not in w.open_runs
    path = trace_path(tmp_path, "r5")
    grp = zarr.open_group(str(path), mode="r")
    assert grp.metadata.consolidated_metadata is not None
    ds = xr.open_zarr(path)  # consolidated, no slicing needed once finalized
    assert ds.sizes["time"] == 21
    assert ds.attrs["status"] == "success"
    assert ds.attrs["n_rows"] == 21
    assert ds.attrs["finalized"] is not None
    np.testing.assert_array_equal(ds.seq_num.values, np.arange(21))
    # a late re-delivery reopens the store, adds nothing, and the run can be finalized again
    w2 = ZarrTraceWriter(tmp_path, block_rows=16)
    assert w2.write("r5", make_rows(range(0, 21))).written == 0
    w2.finalize("r5", "success")
    assert xr.open_zarr(path).sizes["time"] == 21
    # new rows after finalization reopen the run: status back to open, stale consolidation gone
    w3 = ZarrTraceWriter(tmp_path, block_rows=16)
    assert w3.write("r5", make_rows([21, 22])).written == 2
    grp = zarr.open_group(str(path), mode="r", use_consolidated=False)
    assert grp.attrs["status"] == "open"
    assert zarr.open_group(str(path), mode="r").metadata.consolidated_metadata is None
    assert w3.finalize("r5", "incomplete") == 23
    assert xr.open_zarr(path).attrs["status"] == "incomplete"


def test_reopen_recovers_rows_and_partial_chunk(tmp_path: Path) -> None:
    """A new writer (restart) continues a store mid-chunk without losing or repeating rows."""
    w = ZarrTraceWriter(tmp_path, block_rows=8)
    w.open_run("r6", {"element": "Ni"})
    w.write("r6", make_rows(range(0, 11)))  # 11 rows: chunk 1 holds 3 committed rows
    w.close()
    w2 = ZarrTraceWriter(tmp_path, block_rows=5)  # the store keeps its own block size
    assert w2.open_run("r6") == 11
    assert w2.write("r6", make_rows(range(5, 20))).written == 9
    assert w2.stats("r6").capacity == 24
    w2.close()
    ds = open_trace(trace_path(tmp_path, "r6"))
    np.testing.assert_array_equal(ds.seq_num.values, np.arange(20))
    np.testing.assert_allclose(ds.os.values, expected_os(np.arange(20)))
    assert ds.attrs["element"] == "Ni"


def test_store_killed_mid_growth_is_readable_and_repaired(tmp_path: Path) -> None:
    """Arrays of unequal lengths (a kill between two resizes) still read as the committed rows,
    and the next writer evens them out so plain xarray opens the store again."""
    w = ZarrTraceWriter(tmp_path, block_rows=8)
    w.open_run("grow")
    w.write("grow", make_rows(range(0, 6)))
    w.close()
    path = trace_path(tmp_path, "grow")
    grp = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    os_arr = grp["os"]
    assert isinstance(os_arr, zarr.Array)
    os_arr.resize((16,))  # the growth reached this array only
    with pytest.raises(ValueError, match="conflicting sizes"):
        xr.open_zarr(path, consolidated=False)
    ds = open_trace(path)
    np.testing.assert_array_equal(ds.seq_num.values, np.arange(6))
    np.testing.assert_allclose(ds.os.values, expected_os(np.arange(6)))
    assert ds.time.dtype.kind == "M"
    assert ds.attrs["n_rows"] == 6
    w2 = ZarrTraceWriter(tmp_path, block_rows=8)
    assert w2.open_run("grow") == 6
    w2.write("grow", make_rows(range(6, 12)))
    w2.close()
    live = xr.open_zarr(path, consolidated=False)
    assert live.sizes["time"] == 16
    np.testing.assert_array_equal(open_trace(path).seq_num.values, np.arange(12))


def test_chunk_files_are_the_bytes_zarr_itself_writes(tmp_path: Path) -> None:
    """The writer encodes whole chunks itself (not through Zarr's indexing): every chunk file it
    wrote is byte for byte what Zarr writes for the same values into an array of the same
    metadata, for float, int, bool and 2-D arrays."""
    w = ZarrTraceWriter(tmp_path / "a", block_rows=8)
    w.open_run("bytes")
    for lo, hi in ((0, 3), (3, 13), (13, 21)):
        w.write("bytes", make_rows(range(lo, hi)))
    w.close()
    src = zarr.open_group(str(trace_path(tmp_path / "a", "bytes")), mode="r")
    ref = zarr.open_group(str(tmp_path / "ref.zarr"), mode="w", zarr_format=3)
    checked = 0
    for name, arr in src.arrays():
        if tuple(getattr(arr.metadata, "dimension_names", None) or ())[:1] != ("time",):
            continue
        twin = ref.create_array(
            name, shape=arr.shape, chunks=arr.chunks, dtype=arr.dtype,
            fill_value=arr.fill_value,
        )  # fmt: skip
        assert getattr(twin.metadata, "codecs", None) == getattr(arr.metadata, "codecs", 0)
        twin[:] = arr[:]
        for chunk in sorted((trace_path(tmp_path / "a", "bytes") / name / "c").rglob("*")):
            if chunk.is_file():
                rel = chunk.relative_to(trace_path(tmp_path / "a", "bytes"))
                assert chunk.read_bytes() == (tmp_path / "ref.zarr" / rel).read_bytes(), rel
                checked += 1
    assert checked >= 3 * 7  # time, seq_num, os, os_std, flags, ood, os_probs, norm: 3 chunks


def test_array_of_another_layout_is_written_through_zarr(tmp_path: Path) -> None:
    """An array whose codecs the writer does not encode itself (here: uncompressed, as another
    tool might have created it) is appended through Zarr's own indexing, rows intact."""
    from spt_stream.sinks.zarr_adapter import array_chunk_encoder

    w = ZarrTraceWriter(tmp_path, block_rows=8)
    w.open_run("other")
    w.write("other", make_rows(range(0, 5)))
    w.close()
    grp = zarr.open_group(str(trace_path(tmp_path, "other")), mode="r+", use_consolidated=False)
    old = grp["os"]
    assert isinstance(old, zarr.Array)
    values, shape = old[:], old.shape
    del grp["os"]
    plain = grp.create_array(
        "os", shape=shape, chunks=(8,), dtype="float64", fill_value=np.nan,
        compressors=None, dimension_names=["time"],
    )  # fmt: skip
    plain[:] = values
    assert array_chunk_encoder(plain) is None
    w2 = ZarrTraceWriter(tmp_path, block_rows=8)
    w2.write("other", make_rows(range(5, 19)))
    w2.close()
    ds = open_trace(trace_path(tmp_path, "other"))
    np.testing.assert_array_equal(ds.seq_num.values, np.arange(19))
    np.testing.assert_allclose(ds.os.values, expected_os(np.arange(19)))
    np.testing.assert_allclose(ds.norm.values, expected_norm(np.arange(19)))


def test_capacity_grows_by_half_not_by_block(tmp_path: Path) -> None:
    """Each growth rewrites every array's metadata, so capacity grows by half its size (whole
    blocks, at most 64 blocks at a time), not one block at a time; readers still see exactly
    the committed rows, and finalize trims to them."""
    w = ZarrTraceWriter(tmp_path, block_rows=4)
    w.open_run("grow2")
    caps = []
    for i in range(300):
        w.write("grow2", make_rows([i]))
        caps.append(w.stats("grow2").capacity)
    assert all(c % 4 == 0 for c in caps)
    assert all(c >= n for c, n in zip(caps, range(1, 301), strict=True))
    assert len(set(caps)) <= 12  # one block at a time would be 75 growths
    assert caps[-1] <= 300 + 64 * 4
    ds = open_trace(trace_path(tmp_path, "grow2"))
    np.testing.assert_array_equal(ds.seq_num.values, np.arange(300))
    np.testing.assert_allclose(ds.os.values, expected_os(np.arange(300)))
    assert w.finalize("grow2", "success") == 300
    assert xr.open_zarr(trace_path(tmp_path, "grow2")).sizes["time"] == 300


# ---------------------------------------------------------------------------- live reading

READER = """
import json, sys, time
import numpy as np
from spt_stream.sinks.zarr_trace import open_trace
from tests._trace_rows import expected_os

path, out = sys.argv[1], sys.argv[2]
seen, problems = [], []
deadline = time.monotonic() + 40
while time.monotonic() < deadline:
    ds = open_trace(path)
    n = ds.sizes["time"]
    seq = ds.seq_num.values
    if not np.array_equal(seq, np.arange(n)):
        problems.append(f"seq_num not 0..{n - 1}")
    if not np.allclose(ds.os.values, expected_os(seq)):
        problems.append("os values wrong")
    if ds.norm.shape != (n, 224) or np.isnan(ds.norm.values).any():
        problems.append("norm rows missing")
    seen.append(int(n))
    if len(seen) == 1:
        print("ready", flush=True)
    if ds.attrs["status"] != "open":
        break
    time.sleep(0.005)
json.dump({"seen": seen, "problems": problems, "status": ds.attrs["status"]}, open(out, "w"))
"""


def test_live_read_from_another_process(tmp_path: Path) -> None:
    """A reader process polling open_trace while the writer appends always sees consistent
    committed rows, sees them grow, and sees the final state."""
    w = ZarrTraceWriter(tmp_path, block_rows=16)
    w.open_run("live")
    w.write("live", make_rows([0]))
    path = trace_path(tmp_path, "live")
    (tmp_path / "reader.py").write_text(READER)
    out = tmp_path / "seen.json"
    reader = subprocess.Popen(
        [sys.executable, str(tmp_path / "reader.py"), str(path), str(out)],
        env=_child_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout is not None
        assert reader.stdout.readline().strip() == "ready"  # it has read the live store once
        for start in range(1, 300, 7):
            w.write("live", make_rows(range(start, min(start + 7, 300))))
            time.sleep(0.01)
        w.finalize("live", "success")
        assert reader.wait(timeout=40) == 0
    finally:
        if reader.poll() is None:
            reader.kill()
        if reader.stdout is not None:
            reader.stdout.close()
    report = json.loads(out.read_text())
    assert report["problems"] == []
    assert report["status"] == "success"
    assert report["seen"][-1] == 300
    assert len(set(report["seen"])) >= 3  # the reader watched the trace grow


# ---------------------------------------------------------------------------- crash safety


def test_crash_safety_sigkill_at_random_points(tmp_path: Path) -> None:
    """Writers SIGKILLed at >= 10 seeded random moments, each restart re-delivering the whole
    sequence in different batches, leave a store holding every row exactly once, in order, with
    all arrays of equal length, readable with plain xarray once finalized."""
    total, new_col_from = 800, 300
    # Writer processes fork from a server that has imported zarr already (fast restarts);
    # each is a separate process killed with SIGKILL, exactly like a crashed engine.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["tests._trace_rows"])
    rng = random.Random(20261122)
    path = trace_path(tmp_path, "crash")
    kills, mid_run = 0, 0
    # kill points: 12 seeded row counts across the run, then a seeded delay of 0-30 ms
    targets = sorted(rng.sample(range(10, total - 100), 12))
    for attempt, ready_at in enumerate(targets, start=1):
        ready = ctx.Event()
        child = ctx.Process(
            target=write_sequence,
            args=(str(tmp_path), attempt, total, new_col_from, ready, ready_at),
        )
        child.start()
        assert ready.wait(timeout=60), "writer child never got going"
        time.sleep(rng.uniform(0.0, 0.03))
        if child.is_alive():
            assert child.pid is not None
            os.kill(child.pid, signal.SIGKILL)
            kills += 1
        child.join(timeout=30)
        n = len(committed_seq_nums(path))
        crashed = open_trace(path)  # the crashed store is readable as it was left
        np.testing.assert_array_equal(crashed.seq_num.values, np.arange(n))
        if 0 < n < total:
            mid_run += 1
    assert kills >= 10
    assert mid_run >= 10  # the kills landed while rows were being written
    # the last delivery runs to completion
    ready = ctx.Event()
    final = ctx.Process(
        target=write_sequence, args=(str(tmp_path), 999, total, new_col_from, ready)
    )
    final.start()
    final.join(timeout=120)
    assert final.exitcode == 0
    assert not list(path.rglob("*.partial"))
    ds = xr.open_zarr(path)  # finalized: plain xarray, consolidated
    assert ds.attrs["status"] == "success"
    assert ds.attrs["n_rows"] == total
    seq = np.arange(total)
    np.testing.assert_array_equal(ds.seq_num.values, seq)  # every row once, delivery order
    grp = zarr.open_group(str(path), mode="r", use_consolidated=False)
    lengths = {name: arr.shape[0] for name, arr in grp.arrays() if name in ds.data_vars}
    assert set(lengths.values()) == {total}, lengths
    np.testing.assert_allclose(ds.os.values, expected_os(seq))
    np.testing.assert_array_equal(ds.flags.values, seq % 4)
    np.testing.assert_array_equal(ds.norm.values, expected_norm(seq))
    pot = ds.potential.values
    assert np.isnan(pot[:new_col_from]).all()
    np.testing.assert_allclose(pot[new_col_from:], expected_potential(seq[new_col_from:]))

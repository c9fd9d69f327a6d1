"""The Zarr trace writer in a child process (``ZarrSink(process=True)``, the engine's default).

Real child processes, real stores: the trace equals the in-process writer's; errors in the child
come back as SinkError naming the run; a killed child fails the write in flight (so the engine
commits nothing over it) and the next call starts a new one that reopens the store from its
commit marker; a killed engine takes its child with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from spt_stream.engine.metrics import EngineMetrics
from spt_stream.errors import SinkError
from spt_stream.sinks.threaded import ZarrSink
from spt_stream.sinks.zarr_process import ZarrWriterProcess
from spt_stream.sinks.zarr_trace import open_trace
from tests._trace_rows import make_rows


def wait_until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not reaped yet) counts as gone
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_trace_from_the_child_equals_the_in_process_trace(tmp_path: Path) -> None:
    traces = {}
    for process in (False, True):
        root = tmp_path / ("child" if process else "thread")
        sink = ZarrSink(root, block_rows=16, process=process)
        sink.open_run("r1", {"element": "Co"})
        for start in range(0, 90, 9):
            sink.write("r1", make_rows(range(start, start + 9), new_col_from=40))
        sink.write("r1", make_rows(range(30, 39), new_col_from=40))  # re-delivery: no new rows
        sink.finalize("r1", "success")
        sink.flush()
        sink.close()
        traces[process] = open_trace(root / "r1.zarr")
    a, b = traces[False], traces[True]
    assert b.sizes["time"] == 90
    assert sorted(map(str, a.data_vars)) == sorted(map(str, b.data_vars))
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values)
    assert a.attrs["status"] == b.attrs["status"] == "success"


def test_an_error_in_the_child_comes_back_naming_the_run(tmp_path: Path) -> None:
    writer = ZarrWriterProcess(tmp_path)
    try:
        with pytest.raises(SinkError, match="never opened") as info:
            writer.write("ghost", make_rows(range(3)))
        assert info.value.run_uid == "ghost"
        assert writer.open_run("r1", {}) == 0  # the child is still serving
        assert writer.starts == 1
    finally:
        writer.close()


def test_a_killed_child_fails_the_write_and_a_new_one_resumes_the_store(tmp_path: Path) -> None:
    sink = ZarrSink(tmp_path, block_rows=8, process=True)
    writer = sink.writer
    assert isinstance(writer, ZarrWriterProcess)
    sink.open_run("r1", {"element": "Co"})
    sink.write("r1", make_rows(range(0, 20)))
    sink.flush()
    first = writer.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: not _alive(first), 10, "the child to exit")
    sink.write("r1", make_rows(range(20, 30)))  # fails in the sink thread: the child is gone
    with pytest.raises(SinkError, match="died"):
        sink.flush()  # so the engine would not commit offsets over rows 20..29
    # the engine re-reads what it did not commit: the next calls start a new child
    sink.open_run("r1", {"element": "Co"})
    assert sink.committed_seq_nums("r1") == set(range(20))
    sink.write("r1", make_rows(range(20, 30)))
    sink.finalize("r1", "success")
    sink.flush()
    assert writer.starts == 2
    assert writer.pid != first
    metrics = EngineMetrics()
    metrics.watch_sinks([sink])
    assert b'spt_sink_process_starts_total{sink="zarr"} 2.0' in metrics.exposition()
    sink.close()
    ds = open_trace(tmp_path / "r1.zarr")
    np.testing.assert_array_equal(ds["seq_num"].values, np.arange(30))


def test_the_child_exits_when_the_engine_is_killed(tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        "from spt_stream.sinks.zarr_process import ZarrWriterProcess\n"
        "w = ZarrWriterProcess(sys.argv[1])\n"
        "print(w.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        assert _alive(child)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        t0 = time.monotonic()
        wait_until(lambda: not _alive(child), 20, "the orphaned zarr writer to exit")
        print(f"child {child} exited {time.monotonic() - t0:.2f} s after its engine was killed")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_close_is_idempotent_and_later_calls_fail_clearly(tmp_path: Path) -> None:
    writer = ZarrWriterProcess(tmp_path)
    pid = writer.pid
    assert pid is not None
    writer.close()
    writer.close()
    wait_until(lambda: not _alive(pid), 10, "the child to exit after close")
    with pytest.raises(SinkError, match="closed"):
        writer.open_run("r1", {})


def test_a_script_without_a_main_guard_can_use_it(tmp_path: Path) -> None:
    """The child is not started by multiprocessing's spawn, which would re-run this script in
    the child (and fail: a process started while the parent was still bootstrapping)."""
    script = tmp_path / "quick_look.py"
    script.write_text(
        "import sys\n"
        "from spt_stream.sinks.threaded import ZarrSink\n"
        "from tests._trace_rows import make_rows\n"
        "sink = ZarrSink(sys.argv[1], process=True)\n"
        "sink.open_run('r1', {})\n"
        "sink.write('r1', make_rows(range(5)))\n"
        "sink.flush()\n"
        "sink.close()\n"
        "print('written', flush=True)\n"
    )
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "traces")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "written"
    ds = open_trace(tmp_path / "traces" / "r1.zarr")
    np.testing.assert_array_equal(ds["seq_num"].values, np.arange(5))


def test_an_unusable_root_is_reported_with_its_cause(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the trace root should be")
    with pytest.raises(SinkError, match="could not open the trace root") as info:
        ZarrWriterProcess(blocker / "traces")
    assert info.value.source == str(blocker / "traces")

"""The Zarr trace writer in a child process (``ZarrSettings.process``, on by default).

Why: Zarr's write path is Python (chunk encoding, an asyncio store, atomic renames). In the
engine's process it holds the interpreter lock for tens of milliseconds per write, and the frames
behind it wait: measured as the once-a-second tail of the live latency and as ~30 % of the
transport thread's time lost under a backlog (docs/BENCHMARKS.md). In a child process the writes
run on another core under another interpreter lock; the engine's sink thread only hands over the
coalesced rows (numpy arrays through a pipe) and waits, lock released, for the answer.

:class:`ZarrWriterProcess` is a drop-in for :class:`~spt_stream.sinks.zarr_trace.ZarrTraceWriter`
as the inner sink of :class:`~spt_stream.sinks.threaded.ThreadedSink`: every call is a request
answered by the child after it finished (a ``flush`` answers after the fsync), one at a time, so
the ordering and durability guarantees are the writer's own. What crosses the pipe is pickled,
between this process and the child it started (never anything from the network).

Failures: an exception in the child comes back as :class:`~spt_stream.errors.SinkError` naming
the call and the run; a child that died (killed, out of memory) fails the call in progress, and
the next call starts a new child, which reopens the stores from their commit markers. The engine
commits no offset over a failed write, so frames lost with a dead child are read again after a
restart. The child ignores SIGINT/SIGTERM (Ctrl-C reaches the whole process group; the engine
decides when to finish) and exits when its pipe closes, also when the engine was killed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from spt_stream.errors import SinkError, SptError
from spt_stream.sinks.rows import TraceRows

__all__ = ["ZarrWriterProcess"]

log = logging.getLogger(__name__)

#: Seconds to wait for a new child to import Zarr and answer.
_START_TIMEOUT_S = 60.0


#: The child's command: put the engine's import path first (an engine run from a source tree
#: finds the same package), then serve on the inherited socket. Not ``multiprocessing``'s spawn:
#: that re-runs the engine's ``__main__`` module in the child, which breaks any script that
#: builds a pipeline at module level (no ``if __name__ == "__main__":`` guard).
_BOOT = (
    "import json, sys; sys.path[:0] = json.loads(sys.argv[1]); "
    "from spt_stream.sinks.zarr_process import _main; _main(sys.argv[2:])"
)


def _main(argv: Sequence[str]) -> None:
    """Entry point of the child: ``argv`` = [socket fd, JSON of the writer's arguments]."""
    conn = Connection(int(argv[0]))
    args = json.loads(argv[1])
    _serve(conn, args["root"], int(args["block_rows"]), bool(args["fsync"]))


def _serve(conn: Connection, root: str, block_rows: int, fsync: bool) -> None:
    """The child: answer ``(op, args)`` requests with ``("ok", result)`` or ``("error", ...)``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from spt_stream.core._memory import trim_heap
    from spt_stream.sinks.zarr_trace import ZarrTraceWriter

    try:
        writer = ZarrTraceWriter(Path(root), block_rows=block_rows, fsync=fsync)
    except BaseException as exc:  # answer the engine's first request (its ping) with the cause
        with contextlib.suppress(EOFError, OSError):
            conn.recv()
            conn.send(("error", (f"{type(exc).__name__}: {exc}", None)))
        return
    closed = False
    while True:
        try:
            op, args = conn.recv()
        except (EOFError, OSError):  # the engine closed the pipe or died
            break
        try:
            result = None if op == "ping" else getattr(writer, op)(*args)
        except BaseException as exc:  # every failure goes back to the engine
            run_uid = exc.run_uid if isinstance(exc, SptError) else None
            reply: tuple[str, Any] = ("error", (f"{type(exc).__name__}: {exc}", run_uid))
        else:
            reply = ("ok", result)
            if op == "finalize":  # a run ended: give freed buffers back (core._memory)
                trim_heap()
        try:
            conn.send(reply)
        except OSError:  # the engine died while we wrote: close the stores below
            break
        if op == "close":
            closed = True
            break
    if not closed:
        try:
            writer.close()
        except Exception:  # the engine is gone: stderr is all that is left
            log.exception("zarr writer process: closing the stores after the engine left failed")


class ZarrWriterProcess:
    """The :class:`~spt_stream.sinks.zarr_trace.ZarrTraceWriter` interface, served by a child
    process (see module docstring). Thread-safe; calls are answered one at a time."""

    def __init__(self, root: Path | str, *, block_rows: int = 256, fsync: bool = True) -> None:
        self.root = Path(root)
        self.block_rows = block_rows
        self.fsync = fsync
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False
        #: children started (1 + restarts after a child died)
        self.starts = 0
        with self._lock:
            self._start()

    @property
    def pid(self) -> int | None:
        """The child's process id (None while none runs)."""
        return self._proc.pid if self._proc is not None else None

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        args = json.dumps(
            {"root": str(self.root), "block_rows": self.block_rows, "fsync": self.fsync}
        )
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, json.dumps(sys.path), str(theirs.fileno()), args],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            ours.close()
            raise SinkError(f"cannot start the zarr writer process: {exc}") from exc
        finally:
            theirs.close()
        conn = Connection(ours.detach())
        self._conn, self._proc = conn, proc
        self.starts += 1
        try:
            conn.send(("ping", ()))  # answered once the child has built its writer
            if not conn.poll(_START_TIMEOUT_S):
                self._discard()
                raise SinkError(
                    f"zarr writer process did not start within {_START_TIMEOUT_S:.0f} s"
                )
            status, value = conn.recv()
        except (EOFError, OSError) as exc:
            code = self._exit_code(proc)
            self._discard()
            raise SinkError(f"zarr writer process exited at start (exit code {code})") from exc
        if status == "error":
            self._discard()
            raise SinkError(
                f"zarr writer process could not open the trace root: {value[0]}",
                source=str(self.root),
            )

    @staticmethod
    def _exit_code(proc: subprocess.Popen[bytes] | None) -> int | None:
        if proc is None:
            return None
        try:
            return proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return None

    def _discard(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5.0)
        self._conn = self._proc = None

    def _request(self, op: str, *args: Any, run_uid: str | None = None) -> Any:
        with self._lock:
            if self._closed:
                raise SinkError("zarr writer process: closed", run_uid=run_uid)
            if self._conn is None:
                log.warning("starting a new zarr writer process (the previous one died)")
                self._start()
            conn = self._conn
            assert conn is not None
            try:
                conn.send((op, args))
                status, value = conn.recv()
            except (EOFError, OSError) as exc:
                pid = self.pid
                code = self._exit_code(self._proc)
                self._discard()
                raise SinkError(
                    f"zarr writer process {pid} died during {op} (exit code {code}); "
                    "the next call starts a new one",
                    run_uid=run_uid,
                ) from exc
        if status == "error":
            message, err_run = value
            raise SinkError(
                f"zarr writer process: {op} failed: {message}", run_uid=err_run or run_uid
            )
        return value

    # -- the ZarrTraceWriter interface ------------------------------------------------------
    def open_run(self, run_uid: str, attrs: Mapping[str, Any] | None = None) -> int:
        n: int = self._request("open_run", run_uid, dict(attrs or {}), run_uid=run_uid)
        return n

    def write(self, run_uid: str, rows: TraceRows) -> Any:
        return self._request("write", run_uid, rows, run_uid=run_uid)

    def finalize(self, run_uid: str, status: str) -> int:
        n: int = self._request("finalize", run_uid, status, run_uid=run_uid)
        return n

    def flush(self) -> None:
        self._request("flush")

    def warm_up(self, rows: TraceRows | None = None) -> None:
        """:meth:`ZarrTraceWriter.warm_up` in the child (its Zarr's first-use costs)."""
        self._request("warm_up", rows)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conn = self._conn
            if conn is not None:
                try:
                    conn.send(("close", ()))
                    status, value = conn.recv()
                    if status == "error":
                        log.error("zarr writer process: close failed: %s", value[0])
                except (EOFError, OSError):
                    log.error("zarr writer process %s had died before close", self.pid)
            self._discard()

    def __repr__(self) -> str:
        return f"ZarrWriterProcess(root={str(self.root)!r}, pid={self.pid}, parent={os.getpid()})"

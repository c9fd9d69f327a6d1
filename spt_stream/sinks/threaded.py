"""Run a synchronous sink on its own thread, behind a bounded queue, coalescing batches.

The Zarr writer costs ~1 ms per array per call whatever the row count (bench/bench_zarr.py), so
writing every micro-batch from the engine thread would put 20-40 ms into the path from event to
feedback. :class:`ThreadedSink` moves the writes to a dedicated thread: the engine only enqueues,
and under a backlog consecutive batches of one run are joined (``TraceRows.concat``) into writes
of up to ``coalesce_rows`` rows, which is where Zarr is efficient. Live, batches are small
(a few frames): ``max_delay_s`` lets the sink thread wait that long after a write arrives for
more before writing, so Zarr is written a few times a second rather than once per micro-batch
(its per-call cost, paid in the engine's process, competes with the path to the feedback
topic). :class:`ZarrSink` waits 0.2 s; flush, finalize and every other call end the wait.

Backpressure: the queue is bounded; a put blocks while it is full (the engine, hence the
consumer, slows down), so memory stays bounded. :attr:`ThreadedSink.stats` shows it while it
happens: ``blocked`` is 1 while a put waits on the full queue, and ``blocked_s`` (seconds the
engine spent waiting, monotonic) includes the wait in progress, not only finished ones.
Failures of the inner sink are kept and raised from the next :meth:`flush` as
:class:`SinkError`, so the engine never commits offsets over data that did not land.

:meth:`open_run` and :meth:`finalize` are queued like writes (a run's set-up never makes the
engine wait: creating a store, or the previous run's finalize still running, stays on the sink
thread; a failure is raised from the next flush, and the run's writes fail after it).
:meth:`call` and :meth:`warm_up` run synchronously on the sink thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from spt_stream.errors import SinkError, SinkTimeoutError, SptError
from spt_stream.protocols import WarmableSink
from spt_stream.queues import BoundedQueue, QueueClosedError
from spt_stream.sinks.rows import TraceRows

__all__ = ["SyncSink", "ThreadedSink"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class SyncSink(Protocol):
    """The synchronous part of a sink that :class:`ThreadedSink` drives."""

    def open_run(self, run_uid: str, attrs: Mapping[str, Any]) -> Any: ...

    def write(self, run_uid: str, rows: TraceRows) -> Any: ...

    def finalize(self, run_uid: str, status: str) -> Any: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class _Write:
    run_uid: str
    rows: TraceRows


@dataclass(frozen=True, slots=True)
class _Call:
    fn: Callable[[], Any]
    future: Future[Any]
    #: Keep a failure for the next flush (nobody waits on the future).
    record: bool = False


class ThreadedSink:
    """Wrap ``inner`` (see module docstring); a :class:`~spt_stream.sinks.base.TraceSink`."""

    def __init__(
        self,
        inner: SyncSink,
        *,
        name: str = "sink",
        queue_size: int = 64,
        coalesce_rows: int = 512,
        max_delay_s: float = 0.0,
    ) -> None:
        self.inner = inner
        self.name = name
        self._coalesce = max(1, coalesce_rows)
        self._max_delay = max(0.0, float(max_delay_s))
        self._queue: BoundedQueue[_Write | _Call] = BoundedQueue(queue_size, name=name)
        self._errors: list[SptError] = []
        self._lock = threading.Lock()
        self._rows = 0
        self._writes = 0
        self._failures = 0
        self._carry: _Write | _Call | None = None
        #: start (monotonic) of each put in progress, by thread
        self._putting: dict[int, float] = {}
        self._blocked_seen = 0.0
        self._thread = threading.Thread(target=self._loop, name=f"spt-{name}", daemon=True)
        self._thread.start()

    # -- TraceSink ---------------------------------------------------------------------------
    def open_run(self, run_uid: str, attrs: Mapping[str, Any]) -> None:
        """Queue the run's set-up (see the module docstring); returns at once."""
        fut: Future[Any] = Future()
        self._put(_Call(lambda: self.inner.open_run(run_uid, attrs), fut, record=True))

    def warm_up(self, rows: TraceRows | None = None, timeout: float | None = 60.0) -> None:
        """The inner sink's ``warm_up(rows)``, if it has one, on the sink thread (once, at
        start-up: connections, metadata, first-use costs of its libraries)."""
        inner = self.inner
        if isinstance(inner, WarmableSink):
            self.call(lambda: inner.warm_up(rows), timeout=timeout)

    def write(self, run_uid: str, rows: TraceRows) -> None:
        self._put(_Write(run_uid, rows))

    def finalize(self, run_uid: str, status: str) -> None:
        fut: Future[Any] = Future()
        self._put(_Call(lambda: self.inner.finalize(run_uid, status), fut, record=True))

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything queued is written and the inner sink flushed."""
        try:
            self.call(self.inner.flush, timeout=timeout)
        except SinkError:
            raise
        except Exception as exc:
            raise SinkError(f"{self.name}: flush failed: {exc!r}") from exc
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            raise SinkError(
                f"{self.name}: {len(errors)} failure(s) since the last flush; first: {errors[0]}",
                run_uid=errors[0].run_uid,
            )

    def close(self) -> None:
        try:
            self.flush(timeout=30.0)
        except SptError as exc:
            log.error("%s: %s", self.name, exc)
        self._queue.close()
        self._thread.join(timeout=10.0)
        self.inner.close()

    @property
    def stats(self) -> Mapping[str, int | float]:
        """Rows/writes/failures; the queue (items: write batches and calls) with its capacity,
        depth and high-water mark; ``blocked`` (1 while the engine waits on the full queue) and
        ``blocked_s`` (total seconds it waited, the wait in progress included)."""
        q = self._queue.stats()
        with self._lock:
            since = min(self._putting.values(), default=None)
            waiting = since is not None and q.depth >= q.maxsize
            blocked_s = q.blocked_s
            if waiting and since is not None:
                blocked_s += time.monotonic() - since
            # the queue adds a wait only when it ends: never report less than already shown
            self._blocked_seen = max(self._blocked_seen, blocked_s)
            blocked_s = self._blocked_seen
        return {
            "rows": self._rows,
            "writes": self._writes,
            "failures": self._failures,
            "queue_capacity": q.maxsize,
            "queue_depth": q.depth,
            "queue_high_water": q.high_water,
            "blocked": int(waiting),
            "blocked_s": blocked_s,
        }

    # -- synchronous calls on the sink thread ------------------------------------------------
    def call(self, fn: Callable[[], _T], timeout: float | None = None) -> _T:
        """Run ``fn`` on the sink thread after everything queued before it; return its result."""
        fut: Future[Any] = Future()
        self._put(_Call(fn, fut))
        try:
            result: _T = fut.result(timeout=timeout)
        except TimeoutError as exc:
            raise SinkTimeoutError(f"{self.name}: no answer within {timeout} s") from exc
        return result

    def _put(self, item: _Write | _Call) -> None:
        me = threading.get_ident()
        with self._lock:
            self._putting[me] = time.monotonic()
        try:
            self._queue.put(item)
        except QueueClosedError as exc:
            raise SinkError(f"{self.name} is closed") from exc
        finally:
            with self._lock:
                del self._putting[me]

    # -- the sink thread ---------------------------------------------------------------------
    def _next(self, timeout: float | None) -> _Write | _Call:
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        return self._queue.get(timeout=timeout)

    def _loop(self) -> None:
        while True:
            try:
                item = self._next(None)
            except QueueClosedError:
                return
            if isinstance(item, _Call):
                try:
                    item.future.set_result(item.fn())
                except BaseException as exc:  # hand every failure to the caller
                    if item.record:
                        self._record(exc)
                    else:
                        self._failures += 1
                    item.future.set_exception(exc)
                continue
            self._write(self._coalesced(item))

    def _coalesced(self, first: _Write) -> _Write:
        """``first`` joined with the writes of the same run queued behind it, up to
        ``coalesce_rows``; with ``max_delay_s``, waits up to that long after ``first`` for more
        (a flush, finalize or any other call ends the wait at once)."""
        parts = [first.rows]
        n = len(first.rows)
        deadline = time.monotonic() + self._max_delay
        while n < self._coalesce:
            left = deadline - time.monotonic()
            if left <= 0 and len(self._queue) == 0:
                break
            try:
                nxt = self._queue.get(timeout=max(0.0, left))
            except Exception:  # queue.Empty or closed: write what we have
                break
            if isinstance(nxt, _Write) and nxt.run_uid == first.run_uid:
                parts.append(nxt.rows)
                n += len(nxt.rows)
            else:
                self._carry = nxt
                break
        rows = parts[0] if len(parts) == 1 else TraceRows.concat(parts)
        return _Write(first.run_uid, rows)

    def _write(self, item: _Write) -> None:
        try:
            self.inner.write(item.run_uid, item.rows)
        except BaseException as exc:
            self._record(exc, run_uid=item.run_uid)
            return
        self._rows += len(item.rows)
        self._writes += 1

    def _record(self, exc: BaseException, run_uid: str | None = None) -> None:
        self._failures += 1
        err = (
            exc
            if isinstance(exc, SptError)
            else SinkError(f"{self.name}: {exc!r}", run_uid=run_uid)
        )
        log.error("%s failed: %s", self.name, err)
        with self._lock:
            self._errors.append(err)


class ZarrSink(ThreadedSink):
    """The embedded trace store (:class:`~spt_stream.sinks.zarr_trace.ZarrTraceWriter`) on its
    own thread; also answers which ``seq_num`` s a run's store already holds (resume)."""

    def __init__(
        self,
        root: Any,
        *,
        block_rows: int = 256,
        fsync: bool = True,
        max_delay_s: float = 0.2,
        process: bool = False,
        **kw: Any,
    ) -> None:
        from spt_stream.sinks.zarr_process import ZarrWriterProcess
        from spt_stream.sinks.zarr_trace import ZarrTraceWriter

        #: the writer itself, or (``process``) its proxy in a child process
        self.writer: ZarrTraceWriter | ZarrWriterProcess = (
            ZarrWriterProcess(root, block_rows=block_rows, fsync=fsync)
            if process
            else ZarrTraceWriter(root, block_rows=block_rows, fsync=fsync)
        )
        super().__init__(self.writer, name="zarr", max_delay_s=max_delay_s, **kw)

    @property
    def stats(self) -> Mapping[str, int | float]:
        """:attr:`ThreadedSink.stats`, plus ``process_starts`` (writer processes started: 1,
        and one more for every restart after one died) when the writer runs in a child."""
        base = super().stats
        from spt_stream.sinks.zarr_process import ZarrWriterProcess

        if not isinstance(self.writer, ZarrWriterProcess):
            return base
        return {**base, "process_starts": self.writer.starts}

    def committed_seq_nums(self, run_uid: str) -> set[int]:
        from spt_stream.sinks.zarr_trace import committed_seq_nums, trace_path

        path = trace_path(self.writer.root, run_uid)
        if not path.exists():
            return set()
        return {int(s) for s in self.call(lambda: committed_seq_nums(path))}

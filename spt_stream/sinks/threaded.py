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
A :class:`QueuePolicy` changes that per sink (the Tiled writer): the capacity counted in rows
(held until the write of those rows ends, so the batch in flight counts too), a full queue that
drops the batch (at once, or after ``block_timeout``) and hands it to ``on_drop`` instead of
holding the engine, and a cap on the rows one coalesced write may join.
Failures of the inner sink are kept and raised from the next :meth:`flush` as
:class:`SinkError`, so the engine never commits offsets over data that did not land.

:meth:`open_run` and :meth:`finalize` are queued like writes (a run's set-up never makes the
engine wait: creating a store, or the previous run's finalize still running, stays on the sink
thread; a failure is raised from the next flush, and the run's writes fail after it).
:meth:`call` and :meth:`warm_up` run synchronously on the sink thread. An inner sink with an
``idle()`` method (:class:`IdleSink`) has it called on the sink thread every ``idle_s`` seconds
while nothing is queued; one with ``abort()`` (:class:`AbortableSink`) has it called when
:meth:`ThreadedSink.close` cannot drain the queue in time.

One module: the one background mechanism every queued sink runs on (queue policy, coalescing,
drops, failures surfaced at flush, idle work, close and abort) and its Zarr specialisation.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from spt_stream.core.queues import BoundedQueue, QueueClosedError
from spt_stream.errors import SinkError, SinkTimeoutError, SptError, SptValueError
from spt_stream.protocols import WarmableSink
from spt_stream.sinks.rows import TraceRows

__all__ = ["AbortableSink", "DropFn", "IdleSink", "QueuePolicy", "SyncSink", "ThreadedSink"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class SyncSink(Protocol):
    """The synchronous part of a sink that :class:`ThreadedSink` drives."""

    def open_run(self, run_uid: str, attrs: Mapping[str, Any]) -> Any: ...

    def write(self, run_uid: str, rows: TraceRows) -> Any: ...

    def finalize(self, run_uid: str, status: str) -> Any: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class IdleSink(Protocol):
    """An inner sink with background upkeep, run on the sink thread while the queue is empty."""

    def idle(self) -> None: ...


@runtime_checkable
class AbortableSink(Protocol):
    """An inner sink that can cut its work short (end retries) when closing runs out of time."""

    def abort(self) -> None: ...


#: Called on the writing (engine) thread with the run, the rows and the reason of a dropped
#: write.
DropFn = Callable[[str, TraceRows, str], None]


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """How a :class:`ThreadedSink` bounds its queue and what a write does when it is full.

    The default is the engine's: capacity in write batches (each call one item too), a full
    queue holds the writer until there is room.
    """

    #: ``"writes"``: the capacity counts queued batches and calls; ``"rows"``: it counts the
    #: rows of the queued batches *and of the write in progress* (calls weigh nothing).
    unit: Literal["writes", "rows"] = "writes"
    #: ``"block"``: wait for room (at most ``block_timeout`` s, then drop; ``None``: forever);
    #: ``"drop"``: drop the batch at once.
    on_full: Literal["block", "drop"] = "block"
    block_timeout: float | None = None
    #: Largest coalesced write (rows): a queued batch that would take a write past it waits for
    #: the next one. ``None``: no cap (``coalesce_rows`` is then a target, not a bound).
    max_rows_per_write: int | None = None

    def __post_init__(self) -> None:
        if self.unit not in ("writes", "rows"):
            raise SptValueError(f"unit must be 'writes' or 'rows', got {self.unit!r}")
        if self.on_full not in ("block", "drop"):
            raise SptValueError(f"on_full must be 'block' or 'drop', got {self.on_full!r}")
        if self.block_timeout is not None and self.block_timeout < 0:
            raise SptValueError("block_timeout must be >= 0")
        if self.max_rows_per_write is not None and self.max_rows_per_write < 1:
            raise SptValueError("max_rows_per_write must be at least 1")

    @property
    def put_timeout(self) -> float | None:
        """How long a write waits for room before it is dropped (None: until there is)."""
        return 0.0 if self.on_full == "drop" else self.block_timeout


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
        policy: QueuePolicy | None = None,
        on_drop: DropFn | None = None,
        idle_s: float | None = None,
    ) -> None:
        self.inner = inner
        self.name = name
        self.policy = policy = policy or QueuePolicy()
        self._rows_unit = policy.unit == "rows"
        self._on_drop = on_drop
        self._idle_s = idle_s if isinstance(inner, IdleSink) else None
        self._coalesce = max(1, coalesce_rows)
        self._max_delay = max(0.0, float(max_delay_s))
        self._queue: BoundedQueue[_Write | _Call] = BoundedQueue(
            queue_size, name=name, hold=self._rows_unit
        )
        self._errors: list[SptError] = []
        self._lock = threading.Lock()
        self._rows = 0
        self._writes = 0
        self._failures = 0
        #: queued items the sink thread has finished (a coalesced write counts its parts)
        self._completed = 0
        self._carry: _Write | _Call | None = None
        self._flush_lock = threading.Lock()
        self._last_flush: _Call | None = None
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
        self._offer(run_uid, rows)

    def finalize(self, run_uid: str, status: str) -> None:
        fut: Future[Any] = Future()
        self._put(_Call(lambda: self.inner.finalize(run_uid, status), fut, record=True))

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything queued is written and the inner sink flushed.

        A flush still waiting at the tail of the queue (an earlier caller timed out on it, with
        nothing queued since) is waited on again rather than queued twice: a sink that stays
        stuck while the engine keeps flushing does not fill its queue with flushes."""
        with self._flush_lock:
            item = self._last_flush
            if item is None or self._queue.last() is not item:
                item = _Call(self.inner.flush, Future())
                self._put(item)
                self._last_flush = item
        try:
            self._wait(item.future, timeout)
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
        self._stop(10.0)
        self.inner.close()

    @property
    def stats(self) -> Mapping[str, int | float]:
        """Rows/writes/failures; the queue (items: write batches and calls) with its capacity,
        depth and high-water mark; ``blocked`` (1 while the engine waits on the full queue) and
        ``blocked_s`` (total seconds it waited, the wait in progress included)."""
        q = self._queue.stats()
        return {
            "rows": self._rows,
            "writes": self._writes,
            "failures": self._failures,
            "queue_capacity": q.maxsize,
            "queue_depth": q.depth,
            "queue_high_water": q.high_water,
            "blocked": int(q.blocked > 0),
            "blocked_s": q.blocked_s,
        }

    @property
    def pending(self) -> int:
        """Queued items (writes and calls) the sink thread has not finished yet."""
        return self._queue.stats().put - self._completed

    # -- synchronous calls on the sink thread ------------------------------------------------
    def call(self, fn: Callable[[], _T], timeout: float | None = None) -> _T:
        """Run ``fn`` on the sink thread after everything queued before it; return its result."""
        fut: Future[Any] = Future()
        self._put(_Call(fn, fut))
        result: _T = self._wait(fut, timeout)
        return result

    def _wait(self, fut: Future[Any], timeout: float | None) -> Any:
        try:
            return fut.result(timeout=timeout)
        except TimeoutError as exc:
            raise SinkTimeoutError(f"{self.name}: no answer within {timeout} s") from exc

    def _put(self, item: _Write | _Call, timeout: float | None = None) -> bool:
        try:
            return self._queue.put(item, timeout, weight=self._weight(item))
        except QueueClosedError as exc:
            raise SinkError(f"{self.name} is closed") from exc

    def _offer(self, run_uid: str, rows: TraceRows) -> bool:
        """Queue a write under the policy; False if it was dropped (and handed to ``on_drop``)."""
        if self._put(_Write(run_uid, rows), self.policy.put_timeout):
            return True
        if self._on_drop is not None:
            self._on_drop(run_uid, rows, "queue full")
        else:
            log.warning("%s: queue full, dropped %d rows of run %s", self.name, len(rows), run_uid)
        return False

    def _weight(self, item: _Write | _Call) -> int:
        if not self._rows_unit:
            return 1
        return len(item.rows) if isinstance(item, _Write) else 0

    def _stop(self, timeout: float) -> bool:
        """Close the queue (puts raise, the thread drains it); True if the thread ended within
        ``timeout`` s, else the inner sink is aborted (if it can be) and False returned."""
        self._queue.close()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            return True
        if isinstance(self.inner, AbortableSink):
            self.inner.abort()
        return False

    # -- the sink thread ---------------------------------------------------------------------
    def _next(self, timeout: float | None) -> _Write | _Call:
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        return self._queue.get(timeout=timeout)

    def _loop(self) -> None:
        inner = self.inner
        while True:
            try:
                item = self._next(self._idle_s)
            except queue.Empty:  # only with idle_s: nothing queued for that long
                if isinstance(inner, IdleSink):
                    try:
                        inner.idle()
                    except Exception as exc:
                        self._record(exc)
                continue
            except QueueClosedError:
                return
            if isinstance(item, _Call):
                try:
                    result = item.fn()
                except BaseException as exc:  # hand every failure to the caller
                    if item.record:
                        self._record(exc)
                    else:
                        self._failures += 1
                    self._completed += 1
                    item.future.set_exception(exc)
                else:
                    self._completed += 1
                    item.future.set_result(result)
                continue
            write, parts = self._coalesced(item)
            try:
                self._write(write)
            finally:
                self._queue.done(self._weight(write))
                self._completed += parts

    def _coalesced(self, first: _Write) -> tuple[_Write, int]:
        """``first`` joined with the writes of the same run queued behind it, up to
        ``coalesce_rows`` (never past the policy's ``max_rows_per_write``); with
        ``max_delay_s``, waits up to that long after ``first`` for more (a flush, finalize or
        any other call ends the wait at once). Returns the write and the items it joined."""
        parts = [first.rows]
        n = len(first.rows)
        cap = self.policy.max_rows_per_write
        deadline = time.monotonic() + self._max_delay
        while n < self._coalesce and (cap is None or n < cap):
            left = deadline - time.monotonic()
            if left <= 0 and len(self._queue) == 0:
                break
            try:
                nxt = self._queue.get(timeout=max(0.0, left))
            except Exception:  # queue.Empty or closed: write what we have
                break
            if (
                isinstance(nxt, _Write)
                and nxt.run_uid == first.run_uid
                and (cap is None or n + len(nxt.rows) <= cap)
            ):
                parts.append(nxt.rows)
                n += len(nxt.rows)
            else:
                self._carry = nxt
                break
        rows = parts[0] if len(parts) == 1 else TraceRows.concat(parts)
        return _Write(first.run_uid, rows), len(parts)

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

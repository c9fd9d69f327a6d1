"""Trace rows into a Tiled server: one container per run, an appendable table of flat columns.

Layout on the server (``parent`` is an optional container path, created when missing)::

    <parent>/<raw run uid>            container; metadata below
    <parent>/<raw run uid>/trace      appendable table: seq_num, time, os, os_std, os_probs_0, ...

Run metadata: ``raw_run_uid``, ``status`` (``"running"`` until :meth:`TiledTraceWriter.finalize`,
then the raw run's exit status), ``started``/``finished`` (UNIX s), everything the engine passes
to :meth:`~TiledTraceWriter.open_run` (element, edge, model, config snapshot...), ``trace`` (the
column layout, see :mod:`spt_stream.sinks.arrow_rows`), ``rows_written``, and ``gaps``:
``{"rows": n, "ranges": [[first_seq, last_seq], ...], "reasons": {reason: n}}`` for every row that
never reached the table, with ``failures``/``last_error`` for requests that failed.

Threading: the engine's calls only enqueue (a bounded queue counted in rows, ``queue_size``); one
writer thread talks to Tiled, coalescing queued batches of a run into one ``append_partition``
of up to ``max_rows_per_append`` rows, so throughput grows with the backlog (an append costs
~30-50 ms whatever its size). When the queue is full, ``on_full="block"`` waits up to
``block_timeout`` seconds and then drops the batch; ``on_full="drop"`` drops at once. A dropped
batch is a *gap*: counted, logged, and written into the run's metadata. The wait is visible in
:attr:`TiledTraceWriter.stats` while it lasts (``blocked``, ``blocked_s``, and the queue's
``queue_depth``/``queue_high_water`` against ``queue_capacity``, in rows).

Failures: connection errors (nothing reached the server) are retried as they are; after an
*ambiguous* failure (a read timeout, a 5xx: the rows may have been stored), the writer reads the
table's ``seq_num`` column back and appends only the rows that are missing, because
``append_partition`` is not idempotent. Retries back off exponentially up to ``retry_max`` and
continue until :meth:`~TiledTraceWriter.close`. Client errors (4xx other than 408/429: a bad
API key, a rejected schema) are not retried; their rows become gaps. If Tiled is unreachable at
start the engine runs on (Zarr is the store of record) and the writer keeps trying.

The tiled client itself retries connection-phase errors for up to ~45 s per request
(``TILED_RETRY_TIMEOUT``) before this writer sees them; that only delays the writer thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import tenacity
from pydantic import SecretStr

from spt_stream.backoff import RetryStoppedError, doubling, last_error, sleep_unless
from spt_stream.config import TiledSettings
from spt_stream.errors import SinkError, SinkTimeoutError, SptValueError
from spt_stream.sinks.arrow_rows import TableLayout, merge_ranges, seq_ranges
from spt_stream.sinks.rows import TraceRows

__all__ = ["TiledTraceWriter"]

log = logging.getLogger(__name__)

_TRANSIENT, _AMBIGUOUS, _PERMANENT = "transient", "ambiguous", "permanent"


def _classify(exc: BaseException) -> str:
    """transient: never reached the server; ambiguous: may have been applied; permanent: 4xx."""
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        code = exc.response.status_code
        if code in (408, 429):
            return _TRANSIENT
        return _AMBIGUOUS if code >= 500 else _PERMANENT
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return _TRANSIENT
    if isinstance(exc, httpx.TransportError | OSError):
        return _AMBIGUOUS
    return _PERMANENT


class _GaveUpError(Exception):
    """A permanent failure (already logged and counted): no more attempts."""


def _retryable(exc: BaseException) -> bool:
    """Retry what ``fn`` raised (an :class:`Exception`), unless it was permanent."""
    return isinstance(exc, Exception) and not isinstance(exc, _GaveUpError | RetryStoppedError)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def _jsonable(value: Any) -> Any:
    """Metadata must be plain JSON: convert numpy values, tuples, paths; drop the rest to str."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


@dataclass
class _Open:
    run_uid: str
    attrs: dict[str, Any]


@dataclass
class _Append:
    run_uid: str
    rows: TraceRows


@dataclass
class _Finalize:
    run_uid: str
    status: str


_Op = _Open | _Append | _Finalize


@dataclass
class _Gaps:
    rows: int = 0
    ranges: list[list[int]] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)
    failures: int = 0
    last_error: str | None = None

    def add(self, seq: np.ndarray[Any, Any], reason: str) -> None:
        self.rows += int(seq.shape[0])
        self.ranges = merge_ranges(self.ranges, seq_ranges(seq.tolist()))
        self.reasons[reason] = self.reasons.get(reason, 0) + int(seq.shape[0])

    def as_metadata(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "ranges": [list(r) for r in self.ranges],
            "reasons": dict(self.reasons),
            "failures": self.failures,
            "last_error": self.last_error,
        }


@dataclass
class _Run:
    """Writer-thread state of one run (gaps are shared with callers under the lock)."""

    run_uid: str
    attrs: dict[str, Any]
    gaps: _Gaps = field(default_factory=_Gaps)
    node: Any = None
    table: Any = None
    layout: TableLayout | None = None
    written: set[int] = field(default_factory=set)
    resync: bool = False
    rows_written: int = 0
    meta_dirty: bool = False
    meta_synced_at: float = 0.0
    finalize_queued: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    final_ok: bool = False


class TiledTraceWriter:
    """Writes each run's trace rows into a Tiled appendable table from a background thread.

    Implements :class:`spt_stream.sinks.base.TraceSink`; see the module docstring for the layout
    on the server, the queue policy and the failure handling.

    Parameters
    ----------
    url:
        Tiled server URL, e.g. ``http://tiled.example:8000`` (``/api/v1`` is added by the client).
    api_key:
        Tiled API key; ``None``: anonymous. Never logged. (The engine passes
        ``settings.tiled.api_key``, which :func:`~spt_stream.config.load_settings` fills from
        ``$SPT_TILED_API_KEY``: the one place the key is read.)
    parent:
        Container path (``"a/b"``) under which run containers are created; ``None``: the root.
    table_key:
        Key of the appendable table inside each run container.
    queue_size:
        Capacity of the queue, in rows.
    on_full:
        ``"block"``: wait up to ``block_timeout`` s for room, then drop; ``"drop"``: drop at once.
    max_rows_per_append:
        Largest coalesced append (rows).
    max_flat_width:
        2-D columns up to this width are flattened into scalar columns; wider ones are skipped.
    retry_initial, retry_max:
        Backoff between attempts, seconds (doubling from ``retry_initial`` to ``retry_max``).
    request_timeout:
        HTTP timeout of one request to Tiled, seconds.
    """

    def __init__(
        self,
        url: str,
        api_key: SecretStr | str | None = None,
        *,
        parent: str | None = None,
        table_key: str = "trace",
        queue_size: int = 1024,
        on_full: Literal["block", "drop"] = "block",
        block_timeout: float = 1.0,
        max_rows_per_append: int = 4096,
        max_flat_width: int = 32,
        retry_initial: float = 0.5,
        retry_max: float = 10.0,
        request_timeout: float = 10.0,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise SptValueError(f"Tiled URL must start with http:// or https://, got {url!r}")
        if queue_size < 1 or max_rows_per_append < 1:
            raise SptValueError("queue_size and max_rows_per_append must be at least 1")
        if on_full not in ("block", "drop"):
            raise SptValueError(f"on_full must be 'block' or 'drop', got {on_full!r}")
        if block_timeout < 0 or retry_initial <= 0 or retry_max < retry_initial:
            raise SptValueError("need block_timeout >= 0 and 0 < retry_initial <= retry_max")
        self._api_key = SecretStr(api_key) if isinstance(api_key, str) else api_key
        self.url = url
        self.parent = [p for p in (parent or "").split("/") if p]
        self.table_key = table_key
        self.queue_size = queue_size
        self.on_full = on_full
        self.block_timeout = block_timeout
        self.max_rows_per_append = max_rows_per_append
        self.max_flat_width = max_flat_width
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.request_timeout = request_timeout

        self._cv = threading.Condition()
        self._ops: deque[_Op] = deque()
        self._queued_rows = 0
        self._submitted = 0
        self._completed = 0
        self._runs: dict[str, _Run] = {}
        self._finished: OrderedDict[str, _Run] = OrderedDict()
        self._closing = False
        self._high_water = 0
        self._blocked_s = 0.0
        #: start (monotonic) of each write() waiting for room, by thread
        self._waiting: dict[int, float] = {}
        self._abort = threading.Event()
        self._client: Any = None
        self._parent_node: Any = None
        self._counters: dict[str, int | float] = {
            "rows_accepted": 0,
            "rows_written": 0,
            "rows_dropped": 0,
            "rows_duplicate": 0,
            "appends": 0,
            "append_seconds": 0.0,
            "failures": 0,
            "resyncs": 0,
            "runs_finalized": 0,
        }
        self._thread = threading.Thread(target=self._loop, name="spt-tiled-writer", daemon=True)
        self._thread.start()

    @classmethod
    def from_settings(cls, settings: TiledSettings, **kwargs: Any) -> TiledTraceWriter:
        """Build from :class:`~spt_stream.config.TiledSettings` (``url`` must be set)."""
        if not settings.url:
            raise SptValueError("Tiled settings have no url")
        return cls(settings.url, settings.api_key, queue_size=settings.queue_size, **kwargs)

    def __repr__(self) -> str:  # never shows the API key
        return f"TiledTraceWriter(url={self.url!r}, parent={'/'.join(self.parent)!r})"

    # ---------------------------------------------------------------- engine-facing API

    #: Label of this sink in metrics and the status view.
    name = "tiled"

    @property
    def stats(self) -> Mapping[str, int | float]:
        """Counters: rows accepted/written/dropped/duplicate, appends, append_seconds,
        failures, resyncs, runs_finalized, ``blocked_s`` (seconds callers waited for room,
        the wait in progress included); gauges: queued_rows (= ``queue_depth``), pending_ops,
        ``queue_capacity``, ``queue_high_water`` (rows), ``blocked`` (1 while a write waits)."""
        with self._cv:
            since = min(self._waiting.values(), default=None)
            waiting = 0.0 if since is None else time.monotonic() - since
            return {
                **self._counters,
                "queued_rows": self._queued_rows,
                "pending_ops": self._submitted - self._completed,
                "queue_capacity": self.queue_size,
                "queue_depth": self._queued_rows,
                "queue_high_water": self._high_water,
                "blocked": int(since is not None),
                "blocked_s": self._blocked_s + waiting,
            }

    def open_run(self, run_uid: str, attrs: Mapping[str, Any]) -> None:
        """Queue the creation (or resumption) of the run's container; never blocks on Tiled."""
        with self._cv:
            self._check_open()
            if run_uid in self._runs:
                return
            run = _Run(run_uid=run_uid, attrs=_jsonable(dict(attrs)))
            self._runs[run_uid] = run
            self._enqueue(_Open(run_uid, run.attrs), 0)

    def write(self, run_uid: str, rows: TraceRows) -> None:
        """Queue ``rows``; waits at most ``block_timeout`` (``on_full="block"``) for room, then
        drops the batch and records it as a gap. Never raises for Tiled being slow or down."""
        n = len(rows)
        if n == 0:
            return
        with self._cv:
            self._check_open()
            run = self._runs.get(run_uid)
            if run is None:
                raise SinkError("write() before open_run()", run_uid=run_uid, source=self.url)
            full = self._queued_rows > 0 and self._queued_rows + n > self.queue_size
            if full and not self._wait_for_room(n):
                self._drop(run, rows.seq_num, "queue full")
                return
            self._counters["rows_accepted"] += n
            self._enqueue(_Append(run_uid, rows), n)

    def finalize(self, run_uid: str, status: str) -> None:
        """Queue the final metadata (status, rows written, gaps); idempotent per run."""
        with self._cv:
            self._check_open()
            run = self._runs.get(run_uid)
            if run is None:
                raise SinkError("finalize() before open_run()", run_uid=run_uid, source=self.url)
            if run.finalize_queued:
                return
            run.finalize_queued = True
            self._enqueue(_Finalize(run_uid, status), 0)

    def finalize_and_wait(self, run_uid: str, status: str, timeout: float | None = None) -> bool:
        """:meth:`finalize`, then wait until the run's rows and final metadata are in Tiled.

        Returns ``True`` when they are, ``False`` after ``timeout`` seconds. This is the barrier
        the feedback publisher calls before publishing the derived run's stop document.
        """
        with self._cv:
            run = self._runs.get(run_uid) or self._finished.get(run_uid)
        if run is None:
            return False
        if not run.finalize_queued:
            self.finalize(run_uid, status)
        return run.done.wait(timeout) and run.final_ok

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every operation queued before this call is written or recorded as a gap.

        Raises
        ------
        SinkError
            If that takes longer than ``timeout`` seconds (Tiled down or slow).
        """
        with self._cv:
            target = self._submitted
            if not self._cv.wait_for(lambda: self._completed >= target, timeout):
                raise SinkTimeoutError(
                    f"Tiled flush timed out after {timeout} s: {target - self._completed} "
                    f"operations ({self._queued_rows} rows) still queued",
                    source=self.url,
                )

    def close(self, timeout: float = 10.0) -> None:
        """Drain the queue for up to ``timeout`` seconds, then stop; what is left is counted as
        dropped (reason ``"closed"``) and logged."""
        with self._cv:
            if self._closing:
                return
            self._closing = True
            self._cv.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abort.set()
            with self._cv:
                left = self._queued_rows
            log.error(
                "Tiled writer closed with %d rows not written (Tiled at %s unreachable?)",
                left,
                self.url,
            )
            self._thread.join(min(timeout, 2.0))

    def __enter__(self) -> TiledTraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- caller-side helpers

    def _check_open(self) -> None:
        if self._closing:
            raise SinkError("Tiled writer is closed", source=self.url)

    def _wait_for_room(self, n: int) -> bool:
        """Wait (``on_full="block"``: up to ``block_timeout``) until ``n`` rows fit; False if
        they do not. Counts the wait in ``blocked_s`` (caller holds the lock)."""
        me = threading.get_ident()
        t0 = time.monotonic()
        deadline = t0 + (self.block_timeout if self.on_full == "block" else 0)
        self._waiting[me] = t0
        try:
            while self._queued_rows > 0 and self._queued_rows + n > self.queue_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cv.wait(remaining)
            return True
        finally:
            del self._waiting[me]
            self._blocked_s += time.monotonic() - t0

    def _enqueue(self, op: _Op, n: int) -> None:
        self._ops.append(op)
        self._queued_rows += n
        self._high_water = max(self._high_water, self._queued_rows)
        self._submitted += 1
        self._cv.notify_all()

    def _drop(self, run: _Run, seq: np.ndarray[Any, Any], reason: str) -> None:
        """Record rows that will never reach Tiled (caller holds the lock)."""
        run.gaps.add(seq, reason)
        run.meta_dirty = True
        self._counters["rows_dropped"] += int(seq.shape[0])
        log.warning(
            "Tiled: dropped %d rows (seq_num %d..%d) of run %s: %s",
            seq.shape[0],
            int(seq.min()),
            int(seq.max()),
            run.run_uid,
            reason,
        )

    # ---------------------------------------------------------------- writer thread

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._ops and not self._closing:
                    self._cv.wait(0.5)
                    if not self._ops:
                        break
                if not self._ops:
                    if self._closing:
                        return
                    now = time.monotonic()
                    dirty = [
                        r
                        for r in self._runs.values()
                        if r.meta_dirty and r.node is not None and now - r.meta_synced_at > 2.0
                    ]
                    batch: list[_Op] = []
                else:
                    dirty = []
                    batch = self._take_batch()
            for run in dirty:  # idle: bring gap records up to date
                run.meta_synced_at = time.monotonic()
                self._attempt(run, "metadata", lambda r=run: self._sync_metadata(r))
            if batch:
                self._process(batch)

    def _take_batch(self) -> list[_Op]:
        """Pop the next op, plus following appends of the same run (coalescing)."""
        first = self._ops.popleft()
        batch: list[_Op] = [first]
        if isinstance(first, _Append):
            rows = len(first.rows)
            while self._ops:
                nxt = self._ops[0]
                if not isinstance(nxt, _Append) or nxt.run_uid != first.run_uid:
                    break
                if rows + len(nxt.rows) > self.max_rows_per_append:
                    break
                batch.append(self._ops.popleft())
                rows += len(nxt.rows)
        return batch

    def _process(self, batch: list[_Op]) -> None:
        first = batch[0]
        run = self._runs[first.run_uid]
        n_rows = 0
        if isinstance(first, _Open):
            self._attempt(run, "open", lambda: self._open(run))
        elif isinstance(first, _Finalize):
            run.final_ok = self._attempt(run, "finalize", lambda: self._finish(run, first.status))
            run.done.set()
        else:
            appends = [op for op in batch if isinstance(op, _Append)]
            n_rows = sum(len(op.rows) for op in appends)
            rows = (
                appends[0].rows
                if len(appends) == 1
                else TraceRows.concat([op.rows for op in appends])
            )
            if not self._attempt(run, "append", lambda: self._append(run, rows)):
                with self._cv:
                    missing = ~np.isin(rows.seq_num, np.fromiter(run.written, np.int64))
                    if missing.any():
                        reason = "closed" if self._abort.is_set() else "rejected by Tiled"
                        self._drop(run, rows.seq_num[missing], reason)
        with self._cv:
            self._completed += len(batch)
            self._queued_rows -= n_rows
            if isinstance(first, _Finalize):
                self._finished[first.run_uid] = self._runs.pop(first.run_uid, run)
                while len(self._finished) > 256:
                    self._finished.popitem(last=False)
            self._cv.notify_all()

    def _attempt(self, run: _Run, what: str, fn: Any) -> bool:
        """Run ``fn`` until it succeeds; ``False`` on a permanent error or when aborted.

        tenacity runs the attempts: back-off ``retry_initial`` doubling to ``retry_max``; an
        abort ends a wait at once (:func:`~spt_stream.backoff.sleep_unless`)."""
        kind, failures = _TRANSIENT, 0

        def once() -> None:
            nonlocal kind, failures
            if self._abort.is_set():
                raise RetryStoppedError
            try:
                fn()
            except Exception as exc:
                kind, failures = _classify(exc), failures + 1
                with self._cv:
                    self._counters["failures"] += 1
                    run.gaps.failures += 1
                    run.gaps.last_error = f"{what}: {_describe(exc)}"
                    run.meta_dirty = True
                if kind == _AMBIGUOUS:
                    run.resync = True
                if kind == _PERMANENT:
                    log.error(
                        "Tiled: %s of run %s failed for good: %s", what, run.run_uid, _describe(exc)
                    )
                    raise _GaveUpError from exc
                raise

        def log_retry(state: tenacity.RetryCallState) -> None:
            attempt = state.attempt_number
            if attempt == 1 or attempt % 10 == 0:
                log.warning(
                    "Tiled: %s of run %s failed (%s, attempt %d), retrying: %s",
                    what,
                    run.run_uid,
                    kind,
                    attempt,
                    _describe(last_error(state)),
                )

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(_retryable),
            wait=doubling(self.retry_initial, self.retry_max),
            sleep=sleep_unless(self._abort),
            before_sleep=log_retry,
        )
        try:
            retrying(once)
        except (_GaveUpError, RetryStoppedError):
            return False
        if failures:
            log.info("Tiled: %s of run %s succeeded after %d retries", what, run.run_uid, failures)
        return True

    # ---------------------------------------------------------------- Tiled operations

    def _connect(self) -> Any:
        if self._parent_node is not None:
            return self._parent_node
        from tiled.client import from_uri

        key = self._api_key.get_secret_value() if self._api_key is not None else None
        client = from_uri(self.url, api_key=key, remember_me=False, timeout=self.request_timeout)
        node = client
        for part in self.parent:
            node = node[part] if part in node else node.create_container(key=part)
        self._client, self._parent_node = client, node
        log.info("Tiled: connected to %s", self.url)
        return node

    def _open(self, run: _Run) -> None:
        parent = self._connect()
        md = {
            "raw_run_uid": run.run_uid,
            "status": "running",
            "started": time.time(),
            **run.attrs,
        }
        if run.run_uid in parent:
            node = parent[run.run_uid]
            node.update_metadata({"status": "running"}, drop_revision=True)
            if self.table_key in node:
                run.table = node[self.table_key]
                run.layout = TableLayout.from_schema(
                    run.table.structure().arrow_schema_decoded,
                    dict(node.metadata).get("trace"),
                )
                run.resync = True
                self._resync(run)
            log.info("Tiled: resuming run %s (%d rows present)", run.run_uid, len(run.written))
        else:
            node = parent.create_container(key=run.run_uid, metadata=md)
        run.node = node

    def _resync(self, run: _Run) -> None:
        """Read the table's seq_num column back (after an ambiguous failure or a restart)."""
        if run.table is None:
            run.resync = False
            return
        frame = run.table.read(columns=["seq_num"])
        seq = np.asarray(frame["seq_num"], dtype=np.int64)
        with self._cv:
            run.written.update(seq.tolist())
            run.rows_written = len(run.written)
            self._counters["resyncs"] += 1
        run.resync = False

    def _append(self, run: _Run, rows: TraceRows) -> None:
        if run.node is None:
            self._open(run)
        if run.resync:
            self._resync(run)
        # drop rows already in the table (re-delivery) and repeated seq_nums within the batch
        keep = rows.unseen(run.written)
        dup = len(rows) - int(keep.sum())
        if dup:
            with self._cv:
                self._counters["rows_duplicate"] += dup
        if not keep.any():
            return
        if not keep.all():
            rows = rows.take(keep)
        if run.layout is None:
            run.layout = TableLayout.from_rows(rows, max_flat_width=self.max_flat_width)
        table, ignored = run.layout.to_table(rows)
        if ignored:
            log.warning(
                "Tiled: run %s: columns not in the table, ignored: %s",
                run.run_uid,
                ", ".join(ignored),
            )
        if run.table is None:
            run.table = run.node.create_appendable_table(table.schema, key=self.table_key)
            run.node.update_metadata({"trace": run.layout.describe()}, drop_revision=True)
        t0 = time.perf_counter()
        run.table.append_partition(0, table)
        dt = time.perf_counter() - t0
        with self._cv:
            run.written.update(rows.seq_num.tolist())
            run.rows_written = len(run.written)
            self._counters["rows_written"] += len(rows)
            self._counters["appends"] += 1
            self._counters["append_seconds"] += dt

    def _sync_metadata(self, run: _Run) -> None:
        with self._cv:
            gaps = run.gaps.as_metadata()
            run.meta_dirty = False
        run.node.update_metadata(
            {"gaps": gaps, "rows_written": run.rows_written}, drop_revision=True
        )

    def _finish(self, run: _Run, status: str) -> None:
        if run.node is None:
            self._open(run)
        with self._cv:
            gaps = run.gaps.as_metadata()
            run.meta_dirty = False
        run.node.update_metadata(
            {
                "status": status,
                "finished": time.time(),
                "rows_written": run.rows_written,
                "gaps": gaps,
            },
            drop_revision=True,
        )
        with self._cv:
            self._counters["runs_finalized"] += 1
        log.info(
            "Tiled: run %s finalized (%s, %d rows, %d in gaps)",
            run.run_uid,
            status,
            run.rows_written,
            gaps["rows"],
        )

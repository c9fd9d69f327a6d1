"""The synchronous half of the Tiled trace writer: one run's container and table, over HTTP.

:class:`TiledTables` does the requests themselves, on the caller's thread: create or resume a
run's container, append rows (coalesced upstream), resync after an ambiguous failure, keep each
run's gap record, write the final metadata. It is the inner sink of
:class:`~spt_stream.sinks.tiled_trace.TiledTraceWriter`, which runs it on a
:class:`~spt_stream.sinks.threaded.ThreadedSink` thread; the layout on the server and the
failure policy are described there. The few methods the engine's threads call while the sink
thread works (:meth:`TiledTables.register`, :meth:`TiledTables.drop`, the lookups and counters)
share one lock with it. It stays one module (~450 lines) because the requests, their retry
and resync policy and the gap record they update are one piece of state: split, each part would
reach into the others' run records.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tenacity
from pydantic import SecretStr

from spt_stream.core.backoff import RetryStoppedError, doubling, last_error, sleep_unless
from spt_stream.errors import SinkError
from spt_stream.sinks.arrow_rows import TableLayout, merge_ranges, seq_ranges
from spt_stream.sinks.rows import TraceRows

__all__ = ["TiledTables"]

log = logging.getLogger("spt_stream.sinks.tiled_trace")  # the writer's log lines, as before

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
    """Sink-thread state of one run (gaps are shared with callers under the lock)."""

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


class TiledTables:
    """The synchronous Tiled sink (see module docstring); parameters as
    :class:`~spt_stream.sinks.tiled_trace.TiledTraceWriter`'s."""

    def __init__(
        self,
        url: str,
        api_key: SecretStr | None,
        *,
        parent: list[str],
        table_key: str,
        max_flat_width: int,
        retry_initial: float,
        retry_max: float,
        request_timeout: float,
    ) -> None:
        self._api_key = api_key
        self.url = url
        self.parent = parent
        self.table_key = table_key
        self.max_flat_width = max_flat_width
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.request_timeout = request_timeout
        self._lock = threading.Lock()
        self._runs: dict[str, _Run] = {}
        self._finished: OrderedDict[str, _Run] = OrderedDict()
        self._abort = threading.Event()
        self._client: Any = None
        self._parent_node: Any = None
        self.counters: dict[str, int | float] = {
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

    # ---------------------------------------------------------------- any thread

    def register(self, run_uid: str, attrs: Mapping[str, Any]) -> bool:
        """Know the run from now on (its gap record starts); False if it was already open."""
        with self._lock:
            if run_uid in self._runs:
                return False
            self._runs[run_uid] = _Run(run_uid=run_uid, attrs=_jsonable(dict(attrs)))
            return True

    def open_run_of(self, run_uid: str, what: str) -> _Run:
        """The open (not yet finalized) run; :class:`SinkError` naming ``what`` if none."""
        with self._lock:
            run = self._runs.get(run_uid)
        if run is None:
            raise SinkError(f"{what}() before open_run()", run_uid=run_uid, source=self.url)
        return run

    def lookup(self, run_uid: str) -> _Run | None:
        """The run, open or among the recently finalized ones."""
        with self._lock:
            return self._runs.get(run_uid) or self._finished.get(run_uid)

    def count(self, key: str, n: int) -> None:
        with self._lock:
            self.counters[key] += n

    def snapshot(self) -> dict[str, int | float]:
        with self._lock:
            return dict(self.counters)

    def drop(self, run_uid: str, rows: TraceRows, reason: str) -> None:
        """Record rows that will never reach Tiled as a gap of their run."""
        run = self.lookup(run_uid)
        if run is not None:
            with self._lock:
                self._drop(run, rows.seq_num, reason)

    def abort(self) -> None:
        """End retries and waits at once: what is left is dropped (reason ``"closed"``)."""
        self._abort.set()

    # ---------------------------------------------------------------- SyncSink (sink thread)

    def open_run(self, run_uid: str, attrs: Mapping[str, Any]) -> None:
        """Create (or resume) the run's container; never raises for Tiled being down."""
        self.register(run_uid, attrs)
        run = self.open_run_of(run_uid, "open_run")
        self._attempt(run, "open", lambda: self._open(run))

    def write(self, run_uid: str, rows: TraceRows) -> None:
        """Append ``rows``, retrying until it lands; rows that cannot land become gaps."""
        run = self.lookup(run_uid)
        if run is None:
            raise SinkError("write() before open_run()", run_uid=run_uid, source=self.url)
        if not self._attempt(run, "append", lambda: self._append(run, rows)):
            with self._lock:
                missing = ~np.isin(rows.seq_num, np.fromiter(run.written, np.int64))
                if missing.any():
                    reason = "closed" if self._abort.is_set() else "rejected by Tiled"
                    self._drop(run, rows.seq_num[missing], reason)

    def finalize(self, run_uid: str, status: str) -> None:
        """Write the final metadata (status, rows written, gaps); wakes ``run.done``."""
        run = self.lookup(run_uid)
        if run is None:
            raise SinkError("finalize() before open_run()", run_uid=run_uid, source=self.url)
        try:
            run.final_ok = self._attempt(run, "finalize", lambda: self._finish(run, status))
        finally:
            run.done.set()
            with self._lock:
                self._finished[run_uid] = self._runs.pop(run_uid, run)
                while len(self._finished) > 256:
                    self._finished.popitem(last=False)

    def flush(self) -> None:
        """Nothing buffered here: every write has landed or become a gap when it returns."""

    def close(self) -> None:
        """Nothing to release (the HTTP client closes with the process)."""

    def idle(self) -> None:
        """Bring the gap records of runs with new gaps up to date (at most every 2 s each)."""
        now = time.monotonic()
        with self._lock:
            dirty = [
                r
                for r in self._runs.values()
                if r.meta_dirty and r.node is not None and now - r.meta_synced_at > 2.0
            ]
        for run in dirty:
            run.meta_synced_at = time.monotonic()
            self._attempt(run, "metadata", functools.partial(self._sync_metadata, run))

    # ---------------------------------------------------------------- internals

    def _drop(self, run: _Run, seq: np.ndarray[Any, Any], reason: str) -> None:
        """Record rows that will never reach Tiled (caller holds the lock)."""
        run.gaps.add(seq, reason)
        run.meta_dirty = True
        self.counters["rows_dropped"] += int(seq.shape[0])
        log.warning(
            "Tiled: dropped %d rows (seq_num %d..%d) of run %s: %s",
            seq.shape[0],
            int(seq.min()),
            int(seq.max()),
            run.run_uid,
            reason,
        )

    def _attempt(self, run: _Run, what: str, fn: Callable[[], Any]) -> bool:
        """Run ``fn`` until it succeeds; ``False`` on a permanent error or when aborted.

        tenacity runs the attempts: back-off ``retry_initial`` doubling to ``retry_max``; an
        abort ends a wait at once (:func:`~spt_stream.core.backoff.sleep_unless`)."""
        kind, failures = _TRANSIENT, 0

        def once() -> None:
            nonlocal kind, failures
            if self._abort.is_set():
                raise RetryStoppedError
            try:
                fn()
            except Exception as exc:
                kind, failures = _classify(exc), failures + 1
                with self._lock:
                    self.counters["failures"] += 1
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
        with self._lock:
            run.written.update(seq.tolist())
            run.rows_written = len(run.written)
            self.counters["resyncs"] += 1
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
            with self._lock:
                self.counters["rows_duplicate"] += dup
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
        with self._lock:
            run.written.update(rows.seq_num.tolist())
            run.rows_written = len(run.written)
            self.counters["rows_written"] += len(rows)
            self.counters["appends"] += 1
            self.counters["append_seconds"] += dt

    def _sync_metadata(self, run: _Run) -> None:
        with self._lock:
            gaps = run.gaps.as_metadata()
            run.meta_dirty = False
        run.node.update_metadata(
            {"gaps": gaps, "rows_written": run.rows_written}, drop_revision=True
        )

    def _finish(self, run: _Run, status: str) -> None:
        if run.node is None:
            self._open(run)
        with self._lock:
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
        with self._lock:
            self.counters["runs_finalized"] += 1
        log.info(
            "Tiled: run %s finalized (%s, %d rows, %d in gaps)",
            run.run_uid,
            status,
            run.rows_written,
            gaps["rows"],
        )

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
~30-50 ms whatever its size). The thread and queue are
:class:`~spt_stream.sinks.threaded.ThreadedSink`'s (a rows-counted
:class:`~spt_stream.sinks.threaded.QueuePolicy`); the requests, retries and gap records are
:class:`~spt_stream.sinks.tiled_table.TiledTables`', which it drives synchronously. When the
queue is full, ``on_full="block"`` waits up to ``block_timeout`` seconds and then drops the
batch; ``on_full="drop"`` drops at once. A dropped batch is a *gap*: counted, logged, and
written into the run's metadata. The wait is visible in :attr:`TiledTraceWriter.stats` while it
lasts (``blocked``, ``blocked_s``, and the queue's
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
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import SecretStr

from spt_stream.config import TiledSettings
from spt_stream.errors import SinkError, SinkTimeoutError, SptValueError
from spt_stream.sinks.rows import TraceRows
from spt_stream.sinks.threaded import QueuePolicy, ThreadedSink
from spt_stream.sinks.tiled_table import TiledTables

__all__ = ["TiledTraceWriter"]

log = logging.getLogger(__name__)


class TiledTraceWriter(ThreadedSink):
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
        self._closing = False
        #: the synchronous sink the writer thread drives (the HTTP requests, the gap records)
        self.tables = TiledTables(
            url,
            SecretStr(api_key) if isinstance(api_key, str) else api_key,
            parent=self.parent,
            table_key=table_key,
            max_flat_width=max_flat_width,
            retry_initial=retry_initial,
            retry_max=retry_max,
            request_timeout=request_timeout,
        )
        super().__init__(
            self.tables,
            name="tiled",
            queue_size=queue_size,
            coalesce_rows=max_rows_per_append,
            policy=QueuePolicy(
                unit="rows",
                on_full=on_full,
                block_timeout=block_timeout,
                max_rows_per_write=max_rows_per_append,
            ),
            on_drop=self.tables.drop,
            idle_s=0.5,
        )

    @classmethod
    def from_settings(cls, settings: TiledSettings, **kwargs: Any) -> TiledTraceWriter:
        """Build from :class:`~spt_stream.config.TiledSettings` (``url`` must be set)."""
        if not settings.url:
            raise SptValueError("Tiled settings have no url")
        return cls(settings.url, settings.api_key, queue_size=settings.queue_size, **kwargs)

    def __repr__(self) -> str:  # never shows the API key
        return f"TiledTraceWriter(url={self.url!r}, parent={'/'.join(self.parent)!r})"

    # ---------------------------------------------------------------- engine-facing API

    @property
    def stats(self) -> Mapping[str, int | float]:
        """Counters: rows accepted/written/dropped/duplicate, appends, append_seconds,
        failures, resyncs, runs_finalized, ``blocked_s`` (seconds callers waited for room,
        the wait in progress included); gauges: queued_rows (= ``queue_depth``), pending_ops,
        ``queue_capacity``, ``queue_high_water`` (rows), ``blocked`` (1 while a write waits)."""
        queue = super().stats
        return {
            **self.tables.snapshot(),
            "queued_rows": queue["queue_depth"],
            "pending_ops": self.pending,
            "queue_capacity": queue["queue_capacity"],
            "queue_depth": queue["queue_depth"],
            "queue_high_water": queue["queue_high_water"],
            "blocked": queue["blocked"],
            "blocked_s": queue["blocked_s"],
        }

    def open_run(self, run_uid: str, attrs: Mapping[str, Any]) -> None:
        """Queue the creation (or resumption) of the run's container; never blocks on Tiled."""
        self._check_open()
        if self.tables.register(run_uid, attrs):
            super().open_run(run_uid, attrs)

    def write(self, run_uid: str, rows: TraceRows) -> None:
        """Queue ``rows``; waits at most ``block_timeout`` (``on_full="block"``) for room, then
        drops the batch and records it as a gap. Never raises for Tiled being slow or down."""
        n = len(rows)
        if n == 0:
            return
        self._check_open()
        self.tables.open_run_of(run_uid, "write")
        if self._offer(run_uid, rows):
            self.tables.count("rows_accepted", n)

    def finalize(self, run_uid: str, status: str) -> None:
        """Queue the final metadata (status, rows written, gaps); idempotent per run."""
        self._check_open()
        run = self.tables.open_run_of(run_uid, "finalize")
        with self._lock:
            if run.finalize_queued:
                return
            run.finalize_queued = True
        super().finalize(run_uid, status)

    def finalize_and_wait(self, run_uid: str, status: str, timeout: float | None = None) -> bool:
        """:meth:`finalize`, then wait until the run's rows and final metadata are in Tiled.

        Returns ``True`` when they are, ``False`` after ``timeout`` seconds. This is the barrier
        the feedback publisher calls before publishing the derived run's stop document.
        """
        run = self.tables.lookup(run_uid)
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
        if self._closing:  # nothing more can be queued: wait for the thread to drain
            self._thread.join(timeout)
            if not self._thread.is_alive():
                return
        else:
            try:
                super().flush(timeout)
                return
            except SinkTimeoutError:
                pass
        raise SinkTimeoutError(
            f"Tiled flush timed out after {timeout} s: {self.pending} "
            f"operations ({self.stats['queued_rows']} rows) still queued",
            source=self.url,
        )

    def close(self, timeout: float = 10.0) -> None:
        """Drain the queue for up to ``timeout`` seconds, then stop; what is left is counted as
        dropped (reason ``"closed"``) and logged."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        if not self._stop(timeout):  # the writer is aborted: what is left becomes gaps
            log.error(
                "Tiled writer closed with %d rows not written (Tiled at %s unreachable?)",
                self.stats["queued_rows"],
                self.url,
            )
            self._thread.join(min(timeout, 2.0))
        self.tables.close()

    def __enter__(self) -> TiledTraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closing:
            raise SinkError("Tiled writer is closed", source=self.url)

"""The engine: documents in, descriptor traces out.

``Engine`` is the single :class:`~spt_stream.protocols.DocumentHandler` every transport feeds
(Kafka, in-process ``RE.subscribe``, replays). Inside, one thread, in order:

``DocumentIngest`` (frame assembly) -> :class:`~spt_stream.batching.MicroBatcher` (size cap,
latency cap, flush at every stop document) -> :func:`~spt_stream.normalize.normalize_frames`
(batched) -> predictor (one forward per batch) -> every :class:`~spt_stream.sinks.base.TraceSink`
(Zarr first, then Tiled and feedback, which queue in the background).

Backpressure is structural: the transport calls the engine synchronously, so a slow batch or a
full sink queue slows the consumer, and memory stays bounded by the batch size and the sinks'
queue sizes. Kafka offsets are committed through ``commit`` only after every sink has flushed what
they cover (see :mod:`spt_stream.offsets`); frames whose ``seq_num`` the primary trace already
holds (a re-delivery after a crash) are skipped before the model runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from spt_stream._version import __version__
from spt_stream.batching import MicroBatcher
from spt_stream.config import EngineSettings
from spt_stream.deadletter import DeadLetterSink
from spt_stream.errors import SinkError, SptError
from spt_stream.frames import Frame, RunInfo
from spt_stream.ingest import DocumentIngest
from spt_stream.metrics import EngineMetrics
from spt_stream.normalize import NormParams, normalize_frames
from spt_stream.offsets import OffsetTracker, TopicPartition
from spt_stream.protocols import Position
from spt_stream.sinks.base import TraceSink
from spt_stream.sinks.rows import RESERVED_NAMES, Column2D, TraceRows, check_name

__all__ = ["Engine", "RunProgress"]

log = logging.getLogger(__name__)

#: Commits offsets; returns False when the broker refused (the engine retries later).
CommitFn = Callable[[Mapping[TopicPartition, int]], object]


class Predictor(Protocol):
    """What the engine needs of a model (``spt_stream.predictor.Predictor`` provides it)."""

    @property
    def info(self) -> Mapping[str, Any]: ...

    def predict_columns(
        self, norm: np.ndarray[Any, Any], elements: Sequence[str | None]
    ) -> tuple[dict[str, np.ndarray[Any, Any]], dict[str, Column2D]]: ...


@dataclass
class RunProgress:
    """Per-run state the engine keeps (and shows in the status view)."""

    info: RunInfo
    frames: int = 0
    duplicates: int = 0
    first_time: float = field(default_factory=time.time)
    last_time: float = 0.0
    status: str = "running"
    skip: set[int] = field(default_factory=set)


class Engine:
    """Join ingest, normalization, the model and the sinks (see the module docstring).

    Parameters
    ----------
    settings:
        Validated engine settings (batching, normalization, assembly limits).
    predictor:
        The model (see :class:`Predictor`).
    sinks:
        Trace sinks in priority order; the first one is the primary trace (Zarr), asked for
        already-committed ``seq_num`` s on resume via an optional ``committed_seq_nums(run_uid)``.
    dead_letter:
        Where rejected input is recorded.
    commit:
        Called with ``{(topic, partition): next_offset}`` once the sinks have flushed.
    """

    def __init__(
        self,
        settings: EngineSettings,
        predictor: Predictor,
        sinks: Sequence[TraceSink],
        *,
        dead_letter: DeadLetterSink | None = None,
        commit: CommitFn | None = None,
        metrics: EngineMetrics | None = None,
        commit_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.predictor = predictor
        self.sinks = list(sinks)
        self.metrics = metrics or EngineMetrics()
        self._commit = commit
        self._commit_interval = commit_interval_s
        self._last_commit = clock()
        self._clock = clock
        self._params = NormParams.from_settings(settings.normalization)
        self._batcher: MicroBatcher[Frame] = MicroBatcher(settings.batch, clock=clock)
        self._offsets = OffsetTracker()
        self.runs: dict[str, RunProgress] = {}
        self._finished: list[RunProgress] = []
        self._config_snapshot = settings.public_dump()
        self.ingest = DocumentIngest(
            self._on_frame,
            on_run_start=self._on_run_start,
            on_run_stop=self._on_run_stop,
            dead_letter=dead_letter,
            settings=settings.assembly,
        )

    # -- DocumentHandler -----------------------------------------------------------------------
    def __call__(self, name: str, doc: Mapping[str, Any], position: Position | None = None) -> None:
        if name == "start" and isinstance(doc, Mapping) and isinstance(doc.get("uid"), str):
            self._offsets.run_opened(doc["uid"], position)
        elif name == "stop":
            # The stop's own offset must be covered by the commit its run's close makes below
            # (else a crash right after re-delivers a stop whose run is already closed). An
            # offset past a run still open is never committed, so this is safe if the stop fails.
            self._offsets.handled(position)
        self.metrics.documents.labels(name=name if isinstance(name, str) else "?").inc()
        self.ingest(name, doc, position)
        self._offsets.handled(position)
        self.tick()

    def reject(
        self, error: SptError, payload: bytes | None = None, position: Position | None = None
    ) -> None:
        self.ingest.reject(error, payload, position)
        self.metrics.rejected.labels(reason=type(error).__name__).inc()
        self._offsets.handled(position)

    # -- periodic work -------------------------------------------------------------------------
    def tick(self) -> None:
        """Release a batch whose latency cap passed; commit when due. Call when idle, too."""
        batch = self._batcher.poll()
        if batch:
            self._process(batch)
        if self._commit is not None and self._clock() - self._last_commit >= self._commit_interval:
            self.commit()

    def idle(self) -> None:
        """The transport has caught up with its input (nothing more is buffered): run the held
        frames now rather than waiting out the latency cap, then do the periodic work.

        Holding frames only pays while more are already waiting (a backlog, where batches fill
        at once); live, waiting for the cap adds up to ``max_latency_ms`` to every frame's
        latency for no gain. Kafka calls this after every poll that returned fewer records
        than it could have.
        """
        pending = self._batcher.flush()
        if pending:
            self._process(pending)
        self.tick()

    def time_until_due(self) -> float | None:
        """Seconds until the batcher's latency cap expires (None: nothing pending)."""
        return self._batcher.time_until_due()

    def commit(self) -> None:
        """Flush every sink, then commit the offsets that flush made safe."""
        self._last_commit = self._clock()
        if self._commit is None:
            return
        offsets = self._offsets.committable()
        if not offsets:
            return
        try:
            self.flush_sinks()
        except SinkError as exc:
            log.error("not committing offsets: a sink could not flush: %s", exc)
            return
        if self._commit(offsets) is False:
            log.warning("offset commit refused; will retry: %s", offsets)
            return
        self._offsets.mark_committed(offsets)
        self.metrics.commits.inc()

    def flush_sinks(self, timeout: float | None = 30.0) -> None:
        for sink in self.sinks:
            sink.flush(timeout)

    def close(self) -> None:
        """Process what is pending, flush the sinks, commit, and close the sinks.

        Runs still open (no stop document yet) are NOT finalized: their traces stay resumable,
        and their start offsets stay uncommitted so a restart re-reads them.
        """
        pending = self._batcher.flush()
        if pending:
            self._process(pending)
        self.commit()
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # closing must not mask the others
                log.error("closing sink %r failed: %s", sink, exc)

    # -- callbacks from ingest -----------------------------------------------------------------
    def _on_run_start(self, info: RunInfo) -> None:
        model = dict(self.predictor.info)
        attrs = {
            "element": info.element,
            "edge": info.edge,
            "mode": info.mode,
            "layout": info.layout,
            "resolved_by": info.resolved_by,
            "start_time": info.start_time,
            "keys": dict(info.keys),
            "start_metadata": dict(info.metadata),
            "model": model,
            "config": self._config_snapshot,
            "engine_version": __version__,
        }
        progress = RunProgress(info=info)
        self.runs[info.run_uid] = progress
        for i, sink in enumerate(self.sinks):
            try:
                sink.open_run(info.run_uid, attrs)
                if i == 0:
                    committed = getattr(sink, "committed_seq_nums", None)
                    if callable(committed):
                        progress.skip = set(committed(info.run_uid))
            except SptError as exc:
                self.metrics.sink_errors.labels(sink=type(sink).__name__).inc()
                log.error("sink %s: cannot open run %s: %s", type(sink).__name__, info.run_uid, exc)
                if i == 0:  # no primary trace: the run's frames cannot be kept
                    progress.status = "failed"
                    break
        self.metrics.open_runs.set(len(self.runs))

    def _on_frame(self, frame: Frame) -> None:
        progress = self.runs.get(frame.run_uid)
        if progress is not None and progress.status == "failed":
            self.metrics.rejected.labels(reason="run_not_writable").inc()
            return
        if progress is not None and frame.seq_num in progress.skip:
            progress.duplicates += 1
            self.metrics.duplicates.inc()
            return
        batch = self._batcher.add(frame)
        self.metrics.pending_frames.set(len(self._batcher))
        if batch:
            self._process(batch)

    def _on_run_stop(self, run_uid: str, stop: Mapping[str, Any]) -> None:
        pending = self._batcher.flush()
        if pending:
            self._process(pending)
        status = str(stop.get("exit_status", "unknown"))
        known = self.runs.get(run_uid)
        writable = known is not None and known.status != "failed"
        for sink in self.sinks if writable else ():
            try:
                sink.finalize(run_uid, status)
            except SptError as exc:
                self.metrics.sink_errors.labels(sink=type(sink).__name__).inc()
                log.error(
                    "sink %s could not finalize run %s: %s", type(sink).__name__, run_uid, exc
                )
        progress = self.runs.pop(run_uid, None)
        if progress is not None:
            progress.status = status
            self._finished.append(progress)
            del self._finished[:-32]
        try:
            self.flush_sinks()
        except SinkError as exc:
            log.error(
                "run %s: sinks not flushed at stop, offsets stay uncommitted: %s", run_uid, exc
            )
        else:
            self._offsets.run_closed(run_uid)
        self.metrics.open_runs.set(len(self.runs))
        if self._commit is not None:
            self.commit()

    # -- the batch path ------------------------------------------------------------------------
    def _process(self, frames: list[Frame]) -> None:
        t0 = time.perf_counter()
        self.metrics.pending_frames.set(len(self._batcher))
        normed = normalize_frames(
            frames,
            self._params,
            calibrate_from_reference=self.settings.normalization.calibrate_from_reference,
            energy_shift=self.settings.normalization.energy_shift,
        )
        columns, arrays = self.predictor.predict_columns(normed.norm, [f.element for f in frames])
        columns = {
            **columns,
            "e0": normed.e0,
            "edge_step": normed.edge_step,
            "energy_shift": normed.energy_shift,
            "flags": normed.flags.astype(np.int64),
        }
        arrays = {
            **arrays,
            "norm": Column2D(values=normed.norm, dim="energy_rel", coord=normed.grid_rel),
        }
        order: dict[str, list[int]] = {}
        for i, frame in enumerate(frames):
            order.setdefault(frame.run_uid, []).append(i)
        for run_uid, idx in order.items():
            rows = _rows_for(frames, idx, columns, arrays)
            for i, sink in enumerate(self.sinks):
                try:
                    sink.write(run_uid, rows)
                except SptError as exc:
                    self.metrics.sink_errors.labels(sink=type(sink).__name__).inc()
                    if i == 0:
                        raise
                    log.error("sink %s failed on run %s: %s", type(sink).__name__, run_uid, exc)
            progress = self.runs.get(run_uid)
            if progress is not None:
                progress.frames += len(idx)
                progress.last_time = float(rows.time[-1])
        now = time.time()
        self.metrics.frames.inc(len(frames))
        self.metrics.batches.inc()
        self.metrics.observe_latencies(now - f.time for f in frames)
        self.metrics.batch_seconds.observe(time.perf_counter() - t0)

    # -- status --------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Numbers for the live status view (frames, latency quantiles, runs)."""
        p50, p99 = self.metrics.window.quantiles((0.5, 0.99))
        return {
            "frames": int(self.metrics.frames._value.get()),
            "latency_p50_ms": p50 * 1e3,
            "latency_p99_ms": p99 * 1e3,
            "pending": len(self._batcher),
            "ingest": self.ingest.counts.as_dict(),
            "runs": [
                {
                    "run_uid": p.info.run_uid,
                    "element": p.info.element,
                    "frames": p.frames,
                    "duplicates": p.duplicates,
                    "status": p.status,
                }
                for p in [*self._finished[-8:], *self.runs.values()]
            ],
        }


def _rows_for(
    frames: Sequence[Frame],
    idx: list[int],
    columns: Mapping[str, np.ndarray[Any, Any]],
    arrays: Mapping[str, Column2D],
) -> TraceRows:
    sel = np.asarray(idx)
    records = [
        {k: v for k, v in frames[i].scalars.items() if _scalar_name_ok(k, columns, arrays)}
        for i in idx
    ]
    scalars = TraceRows.from_records(
        (frames[i].seq_num for i in idx), (frames[i].time for i in idx), records
    )
    own = {k: v for k, v in scalars.columns.items() if k not in columns}
    return TraceRows(
        seq_num=scalars.seq_num,
        time=scalars.time,
        columns={**{k: np.asarray(v)[sel] for k, v in columns.items()}, **own},
        arrays={
            k: Column2D(values=c.values[sel], dim=c.dim, coord=c.coord) for k, c in arrays.items()
        },
    )


def _scalar_name_ok(name: str, columns: Mapping[str, Any], arrays: Mapping[str, Column2D]) -> bool:
    """An event scalar becomes a trace column unless its name is taken or not storable."""
    if name in columns or name in arrays or name in RESERVED_NAMES:
        return False
    try:
        check_name(name)
    except SptError:
        return False
    return True

"""The engine: documents in, descriptor traces out.

``Engine`` is the single :class:`~spt_stream.protocols.DocumentHandler` every transport feeds
(Kafka, in-process ``RE.subscribe``, replays). Inside, one thread, in order:

``DocumentIngest`` (frame assembly) -> :class:`~spt_stream.batching.MicroBatcher` (size cap,
latency cap, flush at every stop document) -> :func:`~spt_stream.normalize.normalize_frames`
(batched) -> predictor (one forward per batch) -> every :class:`~spt_stream.sinks.base.TraceSink`
(Zarr first, then Tiled and feedback, which queue in the background).

With ``batch.overlap`` (``auto``: on when the model is lock-free, ``Predictor.lock_free``) the
model and the sink hand-off of every full batch run on a second thread (:class:`_BatchWorker`,
at most one batch running and one waiting); every point that must see all earlier batches
written (a run's stop, offset commits, sink flushes, close) first waits for it to drain, and an
error raised there is raised again on the transport's thread. Why, and the measurements behind
``auto``: docs/BENCHMARKS.md, "The engine's model thread".

Backpressure is structural: the transport calls the engine synchronously, so memory stays
bounded by the batch size, the worker's two-batch queue and the sinks' queue sizes. Kafka offsets
are committed through ``commit`` only after every sink has flushed what they cover (see
:mod:`spt_stream.offsets`); frames whose ``seq_num`` the primary trace already holds (a
re-delivery after a crash) are skipped before the model runs.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from spt_stream._memory import trim_heap
from spt_stream._version import __version__
from spt_stream.batching import MicroBatcher
from spt_stream.classical.tracking import ClassicalStage, load_reference_run
from spt_stream.config import EngineSettings
from spt_stream.deadletter import DeadLetterSink
from spt_stream.errors import SinkTimeoutError, SptError
from spt_stream.frames import Frame, RunInfo
from spt_stream.ingest import DocumentIngest
from spt_stream.metrics import EngineMetrics, sink_queues
from spt_stream.normalize import NormParams, normalize_frames
from spt_stream.normalize.frames_to_grid import NormalizedBatch
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


# A predictor may also offer ``thread_init()``: called first on the model thread (OpenMP thread
# caps are per thread: without it, torch on a new thread runs at the default pool size).


class _BatchWorker:
    """One background thread running ``work(item)`` in submission order (see the module doc
    and docs/BENCHMARKS.md, "The engine's model thread")."""

    def __init__(
        self,
        work: Callable[[Any], None],
        name: str = "spt-model",
        thread_init: Callable[[], object] | None = None,
    ) -> None:
        self._work = work
        self._thread_init = thread_init
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._done = threading.Condition()
        self.submitted = 0
        self._completed = 0
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        if self._thread_init is not None:
            try:
                self._thread_init()
            except Exception as exc:  # a slower model thread is no reason to stop
                log.error("model thread set-up failed: %s", exc)
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._work(item)
            except BaseException as exc:  # re-raised on the caller's thread
                if self._error is None:
                    self._error = exc
                else:
                    log.error("batch failed (an earlier failure is not reported yet): %s", exc)
            finally:
                if item is not None:
                    with self._done:
                        self._completed += 1
                        self._done.notify_all()
                self._queue.task_done()

    @property
    def idle(self) -> bool:
        """Every submitted batch has run (nothing queued or running)."""
        with self._done:
            return self._completed >= self.submitted

    def raise_pending(self) -> None:
        """Raise what an earlier batch raised, if anything (once)."""
        err, self._error = self._error, None
        if err is not None:
            raise err

    def submit(self, item: Any) -> None:
        """Queue ``item`` (blocks while one batch runs and one waits), then raise what an
        earlier batch raised meanwhile (``item`` itself is queued either way)."""
        if self._closed:
            raise RuntimeError("batch worker is closed")
        self.submitted += 1
        self._queue.put(item)
        self.raise_pending()

    def wait_for(self, target: int, timeout: float | None = None) -> bool:
        """Wait until ``target`` submitted batches have run (from any thread; raises nothing)."""
        with self._done:
            return self._done.wait_for(lambda: self._completed >= target, timeout)

    def drain(self) -> None:
        """Wait until everything submitted has run; raise what failed meanwhile."""
        self._queue.join()
        self.raise_pending()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()


@dataclass
class _CommitJob:
    """Offsets to commit once every sink has flushed what was handed to it before ``batches``
    model-thread batches (taken on the transport's thread), and runs whose stop was handled
    then: they count as closed for the offsets once this flush succeeded."""

    offsets: dict[TopicPartition, int]
    closing: list[str]
    batches: int
    flushed: bool = False
    committed: bool = False
    #: A sink was only slow (its flush timed out): try the closing runs again next time.
    retry: bool = False


class _Committer:
    """Flush the sinks and commit offsets on a thread of its own.

    A flush waits for the slowest sink (Tiled behind a slow server or a feedback topic waiting
    for Tiled's barrier at a stop document: seconds); on the transport's thread that wait stalls
    every frame of every run. Here the transport only takes the snapshot (``_CommitJob``) and
    picks up the result at a later tick, one job at a time. The offset bookkeeping stays on the
    transport's thread.
    """

    def __init__(self, run: Callable[[_CommitJob], None]) -> None:
        self._run = run
        self._lock = threading.Lock()
        self._job: _CommitJob | None = None
        self._done: _CommitJob | None = None
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="spt-commit", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        return not self._idle.is_set()

    def submit(self, job: _CommitJob) -> None:
        with self._lock:
            if self._job is not None or self._done is not None:
                raise RuntimeError("one commit job at a time")
            self._job = job
            self._idle.clear()
        self._wake.set()

    def take_result(self) -> _CommitJob | None:
        with self._lock:
            done, self._done = self._done, None
            return done

    def wait_idle(self, timeout: float | None = None) -> bool:
        return self._idle.wait(timeout)

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                job = self._job
            if job is not None:
                try:
                    self._run(job)
                except Exception as exc:  # never lose the thread; the job counts as failed
                    log.error("offset commit failed: %s", exc)
                with self._lock:
                    self._job, self._done = None, job
                self._idle.set()
            if self._stopping:
                return


#: Attributes of the columns normalization fills (trace column ``attrs``, with the model's).
NORMALIZATION_ATTRS: dict[str, dict[str, str]] = {
    "e0": {"units": "eV", "long_name": "edge energy found by normalization"},
    "edge_step": {"units": "mu", "long_name": "edge step (pre- to post-edge line at e0)"},
    "energy_shift": {"units": "eV", "long_name": "energy shift applied before normalization"},
    "flags": {"long_name": "normalization quality flags (bit set, spt_stream.normalize)"},
    "norm": {"long_name": "normalized mu(E) on the model grid"},
}


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
        #: Per-column attributes (units, long_name) the model runner declares, given to the sinks
        #: with the rows (a store sets them when it creates the column).
        self._column_attrs: dict[str, dict[str, str]] = {
            **NORMALIZATION_ATTRS,
            **(getattr(predictor, "column_attrs", None) or {}),
        }
        self.sinks = list(sinks)
        self.metrics = metrics or EngineMetrics()
        self._commit = commit
        self._commit_interval = commit_interval_s
        self._last_commit = clock()
        self._clock = clock
        self._params = NormParams.from_settings(settings.normalization)
        #: Classical descriptors and run-relative tracking beside the network (per-run state).
        tracking = settings.tracking
        self.classical = ClassicalStage(
            tracking.reference_frames,
            named=(
                load_reference_run(
                    settings.zarr.root, tracking.reference_run, tracking.reference_frames
                )
                if tracking.reference_run and tracking.classical
                else None
            ),
        )
        self._batcher: MicroBatcher[Frame] = MicroBatcher(settings.batch, clock=clock)
        self._offsets = OffsetTracker()
        self._worker = (
            self._new_worker() if self._overlap(settings.batch.overlap, predictor) else None
        )
        #: ``batch.overlap: auto`` with a model not lock-free (yet): check again between batches
        #: (a background compile may switch the model to the lock-free AOT package).
        self._overlap_later = self._worker is None and settings.batch.overlap == "auto"
        self.metrics.watch_sinks(self.sinks)  # queue depth / blocked time, read at scrape
        self.metrics.watch_model(self.model_state)
        #: Runs whose stop was handled, not yet known durable in every sink.
        self._closing: list[str] = []
        self._committer = _Committer(self._flush_and_commit) if commit is not None else None
        self.runs: dict[str, RunProgress] = {}
        self._finished: list[RunProgress] = []
        #: :meth:`warm_up` has run (``build_pipeline`` runs it before the source reads).
        self.warmed_up = False
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
        """Take the result of the last commit job, and start the next one when there is
        something to commit (non-blocking; see :class:`_Committer`): it flushes every sink,
        then commits the offsets that flush made safe."""
        self._last_commit = self._clock()
        committer = self._committer
        if committer is None:
            return
        done = committer.take_result()
        if done is not None:
            self._apply(done)
        if committer.busy:
            return
        job = self._next_job()
        if job is not None:
            committer.submit(job)

    def commit_now(self, timeout: float | None = 60.0) -> None:
        """Commit synchronously what is committable now (waits for the sinks' flush)."""
        committer = self._committer
        if committer is None:
            return
        for _ in range(3):  # the running job; one closing runs; one for the offsets they free
            if not committer.wait_idle(timeout):
                log.error("offset commit still running after %s s; not waiting longer", timeout)
                return
            done = committer.take_result()
            if done is not None:
                self._apply(done)
            job = self._next_job()
            if job is None:
                return
            committer.submit(job)

    def _next_job(self) -> _CommitJob | None:
        closing, self._closing = self._closing, []
        # A job closing runs commits nothing itself: the next one commits past those runs.
        offsets = {} if closing else self._offsets.committable()
        if not offsets and not closing:
            return None
        batches = self._worker.submitted if self._worker is not None else 0
        return _CommitJob(offsets=offsets, closing=closing, batches=batches)

    def _flush_and_commit(self, job: _CommitJob) -> None:
        """The committer thread's work (touches no engine state but the job)."""
        if self._worker is not None:
            self._worker.wait_for(job.batches)
        try:
            for sink in self.sinks:
                sink.flush(30.0)
        except SptError as exc:
            job.retry = isinstance(exc, SinkTimeoutError)
            level = logging.WARNING if job.retry else logging.ERROR
            log.log(level, "not committing offsets: a sink could not flush: %s", exc)
            return
        job.flushed = True
        if job.offsets and self._commit is not None:
            if self._commit(job.offsets) is False:
                log.warning("offset commit refused; will retry: %s", job.offsets)
                return
            job.committed = True

    def _apply(self, job: _CommitJob) -> None:
        """A finished job's effect on the offset bookkeeping (transport's thread)."""
        if job.committed:
            self._offsets.mark_committed(job.offsets)
            self.metrics.commits.inc()
        if job.flushed:
            for uid in job.closing:
                self._offsets.run_closed(uid)
            if job.closing:  # their offsets are committable now: do not wait the interval
                self._last_commit = self._clock() - self._commit_interval
        elif job.retry:  # slow, not failed: their offsets wait for a later flush
            self._closing[:0] = job.closing
        elif job.closing:
            log.error(
                "runs %s: sinks not flushed after their stop; their offsets stay uncommitted "
                "(a restart re-reads them)",
                job.closing,
            )

    def drain(self) -> None:
        """Wait until every batch handed to the model thread has been written to the sinks."""
        if self._worker is not None:
            self._worker.drain()

    def flush_sinks(self, timeout: float | None = 30.0) -> None:
        self.drain()
        for sink in self.sinks:
            sink.flush(timeout)

    def close(self) -> None:
        """Process what is pending, flush the sinks, commit, and close the sinks.

        Runs still open (no stop document yet) are NOT finalized: their traces stay resumable,
        and their start offsets stay uncommitted so a restart re-reads them.
        """
        pending = self._batcher.flush()
        failed = False
        try:
            if pending:
                self._process(pending)
            self.drain()
        except SptError as exc:  # still close the sinks (what they hold is kept)
            failed = True
            log.error("last batches not written at close, offsets not committed: %s", exc)
        finally:
            if self._worker is not None:
                self._worker.close()
        if not failed:
            self.commit_now()
        if self._committer is not None:
            self._committer.close()
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # closing must not mask the others
                log.error("closing sink %r failed: %s", sink, exc)

    # -- callbacks from ingest -----------------------------------------------------------------
    def _on_run_start(self, info: RunInfo) -> None:
        model = dict(self.predictor.info)
        reference = (
            self.classical.start_run(info.run_uid, info.element)
            if self.settings.tracking.classical
            else None
        )
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
            "os_delta_reference": reference,
        }
        progress = RunProgress(info=info)
        self.runs[info.run_uid] = progress
        for i, sink in enumerate(self.sinks):
            try:
                if i == 0:
                    # Before open_run: a new run has no trace yet and costs one existence check;
                    # only a resumed one is read (open_run may be queued, see ThreadedSink).
                    committed = getattr(sink, "committed_seq_nums", None)
                    if callable(committed):
                        progress.skip = set(committed(info.run_uid))
                sink.open_run(info.run_uid, attrs)
            except SptError as exc:
                self.metrics.sink_errors.labels(sink=type(sink).__name__).inc()
                log.error("sink %s: cannot open run %s: %s", type(sink).__name__, info.run_uid, exc)
                if i == 0:  # no primary trace: the run's frames cannot be kept
                    progress.status = "failed"
                    break
        self.metrics.open_runs.set(len(self.runs))
        log.info(
            "run %s started: %s %s edge (%s)",
            info.run_uid,
            info.element or "?",
            info.edge or "?",
            info.resolved_by,
        )

    def _on_frame(self, frame: Frame) -> None:
        progress = self.runs.get(frame.run_uid)
        if progress is not None and progress.status == "failed":
            self.metrics.rejected.labels(reason="run_not_writable").inc()
            return
        if progress is not None and frame.seq_num in progress.skip:
            if self.settings.tracking.classical and self.classical.needs_reference(frame.run_uid):
                # written before a restart: its edge still belongs to the run's reference
                self._observe_reference(frame)
            progress.duplicates += 1
            self.metrics.duplicates.inc()
            return
        batch = self._batcher.add(frame)
        self.metrics.pending_frames.set(len(self._batcher))
        if batch:
            self._process(batch)

    def _observe_reference(self, frame: Frame) -> None:
        normed = normalize_frames(
            [frame],
            self._params,
            calibrate_from_reference=self.settings.normalization.calibrate_from_reference,
            energy_shift=self.settings.normalization.energy_shift,
        )
        self.classical.observe([frame.run_uid], [frame.seq_num], normed.norm, normed.grid_rel)

    def _on_run_stop(self, run_uid: str, stop: Mapping[str, Any]) -> None:
        pending = self._batcher.flush()
        if pending:
            self._process(pending)
        self.drain()
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
        self.classical.close_run(run_uid)
        progress = self.runs.pop(run_uid, None)
        if progress is not None:
            progress.status = status
            self._finished.append(progress)
            del self._finished[:-32]
            log.info(
                "run %s finished (%s): %d frames, %d duplicates",
                run_uid,
                status,
                progress.frames,
                progress.duplicates,
            )
        # Durable once the next commit job has flushed every sink (off this thread: Tiled or
        # the feedback barrier may take seconds); then its offsets become committable.
        if self._committer is not None:
            self._closing.append(run_uid)
        self.metrics.open_runs.set(len(self.runs))
        if not self.runs:
            trim_heap()  # between runs: give freed buffers back (see spt_stream._memory)
        self.commit()

    # -- the batch path ------------------------------------------------------------------------
    def _new_worker(self) -> _BatchWorker:
        return _BatchWorker(
            self._predict_and_write, thread_init=getattr(self.predictor, "thread_init", None)
        )

    def model_state(self) -> dict[str, Any]:
        """Which model backend serves now and whether one compiles in the background (status
        view, snapshot, the ``spt_model_backend`` metric)."""
        return {
            "backend": str(getattr(self.predictor, "backend", None) or self.predictor.info.get(
                "backend", "?")),
            "compiling": bool(getattr(self.predictor, "compiling", False)),
        }  # fmt: skip

    @staticmethod
    def _overlap(setting: bool | str, predictor: object) -> bool:
        """``batch.overlap``; ``auto``: on exactly when the model's forward pass runs without
        the interpreter lock (``predictor.lock_free``)."""
        if setting == "auto":
            on = bool(getattr(predictor, "lock_free", False))
            log.info("model thread (batch.overlap auto): %s", "on" if on else "off")
            return on
        return bool(setting)

    def _process(self, frames: list[Frame]) -> None:
        """Normalize here; model and sink writes here or on the model thread (``overlap``)."""
        t0 = time.perf_counter()
        self.metrics.pending_frames.set(len(self._batcher))
        normed = normalize_frames(
            frames,
            self._params,
            calibrate_from_reference=self.settings.normalization.calibrate_from_reference,
            energy_shift=self.settings.normalization.energy_shift,
        )
        if self._overlap_later and getattr(self.predictor, "lock_free", False):
            # The model became lock-free (switched to the AOT package): between two batches,
            # with nothing in flight elsewhere, start the model thread ``auto`` asks for.
            self._overlap_later = False
            self._worker = self._new_worker()
            log.info("model thread (batch.overlap auto): on (the model is lock-free now)")
        worker = self._worker
        if worker is None or (len(frames) < self.settings.batch.max_size and worker.idle):
            # No model thread, or a partial batch (live rates) while the thread has nothing in
            # hand: run it here, in order, without a hand-over between threads. Full batches
            # (a backlog) go to the model thread and overlap the next batch's preparation.
            if worker is not None:
                worker.raise_pending()
            self._predict_and_write((frames, normed, t0))
        else:
            worker.submit((frames, normed, t0))

    def _analyse(
        self, frames: Sequence[Frame], normed: NormalizedBatch, classical: ClassicalStage
    ) -> tuple[dict[str, np.ndarray[Any, Any]], dict[str, Column2D]]:
        """The trace columns of a normalized batch: the model's, the classical stage's and the
        normalization's."""
        columns, arrays = self.predictor.predict_columns(normed.norm, [f.element for f in frames])
        extra = (
            classical.columns(
                [f.run_uid for f in frames],
                [f.seq_num for f in frames],
                [f.element for f in frames],
                normed.norm,
                normed.grid_rel,
            )
            if self.settings.tracking.classical
            else {}
        )
        columns = {
            **columns,
            **extra,
            "e0": normed.e0,
            "edge_step": normed.edge_step,
            "energy_shift": normed.energy_shift,
            "flags": normed.flags.astype(np.int64),
        }
        arrays = {
            **arrays,
            "norm": Column2D(values=normed.norm, dim="energy_rel", coord=normed.grid_rel),
        }
        return columns, arrays

    def _predict_and_write(self, item: tuple[list[Frame], NormalizedBatch, float]) -> None:
        frames, normed, t0 = item
        columns, arrays = self._analyse(frames, normed, self.classical)
        order: dict[str, list[int]] = {}
        for i, frame in enumerate(frames):
            order.setdefault(frame.run_uid, []).append(i)
        for run_uid, idx in order.items():
            rows = _rows_for(frames, idx, columns, arrays, self._column_attrs)
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

    # -- start-up ------------------------------------------------------------------------------
    def warm_up(self, elements: Sequence[str] | None = None) -> dict[str, float]:
        """Pay every first-use cost of the frame path now, before any document is read.

        Without it the first frame of the first run paid them all (measured with the
        RunEngine at 100 frames/s: ~1 s, ~100 frames queued behind it): the X-ray database
        behind the edge energies (imported and opened on first use), the normalization and
        classical-feature plans and smoothing matrices, the model's columns, the trace rows,
        and in the sinks the feedback topics' metadata (the producer's first send waits for
        it) and Zarr's first store. Runs synthetic frames (a smooth K edge of one of the
        model's ``elements`` on a 400-point quick-XAS grid, batches of 1 and 2) through
        normalization, the model, a scratch classical stage (the engine's run state is not
        touched) and the trace-row builder, and hands the rows to every sink's ``warm_up``
        (if it has one; feedback builds its messages without sending them, Zarr writes a
        scratch store in a temporary folder). Returns seconds per step. A step that fails is
        logged and skipped: warm-up never stops the engine from starting.
        """
        from spt_stream.grid import edge_energy

        times: dict[str, float] = {}
        known = tuple(elements or getattr(self.predictor, "elements", None) or ("Co",))
        t = time.perf_counter()
        for el in known:  # the edge energies every frame's normalization looks up
            for edge in ("K", "L3"):
                with contextlib.suppress(SptError):
                    edge_energy(el, edge)
        times["edges"] = time.perf_counter() - t
        element = "Co" if "Co" in known else known[0]
        try:
            e0 = edge_energy(element, "K")
        except SptError:
            element, e0 = "Co", edge_energy("Co", "K")
        rel = np.linspace(-60.0, 140.0, 400)
        energy = e0 + rel
        rows: TraceRows | None = None
        t = time.perf_counter()
        try:
            scratch = ClassicalStage(self.settings.tracking.reference_frames)
            for b in (1, 2):
                frames = [
                    Frame(
                        run_uid="warm-up",
                        seq_num=i + 1,
                        time=time.time(),
                        energy=energy,
                        mu=_synthetic_edge(rel, shift=0.3 * i),
                        element=element,
                        edge="K",
                    )
                    for i in range(b)
                ]
                normed = normalize_frames(
                    frames,
                    self._params,
                    calibrate_from_reference=self.settings.normalization.calibrate_from_reference,
                    energy_shift=self.settings.normalization.energy_shift,
                )
                columns, arrays = self._analyse(frames, normed, scratch)
                rows = _rows_for(frames, list(range(b)), columns, arrays, self._column_attrs)
            scratch.close_run("warm-up")
        except Exception as exc:  # a bug here must not keep a working engine from starting
            log.warning("warm-up of the frame path failed (first frames pay instead): %s", exc)
        times["frame_path"] = time.perf_counter() - t
        for sink in self.sinks:
            warm = getattr(sink, "warm_up", None)
            if not callable(warm):
                continue
            name = str(getattr(sink, "name", type(sink).__name__))
            t = time.perf_counter()
            try:
                warm(rows)
            except Exception as exc:
                log.warning("warm-up of sink %s failed (its first write pays instead): %s", name,
                            exc)  # fmt: skip
            times[f"sink_{name}"] = time.perf_counter() - t
        self.warmed_up = True
        return times

    # -- status --------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Numbers for the live status view (frames, latency quantiles, runs), and the sinks'
        queues: ``sinks`` (depth, capacity, high-water mark, ``blocked``, ``blocked_s`` per
        queued sink, see :func:`spt_stream.metrics.sink_queues`) and ``backpressure`` (True
        while the engine waits on a full sink queue)."""
        p50, p99 = self.metrics.window.quantiles((0.5, 0.99))
        queues = sink_queues(self.sinks)
        return {
            "model": self.model_state(),
            "frames": int(self.metrics.frames._value.get()),
            "latency_p50_ms": p50 * 1e3,
            "latency_p99_ms": p99 * 1e3,
            "pending": len(self._batcher),
            "sinks": queues,
            "backpressure": any(q["blocked"] for q in queues),
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


def _synthetic_edge(rel: np.ndarray[Any, Any], shift: float = 0.0) -> np.ndarray[Any, Any]:
    """mu of a plain K edge on ``rel`` (eV from the edge): sloping background, arctan step,
    white line (the warm-up's input; any smooth edge does)."""
    x = rel - shift
    step = 0.5 + np.arctan(x / 2.0) / np.pi
    white = 0.4 * np.exp(-0.5 * ((x - 8.0) / 4.0) ** 2)
    out: np.ndarray[Any, Any] = 0.3 - 0.0005 * rel + step + white * step
    return out


def _rows_for(
    frames: Sequence[Frame],
    idx: list[int],
    columns: Mapping[str, np.ndarray[Any, Any]],
    arrays: Mapping[str, Column2D],
    attrs: Mapping[str, Mapping[str, Any]] | None = None,
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
        attrs={k: dict(v) for k, v in (attrs or {}).items() if k in columns or k in arrays},
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

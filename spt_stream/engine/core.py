"""The engine: documents in, descriptor traces out (the orchestration of its parts).

``Engine`` is the single :class:`~spt_stream.protocols.DocumentHandler` every transport feeds
(Kafka, in-process ``RE.subscribe``, replays). Inside, on the transport's thread, in order:

``DocumentIngest`` (frame assembly) -> :class:`~spt_stream.core.batching.MicroBatcher` (size cap,
latency cap, flush at every stop document) -> :class:`~spt_stream.engine.model_stage.ModelStage`
(batched normalization, one forward pass per batch, the classical stage, one
:class:`~spt_stream.sinks.rows.TraceRows` per run) -> the primary sink (the Zarr trace), then the
other sinks (Tiled, feedback: they queue in the background).

Its parts, one job each: the model stage (above); the model thread
(:class:`~spt_stream.engine.model_thread.ModelThread`, ``batch.overlap``: the model and the sink
hand-off of full batches beside the next batch's preparation); the checkpointer
(:class:`~spt_stream.engine.checkpointer.Checkpointer`: flushes every sink, then commits the
transport's offsets that flush made safe); the run ledger
(:class:`~spt_stream.engine.ledger.RunLedger`: open runs, counts, the frames a resumed run
already holds). The engine itself routes documents and frames between them, and owns the order:
every point that must see all earlier batches written (a run's stop, offset commits, sink
flushes, close) first waits for the model thread to drain, and an error raised there is raised
again on the transport's thread.

Backpressure is structural: the transport calls the engine synchronously, so memory stays
bounded by the batch size, the model thread's two-batch queue and the sinks' queue sizes. Frames
whose ``seq_num`` the primary trace already holds (a re-delivery after a crash) are skipped
before the model runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from spt_stream._version import __version__
from spt_stream.assembly.ingest import DocumentIngest
from spt_stream.config import EngineSettings
from spt_stream.core._memory import trim_heap
from spt_stream.core.batching import MicroBatcher
from spt_stream.core.frames import Frame, RunInfo
from spt_stream.engine.checkpointer import Checkpointer, CommitFn
from spt_stream.engine.ledger import RunLedger, RunProgress
from spt_stream.engine.metrics import EngineMetrics, sink_queues
from spt_stream.engine.model_stage import ModelStage, Predictor
from spt_stream.engine.model_thread import ModelThread
from spt_stream.errors import SptError
from spt_stream.normalize.frames_to_grid import NormalizedBatch
from spt_stream.protocols import NamedSink, Position, ResumableSink, ThreadBoundModel, WarmableSink
from spt_stream.sinks.base import TraceSink
from spt_stream.sinks.deadletter import DeadLetterSink

__all__ = ["CommitFn", "Engine", "Predictor", "RunProgress"]

log = logging.getLogger(__name__)


class Engine:
    """Join ingest, the model stage and the sinks (see the module docstring).

    Parameters
    ----------
    settings:
        Validated engine settings (batching, normalization, assembly limits).
    predictor:
        The model (see :class:`~spt_stream.engine.model_stage.Predictor`).
    primary:
        The primary trace (the Zarr store): a run whose primary trace cannot be opened or
        written fails; if it is a :class:`~spt_stream.protocols.ResumableSink`, the frames it
        already holds are skipped on resume.
    others:
        Further sinks (Tiled, the feedback topic): their failures are logged and counted, the
        run goes on.
    dead_letter:
        Where rejected input is recorded.
    commit:
        Called with ``{(topic, partition): next_offset}`` once the sinks have flushed.
    """

    def __init__(
        self,
        settings: EngineSettings,
        predictor: Predictor,
        primary: TraceSink,
        others: Sequence[TraceSink] = (),
        *,
        dead_letter: DeadLetterSink | None = None,
        commit: CommitFn | None = None,
        metrics: EngineMetrics | None = None,
        commit_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.predictor = predictor
        self.primary = primary
        self.sinks: list[TraceSink] = [primary, *others]
        self.metrics = metrics or EngineMetrics()
        self.stage = ModelStage(settings, predictor)
        self._batcher: MicroBatcher[Frame] = MicroBatcher(settings.batch, clock=clock)
        self._worker = self._new_worker() if self._overlap(settings.batch.overlap) else None
        #: ``batch.overlap: auto`` with a model not lock-free (yet): check again between batches
        #: (a background compile may switch the model to the lock-free AOT package).
        self._overlap_later = self._worker is None and settings.batch.overlap == "auto"
        self.checkpoint = Checkpointer(
            self.sinks,
            commit,
            model_thread=lambda: self._worker,
            metrics=self.metrics,
            interval_s=commit_interval_s,
            clock=clock,
        )
        self.metrics.watch_sinks(self.sinks)  # queue depth / blocked time, read at scrape
        self.metrics.watch_model(self.model_state)
        self.runs = RunLedger()
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
            self.checkpoint.run_opened(doc["uid"], position)
        elif name == "stop":
            # The stop's own offset must be covered by the commit its run's close makes below
            # (else a crash right after re-delivers a stop whose run is already closed). An
            # offset past a run still open is never committed, so this is safe if the stop fails.
            self.checkpoint.handled(position)
        self.metrics.documents.labels(name=name if isinstance(name, str) else "?").inc()
        self.ingest(name, doc, position)
        self.checkpoint.handled(position)
        self.tick()

    def reject(
        self, error: SptError, payload: bytes | None = None, position: Position | None = None
    ) -> None:
        self.ingest.reject(error, payload, position)
        self.metrics.rejected.labels(reason=type(error).__name__).inc()
        self.checkpoint.handled(position)

    # -- periodic work -------------------------------------------------------------------------
    def tick(self) -> None:
        """Release a batch whose latency cap passed; commit when due. Call when idle, too."""
        batch = self._batcher.poll()
        if batch:
            self._process(batch)
        if self.checkpoint.due():
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
        """Pick up the last checkpoint's result and start the next one (non-blocking: the
        flush of every sink and the commit of the offsets it made safe run on the
        checkpointer's thread)."""
        self.checkpoint.commit()

    def commit_now(self, timeout: float | None = 60.0) -> None:
        """Commit synchronously what is committable now (waits for the sinks' flush)."""
        self.checkpoint.commit_now(timeout)

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
        self.checkpoint.close()
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # closing must not mask the others
                log.error("closing sink %r failed: %s", sink, exc)

    # -- callbacks from ingest -----------------------------------------------------------------
    def _on_run_start(self, info: RunInfo) -> None:
        stage = self.stage
        reference = (
            stage.classical.start_run(info.run_uid, info.element) if stage.classical_on else None
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
            "model": dict(self.predictor.info),
            "config": self._config_snapshot,
            "engine_version": __version__,
            "os_delta_reference": reference,
        }
        progress = self.runs.open(info)
        for sink in self.sinks:
            try:
                if sink is self.primary and isinstance(sink, ResumableSink):
                    # Before open_run: a new run has no trace yet and costs one existence check;
                    # only a resumed one is read (open_run may be queued, see ThreadedSink).
                    progress.skip = set(sink.committed_seq_nums(info.run_uid))
                sink.open_run(info.run_uid, attrs)
            except SptError as exc:
                self.metrics.sink_errors.labels(sink=type(sink).__name__).inc()
                log.error("sink %s: cannot open run %s: %s", type(sink).__name__, info.run_uid, exc)
                if sink is self.primary:  # no primary trace: the run's frames cannot be kept
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
            if self.stage.classical_on and self.stage.classical.needs_reference(frame.run_uid):
                # written before a restart: its edge still belongs to the run's reference
                self.stage.observe_reference(frame)
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
        self.stage.classical.close_run(run_uid)
        progress = self.runs.finish(run_uid, status)
        if progress is not None:
            log.info(
                "run %s finished (%s): %d frames, %d duplicates",
                run_uid,
                status,
                progress.frames,
                progress.duplicates,
            )
        # Durable once the next checkpoint has flushed every sink (off this thread: Tiled or
        # the feedback barrier may take seconds); then its offsets become committable.
        self.checkpoint.run_closing(run_uid)
        self.metrics.open_runs.set(len(self.runs))
        if not self.runs:
            trim_heap()  # between runs: give freed buffers back (see spt_stream.core._memory)
        self.commit()

    # -- the batch path ------------------------------------------------------------------------
    def _new_worker(self) -> ModelThread:
        p = self.predictor
        init = p.thread_init if isinstance(p, ThreadBoundModel) else None
        return ModelThread(self._predict_and_write, thread_init=init)

    def model_state(self) -> dict[str, Any]:
        """Which model backend serves now and whether one compiles in the background (status
        view, snapshot, the ``spt_model_backend`` metric)."""
        return self.stage.model_state()

    def _overlap(self, setting: bool | str) -> bool:
        """``batch.overlap``; ``auto``: on exactly when the model's forward pass runs without
        the interpreter lock (:class:`~spt_stream.protocols.LockFreeModel`)."""
        if setting == "auto":
            on = self.stage.lock_free
            log.info("model thread (batch.overlap auto): %s", "on" if on else "off")
            return on
        return bool(setting)

    def _process(self, frames: list[Frame]) -> None:
        """Normalize here; model and sink writes here or on the model thread (``overlap``)."""
        t0 = time.perf_counter()
        self.metrics.pending_frames.set(len(self._batcher))
        normed = self.stage.normalize(frames)
        if self._overlap_later and self.stage.lock_free:
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

    def _predict_and_write(self, item: tuple[list[Frame], NormalizedBatch, float]) -> None:
        frames, normed, t0 = item
        columns, arrays = self.stage.analyse(frames, normed)
        for run_uid, rows in self.stage.rows_by_run(frames, columns, arrays):
            for sink in self.sinks:
                try:
                    sink.write(run_uid, rows)
                except SptError as exc:
                    self.metrics.sink_errors.labels(sink=type(sink).__name__).inc()
                    if sink is self.primary:
                        raise
                    log.error("sink %s failed on run %s: %s", type(sink).__name__, run_uid, exc)
            self.runs.wrote(run_uid, len(rows), float(rows.time[-1]))
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
        classical-feature plans and smoothing matrices, the model's columns, the trace rows
        (:meth:`ModelStage.warm_up`), and in the sinks the feedback topics' metadata (the
        producer's first send waits for it) and Zarr's first store: the sample rows go to
        every :class:`~spt_stream.protocols.WarmableSink` (feedback builds its messages without
        sending them, Zarr writes a scratch store in a temporary folder). Returns seconds per
        step. A step that fails is logged and skipped: warm-up never stops the engine from
        starting.
        """
        times, rows = self.stage.warm_up(elements)
        for sink in self.sinks:
            if not isinstance(sink, WarmableSink):
                continue
            name = sink.name if isinstance(sink, NamedSink) else type(sink).__name__
            t = time.perf_counter()
            try:
                sink.warm_up(rows)
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
        queued sink, see :func:`spt_stream.engine.metrics.sink_queues`) and ``backpressure`` (True
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
            "runs": self.runs.status_rows(),
        }

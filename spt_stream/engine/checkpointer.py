"""Flush every sink, then commit the offsets that flush made safe (the engine's checkpoint).

As quix-streams' ``Checkpoint.commit``: offsets of the transport (Kafka) are committed only after
every sink has flushed what they cover, so a crash between the two re-delivers frames (skipped as
duplicates by the primary trace) instead of losing them. A run's offsets stay uncommitted until
its stop has been handled AND a later flush succeeded (see :mod:`spt_stream.core.offsets`).

The flush waits for the slowest sink (Tiled behind a slow server, or the feedback topic waiting
for Tiled's barrier at a stop document: seconds); on the transport's thread that wait would stall
every frame of every run. So the transport's thread only takes a snapshot (:class:`CommitJob`)
and picks up its result at a later tick, one job at a time; the job runs on a thread of its own.
The offset bookkeeping (:class:`~spt_stream.core.offsets.OffsetTracker`) stays on the transport's
thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from spt_stream.core.offsets import OffsetTracker, TopicPartition
from spt_stream.engine.metrics import EngineMetrics
from spt_stream.engine.model_thread import ModelThread
from spt_stream.errors import SinkTimeoutError, SptError
from spt_stream.protocols import Position
from spt_stream.sinks.base import TraceSink

__all__ = ["Checkpointer", "CommitFn", "CommitJob"]

log = logging.getLogger(__name__)

#: Commits offsets; returns False when the broker refused (the engine retries later).
CommitFn = Callable[[Mapping[TopicPartition, int]], object]


@dataclass
class CommitJob:
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


class _JobThread:
    """Runs one :class:`CommitJob` at a time on its own thread."""

    def __init__(self, run: Callable[[CommitJob], None]) -> None:
        self._run = run
        self._lock = threading.Lock()
        self._job: CommitJob | None = None
        self._done: CommitJob | None = None
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="spt-commit", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        return not self._idle.is_set()

    def submit(self, job: CommitJob) -> None:
        with self._lock:
            if self._job is not None or self._done is not None:
                raise RuntimeError("one commit job at a time")
            self._job = job
            self._idle.clear()
        self._wake.set()

    def take_result(self) -> CommitJob | None:
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


class Checkpointer:
    """The offsets of what the engine handled, and their commit after the sinks' flush.

    Parameters
    ----------
    sinks:
        Every trace sink (all are flushed before a commit).
    commit:
        Called with ``{(topic, partition): next_offset}`` once the sinks have flushed; None: no
        transport offsets (replays, in-process): nothing is committed, no thread is started.
    model_thread:
        The engine's model thread, if any, now (it may start later): a job first waits until the
        batches handed to it before the job was taken have been written.
    interval_s:
        Seconds between periodic commits (:meth:`due`).
    """

    def __init__(
        self,
        sinks: Sequence[TraceSink],
        commit: CommitFn | None,
        *,
        model_thread: Callable[[], ModelThread | None],
        metrics: EngineMetrics,
        interval_s: float,
        clock: Callable[[], float],
    ) -> None:
        self._sinks = list(sinks)
        self._commit = commit
        self._model_thread = model_thread
        self._metrics = metrics
        self._interval = interval_s
        self._clock = clock
        self._last = clock()
        self.offsets = OffsetTracker()
        #: Runs whose stop was handled, not yet known durable in every sink.
        self._closing: list[str] = []
        self._jobs = _JobThread(self._flush_and_commit) if commit is not None else None

    # -- bookkeeping (transport's thread) --------------------------------------------------------
    def run_opened(self, run_uid: str, position: Position | None) -> None:
        self.offsets.run_opened(run_uid, position)

    def handled(self, position: Position | None) -> None:
        self.offsets.handled(position)

    def run_closing(self, run_uid: str) -> None:
        """A run's stop was handled: its offsets become committable after the next flush."""
        if self._jobs is not None:
            self._closing.append(run_uid)

    def due(self) -> bool:
        return self._jobs is not None and self._clock() - self._last >= self._interval

    # -- commits ---------------------------------------------------------------------------------
    def commit(self) -> None:
        """Take the result of the last job, and start the next one when there is something to
        commit (non-blocking)."""
        self._last = self._clock()
        jobs = self._jobs
        if jobs is None:
            return
        done = jobs.take_result()
        if done is not None:
            self._apply(done)
        if jobs.busy:
            return
        job = self._next_job()
        if job is not None:
            jobs.submit(job)

    def commit_now(self, timeout: float | None = 60.0) -> None:
        """Commit synchronously what is committable now (waits for the sinks' flush)."""
        jobs = self._jobs
        if jobs is None:
            return
        for _ in range(3):  # the running job; one closing runs; one for the offsets they free
            if not jobs.wait_idle(timeout):
                log.error("offset commit still running after %s s; not waiting longer", timeout)
                return
            done = jobs.take_result()
            if done is not None:
                self._apply(done)
            job = self._next_job()
            if job is None:
                return
            jobs.submit(job)

    def close(self) -> None:
        if self._jobs is not None:
            self._jobs.close()

    def _next_job(self) -> CommitJob | None:
        closing, self._closing = self._closing, []
        # A job closing runs commits nothing itself: the next one commits past those runs.
        offsets = {} if closing else self.offsets.committable()
        if not offsets and not closing:
            return None
        thread = self._model_thread()
        batches = thread.submitted if thread is not None else 0
        return CommitJob(offsets=offsets, closing=closing, batches=batches)

    def _flush_and_commit(self, job: CommitJob) -> None:
        """The job thread's work (touches no state but the job's)."""
        thread = self._model_thread()
        if thread is not None:
            thread.wait_for(job.batches)
        try:
            for sink in self._sinks:
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

    def _apply(self, job: CommitJob) -> None:
        """A finished job's effect on the offset bookkeeping (transport's thread)."""
        if job.committed:
            self.offsets.mark_committed(job.offsets)
            self._metrics.commits.inc()
        if job.flushed:
            for uid in job.closing:
                self.offsets.run_closed(uid)
            if job.closing:  # their offsets are committable now: do not wait the interval
                self._last = self._clock() - self._interval
        elif job.retry:  # slow, not failed: their offsets wait for a later flush
            self._closing[:0] = job.closing
        elif job.closing:
            log.error(
                "runs %s: sinks not flushed after their stop; their offsets stay uncommitted "
                "(a restart re-reads them)",
                job.closing,
            )

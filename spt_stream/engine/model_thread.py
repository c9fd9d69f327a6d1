"""The engine's model thread (``batch.overlap``).

With ``batch.overlap`` (``auto``: on when the model's forward pass runs without the interpreter
lock, :class:`~spt_stream.protocols.LockFreeModel`) the model and the sink hand-off of every full
batch run here, overlapping the next batch's preparation on the transport's thread; every point
that must see all earlier batches written (a run's stop, offset commits, sink flushes, close)
first waits for it to drain. Why, and the measurements behind ``auto``: docs/BENCHMARKS.md, "The
engine's model thread".
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["ModelThread"]

log = logging.getLogger(__name__)


class ModelThread:
    """One background thread running ``work(item)`` in submission order: at most one item
    running and one waiting (``submit`` blocks beyond that), errors re-raised on the caller's
    thread by the next ``submit``/``drain``/``raise_pending``."""

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

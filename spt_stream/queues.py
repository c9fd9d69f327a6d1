"""A bounded hand-off between engine threads, with backpressure and depth metrics.

:class:`BoundedQueue` wraps :class:`queue.Queue` with a fixed ``maxsize``: a producer faster than
its consumer blocks in :meth:`BoundedQueue.put` (so a slow sink slows the Kafka consumer instead of
growing memory), and the queue counts how long producers were held back.
:meth:`BoundedQueue.close` ends the stream: later puts raise :class:`QueueClosedError`, and getters
drain what is left and then get :class:`QueueClosedError`.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Generic, TypeVar

from spt_stream.errors import SptError, SptValueError

__all__ = ["BoundedQueue", "QueueClosedError", "QueueStats"]

T = TypeVar("T")


class QueueClosedError(SptError):
    """The queue was closed: no more puts; a get finds it closed and empty."""


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counters of a :class:`BoundedQueue` (for the status view and Prometheus metrics)."""

    name: str
    maxsize: int
    depth: int
    high_water: int
    put: int
    got: int
    #: Puts that gave up after their timeout (the item was not queued).
    put_timeouts: int
    #: Total seconds producers spent blocked on a full queue (backpressure).
    blocked_s: float


class _Closed:
    """Marker placed in the queue by :meth:`BoundedQueue.close` to wake blocked getters."""


_CLOSED = _Closed()


class BoundedQueue(Generic[T]):
    """A thread-safe FIFO of at most ``maxsize`` items (see module docstring)."""

    def __init__(self, maxsize: int, name: str = "queue") -> None:
        if maxsize < 1:
            raise SptValueError(f"queue {name!r}: maxsize must be >= 1, got {maxsize}")
        self.name = name
        self.maxsize = maxsize
        # One extra slot so close() can always enqueue its marker.
        self._q: queue.Queue[T | _Closed] = queue.Queue(maxsize + 1)
        self._slots = threading.BoundedSemaphore(maxsize)
        self._lock = threading.Lock()
        self._closed = False
        self._put = self._got = self._timeouts = self._high = 0
        self._blocked = 0.0

    def put(self, item: T, timeout: float | None = None) -> bool:
        """Queue ``item``, blocking while the queue is full; False if ``timeout`` (s) ran out.

        Raises :class:`QueueClosedError` after :meth:`close`.
        """
        if self._closed:
            raise QueueClosedError(f"queue {self.name!r} is closed")
        if not self._slots.acquire(blocking=False):
            t0 = time.monotonic()
            ok = self._wait(timeout)
            with self._lock:
                self._blocked += time.monotonic() - t0
                if not ok and not self._closed:
                    self._timeouts += 1
            if not ok:
                if self._closed:
                    raise QueueClosedError(f"queue {self.name!r} is closed")
                return False
        if self._closed:
            self._slots.release()
            raise QueueClosedError(f"queue {self.name!r} is closed")
        self._q.put_nowait(item)
        with self._lock:
            self._put += 1
            self._high = max(self._high, self._q.qsize())
        return True

    def _wait(self, timeout: float | None) -> bool:
        """Acquire a slot within ``timeout`` seconds (forever if None); False if closed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = 0.1 if deadline is None else min(0.1, max(0.0, deadline - time.monotonic()))
            if self._slots.acquire(timeout=step):
                return True
            if self._closed or (deadline is not None and time.monotonic() >= deadline):
                return False

    def get(self, timeout: float | None = None) -> T:
        """Next item, oldest first. Raises :class:`queue.Empty` on timeout and
        :class:`QueueClosedError` once the queue is closed and drained."""
        item = self._q.get(timeout=timeout)
        if isinstance(item, _Closed):
            self._q.put_nowait(item)  # keep waking other getters
            raise QueueClosedError(f"queue {self.name!r} is closed")
        self._slots.release()
        with self._lock:
            self._got += 1
        return item

    def close(self) -> None:
        """Refuse further puts; getters drain the remaining items, then get QueueClosedError."""
        if self._closed:
            return
        self._closed = True
        self._q.put_nowait(_CLOSED)

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return self._q.qsize() - (1 if self._closed else 0)

    def stats(self) -> QueueStats:
        """A snapshot of the counters."""
        with self._lock:
            return QueueStats(
                name=self.name,
                maxsize=self.maxsize,
                depth=max(0, len(self)),
                high_water=self._high,
                put=self._put,
                got=self._got,
                put_timeouts=self._timeouts,
                blocked_s=self._blocked,
            )

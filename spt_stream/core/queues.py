"""A bounded hand-off between engine threads, with backpressure and depth metrics.

:class:`BoundedQueue` is a FIFO with a fixed capacity ``maxsize``, counted in *weight*: every
item weighs 1 unless its :meth:`~BoundedQueue.put` says otherwise (a sink queue counted in rows
puts each batch with its row count, and requests with weight 0). A producer faster than its
consumer blocks in :meth:`BoundedQueue.put` (so a slow sink slows the Kafka consumer instead of
growing memory), or gives up after its ``timeout``; the queue counts how long producers were
held back, the wait in progress included. An item heavier than the whole capacity is let in
when the queue is empty (it could never fit otherwise); an item of weight 0 always fits. With
``hold=True`` an item keeps its weight after :meth:`~BoundedQueue.get` until the consumer calls
:meth:`~BoundedQueue.done`: the capacity then bounds what is queued *and* what the consumer is
still working on. :meth:`BoundedQueue.close` ends the stream: later puts raise
:class:`QueueClosedError`, and getters drain what is left and then get :class:`QueueClosedError`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
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
    #: Capacity, in weight (items, or rows for a queue counted in rows).
    maxsize: int
    #: Weight queued now (held items included, see ``hold``).
    depth: int
    high_water: int
    put: int
    got: int
    #: Puts that gave up after their timeout (the item was not queued).
    put_timeouts: int
    #: Total seconds producers spent blocked on a full queue (backpressure), the waits in
    #: progress included (never decreases).
    blocked_s: float
    #: Puts waiting for room right now.
    blocked: int = 0


class BoundedQueue(Generic[T]):
    """A thread-safe FIFO of at most ``maxsize`` weight (see module docstring)."""

    def __init__(self, maxsize: int, name: str = "queue", *, hold: bool = False) -> None:
        if maxsize < 1:
            raise SptValueError(f"queue {name!r}: maxsize must be >= 1, got {maxsize}")
        self.name = name
        self.maxsize = maxsize
        self.hold = hold
        self._cv = threading.Condition()
        self._items: deque[tuple[T, int]] = deque()
        self._load = 0
        self._closed = False
        self._put = self._got = self._timeouts = self._high = 0
        self._blocked = 0.0
        #: start (monotonic) of each put waiting for room
        self._waiting: dict[object, float] = {}

    def _fits(self, weight: int) -> bool:
        return weight == 0 or self._load == 0 or self._load + weight <= self.maxsize

    def put(self, item: T, timeout: float | None = None, *, weight: int = 1) -> bool:
        """Queue ``item``, blocking while it does not fit; False if ``timeout`` (s) ran out.

        Raises :class:`QueueClosedError` after :meth:`close` (also to a put waiting for room).
        """
        with self._cv:
            if self._closed:
                raise QueueClosedError(f"queue {self.name!r} is closed")
            if not self._fits(weight):
                token = object()
                t0 = time.monotonic()
                deadline = None if timeout is None else t0 + timeout
                self._waiting[token] = t0
                try:
                    while not self._closed and not self._fits(weight):
                        left = None if deadline is None else deadline - time.monotonic()
                        if left is not None and left <= 0:
                            break
                        self._cv.wait(left)
                finally:
                    del self._waiting[token]
                    self._blocked += time.monotonic() - t0
                if self._closed:
                    raise QueueClosedError(f"queue {self.name!r} is closed")
                if not self._fits(weight):
                    self._timeouts += 1
                    return False
            self._items.append((item, weight))
            self._load += weight
            self._put += 1
            self._high = max(self._high, self._load)
            self._cv.notify_all()
            return True

    def get(self, timeout: float | None = None) -> T:
        """Next item, oldest first. Raises :class:`queue.Empty` on timeout and
        :class:`QueueClosedError` once the queue is closed and drained."""
        with self._cv:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._items:
                if self._closed:
                    raise QueueClosedError(f"queue {self.name!r} is closed")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise queue.Empty
                self._cv.wait(left)
            item, weight = self._items.popleft()
            self._got += 1
            if not self.hold:
                self._load -= weight
            self._cv.notify_all()
            return item

    def done(self, weight: int) -> None:
        """With ``hold``: the consumer finished items of this total weight; frees their room."""
        if not self.hold or weight == 0:
            return
        with self._cv:
            self._load = max(0, self._load - weight)
            self._cv.notify_all()

    def last(self) -> T | None:
        """The newest item still queued (None if none)."""
        with self._cv:
            return self._items[-1][0] if self._items else None

    def close(self) -> None:
        """Refuse further puts; getters drain the remaining items, then get QueueClosedError."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        """Items queued (not their weight)."""
        return len(self._items)

    def stats(self) -> QueueStats:
        """A snapshot of the counters."""
        with self._cv:
            now = time.monotonic()
            return QueueStats(
                name=self.name,
                maxsize=self.maxsize,
                depth=self._load,
                high_water=self._high,
                put=self._put,
                got=self._got,
                put_timeouts=self._timeouts,
                blocked_s=self._blocked + sum(now - t0 for t0 in self._waiting.values()),
                blocked=len(self._waiting),
            )

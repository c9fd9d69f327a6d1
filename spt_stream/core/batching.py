"""Micro-batching with an explicit contract: flush when full, when the oldest item is too old,
or when told to (stop document, shutdown).

:class:`MicroBatcher` is pure bookkeeping: no threads, no I/O, and the clock is injected
(``time.monotonic`` by default), so a test drives it with a fake clock. The engine calls
:meth:`MicroBatcher.add` for each frame, :meth:`MicroBatcher.poll` whenever its input is idle
(waiting at most :meth:`MicroBatcher.time_until_due` seconds), and :meth:`MicroBatcher.flush` on
a stop document or at shutdown. Items come out in the order they went in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

from spt_stream.config import BatchSettings
from spt_stream.errors import ConfigError

__all__ = ["MicroBatcher"]

T = TypeVar("T")


class MicroBatcher(Generic[T]):
    """Collect items into batches of at most ``max_size``, held at most ``max_latency_ms``.

    Parameters
    ----------
    settings:
        ``max_size`` (items, >= 1) and ``max_latency_ms`` (milliseconds, >= 0; 0 releases every
        item at once). Keyword arguments override the settings' values.
    clock:
        Monotonic clock returning seconds; every method also accepts an explicit ``now``.
    """

    def __init__(
        self,
        settings: BatchSettings | None = None,
        *,
        max_size: int | None = None,
        max_latency_ms: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        base = settings or BatchSettings()
        self.max_size = base.max_size if max_size is None else int(max_size)
        latency_ms = base.max_latency_ms if max_latency_ms is None else float(max_latency_ms)
        if self.max_size < 1:
            raise ConfigError(f"batch max_size must be >= 1, got {self.max_size}")
        if not latency_ms >= 0.0:  # also rejects NaN
            raise ConfigError(f"batch max_latency_ms must be >= 0, got {latency_ms}")
        self.max_latency_s = latency_ms / 1000.0
        self._clock = clock
        self._items: list[T] = []
        self._oldest: float | None = None  # clock time the oldest held item arrived
        #: Batches released so far, by reason: size cap, latency cap, explicit flush.
        self.released = {"size": 0, "latency": 0, "flush": 0}

    def __len__(self) -> int:
        return len(self._items)

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    def _take(self, reason: str) -> list[T]:
        batch, self._items, self._oldest = self._items, [], None
        if batch:
            self.released[reason] += 1
        return batch

    def add(self, item: T, now: float | None = None) -> list[T] | None:
        """Hold ``item``; return the batch (including it) if that fills the batch or the oldest
        held item has waited ``max_latency_ms`` or longer; otherwise None."""
        t = self._now(now)
        if self._oldest is None:
            self._oldest = t
        self._items.append(item)
        if len(self._items) >= self.max_size:
            return self._take("size")
        if t - self._oldest >= self.max_latency_s:
            return self._take("latency")
        return None

    def poll(self, now: float | None = None) -> list[T] | None:
        """The held items if the oldest has waited ``max_latency_ms`` or longer, else None."""
        if self._oldest is None:
            return None
        if self._now(now) - self._oldest >= self.max_latency_s:
            return self._take("latency")
        return None

    def flush(self) -> list[T]:
        """Return every held item (possibly none), oldest first."""
        return self._take("flush")

    def time_until_due(self, now: float | None = None) -> float | None:
        """Seconds until :meth:`poll` would release a batch (0 if overdue); None when empty."""
        if self._oldest is None:
            return None
        return max(0.0, self._oldest + self.max_latency_s - self._now(now))

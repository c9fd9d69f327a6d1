"""The micro-batcher's contract (size cap, latency cap, flush) and the bounded queue.

The batcher is driven by an injected clock, so nothing here depends on real time.
"""

from __future__ import annotations

import queue
import threading

import pytest

from spt_stream.config import BatchSettings
from spt_stream.core.batching import MicroBatcher
from spt_stream.core.queues import BoundedQueue, QueueClosedError
from spt_stream.errors import ConfigError, SptValueError


class FakeClock:
    """A monotonic clock the test advances by hand (seconds)."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_size_cap_releases_full_batches_in_order() -> None:
    """Every max_size-th add returns exactly the items held, oldest first."""
    clock = FakeClock()
    b: MicroBatcher[int] = MicroBatcher(BatchSettings(max_size=3, max_latency_ms=1e6), clock=clock)
    out = [b.add(i) for i in range(7)]
    assert out == [None, None, [0, 1, 2], None, None, [3, 4, 5], None]
    assert len(b) == 1
    assert b.flush() == [6]
    assert b.released == {"size": 2, "latency": 0, "flush": 1}


def test_latency_cap_with_injected_clock() -> None:
    """poll releases the held items once the oldest is max_latency_ms old, not before."""
    # clock steps are powers of two, so the float arithmetic is exact
    clock = FakeClock()
    b: MicroBatcher[str] = MicroBatcher(max_size=100, max_latency_ms=500.0, clock=clock)
    assert b.poll() is None  # empty
    assert b.add("a") is None
    clock.t += 0.25
    assert b.add("b") is None
    assert b.time_until_due() == 0.25
    clock.t += 0.125
    assert b.poll() is None
    assert b.time_until_due() == 0.125  # the oldest item has waited 0.375 s of 0.5
    clock.t += 0.125
    assert b.poll() == ["a", "b"]
    assert b.poll() is None
    assert b.time_until_due() is None
    # the latency clock restarts with the next item, not with the last release
    clock.t += 4.0
    assert b.add("c") is None
    assert b.poll(now=clock.t + 0.375) is None
    assert b.poll(now=clock.t + 0.5) == ["c"]


def test_add_releases_an_overdue_batch() -> None:
    """An add arriving after the latency cap expired returns the overdue batch with it."""
    clock = FakeClock()
    b: MicroBatcher[int] = MicroBatcher(max_size=100, max_latency_ms=125.0, clock=clock)
    b.add(1)
    clock.t += 0.25
    assert b.add(2) == [1, 2]
    assert b.released["latency"] == 1


def test_zero_latency_releases_every_item() -> None:
    """max_latency_ms=0 means no batching delay: each add returns a batch of one."""
    b: MicroBatcher[int] = MicroBatcher(max_size=8, max_latency_ms=0.0, clock=FakeClock())
    assert [b.add(i) for i in range(3)] == [[0], [1], [2]]


def test_flush_returns_everything_in_arrival_order() -> None:
    """flush (stop document, shutdown) returns all held items in order, then nothing."""
    b: MicroBatcher[int] = MicroBatcher(max_size=1000, max_latency_ms=1e6, clock=FakeClock())
    for i in range(10):
        assert b.add(i) is None
    assert b.flush() == list(range(10))
    assert b.flush() == []
    assert len(b) == 0


def test_settings_and_validation() -> None:
    """Defaults come from BatchSettings; keyword overrides win; invalid caps are refused."""
    b: MicroBatcher[int] = MicroBatcher()
    assert b.max_size == BatchSettings().max_size
    assert b.max_latency_s == pytest.approx(BatchSettings().max_latency_ms / 1000)
    assert MicroBatcher(BatchSettings(max_size=5), max_size=9).max_size == 9
    with pytest.raises(ConfigError):
        MicroBatcher(max_size=0)
    with pytest.raises(ConfigError):
        MicroBatcher(max_latency_ms=-1.0)
    with pytest.raises(ConfigError):
        MicroBatcher(max_latency_ms=float("nan"))


# ---------------------------------------------------------------------------- BoundedQueue


def test_queue_applies_backpressure_and_counts_it() -> None:
    """A full queue refuses a put after its timeout; a blocked put proceeds once a get frees a
    slot; the counters record depth, high water and the time producers were held back."""
    q: BoundedQueue[int] = BoundedQueue(2, name="sink")
    assert q.put(1)
    assert q.put(2)
    assert q.put(3, timeout=0.01) is False
    done = threading.Event()

    def producer() -> None:
        q.put(3)  # blocks until the consumer takes one
        done.set()

    t = threading.Thread(target=producer)
    t.start()
    assert not done.wait(0.05)
    assert q.get() == 1
    assert done.wait(5)
    t.join(5)
    assert [q.get(), q.get()] == [2, 3]
    st = q.stats()
    assert (st.put, st.got, st.put_timeouts, st.high_water, st.depth) == (3, 3, 1, 2, 0)
    assert st.blocked_s > 0
    with pytest.raises(queue.Empty):
        q.get(timeout=0.01)


def test_queue_close_drains_then_signals() -> None:
    """After close, puts raise; getters drain the rest and then get QueueClosedError, and a
    producer blocked on a full queue is released with QueueClosedError."""
    q: BoundedQueue[str] = BoundedQueue(1)
    q.put("a")
    errors: list[Exception] = []

    def producer() -> None:
        try:
            q.put("b")
        except QueueClosedError as exc:
            errors.append(exc)

    t = threading.Thread(target=producer)
    t.start()
    q.close()
    t.join(5)
    assert len(errors) == 1
    with pytest.raises(QueueClosedError):
        q.put("c")
    assert q.get() == "a"
    with pytest.raises(QueueClosedError):
        q.get()
    with pytest.raises(QueueClosedError):
        q.get(timeout=0.01)
    with pytest.raises(SptValueError):
        BoundedQueue(0)


def test_queue_counts_weight_and_holds_it_until_done() -> None:
    """Capacity in weight: an item heavier than the capacity fits an empty queue, weight 0 always
    fits; with hold, a got item keeps its weight until done() (depth, high water in weight)."""
    q: BoundedQueue[str] = BoundedQueue(10, name="rows", hold=True)
    assert q.put("big", weight=25)
    assert q.put("call", weight=0)
    assert q.put("small", timeout=0.01, weight=1) is False
    assert q.last() == "call"
    assert q.get() == "big"
    assert q.stats().depth == 25  # held while the consumer works on it
    q.done(25)
    assert q.put("small", timeout=0.01, weight=4)
    st = q.stats()
    assert (st.depth, st.high_water, st.put_timeouts, st.blocked) == (4, 25, 1, 0)

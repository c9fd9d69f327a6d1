"""The shared retry back-off (spt_stream/core/backoff.py) on tenacity."""

from __future__ import annotations

import threading
import time

import pytest
import tenacity

from spt_stream.core.backoff import RetryStoppedError, doubling, last_error, next_wait, sleep_unless


def _hand_written(initial: float, cap: float, n: int) -> list[float]:
    """The loops this replaced: ``delay = initial``, then ``delay = min(delay * 2, cap)``."""
    delays, delay = [], initial
    for _ in range(n):
        delays.append(delay)
        delay = min(delay * 2, cap)
    return delays


@pytest.mark.parametrize(("initial", "cap"), [(0.2, 10.0), (0.5, 10.0), (0.001, 0.4), (3.0, 1.0)])
def test_doubling_waits_as_the_hand_written_loops_did(initial: float, cap: float) -> None:
    waits: list[float] = []

    def failing() -> None:
        raise OSError("down")

    with pytest.raises(tenacity.RetryError):
        tenacity.Retrying(
            wait=doubling(initial, cap),
            stop=tenacity.stop_after_attempt(13),
            sleep=waits.append,
        )(failing)
    assert waits == _hand_written(initial, cap, 12)


def test_doubling_does_not_overflow_after_many_attempts() -> None:
    state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
    state.attempt_number = 5000
    assert doubling(0.2, 10.0)(state) == 10.0


def test_a_stop_ends_the_wait_at_once_and_no_attempt_follows() -> None:
    stop = threading.Event()
    calls: list[float] = []
    logged: list[tuple[str, float]] = []

    def failing() -> None:
        calls.append(time.monotonic())
        if len(calls) == 2:
            threading.Timer(0.1, stop.set).start()  # in the 2 s wait
        raise OSError(f"down {len(calls)}")

    t0 = time.monotonic()
    with pytest.raises(RetryStoppedError):
        tenacity.Retrying(
            wait=doubling(1.0, 30.0),
            sleep=sleep_unless(stop),
            before_sleep=lambda s: logged.append((str(last_error(s)), next_wait(s))),
        )(failing)
    assert len(calls) == 2
    assert time.monotonic() - t0 < 2.5  # 1 s + 0.1 s, not the 1 s + 2 s asked for
    assert logged == [("down 1", 1.0), ("down 2", 2.0)]


def test_sleep_unless_applies_the_jitter() -> None:
    stop = threading.Event()
    seen: list[float] = []
    sleep_unless(stop, jitter=lambda d: seen.append(d) or 0.0)(1.5)
    assert seen == [1.5]
    stop.set()
    with pytest.raises(RetryStoppedError):
        sleep_unless(stop)(10.0)

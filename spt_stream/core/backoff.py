"""Retry back-off on tenacity, shared by the Kafka source and the Tiled trace writer.

Both retry with the same shape: wait ``initial`` seconds after the first failure, doubling after
each further one up to ``cap``; and a stop request (a :class:`threading.Event`) must end a wait at
once, not after it. tenacity runs the attempts, counts them and computes the waits
(:func:`doubling`); :func:`sleep_unless` is its ``sleep`` hook: it waits on the event and raises
:class:`RetryStoppedError` when the event is set, which ends the retrying (the caller catches it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import tenacity

__all__ = ["RetryStoppedError", "doubling", "last_error", "next_wait", "sleep_unless"]


class RetryStoppedError(Exception):
    """The stop event was set: the retrying ends without another attempt."""


def doubling(initial: float, cap: float) -> tenacity.wait.wait_base:
    """Wait ``initial`` s after the first failure, doubling after each further one, at most
    ``cap`` s (an ``initial`` above ``cap`` is still waited once, then ``cap``)."""
    if initial > cap:
        return tenacity.wait_chain(tenacity.wait_fixed(initial), tenacity.wait_fixed(cap))
    return tenacity.wait_exponential(multiplier=initial, exp_base=2, max=cap)


def sleep_unless(
    stop: threading.Event, jitter: Callable[[float], float] | None = None
) -> Callable[[float], None]:
    """tenacity ``sleep`` hook: wait ``seconds`` (through ``jitter`` if given) on ``stop``;
    raise :class:`RetryStoppedError` if ``stop`` is set by then."""

    def sleep(seconds: float) -> None:
        if stop.wait(seconds if jitter is None else jitter(seconds)):
            raise RetryStoppedError

    return sleep


def last_error(state: tenacity.RetryCallState) -> BaseException:
    """The exception of the attempt that just failed (for ``before_sleep`` and
    ``retry_error_callback`` hooks, which tenacity calls only after a failed attempt here)."""
    exc = state.outcome.exception() if state.outcome is not None else None
    if exc is None:
        raise RuntimeError("no failed attempt to report")
    return exc


def next_wait(state: tenacity.RetryCallState) -> float:
    """The wait before the next attempt, seconds (for ``before_sleep`` hooks)."""
    return state.next_action.sleep if state.next_action is not None else 0.0

"""Waiting on a subprocess under test: a condition, bounded, failing early if the process dies."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

__all__ = ["wait_until"]


def wait_until(
    cond: Callable[[], bool],
    what: str,
    proc: subprocess.Popen[str],
    *,
    timeout_s: float,
    poll_s: float = 0.05,
    log: Path | None = None,
) -> None:
    """Poll ``cond`` every ``poll_s``; fail if ``proc`` exits first or ``timeout_s`` passes
    (with the process's log, when given, in the failure message)."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        tail = f":\n{log.read_text()}" if log is not None else ""
        if proc.poll() is not None:
            pytest.fail(f"engine exited (rc={proc.returncode}) before {what}{tail}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}{tail}")
        time.sleep(poll_s)

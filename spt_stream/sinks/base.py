"""The one interface every trace sink offers, so the engine treats Zarr, Tiled and Kafka alike.

Call order per run: :meth:`TraceSink.open_run` once, :meth:`TraceSink.write` any number of times
(each call one :class:`~spt_stream.sinks.rows.TraceRows` batch of that run, in frame order),
:meth:`TraceSink.finalize` once with the raw run's exit status (``"success"``, ``"abort"``,
``"fail"``). :meth:`TraceSink.flush` may be called at any time and covers every run: when it
returns, everything handed to the sink before the call is durable (written, or acknowledged by
the broker) or explicitly recorded as a gap, so the engine may commit the Kafka offsets the data
came from. A sink whose flush cannot reach that state within ``timeout`` seconds raises
:class:`~spt_stream.errors.SinkError` and the engine must not commit.

Sinks are idempotent on ``(run_uid, seq_num)``: a batch delivered twice (after a crash and a
resume from the committed offsets) adds no row the sink already holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from spt_stream.sinks.rows import TraceRows

__all__ = ["TraceSink"]


@runtime_checkable
class TraceSink(Protocol):
    """A destination for per-frame analysis rows (see the module docstring for the contract)."""

    def open_run(self, run_uid: str, attrs: Mapping[str, Any]) -> None:
        """Start (or resume) the trace of raw run ``run_uid``; ``attrs`` is JSON-able metadata
        (element, edge, model name/version/hash, config snapshot...)."""

    def write(self, run_uid: str, rows: TraceRows) -> None:
        """Hand over one batch of rows of an opened run."""

    def finalize(self, run_uid: str, status: str) -> None:
        """Close the run's trace, recording the raw run's exit status."""

    def flush(self, timeout: float | None = None) -> None:
        """Block until everything handed over so far is durable; SinkError on timeout."""

    def close(self) -> None:
        """Flush what can be flushed quickly and release resources (threads, connections)."""

    @property
    def stats(self) -> Mapping[str, int | float]:
        """Monotonic counters and gauges for metrics (rows written, dropped, failures...)."""

"""The seams between stages, as Protocols (structural types).

A transport (Kafka, in-process, replay) adapts its input into ``(name, doc)`` pairs and hands
them to a :class:`DocumentHandler` with the :class:`Position` they came from; bytes it cannot
decode go to :meth:`DocumentHandler.reject`. Everything below the handler is shared by live,
in-process and replay paths.

Optional capabilities are Protocols too (checked with ``isinstance``, never probed by name):
a model may run its forward pass without the interpreter lock (:class:`LockFreeModel`), report
its serving backend (:class:`BackendReporting`), set up the thread it runs on
(:class:`ThreadBoundModel`), declare its columns' units (:class:`DescribedColumns`) and the
elements it was built for (:class:`ElementAware`); a sink may report what a previous process
already committed (:class:`ResumableSink`), pay its first-use costs early (:class:`WarmableSink`)
and carry a display name (:class:`NamedSink`); a handler may want to be told when its transport
is idle and when its latency cap is due (:class:`PeriodicHandler`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from spt_stream.errors import SptError

if TYPE_CHECKING:
    from spt_stream.sinks.rows import TraceRows

__all__ = [
    "BackendReporting",
    "DescribedColumns",
    "DocumentHandler",
    "ElementAware",
    "LockFreeModel",
    "NamedSink",
    "PeriodicHandler",
    "Position",
    "ResumableSink",
    "ThreadBoundModel",
    "WarmableSink",
]


@dataclass(frozen=True, slots=True)
class Position:
    """Where a document came from: a Kafka ``topic[partition]@offset``, or a file and line."""

    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        if self.topic is not None:
            return f"{self.topic}[{self.partition}]@{self.offset}"
        if self.file is not None:
            return f"{self.file}:{self.line}" if self.line is not None else self.file
        return "in-process"


@runtime_checkable
class DocumentHandler(Protocol):
    """What every transport feeds: the engine's single entry point for documents."""

    def __call__(
        self, name: str, doc: Mapping[str, Any], position: Position | None = None
    ) -> None: ...

    def reject(
        self, error: SptError, payload: bytes | None = None, position: Position | None = None
    ) -> None:
        """Account for input that never became a document (undecodable bytes, bad framing)."""
        ...


@runtime_checkable
class PeriodicHandler(Protocol):
    """A handler with periodic work: ``tick`` (call when no document arrived for a while),
    ``idle`` (the transport has caught up with its input), ``time_until_due`` (seconds until
    held frames must go out; None: nothing held)."""

    def tick(self) -> None: ...

    def idle(self) -> None: ...

    def time_until_due(self) -> float | None: ...


# -- models --------------------------------------------------------------------------------------
@runtime_checkable
class LockFreeModel(Protocol):
    """A model whose forward pass may release the interpreter lock (``lock_free`` says whether
    it does now: a background compile can switch it on)."""

    @property
    def lock_free(self) -> bool: ...


@runtime_checkable
class BackendReporting(Protocol):
    """A model that says which backend serves now (``eager``, ``aot``) and whether another one
    is compiling in the background."""

    @property
    def backend(self) -> str: ...

    @property
    def compiling(self) -> bool: ...


@runtime_checkable
class ThreadBoundModel(Protocol):
    """A model that must set up each thread it runs on (OpenMP thread caps are per thread)."""

    def thread_init(self) -> object: ...


@runtime_checkable
class DescribedColumns(Protocol):
    """A model that declares units and meanings of its trace columns."""

    @property
    def column_attrs(self) -> Mapping[str, Mapping[str, str]]: ...


@runtime_checkable
class ElementAware(Protocol):
    """A model built for a set of absorber elements."""

    @property
    def elements(self) -> tuple[str, ...]: ...


# -- sinks ---------------------------------------------------------------------------------------
@runtime_checkable
class ResumableSink(Protocol):
    """A sink that can say which ``seq_num`` s of a run it already holds (the primary trace, so a
    re-delivery after a crash is skipped before the model runs)."""

    def committed_seq_nums(self, run_uid: str) -> Iterable[int]: ...


@runtime_checkable
class WarmableSink(Protocol):
    """A sink with first-use costs it can pay before the first run (given sample rows)."""

    def warm_up(self, rows: TraceRows | None) -> None: ...


@runtime_checkable
class NamedSink(Protocol):
    """A sink with a display name (metrics, logs, the status view)."""

    name: str

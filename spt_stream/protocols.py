"""The seams between stages, as Protocols (structural types).

A transport (Kafka, in-process, replay) adapts its input into ``(name, doc)`` pairs and hands
them to a :class:`DocumentHandler` with the :class:`Position` they came from; bytes it cannot
decode go to :meth:`DocumentHandler.reject`. Everything below the handler is shared by live,
in-process and replay paths.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from spt_stream.errors import SptError

__all__ = ["DocumentHandler", "Position"]


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

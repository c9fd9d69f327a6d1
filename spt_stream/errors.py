"""One exception hierarchy for spt-stream.

Every error derives from :class:`SptError` and, where it fits, from the matching builtin too
(``SptValueError`` is a ``ValueError``), so callers may catch either. Errors carry where the
problem was seen (run uid, seq_num, source file or topic/partition/offset, line) and render it
in their message, so a log line alone tells an operator what to look at.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AssemblyError",
    "BrokerError",
    "CheckpointError",
    "ConfigError",
    "DecodeError",
    "DocumentError",
    "FrameError",
    "ModelError",
    "NormalizationError",
    "ReaderError",
    "SinkError",
    "SinkTimeoutError",
    "SourceError",
    "SptError",
    "SptValueError",
]


class SptError(Exception):
    """Root of all spt-stream errors.

    Parameters
    ----------
    message:
        What was wrong, in words.
    run_uid, seq_num:
        The Bluesky run and event the problem belongs to, when known.
    source:
        Where the input came from: a file path, ``topic[partition]@offset``, a Tiled URL.
    line:
        Line number within ``source`` (1-based), for text inputs.
    detail:
        Extra machine-readable context (kept out of the message).
    """

    def __init__(
        self,
        message: str,
        *,
        run_uid: str | None = None,
        seq_num: int | None = None,
        source: str | None = None,
        line: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        self.message = message
        self.run_uid = run_uid
        self.seq_num = seq_num
        self.source = source
        self.line = line
        self.detail = dict(detail or {})
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.source is not None:
            where.append(
                f"source={self.source}" + (f":{self.line}" if self.line is not None else "")
            )
        elif self.line is not None:
            where.append(f"line={self.line}")
        if self.run_uid is not None:
            where.append(f"run_uid={self.run_uid}")
        if self.seq_num is not None:
            where.append(f"seq_num={self.seq_num}")
        return f"{self.message} [{', '.join(where)}]" if where else self.message

    def context(self) -> dict[str, Any]:
        """The error as a flat JSON-able mapping (for dead-letter records and logs)."""
        return {
            "error": type(self).__name__,
            "message": self.message,
            "run_uid": self.run_uid,
            "seq_num": self.seq_num,
            "source": self.source,
            "line": self.line,
            **({"detail": self.detail} if self.detail else {}),
        }

    def __reduce__(self) -> tuple[Any, ...]:
        # keep the keyword context across pickling (multiprocessing workers)
        return (_rebuild, (type(self), self.context()))


def _rebuild(cls: type[SptError], ctx: dict[str, Any]) -> SptError:
    return cls(
        ctx["message"],
        run_uid=ctx.get("run_uid"),
        seq_num=ctx.get("seq_num"),
        source=ctx.get("source"),
        line=ctx.get("line"),
        detail=ctx.get("detail"),
    )


class SptValueError(SptError, ValueError):
    """Input that is well-formed enough to read but wrong in content."""


class ConfigError(SptValueError):
    """A configuration file, environment override or option is invalid."""


class DecodeError(SptValueError):
    """Bytes that cannot be decoded into a ``(name, doc)`` pair (bluesky-kafka wire format)."""


class DocumentError(SptValueError):
    """A Bluesky document that is malformed or arrives out of order."""


class AssemblyError(SptValueError):
    """A run whose documents do not say (or contradict) what its spectrum is."""


class FrameError(SptValueError):
    """A spectrum frame that cannot be used: NaN/inf, empty, non-monotonic energy, bad lengths."""


class ReaderError(SptValueError):
    """A spectrum file (XDI, column ASCII, ...) that cannot be read."""


class NormalizationError(SptValueError):
    """Normalization parameters that do not fit the data (e.g. an empty pre-edge range)."""


class ModelError(SptError, RuntimeError):
    """The SPT model cannot run as asked."""


class CheckpointError(ModelError):
    """A checkpoint that is missing, corrupt or inconsistent with its metadata."""


class SinkError(SptError, OSError):
    """A sink (Zarr, Tiled, feedback topic, dead-letter store) failed to write."""


class SinkTimeoutError(SinkError, TimeoutError):
    """A sink did not answer in time: slow, not failed (the engine keeps the offsets for a later
    flush instead of failing)."""


class SourceError(SptError, OSError):
    """A replay source (a Tiled server, a stored run) cannot be reached or cannot serve the run."""


class BrokerError(SptError, ConnectionError):
    """The Kafka broker cannot be reached or refused a request."""

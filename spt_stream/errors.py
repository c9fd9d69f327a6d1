"""One exception hierarchy for spt-stream.

Every error derives from :class:`SptError` and, where it fits, from the matching builtin too
(``SptValueError`` is a ``ValueError``), so callers may catch either. Errors carry where the
problem was seen (run uid, seq_num, source file or topic/partition/offset, line) and render it
in their message, so a log line alone tells an operator what to look at.

Rejected input also carries a machine-readable :class:`Reason` (``error.reason``): the code that
dead-letter records, ``IngestCounts.rejected_by_reason`` and the ``spt_rejected`` metric's label
show. It is kept in ``detail["reason"]`` as its plain string value, so records and JSON are the
same as for a plain string.
"""

from __future__ import annotations

import enum
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
    "Reason",
    "SinkError",
    "SinkTimeoutError",
    "SourceError",
    "SptError",
    "SptValueError",
]


class Reason(enum.StrEnum):
    """Why an input was rejected (dead-lettered): the short code in ``detail["reason"]``.

    The values are the strings dead-letter records, counters and metric labels carry; they are
    a stable interface (operators grep and alert on them), so a value never changes.
    """

    # -- documents (ingest and the assembly router) -----------------------------------------------
    UNKNOWN_NAME = "unknown_name"
    """A document name that is not one of Bluesky's (ingest)."""
    UNSUPPORTED = "unsupported"
    """A Bluesky document kind the assembler does not route."""
    MISSING_FIELD = "missing_field"
    """A document lacks a field its schema requires (ingest)."""
    BAD_FIELD = "bad_field"
    """A document field of the wrong type or out of range (seq_num, time, data not a mapping...)."""
    MALFORMED = "malformed"
    """A document or event that broke the router in a way no other check caught."""
    MISSING_DATA = "missing_data"
    """An event lacks a data key its descriptor's plan needs."""
    DUPLICATE = "duplicate"
    """A start document or descriptor uid seen before."""
    UNKNOWN_RUN = "unknown_run"
    """A document for a run whose start document was never seen."""
    CLOSED_RUN = "closed_run"
    """A document for a run already stopped or evicted."""
    EVENT_BEFORE_DESCRIPTOR = "event_before_descriptor"
    """An event (or page) that refers to a descriptor not seen (yet)."""
    UNKNOWN_RESOURCE = "unknown_resource"
    """A datum (or page) that refers to a resource not seen."""
    FILL_FAILED = "fill_failed"
    """External data (a resource/datum reference) could not be loaded by its handler."""
    NO_STREAM = "no_stream"
    """A run stopped without a descriptor for its spectrum stream: it produced no frames."""
    # -- what the run measures (start document hints, descriptor resolution) --------------------
    BAD_HINTS = "bad_hints"
    """``md['spt']`` of a start document is present but malformed."""
    BAD_DESCRIPTOR = "bad_descriptor"
    """A descriptor without a ``data_keys`` mapping."""
    UNKNOWN_KEY = "unknown_key"
    """``md['spt']`` names a key the descriptor does not have."""
    UNRESOLVED = "unresolved"
    """The spectrum, its channels or its energy grid cannot be found among the data keys."""
    AMBIGUOUS = "ambiguous"
    """Several data or configuration keys could play the same role; none is named."""
    BAD_LAYOUT = "bad_layout"
    """The keys found are not all 1-D arrays (fly scan) or all scalars (step scan)."""
    BAD_GRID = "bad_grid"
    """A configuration energy grid that is not usable or does not match the declared length."""
    # -- arrays and frames (assembly kernels) ---------------------------------------------------
    NOT_ARRAY = "not_array"
    """A value that should be a 1-D array is some other type."""
    NOT_NUMERIC = "not_numeric"
    """An array (or scalar) that is not numeric."""
    BAD_SHAPE = "bad_shape"
    """An array that is not 1-D."""
    TOO_LARGE = "too_large"
    """An array longer than ``max_points`` (declared or actual)."""
    EMPTY = "empty"
    """No points: an empty array, or no spectrum files to replay."""
    TOO_SHORT = "too_short"
    """Fewer points than ``min_points``."""
    NONFINITE = "nonfinite"
    """NaN/inf in an array, a step-scan point or a computed absorption."""
    NON_MONOTONIC_ENERGY = "non_monotonic_energy"
    """An energy grid that is not strictly increasing."""
    LENGTH_MISMATCH = "length_mismatch"
    """Arrays (or event/datum page columns) of unequal lengths."""
    # -- replayed spectrum files ------------------------------------------------------------------
    MIXED_ELEMENTS = "mixed_elements"
    """Spectrum files of different elements given as one replayed run."""
    # -- bytes that never became a document -------------------------------------------------------
    UNDECODABLE = "undecodable"
    """Input rejected before it was a document (bad bytes or framing) without a code of its own."""


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
    reason:
        Why the input was rejected, when it was; stored as its string value in
        ``detail["reason"]`` and read back typed by :attr:`reason`.
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
        reason: Reason | None = None,
    ) -> None:
        self.message = message
        self.run_uid = run_uid
        self.seq_num = seq_num
        self.source = source
        self.line = line
        self.detail = dict(detail or {})
        if reason is not None:
            self.detail["reason"] = reason.value
        super().__init__(self._render())

    @property
    def reason(self) -> Reason | None:
        """The :class:`Reason` in ``detail["reason"]``; None when there is none (or it is not a
        known code)."""
        value = self.detail.get("reason")
        if isinstance(value, str):
            try:
                return Reason(value)
            except ValueError:
                return None
        return None

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

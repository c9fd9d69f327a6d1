"""The engine's document entry point: :class:`DocumentIngest`.

Every transport (Kafka, in-process, replay) calls ``ingest(name, doc, position)`` for each
document and ``ingest.reject(error, payload, position)`` for input it could not decode.
DocumentIngest validates cheaply (known name, required fields, references in order), routes the
document to :class:`~spt_stream.assembly.FrameAssembler`, and hands results to the callbacks
given at construction.

Every problem gives exactly one log line (WARNING) naming the reason, run uid, seq_num and
position, one count in ``counts.rejected_by_reason``, and one dead-letter record. Accounting:

* ``documents_seen == accepted + rejected`` at all times (``reject()`` inputs count as seen and
  rejected). A document is *rejected* when it, or any event of an event_page, was refused; a
  document of a run that could not be resolved is rejected once (the start or descriptor that
  failed) and its later events are *accepted and ignored* (``ignored_events``), not dead-lettered.
* ``sum(rejected_by_reason.values())`` == dead-letter records written: it also counts problems
  with derived products that are not a document's fault (a step-scan sweep too short, a run that
  ended without a spectrum stream).

What escapes ``__call__``: nothing caused by the input. Exceptions raised by the ``on_frame``,
``on_run_start`` and ``on_run_stop`` callbacks propagate unchanged (they are the engine's own
faults, e.g. a sink that must stop the engine); that document then counts as accepted and
``callback_errors`` is incremented. Not thread-safe: call from one thread.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from spt_stream.assembly import BeamlineProfile, CallbackError, FrameAssembler
from spt_stream.config import AssemblySettings
from spt_stream.core.frames import Frame, RunInfo
from spt_stream.errors import DocumentError, Reason, SptError
from spt_stream.protocols import Position
from spt_stream.sinks.deadletter import DeadLetterSink, dead_letter_record

__all__ = ["REQUIRED_FIELDS", "DocumentIngest", "IngestCounts"]

log = logging.getLogger(__name__)

#: Fields each known document must carry (checked before routing).
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "start": ("uid", "time"),
    "descriptor": ("uid", "run_start", "data_keys"),
    "event": ("uid", "descriptor", "seq_num", "time", "data"),
    "event_page": ("uid", "descriptor", "seq_num", "time", "data", "timestamps"),
    "stop": ("uid", "run_start"),
    "resource": ("uid", "spec", "resource_path", "resource_kwargs"),
    "datum": ("datum_id", "resource", "datum_kwargs"),
    "datum_page": ("datum_id", "resource", "datum_kwargs"),
    # Known but not used for spectra: accepted and ignored.
    "stream_resource": ("uid",),
    "stream_datum": ("uid",),
}
_IGNORED = frozenset({"stream_resource", "stream_datum"})


@dataclass
class IngestCounts:
    """Running counters of one :class:`DocumentIngest` (see the module doc for the invariants)."""

    #: Documents by name (names outside :data:`REQUIRED_FIELDS` are counted under ``"<unknown>"``).
    documents: Counter[str] = field(default_factory=Counter)
    documents_seen: int = 0
    accepted: int = 0
    rejected: int = 0
    frames: int = 0
    #: Dead-letter records by reason code (``nonfinite``, ``event_before_descriptor``, ...).
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    ignored_events: int = 0
    runs_started: int = 0
    runs_stopped: int = 0
    runs_skipped: int = 0
    runs_evicted: int = 0
    callback_errors: int = 0
    dead_letter_failures: int = 0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able snapshot."""
        return {
            "documents": dict(self.documents),
            "documents_seen": self.documents_seen,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "frames": self.frames,
            "rejected_by_reason": dict(self.rejected_by_reason),
            "ignored_events": self.ignored_events,
            "runs_started": self.runs_started,
            "runs_stopped": self.runs_stopped,
            "runs_skipped": self.runs_skipped,
            "runs_evicted": self.runs_evicted,
            "callback_errors": self.callback_errors,
            "dead_letter_failures": self.dead_letter_failures,
        }


class DocumentIngest:
    """Implements :class:`spt_stream.protocols.DocumentHandler`.

    Parameters
    ----------
    on_frame:
        Receives every assembled :class:`Frame`.
    on_run_start:
        Receives a run's :class:`RunInfo` once its first spectrum descriptor is resolved.
    on_run_stop:
        Receives ``(run_uid, stop_doc)`` for every run that started (also a synthetic stop with
        ``exit_status="abort"`` when a run is evicted: ``max_open_runs`` or :meth:`evict_idle`).
    dead_letter:
        Sink for one record per problem (None: records are only logged and counted).
    settings:
        Assembly limits and default profile; ``profile`` overrides ``settings.profile``.
    handler_registry, root_map:
        Extra event-model Filler handlers and root remapping for externally stored data.

    Raises :class:`~spt_stream.errors.ConfigError` at construction for a missing/invalid profile.
    """

    def __init__(
        self,
        on_frame: Callable[[Frame], None],
        *,
        on_run_start: Callable[[RunInfo], None] | None = None,
        on_run_stop: Callable[[str, Mapping[str, Any]], None] | None = None,
        dead_letter: DeadLetterSink | None = None,
        settings: AssemblySettings | None = None,
        profile: BeamlineProfile | None = None,
        handler_registry: Mapping[str, Any] | None = None,
        root_map: Mapping[str, str] | None = None,
    ) -> None:
        self._counts = IngestCounts()
        self._on_frame = on_frame
        self._dead_letter = dead_letter
        self._faults = 0
        self._position: Position | None = None
        self.assembler = FrameAssembler(
            settings,
            on_frame=self._frame,
            on_run_start=on_run_start,
            on_run_stop=on_run_stop,
            on_problem=self._problem,
            profile=profile,
            handler_registry=handler_registry,
            root_map=root_map,
        )

    # -- DocumentHandler -------------------------------------------------------------------------
    def __call__(self, name: str, doc: Mapping[str, Any], position: Position | None = None) -> None:
        counts = self._counts
        counts.documents_seen += 1
        self._faults = 0
        self._position = position
        try:
            required = REQUIRED_FIELDS.get(name) if type(name) is str else None
            if required is None:
                counts.documents["<unknown>"] += 1
                raise DocumentError(
                    f"unknown document name {str(name)[:64]!r}", reason=Reason.UNKNOWN_NAME
                )
            counts.documents[name] += 1
            if not isinstance(doc, Mapping):
                raise DocumentError(
                    f"{name} document is a {type(doc).__name__}, not a mapping",
                    reason=Reason.BAD_FIELD,
                )
            for key in required:
                if key not in doc:
                    raise DocumentError(
                        f"{name} document lacks required field {key!r}",
                        reason=Reason.MISSING_FIELD,
                    )
            if name not in _IGNORED:
                self.assembler.position = position
                self.assembler(name, doc)
        except CallbackError as wrapped:
            counts.accepted += 1
            counts.callback_errors += 1
            raise wrapped.original from None
        except SptError as err:
            self._problem(err, name, doc, True)
        except Exception as exc:  # malformed input that slipped past the checks
            log.debug("unexpected error routing %s document", name, exc_info=True)
            self._problem(
                DocumentError(
                    f"malformed {name} document: {type(exc).__name__}: {str(exc)[:300]}",
                    reason=Reason.MALFORMED,
                ),
                name,
                doc,
                True,
            )
        if self._faults:
            counts.rejected += 1
        else:
            counts.accepted += 1

    def reject(
        self, error: SptError, payload: bytes | None = None, position: Position | None = None
    ) -> None:
        """Account for input that never became a document (undecodable bytes, bad framing)."""
        self._counts.documents_seen += 1
        self._counts.rejected += 1
        reason = (error.reason or Reason.UNDECODABLE).value
        self._counts.rejected_by_reason[reason] += 1
        log.warning(
            "rejected input: %s [reason=%s run_uid=%s seq_num=%s at %s]",
            error.message,
            reason,
            error.run_uid,
            error.seq_num,
            position if position is not None else error.source,
        )
        self._write(dead_letter_record(error, payload=payload, position=position), reason)

    # -- extras ----------------------------------------------------------------------------------
    def evict_idle(self, max_idle_s: float) -> list[str]:
        """Close runs idle for ``max_idle_s`` seconds (no stop document); returns their uids."""
        return self.assembler.evict_idle(max_idle_s)

    @property
    def counts(self) -> IngestCounts:
        """The live counters (run counts refreshed from the assembler on access)."""
        a, c = self.assembler, self._counts
        c.ignored_events = a.ignored_events
        c.runs_started = a.runs_started
        c.runs_stopped = a.runs_stopped
        c.runs_skipped = a.runs_skipped
        c.runs_evicted = a.runs_evicted
        return c

    def open_run_positions(self) -> dict[str, Position | None]:
        """Start-document position of every open run: do not commit offsets past these."""
        return self.assembler.open_run_positions()

    @property
    def open_runs(self) -> list[str]:
        """Uids of runs started and not yet stopped or evicted."""
        return self.assembler.open_runs

    # -- internals -------------------------------------------------------------------------------
    def _frame(self, frame: Frame) -> None:
        self._counts.frames += 1
        self._on_frame(frame)

    def _problem(self, err: SptError, name: Any, doc: Any, document_fault: bool) -> None:
        if document_fault:
            self._faults += 1
        reason = err.reason.value if err.reason is not None else type(err).__name__
        self._counts.rejected_by_reason[reason] += 1
        run_uid = err.run_uid
        if run_uid is None:
            run_uid = self.assembler.run_of(name, doc) if isinstance(name, str) else None
        seq_num = err.seq_num
        if seq_num is None and isinstance(doc, Mapping):
            seq = doc.get("seq_num")
            seq_num = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
        where = self._position
        log.warning(
            "rejected %s: %s [reason=%s run_uid=%s seq_num=%s at %s]",
            name if isinstance(name, str) else "document",
            err.message,
            reason,
            run_uid,
            seq_num,
            where if where is not None else "in-process",
        )
        if err.run_uid is None or err.seq_num is None:
            err = type(err)(err.message, run_uid=run_uid, seq_num=seq_num, detail=err.detail)
        record = dead_letter_record(err, name=name, doc=doc, position=where)
        self._write(record, reason)

    def _write(self, record: dict[str, Any], reason: str) -> None:
        record["reason"] = reason
        if self._dead_letter is None:
            return
        try:
            self._dead_letter.write(record)
        except Exception:  # a failing sink is logged and counted, never raised into the engine
            self._counts.dead_letter_failures += 1
            log.exception("dead-letter sink failed; record lost: %s", record.get("message"))

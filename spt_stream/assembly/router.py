"""Frame assembly: Bluesky documents of interleaved runs -> :class:`~spt_stream.core.frames.Frame`.

:class:`FrameAssembler` owns an ``event_model.RunRouter`` whose factory makes one private
:class:`~spt_stream.assembly.run.RunAssembler` (an ``event_model.DocumentRouter``) per run, so
several runs may be interleaved. Externally stored data (resource/datum, ``filled: {key: False}``)
is filled by the RunRouter's per-run ``event_model.Filler`` with the handlers of
:mod:`spt_stream.assembly.handlers`. What a frame holds: :mod:`spt_stream.assembly.run`.

Problems are reported, not raised, where raising would leave event-model's RunRouter half
updated: ``on_problem(error, name, doc, document_fault)``. ``document_fault`` is False when the
document itself was fine and a derived product failed (a sweep too short, a run that never had a
spectrum descriptor). Ordering problems found before routing (unknown run, event before its
descriptor, duplicate uid) raise :class:`DocumentError`; the caller
(:class:`spt_stream.assembly.ingest.DocumentIngest`) accounts for both. Exceptions raised by the
``on_frame``/``on_run_start``/``on_run_stop`` callbacks are wrapped in :class:`CallbackError`
and propagate.

One module: the router's per-document checks and the run bookkeeping they update (descriptor and
resource ownership, eviction) are one state machine; splitting them would spread that state over
modules.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import Any

from event_model import EventModelError

from spt_stream.assembly.handlers import DEFAULT_HANDLERS
from spt_stream.assembly.profile import BeamlineProfile, load_profile
from spt_stream.assembly.run import CallbackError, RunAssembler, SptRunRouter, doc_error, seq_num_of
from spt_stream.config import AssemblySettings
from spt_stream.core.frames import Frame, RunInfo
from spt_stream.errors import DocumentError, FrameError, Reason, SptError
from spt_stream.protocols import Position

__all__ = ["CallbackError", "FrameAssembler", "ProblemCallback"]

log = logging.getLogger(__name__)

#: ``on_problem(error, document name, document, document_fault)``.
ProblemCallback = Callable[[SptError, str, Any, bool], None]

_CLOSED_MEMORY = 8192


def _str_field(name: str, doc: Mapping[str, Any], key: str) -> str:
    value = doc[key]
    if not isinstance(value, str) or not value:
        raise doc_error(
            f"{name} document field {key!r} must be a non-empty string, got {type(value).__name__}",
            Reason.BAD_FIELD,
        )
    return value


class FrameAssembler:
    """Route the documents of any number of interleaved runs into frames.

    Parameters
    ----------
    settings:
        Limits and the default beamline profile (validated once, here).
    on_frame, on_run_start, on_run_stop:
        Called with each assembled :class:`Frame`, with a run's :class:`RunInfo` once its first
        spectrum descriptor resolved, and with ``(run_uid, stop_doc)`` at the stop of a run that
        had started (an evicted run gets a synthetic stop with ``exit_status="abort"``).
    on_problem:
        ``(error, name, doc, document_fault)`` for problems found while routing (see module doc).
    profile:
        A loaded profile, overriding ``settings.profile``.
    handler_registry, root_map:
        Extra Filler handlers (merged over :data:`DEFAULT_HANDLERS`) and root remapping.
    default_stream:
        Event stream holding spectra when neither ``md["spt"]`` nor the profile says.

    Not thread-safe: feed it from one thread. ``position`` is set by the caller before each
    document and copied into frame provenance.
    """

    def __init__(
        self,
        settings: AssemblySettings | None = None,
        *,
        on_frame: Callable[[Frame], None],
        on_run_start: Callable[[RunInfo], None] | None = None,
        on_run_stop: Callable[[str, Mapping[str, Any]], None] | None = None,
        on_problem: ProblemCallback | None = None,
        profile: BeamlineProfile | None = None,
        handler_registry: Mapping[str, Any] | None = None,
        root_map: Mapping[str, str] | None = None,
        default_stream: str = "primary",
    ) -> None:
        self.settings = settings or AssemblySettings()
        if profile is None and self.settings.profile is not None:
            profile = load_profile(self.settings.profile)
        self.profile = profile
        self.default_stream = default_stream
        self._on_frame = on_frame
        self._on_run_start = on_run_start
        self._on_run_stop = on_run_stop
        self._on_problem = on_problem
        registry = {**DEFAULT_HANDLERS, **(handler_registry or {})}
        self._router = SptRunRouter(
            [self._factory], registry, root_map=dict(root_map) if root_map else None
        )
        self._runs: OrderedDict[str, RunAssembler] = OrderedDict()  # least recently active first
        self._children: dict[str, list[str]] = {}  # run uid -> its descriptor and resource uids
        self._descriptor_run: dict[str, str] = {}
        self._resource_run: dict[str, str] = {}
        self._unlabeled: deque[str] = deque(maxlen=10_000)
        self._closed: OrderedDict[str, str] = OrderedDict()  # uid of a closed run/child -> run uid
        self.position: Position | None = None
        self.ignored_events = 0
        self.runs_started = 0
        self.runs_stopped = 0
        self.runs_skipped = 0
        self.runs_evicted = 0
        self._dispatch: dict[str, Callable[[Any], None]] = {
            "start": self.start,
            "descriptor": self.descriptor,
            "event": self.event,
            "event_page": self.event_page,
            "resource": self.resource,
            "datum": self.datum,
            "datum_page": self.datum_page,
            "stop": self.stop,
        }

    # -- public ------------------------------------------------------------------------------
    def __call__(self, name: str, doc: Mapping[str, Any]) -> None:
        """Route one document. Raises :class:`DocumentError` for documents out of order."""
        method = self._dispatch.get(name)
        if method is None:
            raise doc_error(f"unsupported document name {name!r}", Reason.UNSUPPORTED)
        method(doc)

    @property
    def open_runs(self) -> list[str]:
        """Uids of the runs started and not yet stopped, least recently active first."""
        return list(self._runs)

    def run_of(self, name: str, doc: Any) -> str | None:
        """The run uid a document belongs to, when it can be told (for messages)."""
        if not isinstance(doc, Mapping):
            return None
        try:
            if name == "start":
                uid = doc.get("uid")
            elif name in ("descriptor", "stop", "resource"):
                uid = doc.get("run_start")
            else:
                ref: Any = doc.get("descriptor" if name in ("event", "event_page") else "resource")
                table: Mapping[str, str]
                table = (
                    self._descriptor_run if name in ("event", "event_page") else self._resource_run
                )
                uid = table.get(ref) or self._closed.get(ref)
        except TypeError:  # unhashable reference
            return None
        return uid if isinstance(uid, str) else None

    def open_run_positions(self) -> dict[str, Position | None]:
        """Position of the start document of every open run.

        An open run's state (start, descriptors, a partial step-scan sweep) lives only in
        memory: a transport that commits offsets must not commit past the earliest of these on
        that partition, or a restart would see the run's events without its start/descriptor.
        """
        return {uid: run.start_position for uid, run in self._runs.items()}

    def evict_idle(self, max_idle_s: float) -> list[str]:
        """Close every run with no document for ``max_idle_s`` seconds; returns their uids."""
        now = time.monotonic()
        idle = [uid for uid, run in self._runs.items() if now - run.last_active > max_idle_s]
        for uid in idle:
            self._evict(uid, f"no document for {max_idle_s:g} s")
        return idle

    # -- per document ------------------------------------------------------------------------
    def start(self, doc: Any) -> None:
        uid = _str_field("start", doc, "uid")
        if uid in self._runs or uid in self._closed:
            raise doc_error(
                "duplicate start document (run uid already seen)", Reason.DUPLICATE, run_uid=uid
            )
        while len(self._runs) >= self.settings.max_open_runs:
            oldest = next(iter(self._runs))
            self._evict(oldest, f"max_open_runs={self.settings.max_open_runs} reached")
        self._children[uid] = []
        self._router.start(doc)
        self.runs_started += 1

    def descriptor(self, doc: Any) -> None:
        uid = _str_field("descriptor", doc, "uid")
        run_uid = self._open_run(doc, "descriptor", "run_start")
        if uid in self._descriptor_run or uid in self._closed:
            raise doc_error("duplicate descriptor uid", Reason.DUPLICATE, run_uid=run_uid)
        data_keys = doc["data_keys"]
        if not isinstance(data_keys, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Mapping) for k, v in data_keys.items()
        ):
            raise doc_error(
                "descriptor data_keys must map names to mappings", Reason.BAD_FIELD, run_uid=run_uid
            )
        if not isinstance(doc.get("name", "primary"), str) or not isinstance(
            doc.get("configuration", {}), Mapping
        ):
            raise doc_error(
                "descriptor name/configuration malformed", Reason.BAD_FIELD, run_uid=run_uid
            )
        self._descriptor_run[uid] = run_uid
        self._children[run_uid].append(uid)
        self._router.descriptor(doc)

    def event(self, doc: Any) -> None:
        ref = doc["descriptor"]
        run_uid = self._descriptor_run.get(ref) if type(ref) is str else None
        if run_uid is None:
            raise self._orphan("event", doc, ref)
        run = self._runs[run_uid]
        self._runs.move_to_end(run_uid)
        run.last_active = time.monotonic()
        if type(doc["data"]) is not dict and not isinstance(doc["data"], Mapping):
            raise doc_error(
                "event data is not a mapping",
                Reason.BAD_FIELD,
                run_uid=run_uid,
                seq_num=seq_num_of(doc),
            )
        try:
            self._router("event", doc)  # the public entry point: pages what the fast path does not
        except EventModelError as exc:
            raise self._fill_error(exc, run_uid, seq_num_of(doc)) from None

    def event_page(self, doc: Any) -> None:
        ref = doc["descriptor"]
        run_uid = self._descriptor_run.get(ref) if type(ref) is str else None
        if run_uid is None:
            raise self._orphan("event_page", doc, ref)
        self._runs.move_to_end(run_uid)
        self._runs[run_uid].last_active = time.monotonic()
        _check_page(doc, run_uid)
        try:
            self._router("event_page", doc)
        except EventModelError as exc:
            raise self._fill_error(exc, run_uid, None) from None

    def resource(self, doc: Any) -> None:
        uid = _str_field("resource", doc, "uid")
        if not isinstance(doc["resource_kwargs"], Mapping):
            raise doc_error("resource_kwargs must be a mapping", Reason.BAD_FIELD)
        if "run_start" in doc:
            run_uid = self._open_run(doc, "resource", "run_start")
            self._children[run_uid].append(uid)
            self._resource_run[uid] = run_uid
        else:  # an old-style resource with no run: event-model fans it out to every open run
            self._unlabeled.append(uid)
        self._router.resource(doc)

    def datum(self, doc: Any) -> None:
        self._known_resource(doc, "datum")
        if not isinstance(doc["datum_kwargs"], Mapping) or not isinstance(doc["datum_id"], str):
            raise doc_error("datum_id/datum_kwargs malformed", Reason.BAD_FIELD)
        self._router("datum", doc)

    def datum_page(self, doc: Any) -> None:
        self._known_resource(doc, "datum_page")
        ids, kwargs = doc["datum_id"], doc["datum_kwargs"]
        if (
            not isinstance(ids, list)
            or not isinstance(kwargs, Mapping)
            or not all(isinstance(v, list) and len(v) == len(ids) for v in kwargs.values())
        ):
            raise doc_error(
                "datum_page columns malformed or of unequal lengths", Reason.LENGTH_MISMATCH
            )
        self._router.datum_page(doc)

    def stop(self, doc: Any) -> None:
        run_uid = self._open_run(doc, "stop", "run_start")
        try:
            self._router.stop(doc)
        finally:
            self._forget(run_uid)
        self.runs_stopped += 1

    # -- callbacks from runs -------------------------------------------------------------------
    def _factory(self, name: str, start_doc: Mapping[str, Any]) -> tuple[list[Any], list[Any]]:
        run = RunAssembler(self, start_doc["uid"])
        self._runs[run.run_uid] = run
        return [run], []

    def _emit_frame(self, frame: Frame) -> None:
        try:
            self._on_frame(frame)
        except Exception as exc:
            raise CallbackError(exc) from exc

    def _run_started(self, info: RunInfo) -> None:
        if self._on_run_start is not None:
            try:
                self._on_run_start(info)
            except Exception as exc:
                raise CallbackError(exc) from exc

    def _run_stopped(self, run_uid: str, doc: Mapping[str, Any]) -> None:
        if self._on_run_stop is not None:
            try:
                self._on_run_stop(run_uid, doc)
            except Exception as exc:
                raise CallbackError(exc) from exc

    def _problem(self, err: SptError, name: str, doc: Any, document_fault: bool) -> None:
        if self._on_problem is not None:
            self._on_problem(err, name, doc, document_fault)
        else:
            log.warning("%s document problem: %s", name, err)

    # -- helpers --------------------------------------------------------------------------------
    def _open_run(self, doc: Mapping[str, Any], name: str, key: str) -> str:
        run_uid = doc[key]
        if type(run_uid) is not str:
            raise doc_error(f"{name} field {key!r} must be a string", Reason.BAD_FIELD)
        if run_uid not in self._runs:
            if run_uid in self._closed:
                raise doc_error(
                    f"{name} for a run already closed", Reason.CLOSED_RUN, run_uid=run_uid
                )
            raise doc_error(
                f"{name} for unknown run (no start document seen)",
                Reason.UNKNOWN_RUN,
                run_uid=run_uid,
            )
        return run_uid

    def _orphan(self, name: str, doc: Any, ref: Any) -> DocumentError:
        closed = self._closed.get(ref) if type(ref) is str else None
        if closed is not None:
            return doc_error(
                f"{name} for a run already closed",
                Reason.CLOSED_RUN,
                run_uid=closed,
                seq_num=seq_num_of(doc),
            )
        return doc_error(
            f"{name} refers to unknown descriptor {str(ref)[:80]!r} (event before its descriptor?)",
            Reason.EVENT_BEFORE_DESCRIPTOR,
            seq_num=seq_num_of(doc),
        )

    def _known_resource(self, doc: Mapping[str, Any], name: str) -> None:
        ref = doc["resource"]
        if type(ref) is not str or (ref not in self._resource_run and ref not in self._unlabeled):
            closed = self._closed.get(ref) if type(ref) is str else None
            if closed is not None:
                raise doc_error(
                    f"{name} for a run already closed", Reason.CLOSED_RUN, run_uid=closed
                )
            raise doc_error(
                f"{name} refers to unknown resource {str(ref)[:80]!r}", Reason.UNKNOWN_RESOURCE
            )

    @staticmethod
    def _fill_error(exc: Exception, run_uid: str, seq_num: int | None) -> FrameError:
        return FrameError(
            f"external data could not be filled: {type(exc).__name__}: {str(exc)[:300]}",
            run_uid=run_uid,
            seq_num=seq_num,
            reason=Reason.FILL_FAILED,
        )

    def _evict(self, run_uid: str, why: str) -> None:
        run = self._runs[run_uid]
        log.warning(
            "evicting run %s without a stop document (%s); %s",
            run_uid,
            why,
            "its partial sweep is flushed" if run._sweep is not None else "closing it",
        )
        self.runs_evicted += 1
        self.stop(
            {
                "uid": f"spt-evicted-{run_uid}",
                "run_start": run_uid,
                "time": time.time(),
                "exit_status": "abort",
                "reason": f"evicted by spt-stream: {why}",
                "num_events": {},
            }
        )

    def _forget(self, run_uid: str) -> None:
        self._runs.pop(run_uid, None)
        self._remember(run_uid, run_uid)
        for uid in self._children.pop(run_uid, []):
            self._descriptor_run.pop(uid, None)
            self._resource_run.pop(uid, None)
            self._remember(uid, run_uid)

    def _remember(self, uid: str, run_uid: str) -> None:
        self._closed[uid] = run_uid
        while len(self._closed) > _CLOSED_MEMORY:
            self._closed.popitem(last=False)


def _check_page(doc: Mapping[str, Any], run_uid: str) -> None:
    """Every column of an event_page must be a list of the same length (zip would truncate)."""
    seq = doc["seq_num"]
    if not isinstance(seq, list):
        raise doc_error("event_page seq_num is not a list", Reason.BAD_FIELD, run_uid=run_uid)
    n = len(seq)
    columns: list[Any] = [doc["uid"], doc["time"]]
    for key in ("data", "timestamps", "filled"):
        block = doc.get(key, {})
        if not isinstance(block, Mapping):
            raise doc_error(f"event_page {key} is not a mapping", Reason.BAD_FIELD, run_uid=run_uid)
        columns.extend(block.values())
    if not all(isinstance(c, list) and len(c) == n for c in columns):
        raise doc_error(
            f"event_page columns have unequal lengths (seq_num has {n})",
            Reason.LENGTH_MISMATCH,
            run_uid=run_uid,
        )
    if "timestamps" not in doc or set(doc["timestamps"]) != set(doc["data"]):
        raise doc_error(
            "event_page timestamps keys differ from data keys", Reason.BAD_FIELD, run_uid=run_uid
        )

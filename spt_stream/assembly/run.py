"""Per-run state of frame assembly: one :class:`RunAssembler` per run, made by the RunRouter.

* Array layout (quick-XAS, dispersive): one frame per event, ``seq_num`` = the event's seq_num.
* Step layout: one energy point per event; one frame per sweep. A sweep ends when the energy stops
  moving in the sweep's direction (or repeats), when the descriptor changes, or at the stop
  document; a down-sweep is reversed so the frame's energy increases. ``seq_num`` = sweep number
  (1-based, counting rejected sweeps too), ``time`` = the sweep's last event time,
  ``scalars`` = the mean of each scalar over the sweep's events,
  ``provenance["event_seq_nums"]``/``["event_uids"]`` = the events that built it.

Frame provenance: ``stream``, ``descriptor``, ``event_uid`` (array layout) or ``event_uids`` and
``event_seq_nums`` (step layout), and ``position``: the transport
:class:`~spt_stream.protocols.Position` of the document whose arrival completed the frame (the
event; for a sweep, the event that broke it or the stop document), ``None`` when not given.

One module: per-run assembly (array and step layouts, sweeps, the RunRouter adapter they are called
from) shares the run's state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import event_model
import numpy as np
from event_model import DocumentRouter, Filler, RunRouter, unpack_event_page

from spt_stream.assembly.kernels import (
    as_vector,
    check_energy,
    check_finite,
    check_length,
    frozen,
    mu_fluorescence,
    mu_transmission,
    sweep_arrays,
)
from spt_stream.assembly.resolve import (
    DescriptorPlan,
    StartContext,
    resolve_descriptor,
    run_info,
    start_context,
)
from spt_stream.core.frames import Frame, RunInfo
from spt_stream.errors import AssemblyError, DocumentError, FrameError, Reason, SptError

if TYPE_CHECKING:
    from spt_stream.assembly.router import FrameAssembler

__all__ = [
    "TESTED_EVENT_MODEL",
    "CallbackError",
    "RunAssembler",
    "SptRunRouter",
    "doc_error",
    "seq_num_of",
]

log = logging.getLogger(__name__)

_NUMBER = (int, float, np.integer, np.floating)


class CallbackError(Exception):
    """Wraps an exception raised by a user callback so it is never mistaken for bad input."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(repr(original))
        self.original = original


def doc_error(message: str, reason: Reason, **where: Any) -> DocumentError:
    return DocumentError(message, reason=reason, **where)


def _in_context(exc: SptError, run_uid: str, seq_num: int | None) -> SptError:
    """The same error, re-rendered with the run uid and seq_num it belongs to."""
    return type(exc)(exc.message, run_uid=run_uid, seq_num=seq_num, detail=exc.detail)


def _scalar(value: Any, what: str) -> float:
    if isinstance(value, _NUMBER) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "fiu":
        return float(value)
    raise FrameError(
        f"{what} is a {type(value).__name__}, expected a number", reason=Reason.NOT_NUMERIC
    )


#: event-model releases (major, minor) whose RunRouter internals the fast path below was checked
#: against (tests/pipeline/test_assembly_router_adapter.py); pinned in pyproject.toml.
TESTED_EVENT_MODEL: Final = ((1, 22), (1, 23), (1, 24))
#: The RunRouter attributes the fast path reads (private to event-model).
_ROUTER_INTERNALS: Final = (
    "_fillers",
    "_descriptor_to_start",
    "_factory_cbs_by_descriptor",
    "_subfactory_cbs_by_descriptor",
    "_start_to_descriptors",
    "_resources",
    "_stream_resources",
)


def _event_model_tested() -> bool:
    try:
        major, minor = (int(p) for p in event_model.__version__.split(".")[:2])
    except (AttributeError, ValueError):
        return False
    return (major, minor) in TESTED_EVENT_MODEL


class SptRunRouter(RunRouter):
    """event-model's RunRouter, passing plain events straight to the run's callbacks.

    RunRouter itself turns every ``event`` into a one-event page, fills it and unpacks it again;
    at >20k events/s that round trip costs more than the assembly. Here an event whose descriptor
    has no external data keys skips the Filler entirely; others are filled event by event.

    This reads RunRouter's private maps, so it is an adapter: it runs only with an event-model
    release in :data:`TESTED_EVENT_MODEL` that has every attribute it reads; otherwise
    (``fast`` False) every document goes through RunRouter's public handling, which gives the
    same frames (tests/pipeline/test_assembly_router_adapter.py) at the page round trip's cost.
    """

    def __init__(
        self,
        factories: list[Any],
        handler_registry: dict[str, Any],
        *,
        fast: bool | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(
            factories,
            handler_registry,
            filler_class=partial(Filler, retry_intervals=[]),  # type: ignore[arg-type]
            fill_or_fail=True,
            **kw,
        )
        available = _event_model_tested() and all(hasattr(self, a) for a in _ROUTER_INTERNALS)
        self.fast = available if fast is None else bool(fast) and available
        self._external: dict[str, bool] = {}

    def descriptor(self, descriptor_doc: Any) -> None:
        super().descriptor(descriptor_doc)
        if self.fast:
            self._external[descriptor_doc["uid"]] = any(
                "external" in dk for dk in descriptor_doc["data_keys"].values()
            )

    def event(self, doc: Any) -> Any:
        if not self.fast:
            return super().event(doc)
        uid = doc["descriptor"]
        if self._external[uid]:
            doc = self._fillers[self._descriptor_to_start[uid]].event(doc)
        for callback in self._factory_cbs_by_descriptor[uid]:
            callback("event", doc)
        for callback in self._subfactory_cbs_by_descriptor[uid]:
            callback("event", doc)
        return doc

    def event_page(self, doc: Any) -> Any:
        if not self.fast:
            return super().event_page(doc)
        uid = doc["descriptor"]
        if self._external[uid]:
            doc = self._fillers[self._descriptor_to_start[uid]].event_page(doc)
        for callback in self._factory_cbs_by_descriptor[uid]:
            callback("event_page", doc)
        for callback in self._subfactory_cbs_by_descriptor[uid]:
            callback("event_page", doc)
        return doc

    def stop(self, doc: Any) -> None:
        if not self.fast:
            super().stop(doc)
            return
        run_uid = doc["run_start"]
        for uid in self._start_to_descriptors.get(run_uid, ()):
            self._external.pop(uid, None)
        super().stop(doc)
        # RunRouter.stop keys its resource cleanup by the run uid; drop this run's entries here.
        for table in (self._resources, self._stream_resources):
            for key in [k for k, v in table.items() if v == run_uid]:
                del table[key]


class _Sweep:
    """Points of one step-scan sweep, in arrival order."""

    __slots__ = (
        "channels",
        "descriptor",
        "direction",
        "energy",
        "scalars",
        "seq_nums",
        "time",
        "uids",
    )

    def __init__(self, plan: DescriptorPlan) -> None:
        self.descriptor = plan.descriptor_uid
        self.energy: list[float] = []
        self.channels: dict[str, list[float]] = {}
        self.scalars: dict[str, list[float]] = {}
        self.seq_nums: list[int] = []
        self.uids: list[str] = []
        self.direction = 0.0
        self.time = 0.0

    def breaks(self, energy: float, descriptor: str) -> bool:
        """Whether a point at ``energy`` starts a new sweep."""
        if descriptor != self.descriptor:
            return True
        step = energy - self.energy[-1]
        if self.direction == 0.0:
            return step == 0.0
        return step * self.direction <= 0.0


class RunAssembler(DocumentRouter):
    """Per-run state: start context, descriptor plans, the open sweep. Made by the factory."""

    def __init__(self, owner: FrameAssembler, run_uid: str) -> None:
        super().__init__()
        self._owner = owner
        self.run_uid = run_uid
        #: Transport position of the start document (see FrameAssembler.open_run_positions).
        self.start_position = owner.position
        self.ctx: StartContext | None = None
        self.info: RunInfo | None = None
        self.skipped = False
        self.last_active = time.monotonic()
        self.streams_seen: list[str] = []
        self._plans: dict[str, DescriptorPlan] = {}
        self._sweep: _Sweep | None = None
        self._sweeps = 0

    # -- documents -------------------------------------------------------------------------
    def start(self, doc: Any) -> None:
        try:
            self.ctx = start_context(doc, self._owner.profile, self._owner.default_stream)
        except AssemblyError as err:
            self._skip(err, "start", doc)

    def descriptor(self, doc: Any) -> None:
        ctx = self.ctx
        stream = doc.get("name", "primary")
        self.streams_seen.append(str(stream))
        if self.skipped or ctx is None or stream != ctx.stream:
            return
        settings = self._owner.settings
        try:
            plan = resolve_descriptor(
                ctx, doc, max_points=settings.max_points, min_points=settings.min_points
            )
        except AssemblyError as err:
            if self.info is None:
                self._skip(err, "descriptor", doc)
            else:
                self._owner._problem(err, "descriptor", doc, True)
            return
        self._plans[plan.descriptor_uid] = plan
        if self.info is None:
            self.info = run_info(ctx, plan)
            log.info(
                "run %s: %s layout, mode %s, keys %s (resolved by %s)",
                self.run_uid,
                plan.layout,
                plan.mode,
                dict(plan.keys),
                plan.resolved_by,
            )
            self._owner._run_started(self.info)

    def event(self, doc: Any) -> Any:
        plan = self._plans.get(doc["descriptor"])
        if plan is None:  # another stream, or a run/descriptor that could not be resolved
            self._owner.ignored_events += 1
            return
        try:
            if plan.layout == "array":
                self._owner._emit_frame(self._array_frame(plan, doc))
            else:
                self._step_point(plan, doc)
        except SptError as err:
            raise _in_context(err, self.run_uid, seq_num_of(doc)) from None
        except CallbackError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise DocumentError(
                f"malformed event: {type(exc).__name__}: {exc}",
                run_uid=self.run_uid,
                seq_num=seq_num_of(doc),
                reason=Reason.MISSING_DATA if isinstance(exc, KeyError) else Reason.MALFORMED,
            ) from None

    def event_page(self, doc: Any) -> Any:
        for event in unpack_event_page(doc):
            try:
                self.event(event)
            except SptError as err:
                self._owner._problem(err, "event", event, True)

    def stop(self, doc: Any) -> None:
        if self._sweep is not None:
            self._close_sweep()
        if self.info is not None:
            self._owner._run_stopped(self.run_uid, doc)
        elif not self.skipped and self.ctx is not None:
            self._owner._problem(
                AssemblyError(
                    f"run produced no frames: no descriptor for stream {self.ctx.stream!r} "
                    f"(streams seen: {self.streams_seen})",
                    run_uid=self.run_uid,
                    reason=Reason.NO_STREAM,
                ),
                "stop",
                doc,
                False,
            )

    # -- assembly ---------------------------------------------------------------------------
    def _skip(self, err: AssemblyError, name: str, doc: Any) -> None:
        self.skipped = True
        self._owner.runs_skipped += 1
        self._owner._problem(err, name, doc, True)

    def _array_frame(self, plan: DescriptorPlan, doc: Any) -> Frame:
        data = doc["data"]
        max_points = self._owner.settings.max_points
        energy = plan.grid
        if energy is None:
            key = plan.energy_key
            assert key is not None
            energy = as_vector(data[key], key, max_points)
            if plan.energy_scale != 1.0:
                energy = frozen(energy * plan.energy_scale)
            check_energy(energy, key, self._owner.settings.min_points)
        n = energy.shape[0]
        if plan.spectrum is not None:
            mu = as_vector(data[plan.spectrum], plan.spectrum, max_points)
            check_length(mu, n, plan.spectrum)
            check_finite(mu, plan.spectrum, 1)
        else:
            assert plan.i0 is not None
            i0 = as_vector(data[plan.i0], plan.i0, max_points)
            check_length(i0, n, plan.i0)
            if plan.mode == "transmission":
                assert plan.it is not None
                it = as_vector(data[plan.it], plan.it, max_points)
                check_length(it, n, plan.it)
                mu = mu_transmission(i0, it)
            else:
                assert plan.if_ is not None
                fl = as_vector(data[plan.if_], plan.if_, max_points)
                check_length(fl, n, plan.if_)
                mu = mu_fluorescence(i0, fl)
        reference = None
        if plan.iref is not None:
            assert plan.it is not None
            it = as_vector(data[plan.it], plan.it, max_points)
            iref = as_vector(data[plan.iref], plan.iref, max_points)
            check_length(it, n, plan.it)
            check_length(iref, n, plan.iref)
            reference = mu_transmission(it, iref, "reference ln(It/Iref)")
        scalars = {}
        for key in plan.scalar_keys:
            value = data.get(key)
            if type(value) is float:
                scalars[key] = value
            elif isinstance(value, _NUMBER) and not isinstance(value, bool):
                scalars[key] = float(value)
        ctx = self.ctx
        assert ctx is not None
        seq_num, t = _ids(doc)
        return Frame(
            run_uid=self.run_uid,
            seq_num=seq_num,
            time=t,
            energy=energy,
            mu=mu,
            element=ctx.element,
            edge=ctx.edge,
            mode=plan.mode,
            reference=reference,
            scalars=scalars,
            provenance={
                "stream": plan.stream,
                "descriptor": plan.descriptor_uid,
                "event_uid": doc["uid"],
                "position": self._owner.position,
            },
        )

    def _step_point(self, plan: DescriptorPlan, doc: Any) -> None:
        seq_num, t = _ids(doc)
        uid = doc["uid"]
        data = doc["data"]
        assert plan.energy_key is not None
        energy = _scalar(data[plan.energy_key], plan.energy_key) * plan.energy_scale
        values: dict[str, float] = {}
        for role, key in (
            ("spectrum", plan.spectrum),
            ("i0", plan.i0),
            ("it", plan.it),
            ("if", plan.if_),
            ("iref", plan.iref),
        ):
            if key is not None:
                values[role] = _scalar(data[key], key)
        if not (np.isfinite(energy) and all(np.isfinite(v) for v in values.values())):
            raise FrameError(
                f"step-scan point has NaN/inf (energy={energy!r}, channels={values})",
                reason=Reason.NONFINITE,
            )
        sweep = self._sweep
        if sweep is not None and sweep.breaks(energy, plan.descriptor_uid):
            self._close_sweep()
            sweep = None
        if sweep is None:
            sweep = self._sweep = _Sweep(plan)
        elif sweep.direction == 0.0:
            sweep.direction = 1.0 if energy > sweep.energy[-1] else -1.0
        sweep.energy.append(energy)
        for role, value in values.items():
            sweep.channels.setdefault(role, []).append(value)
        for key in plan.scalar_keys:
            value = data.get(key)
            if isinstance(value, _NUMBER) and not isinstance(value, bool):
                sweep.scalars.setdefault(key, []).append(float(value))
        sweep.seq_nums.append(seq_num)
        sweep.uids.append(str(uid))
        sweep.time = t

    def _close_sweep(self) -> None:
        sweep = self._sweep
        assert sweep is not None
        self._sweep = None
        self._sweeps += 1
        plan = self._plans.get(sweep.descriptor)
        if plan is None:
            return
        try:
            frame = self._sweep_frame(plan, sweep, self._sweeps)
        except SptError as err:
            self._owner._problem(
                _in_context(err, self.run_uid, self._sweeps),
                "sweep",
                {"event_seq_nums": sweep.seq_nums, "energy": sweep.energy},
                False,
            )
            return
        self._owner._emit_frame(frame)

    def _sweep_frame(self, plan: DescriptorPlan, sweep: _Sweep, number: int) -> Frame:
        energy, ch = sweep_arrays(sweep.energy, sweep.channels)
        what = f"sweep {number} ({len(sweep.energy)} points)"
        check_energy(energy, f"energy of {what}", self._owner.settings.min_points)
        if plan.mode == "mu":
            mu = frozen(ch["spectrum"])
            check_finite(mu, f"mu of {what}", 1)
        elif plan.mode == "transmission":
            mu = mu_transmission(ch["i0"], ch["it"], f"mu of {what}")
        else:
            mu = mu_fluorescence(ch["i0"], ch["if"], f"mu of {what}")
        reference = None
        if plan.iref is not None:
            reference = mu_transmission(ch["it"], ch["iref"], f"reference of {what}")
        ctx = self.ctx
        assert ctx is not None
        return Frame(
            run_uid=self.run_uid,
            seq_num=number,
            time=sweep.time,
            energy=frozen(energy),
            mu=mu,
            element=ctx.element,
            edge=ctx.edge,
            mode=plan.mode,
            reference=reference,
            scalars={k: float(np.mean(v)) for k, v in sweep.scalars.items()},
            provenance={
                "stream": plan.stream,
                "descriptor": plan.descriptor_uid,
                "event_seq_nums": list(sweep.seq_nums),
                "event_uids": list(sweep.uids),
                "position": self._owner.position,
            },
        )


#: Largest seq_num a trace stores (its seq_num column is int64).
MAX_SEQ_NUM = 2**63 - 1
#: Event times must lie in [0, MAX_EVENT_TIME) seconds since the epoch (year ~5138): a larger
#: finite value (e.g. a flipped exponent bit) cannot be stored as a datetime by readers.
MAX_EVENT_TIME = 1e11


def _ids(doc: Any) -> tuple[int, float]:
    """An event's ``(seq_num, time)``, strictly typed (no string or bool coercion) and in the
    ranges a trace can store (seq_num 0..2**63-1, time 0..1e11 s since the epoch)."""
    seq, t = doc["seq_num"], doc["time"]
    if type(seq) is not int or type(t) is not float:
        if not isinstance(seq, int | np.integer) or isinstance(seq, bool):
            raise DocumentError(
                f"event seq_num is a {type(seq).__name__}, not an int",
                reason=Reason.BAD_FIELD,
            )
        if not isinstance(t, _NUMBER) or isinstance(t, bool) or not np.isfinite(t):
            raise DocumentError(
                f"event time is {t!r}, not a finite number", reason=Reason.BAD_FIELD
            )
        seq, t = int(seq), float(t)
    if not 0 <= seq <= MAX_SEQ_NUM:
        raise DocumentError(f"event seq_num {seq} is outside 0..2**63-1", reason=Reason.BAD_FIELD)
    if not 0.0 <= t < MAX_EVENT_TIME:
        raise DocumentError(
            f"event time {t!r} is not a time since the epoch (0 <= t < {MAX_EVENT_TIME:g})",
            reason=Reason.BAD_FIELD,
        )
    return seq, t


def seq_num_of(doc: Any) -> int | None:
    seq = doc.get("seq_num") if isinstance(doc, Mapping) else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None

"""From frames to trace rows: normalization, the model, the classical stage, per-run rows.

:class:`ModelStage` owns what turns a batch of assembled frames into what the sinks receive:
batched normalization onto the model grid (:func:`~spt_stream.normalize.normalize_frames`), one
forward pass of the model (``predict_columns``), the classical descriptors and run-relative
tracking beside it (:class:`~spt_stream.classical.tracking.ClassicalStage`), and the split of the
batch's columns into one :class:`~spt_stream.sinks.rows.TraceRows` per run, with every column's
units and meaning attached. Pure computation: no sink, offset or thread in here.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from spt_stream.classical.tracking import ClassicalStage, load_reference_run
from spt_stream.config import EngineSettings
from spt_stream.core.frames import Frame
from spt_stream.errors import SptError
from spt_stream.normalize import NormParams, normalize_frames
from spt_stream.normalize.frames_to_grid import NormalizedBatch
from spt_stream.protocols import BackendReporting, DescribedColumns, ElementAware, LockFreeModel
from spt_stream.sinks.rows import RESERVED_NAMES, Column2D, TraceRows, check_name

__all__ = ["NORMALIZATION_ATTRS", "ModelStage", "Predictor"]

log = logging.getLogger(__name__)

Columns = dict[str, np.ndarray[Any, Any]]
Arrays = dict[str, Column2D]


class Predictor(Protocol):
    """What the engine needs of a model (``spt_stream.model.predictor.Predictor`` provides it; the
    optional capabilities are the model Protocols of :mod:`spt_stream.protocols`)."""

    @property
    def info(self) -> Mapping[str, Any]: ...

    def predict_columns(
        self, norm: np.ndarray[Any, Any], elements: Sequence[str | None]
    ) -> tuple[Columns, Arrays]: ...


#: Attributes of the columns normalization fills (trace column ``attrs``, with the model's).
NORMALIZATION_ATTRS: dict[str, dict[str, str]] = {
    "e0": {"units": "eV", "long_name": "edge energy found by normalization"},
    "edge_step": {"units": "mu", "long_name": "edge step (pre- to post-edge line at e0)"},
    "energy_shift": {"units": "eV", "long_name": "energy shift applied before normalization"},
    "flags": {"long_name": "normalization quality flags (bit set, spt_stream.normalize)"},
    "norm": {"long_name": "normalized mu(E) on the model grid"},
}


class ModelStage:
    """Normalize, predict and describe a batch of frames (see the module docstring)."""

    def __init__(self, settings: EngineSettings, predictor: Predictor) -> None:
        self.settings = settings
        self.predictor = predictor
        self._params = NormParams.from_settings(settings.normalization)
        #: Per-column attributes (units, long_name) given to the sinks with the rows (a store
        #: sets them when it creates the column).
        self.column_attrs: dict[str, dict[str, str]] = dict(NORMALIZATION_ATTRS)
        if isinstance(predictor, DescribedColumns):
            self.column_attrs.update({k: dict(v) for k, v in predictor.column_attrs.items()})
        tracking = settings.tracking
        #: Classical descriptors and run-relative tracking beside the network (per-run state).
        self.classical = ClassicalStage(
            tracking.reference_frames,
            named=(
                load_reference_run(
                    settings.zarr.root, tracking.reference_run, tracking.reference_frames
                )
                if tracking.reference_run and tracking.classical
                else None
            ),
        )

    @property
    def classical_on(self) -> bool:
        return self.settings.tracking.classical

    @property
    def lock_free(self) -> bool:
        """The model's forward pass runs without the interpreter lock now."""
        return isinstance(self.predictor, LockFreeModel) and bool(self.predictor.lock_free)

    def model_state(self) -> dict[str, Any]:
        """Which model backend serves now and whether one compiles in the background."""
        p = self.predictor
        if isinstance(p, BackendReporting):
            return {"backend": str(p.backend or p.info.get("backend", "?")),
                    "compiling": bool(p.compiling)}  # fmt: skip
        return {"backend": str(p.info.get("backend", "?")), "compiling": False}

    def elements(self) -> tuple[str, ...]:
        p = self.predictor
        return tuple(p.elements) if isinstance(p, ElementAware) and p.elements else ()

    # -- the batch path --------------------------------------------------------------------------
    def normalize(self, frames: Sequence[Frame]) -> NormalizedBatch:
        return normalize_frames(
            frames,
            self._params,
            calibrate_from_reference=self.settings.normalization.calibrate_from_reference,
            energy_shift=self.settings.normalization.energy_shift,
        )

    def observe_reference(self, frame: Frame) -> None:
        """A frame written before a restart still belongs to its run's os_delta reference."""
        normed = self.normalize([frame])
        self.classical.observe([frame.run_uid], [frame.seq_num], normed.norm, normed.grid_rel)

    def analyse(
        self,
        frames: Sequence[Frame],
        normed: NormalizedBatch,
        classical: ClassicalStage | None = None,
    ) -> tuple[Columns, Arrays]:
        """The trace columns of a normalized batch: the model's, the classical stage's (the
        engine's own, or ``classical``) and the normalization's."""
        stage = self.classical if classical is None else classical
        columns, arrays = self.predictor.predict_columns(normed.norm, [f.element for f in frames])
        extra = (
            stage.columns(
                [f.run_uid for f in frames],
                [f.seq_num for f in frames],
                [f.element for f in frames],
                normed.norm,
                normed.grid_rel,
            )
            if self.classical_on
            else {}
        )
        columns = {
            **columns,
            **extra,
            "e0": normed.e0,
            "edge_step": normed.edge_step,
            "energy_shift": normed.energy_shift,
            "flags": normed.flags.astype(np.int64),
        }
        arrays = {
            **arrays,
            "norm": Column2D(values=normed.norm, dim="energy_rel", coord=normed.grid_rel),
        }
        return columns, arrays

    def rows_by_run(
        self, frames: Sequence[Frame], columns: Columns, arrays: Arrays
    ) -> Iterator[tuple[str, TraceRows]]:
        """One :class:`TraceRows` per run of the batch, in the order the runs first appear."""
        order: dict[str, list[int]] = {}
        for i, frame in enumerate(frames):
            order.setdefault(frame.run_uid, []).append(i)
        for run_uid, idx in order.items():
            yield run_uid, rows_for(frames, idx, columns, arrays, self.column_attrs)

    def warm_up(self, elements: Sequence[str] | None = None) -> tuple[dict[str, float], Any]:
        """Pay the frame path's first-use costs (edge-energy database, normalization and
        classical plans, the model's columns, the row builder) on synthetic frames, with a
        scratch classical stage (the engine's run state is not touched). Returns seconds per
        step and sample rows for the sinks' own warm-up (None if this failed: logged)."""
        from spt_stream.core.grid import edge_energy

        times: dict[str, float] = {}
        known = tuple(elements or self.elements() or ("Co",))
        t = time.perf_counter()
        for el in known:  # the edge energies every frame's normalization looks up
            for edge in ("K", "L3"):
                with contextlib.suppress(SptError):
                    edge_energy(el, edge)
        times["edges"] = time.perf_counter() - t
        element = "Co" if "Co" in known else known[0]
        try:
            e0 = edge_energy(element, "K")
        except SptError:
            element, e0 = "Co", edge_energy("Co", "K")
        rel = np.linspace(-60.0, 140.0, 400)
        energy = e0 + rel
        rows: TraceRows | None = None
        t = time.perf_counter()
        try:
            scratch = ClassicalStage(self.settings.tracking.reference_frames)
            for b in (1, 2):
                frames = [
                    Frame(
                        run_uid="warm-up",
                        seq_num=i + 1,
                        time=time.time(),
                        energy=energy,
                        mu=synthetic_edge(rel, shift=0.3 * i),
                        element=element,
                        edge="K",
                    )
                    for i in range(b)
                ]
                columns, arrays = self.analyse(frames, self.normalize(frames), scratch)
                rows = rows_for(frames, list(range(b)), columns, arrays, self.column_attrs)
            scratch.close_run("warm-up")
        except Exception as exc:  # a bug here must not keep a working engine from starting
            log.warning("warm-up of the frame path failed (first frames pay instead): %s", exc)
        times["frame_path"] = time.perf_counter() - t
        return times, rows


def synthetic_edge(rel: np.ndarray[Any, Any], shift: float = 0.0) -> np.ndarray[Any, Any]:
    """mu of a plain K edge on ``rel`` (eV from the edge): sloping background, arctan step,
    white line (the warm-up's input; any smooth edge does)."""
    x = rel - shift
    step = 0.5 + np.arctan(x / 2.0) / np.pi
    white = 0.4 * np.exp(-0.5 * ((x - 8.0) / 4.0) ** 2)
    out: np.ndarray[Any, Any] = 0.3 - 0.0005 * rel + step + white * step
    return out


def rows_for(
    frames: Sequence[Frame],
    idx: list[int],
    columns: Mapping[str, np.ndarray[Any, Any]],
    arrays: Mapping[str, Column2D],
    attrs: Mapping[str, Mapping[str, Any]] | None = None,
) -> TraceRows:
    """The rows of frames ``idx`` (one run): the batch's columns at those frames, plus the
    frames' own event scalars (sample temperature, cell potential, ...) as extra columns."""
    sel = np.asarray(idx)
    records = [
        {k: v for k, v in frames[i].scalars.items() if _scalar_name_ok(k, columns, arrays)}
        for i in idx
    ]
    scalars = TraceRows.from_records(
        (frames[i].seq_num for i in idx), (frames[i].time for i in idx), records
    )
    own = {k: v for k, v in scalars.columns.items() if k not in columns}
    return TraceRows(
        seq_num=scalars.seq_num,
        time=scalars.time,
        columns={**{k: np.asarray(v)[sel] for k, v in columns.items()}, **own},
        arrays={
            k: Column2D(values=c.values[sel], dim=c.dim, coord=c.coord) for k, c in arrays.items()
        },
        attrs={k: dict(v) for k, v in (attrs or {}).items() if k in columns or k in arrays},
    )


def _scalar_name_ok(name: str, columns: Mapping[str, Any], arrays: Mapping[str, Column2D]) -> bool:
    """An event scalar becomes a trace column unless its name is taken or not storable."""
    if name in columns or name in arrays or name in RESERVED_NAMES:
        return False
    try:
        check_name(name)
    except SptError:
        return False
    return True

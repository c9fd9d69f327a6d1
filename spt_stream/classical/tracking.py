"""Run-relative oxidation-state tracking (``os_delta``) and the classical stage of the engine.

Within one run the energy calibration is shared (same monochromator, same reference foil), so
CHANGES of the edge position are far more precise than its absolute value: a +0.1 eV move of the
half-height energy is real even when the absolute edge is uncertain by +-1 eV. ``os_delta`` is the
change of the edge-position oxidation state since the run's reference frames::

    os_delta = (e_half - mean(e_half of the reference frames)) / slope

with ``slope`` the fitted eV per oxidation-state unit of :mod:`spt_stream.classical.edge_os`.
Reference frames: the first ``reference_frames`` frames of the run with a finite ``e_half``, in
the order the engine analyses them (event order); until they are all in, the reference is the
mean of those seen so far (so the first frame reads exactly 0). Or a NAMED reference run
(``tracking.reference_run``): the first ``reference_frames`` edges of that run's stored trace
(:func:`load_reference_run`), for every later run of the same element -- e.g. the pristine
electrode measured before the cell was assembled, so a series of runs reads on one scale. Runs of
another element keep their own first frames. Only meaningful when the energy calibration is
shared with the reference run (same beamline set-up, same reference foil). Uncertainty (1 sigma)::

    os_delta_std = sqrt(s_e^2 (1 + 1/n_ref) / slope^2 + (os_delta * slope_std / slope)^2)

where ``s_e`` is the frame-to-frame scatter of ``e_half`` among the reference frames (their
sample standard deviation; ``MIN_FRAME_SCATTER_EV`` while fewer than 3 are in, and as a floor):
a frame's own noise, the reference mean's noise, and the uncertainty of the eV-per-unit slope.

The state is per run and deterministic in frame order, so a replay gives the live values; after an
engine restart the re-delivered reference frames are fed again (:meth:`ClassicalStage.observe`)
before they are skipped as already written.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from spt_stream.classical.edge_os import EdgeCalibration, load_edge_calibration
from spt_stream.classical.features import FEATURE_UNITS, edge_features

__all__ = [
    "CLASSICAL_UNITS",
    "MIN_FRAME_SCATTER_EV",
    "ClassicalStage",
    "NamedReference",
    "RunReference",
    "load_reference_run",
]

FloatArray = npt.NDArray[np.float64]

#: Floor of the per-frame scatter of the half-height energy (eV) used for ``os_delta_std``.
MIN_FRAME_SCATTER_EV = 0.02

#: Units and meaning of every column the classical stage adds to a trace.
CLASSICAL_UNITS: dict[str, tuple[str, str]] = {
    **FEATURE_UNITS,
    "os_edge": (
        "formal charge (e)",
        "edge-position oxidation state: per-element linear calibration of e_half on the "
        "measured references (assumes a compound; metals read high)",
    ),
    "os_delta": (
        "formal charge (e)",
        "change of the oxidation state since the run's reference frames, from the edge shift",
    ),
}


@dataclass
class RunReference:
    """The reference frames of one run: their half-height energies (eV, rel. E_tab)."""

    target: int
    values: list[float] = field(default_factory=list)
    seq_nums: set[int] = field(default_factory=set)
    _stats: tuple[float, float, int] | None = field(default=None, repr=False)

    @property
    def complete(self) -> bool:
        return len(self.values) >= self.target

    def add(self, seq_num: int, e_half: float) -> None:
        if self.complete or seq_num in self.seq_nums or not np.isfinite(e_half):
            return
        self.values.append(float(e_half))
        self.seq_nums.add(seq_num)

    def mean_and_scatter(self) -> tuple[float, float, int]:
        """Mean and frame-to-frame scatter (eV) of the reference so far, and its size."""
        if self._stats is not None:
            return self._stats
        v = np.asarray(self.values)
        scatter = float(np.std(v, ddof=1)) if len(v) >= 3 else MIN_FRAME_SCATTER_EV
        stats = (float(v.mean()), max(scatter, MIN_FRAME_SCATTER_EV), len(v))
        if self.complete:
            self._stats = stats
        return stats


@dataclass(frozen=True)
class NamedReference:
    """A stored run's reference edges, shared by later runs of its element."""

    run_uid: str
    element: str
    #: Half-height energies (eV, rel. E_tab) of its first reference frames.
    e_half: tuple[float, ...]

    def as_run_reference(self) -> RunReference:
        ref = RunReference(len(self.e_half), list(self.e_half), set(range(len(self.e_half))))
        ref.mean_and_scatter()  # complete: computed once, cached
        return ref


def load_reference_run(root: str | Path, run_uid: str, frames: int) -> NamedReference:
    """The first ``frames`` finite ``e_half`` values of the trace of ``run_uid`` under the Zarr
    trace root ``root`` (committed rows only), and its element.

    Raises
    ------
    ConfigError
        No such trace, no ``e_half`` column (written with the classical stage off), no element, or
        no frame with an edge.
    """
    import zarr

    from spt_stream.errors import ConfigError, SptError
    from spt_stream.sinks.zarr_trace import trace_path

    where = f"tracking.reference_run {run_uid!r}"
    try:
        path = trace_path(Path(root), run_uid)
    except SptError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    try:
        group = zarr.open_group(str(path), mode="r", use_consolidated=False)
    except Exception as exc:
        raise ConfigError(f"{where}: no readable trace at {path} ({exc})") from exc
    element = group.attrs.get("element")
    if not isinstance(element, str) or not element:
        raise ConfigError(f"{where}: the trace at {path} does not name its element")
    if "e_half" not in group:
        raise ConfigError(
            f"{where}: the trace at {path} has no e_half column (written with "
            "tracking.classical off?)"
        )
    rows = group.attrs.get("n_rows", 0)
    n = int(rows) if isinstance(rows, int | float) else 0
    e_half = np.asarray(group["e_half"][:n], dtype=np.float64)  # type: ignore[index]
    finite = e_half[np.isfinite(e_half)][:frames]
    if len(finite) == 0:
        raise ConfigError(f"{where}: no frame of the trace at {path} has an edge (e_half)")
    return NamedReference(run_uid, element, tuple(float(v) for v in finite))


class ClassicalStage:
    """Per batch: edge features, ``os_edge`` and ``os_delta`` columns (thread-safe per call)."""

    def __init__(
        self,
        reference_frames: int = 5,
        calibration: EdgeCalibration | None = None,
        named: NamedReference | None = None,
    ) -> None:
        if reference_frames < 1:
            raise ValueError("reference_frames must be at least 1")
        self.reference_frames = int(reference_frames)
        self.calibration = calibration or load_edge_calibration()
        #: The named reference run (None: every run is its own reference).
        self.named = named
        self._runs: dict[str, RunReference] = {}
        self._lock = threading.Lock()

    def start_run(self, run_uid: str, element: str | None) -> str:
        """Choose ``run_uid``'s reference when it starts: the named reference run's edges when
        it is of ``element``, else the run's own first frames. Returns which (for the trace's
        attributes): the named run's uid or ``"first N frames"``."""
        named = self.named
        with self._lock:
            if named is not None and element == named.element and run_uid != named.run_uid:
                self._runs[run_uid] = named.as_run_reference()
                return named.run_uid
        return f"first {self.reference_frames} frames"

    def _ref(self, run_uid: str) -> RunReference:
        ref = self._runs.get(run_uid)
        if ref is None:
            ref = self._runs[run_uid] = RunReference(self.reference_frames)
        return ref

    def needs_reference(self, run_uid: str) -> bool:
        """True while ``run_uid``'s reference frames are not all in."""
        with self._lock:
            ref = self._runs.get(run_uid)
            return ref is None or not ref.complete

    def observe(
        self, run_uids: Sequence[str], seq_nums: Sequence[int], norm: npt.ArrayLike,
        grid_rel: npt.ArrayLike,
    ) -> None:  # fmt: skip
        """Feed frames that are not analysed again (already written before a restart) into the
        runs' references, in order."""
        e_half = edge_features(norm, grid_rel).e_half
        with self._lock:
            for uid, seq, e in zip(run_uids, seq_nums, e_half, strict=True):
                self._ref(uid).add(int(seq), float(e))

    def columns(
        self,
        run_uids: Sequence[str],
        seq_nums: Sequence[int],
        elements: Sequence[str | None],
        norm: npt.ArrayLike,
        grid_rel: npt.ArrayLike,
    ) -> dict[str, FloatArray]:
        """Trace columns of a batch (frames in analysis order): the features, ``os_edge`` and
        ``os_delta`` with their ``_std``."""
        feats = edge_features(norm, grid_rel)
        cal = self.calibration
        e_half = feats.e_half
        os_edge, os_edge_std = cal.predict(e_half, elements)
        mean = np.full(len(e_half), np.nan)  # the reference each row is compared with
        scatter = np.full(len(e_half), np.nan)
        n_ref = np.ones(len(e_half))
        runs: dict[str, list[int]] = {}
        for i, uid in enumerate(run_uids):
            runs.setdefault(uid, []).append(i)
        with self._lock:
            for uid, rows in runs.items():
                ref = self._ref(uid)
                k = 0
                while k < len(rows) and not ref.complete:  # at most reference_frames rows
                    i = rows[k]
                    ref.add(int(seq_nums[i]), float(e_half[i]))
                    if ref.values:
                        mean[i], scatter[i], n_ref[i] = ref.mean_and_scatter()
                    k += 1
                if k < len(rows):  # reference complete: one vector operation
                    rest = np.asarray(rows[k:])
                    mean[rest], scatter[rest], n_ref[rest] = ref.mean_and_scatter()
        delta = (e_half - mean) / cal.slope
        delta_std = np.sqrt(
            (scatter / cal.slope) ** 2 * (1.0 + 1.0 / n_ref)
            + (delta * cal.slope_std / cal.slope) ** 2
        )
        return {
            **feats.columns(),
            "os_edge": os_edge,
            "os_edge_std": os_edge_std,
            "os_delta": delta,
            "os_delta_std": delta_std,
        }

    def close_run(self, run_uid: str) -> None:
        """Forget a finished run's reference."""
        with self._lock:
            self._runs.pop(run_uid, None)

"""Classical XANES descriptors of normalized spectra: pure numpy kernels, batched, no I/O.

Input: normalized (flattened) mu on the model grid, ``(b, G)`` rows on ``grid_rel`` (eV relative
to the tabulated edge energy, :data:`spt_stream.core.grid.MODEL_GRID_REL`), as the engine's
normalization hands them to the model. All energies returned are RELATIVE to the tabulated edge
(eV); add :func:`spt_stream.core.grid.edge_energy` for absolute values.

Per row (NaN where a feature cannot be found, e.g. a NaN row or no edge crossing):

- ``e_half``: energy where the normalized mu crosses 0.5 on its way up to the white line (the
  LAST upward crossing before the white-line maximum, so a strong pre-edge above 0.5, as in
  tetrahedral Mn7+/Cr6+, is not taken for the edge), linearly interpolated between grid points
  (sub-grid: a 0.1 eV shift of the spectrum moves it by 0.1 eV).
- ``wl_energy``, ``wl_height``: position and height of the white-line maximum (the highest point
  within ``WL_WINDOW`` eV of the tabulated edge), refined by a parabola through the maximum and
  its two neighbours.
- ``pre_centroid``, ``pre_area``: the 1s->3d pre-edge peak above the lower convex hull of the
  window (the convex rising foot of the edge is its own hull; the peak is bridged); the window
  runs from ``PRE_START`` eV to 3 eV below ``e_half`` (at most ``PRE_STOP`` eV); area in
  edge-step x eV, centroid in eV (NaN when the area is below ``MIN_PRE_AREA``: no pre-edge, as
  for d10 ions).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from spt_stream.core.grid import MODEL_GRID_REL

__all__ = [
    "FEATURE_UNITS",
    "EdgeFeatures",
    "edge_features",
]

FloatArray = npt.NDArray[np.float64]

#: Where the white line is looked for (eV relative to the tabulated edge).
WL_WINDOW = (-5.0, 35.0)
#: Pre-edge window start and latest end (eV relative to the tabulated edge).
PRE_START = -8.0
PRE_STOP = 10.0
#: Below this area (edge step x eV) there is no pre-edge peak to locate.
MIN_PRE_AREA = 0.02

#: Units and meaning of each feature (trace attributes, feedback schema, docs).
FEATURE_UNITS: dict[str, tuple[str, str]] = {
    "e_half": ("eV", "edge energy at half height of the normalized step, relative to E_tab"),
    "wl_energy": ("eV", "white-line (maximum) energy, relative to the tabulated edge E_tab"),
    "wl_height": ("edge steps", "white-line height of the normalized spectrum"),
    "pre_centroid": ("eV", "pre-edge peak centroid after baseline removal, relative to E_tab"),
    "pre_area": ("edge steps x eV", "pre-edge peak area after baseline removal"),
}


@dataclass(frozen=True)
class EdgeFeatures:
    """Classical descriptors of b spectra (module doc); every array is (b,) float64."""

    e_half: FloatArray
    wl_energy: FloatArray
    wl_height: FloatArray
    pre_centroid: FloatArray
    pre_area: FloatArray

    def columns(self) -> dict[str, FloatArray]:
        """The features by name (the trace column names)."""
        return {
            "e_half": self.e_half,
            "wl_energy": self.wl_energy,
            "wl_height": self.wl_height,
            "pre_centroid": self.pre_centroid,
            "pre_area": self.pre_area,
        }


@dataclass(frozen=True)
class _Plan:
    """Constants of one grid, computed once (the kernels run per batch at live rates)."""

    step: float
    wl: slice
    pre: slice
    gx: FloatArray  # pre-edge window energies
    inv_dx: FloatArray  # (i, j): 1 / (x_j - x_i) for j > i, else 0
    dx_pos: FloatArray  # (i, k): max(x_k - x_i, 0)
    upper: npt.NDArray[np.bool_]  # j > i
    lower_or_eye: npt.NDArray[np.bool_]  # i <= k


@lru_cache(maxsize=8)
def _plan(grid: bytes) -> _Plan:
    g = np.frombuffer(grid, dtype=np.float64)
    win = np.flatnonzero((g >= WL_WINDOW[0]) & (g <= WL_WINDOW[1]))
    lo = int(np.searchsorted(g, PRE_START))
    hi = int(np.searchsorted(g, PRE_STOP, side="right"))
    gx = g[lo:hi].copy()
    n = len(gx)
    dx = gx[None, :] - gx[:, None]
    upper = np.triu(np.ones((n, n), dtype=bool), k=1)
    inv_dx = np.zeros_like(dx)
    inv_dx[upper] = 1.0 / dx[upper]
    return _Plan(
        step=float(g[1] - g[0]),
        wl=slice(int(win[0]), int(win[-1]) + 1),
        pre=slice(lo, hi),
        gx=gx,
        inv_dx=inv_dx,
        dx_pos=np.maximum(dx, 0.0),
        upper=upper,
        lower_or_eye=np.triu(np.ones((n, n), dtype=bool)),
    )


def _white_line(
    x: FloatArray, g: FloatArray, plan: _Plan
) -> tuple[FloatArray, FloatArray, npt.NDArray[np.intp]]:
    i = plan.wl.start + np.argmax(x[:, plan.wl], axis=1)
    rows = np.arange(len(x))
    ic = np.clip(i, 1, len(g) - 2)
    y0, y1, y2 = x[rows, ic - 1], x[rows, ic], x[rows, ic + 1]
    denom = y0 - 2.0 * y1 + y2
    curved = denom < 0
    off = np.where(curved, 0.5 * (y0 - y2) / np.where(curved, denom, -1.0), 0.0)
    off = np.clip(off, -0.5, 0.5)
    energy = g[ic] + off * plan.step
    height = y1 - 0.25 * (y0 - y2) * off
    return energy, height, i


def _half_height(x: FloatArray, g: FloatArray, i_wl: npt.NDArray[np.intp]) -> FloatArray:
    lo, hi = x[:, :-1], x[:, 1:]
    up = (lo < 0.5) & (hi >= 0.5)
    up &= np.arange(len(g) - 1)[None, :] < i_wl[:, None]
    has = up.any(axis=1)
    last = (len(g) - 2) - np.argmax(up[:, ::-1], axis=1)
    rows = np.arange(len(x))
    a, b = lo[rows, last], hi[rows, last]
    rise = np.where(has, b - a, 1.0)  # > 0 where a crossing exists
    e = g[last] + (0.5 - a) / rise * (g[last + 1] - g[last])
    out: FloatArray = np.where(has, e, np.nan)
    return out


def _pre_edge(x: FloatArray, e_half: FloatArray, plan: _Plan) -> tuple[FloatArray, FloatArray]:
    """Pre-edge area and centroid above the lower convex hull of the window (the rising foot of
    the edge is convex, so the hull follows it and bridges the peak). Vectorized over rows: the
    hull at point k is ``min over i <= k <= j`` of the chord (i, j) at k, i.e.
    ``min_i y_i + (x_k - x_i) min_{j >= k} slope(i, j)`` (a reversed running minimum over j)."""
    gx = plan.gx
    y = x[:, plan.pre]
    n = len(gx)
    stop = np.where(np.isfinite(e_half), np.minimum(e_half - 3.0, PRE_STOP), -np.inf)
    n_in = np.searchsorted(gx, stop, side="right")  # window points per row
    valid = np.arange(n)[None, :] < n_in[:, None]  # (b, n)
    slope = (y[:, None, :] - y[:, :, None]) * plan.inv_dx[None, :, :]  # (b, i, j)
    usable = plan.upper[None, :, :] & valid[:, None, :]
    slope = np.where(usable, slope, np.inf)
    m = np.minimum.accumulate(slope[:, :, ::-1], axis=2)[:, :, ::-1]  # min over j >= k
    finite = np.isfinite(m)
    chord = y[:, :, None] + np.where(finite, m, 0.0) * plan.dx_pos[None, :, :]
    keep = plan.lower_or_eye[None, :, :] & (finite | np.eye(n, dtype=bool)[None, :, :])
    hull = np.where(keep, chord, np.inf).min(axis=1)  # (b, k)
    resid = np.where(valid, np.clip(y - hull, 0.0, None), 0.0)
    total = resid.sum(axis=1)
    area = total * plan.step
    ok = (n_in >= 5) & np.isfinite(e_half)
    has_peak = ok & (area >= MIN_PRE_AREA)
    centroid = (resid * gx[None, :]).sum(axis=1) / np.where(has_peak, total, 1.0)
    return np.where(has_peak, centroid, np.nan), np.where(ok, area, np.nan)


def edge_features(norm: npt.ArrayLike, grid_rel: npt.ArrayLike = MODEL_GRID_REL) -> EdgeFeatures:
    """Classical descriptors of each row of ``norm`` (b, G) on ``grid_rel`` (module doc)."""
    x = np.atleast_2d(np.asarray(norm, dtype=np.float64))
    g = np.asarray(grid_rel, dtype=np.float64)
    if x.shape[1] != g.shape[0]:
        raise ValueError(f"spectra have {x.shape[1]} points, the grid {g.shape[0]}")
    if x.shape[0] == 0:
        empty = np.zeros(0)
        return EdgeFeatures(empty, empty, empty, empty, empty)
    finite: npt.NDArray[np.bool_] = np.asarray(np.isfinite(x).all(axis=1))
    xs = np.where(finite[:, None], x, 0.0)
    plan = _plan(np.ascontiguousarray(g).tobytes())
    wl_e, wl_h, i_wl = _white_line(xs, g, plan)
    e_half = _half_height(xs, g, i_wl)
    pre_c, pre_a = _pre_edge(xs, e_half, plan)
    nan = np.where(finite, 0.0, np.nan)
    return EdgeFeatures(
        e_half=e_half + nan,
        wl_energy=wl_e + nan,
        wl_height=wl_h + nan,
        pre_centroid=pre_c + nan,
        pre_area=pre_a + nan,
    )

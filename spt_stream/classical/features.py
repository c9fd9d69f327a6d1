"""Classical XANES descriptors of normalized spectra: pure numpy kernels, batched, no I/O.

Input: normalized (flattened) mu on the model grid, ``(b, G)`` rows on ``grid_rel`` (eV relative
to the tabulated edge energy, :data:`spt_stream.grid.MODEL_GRID_REL`), as the engine's
normalization hands them to the model. All energies returned are RELATIVE to the tabulated edge
(eV); add :func:`spt_stream.grid.edge_energy` for absolute values.

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

import numpy as np
import numpy.typing as npt

from spt_stream.grid import MODEL_GRID_REL

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


def _white_line(
    x: FloatArray, g: FloatArray
) -> tuple[FloatArray, FloatArray, npt.NDArray[np.intp]]:
    win = (g >= WL_WINDOW[0]) & (g <= WL_WINDOW[1])
    lo = int(np.flatnonzero(win)[0])
    sub = np.where(np.isfinite(x[:, win]), x[:, win], -np.inf)
    i = lo + np.argmax(sub, axis=1)
    rows = np.arange(len(x))
    ic = np.clip(i, 1, len(g) - 2)
    y0, y1, y2 = x[rows, ic - 1], x[rows, ic], x[rows, ic + 1]
    denom = y0 - 2.0 * y1 + y2
    with np.errstate(invalid="ignore", divide="ignore"):
        off = np.where(denom < 0, 0.5 * (y0 - y2) / denom, 0.0)
    off = np.clip(np.nan_to_num(off), -0.5, 0.5)
    step = g[1] - g[0]
    energy = g[ic] + off * step
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
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = (0.5 - a) / (b - a)
    e = g[last] + frac * (g[last + 1] - g[last])
    out: FloatArray = np.where(has, e, np.nan)
    return out


def _lower_hull(gx: FloatArray, y: FloatArray) -> FloatArray:
    """Values on ``gx`` of the lower convex hull of the points (gx, y) (monotone chain)."""
    hull: list[int] = []
    for k in range(len(gx)):
        while len(hull) >= 2:
            i, j = hull[-2], hull[-1]
            # j lies on or above the chord i -> k: not a lower-hull vertex
            if (y[j] - y[i]) * (gx[k] - gx[i]) >= (y[k] - y[i]) * (gx[j] - gx[i]):
                hull.pop()
            else:
                break
        hull.append(k)
    out: FloatArray = np.interp(gx, gx[hull], y[hull])
    return out


def _pre_edge(x: FloatArray, g: FloatArray, e_half: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Pre-edge area and centroid above the lower convex hull of the window (the rising foot of
    the edge is convex, so the hull follows it and bridges the peak)."""
    b = len(x)
    area = np.full(b, np.nan)
    centroid = np.full(b, np.nan)
    step = float(g[1] - g[0])
    stop = np.minimum(e_half - 3.0, PRE_STOP)
    lo = int(np.searchsorted(g, PRE_START))
    for r in range(b):
        if not np.isfinite(stop[r]):
            continue
        hi = int(np.searchsorted(g, stop[r], side="right"))
        if hi - lo < 5:
            continue
        gx, y = g[lo:hi], x[r, lo:hi]
        resid = np.clip(y - _lower_hull(gx, y), 0.0, None)
        a = float(resid.sum() * step)
        area[r] = a
        if a >= MIN_PRE_AREA:
            centroid[r] = float((resid * gx).sum() / resid.sum())
    return centroid, area


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
    wl_e, wl_h, i_wl = _white_line(xs, g)
    e_half = _half_height(xs, g, i_wl)
    pre_c, pre_a = _pre_edge(xs, g, e_half)
    nan = np.where(finite, 0.0, np.nan)
    return EdgeFeatures(
        e_half=e_half + nan,
        wl_energy=wl_e + nan,
        wl_height=wl_h + nan,
        pre_centroid=pre_c + nan,
        pre_area=pre_a + nan,
    )

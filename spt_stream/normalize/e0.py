"""Edge energy (e0) of a batch of spectra sharing one energy grid.

Two modes:

``"larch"``
    Larch's ``find_e0``, reproduced for a batch: a first pass takes the largest derivative
    d mu/dE that is flanked by two other "high" points (above 60% of the derivative's range,
    ignoring the outer 2% of the grid); a second pass repeats this on the derivative smoothed by
    a Lorentzian (half-width about the energy step) within +-75 points of the first answer (or
    the whole grid when the first answer sits in the first 5% of it). e0 is then a grid energy.
    A strong pre-edge peak (V2O5, K2Cr2O7, tetrahedral Co) can have a steeper flank than the main
    edge, and this mode then returns the pre-edge peak.

``"robust"``
    Starts from the Larch e0, normalizes with it, and finds the *final rise*: the stretch of
    the grid that ends where the normalized spectrum crosses one half of the edge step for the
    last time (staying above it for every higher energy) and runs back to the last point where
    the smoothed derivative is <= 0 or the normalized mu is below 0.1, and forward to the first
    point where the derivative turns <= 0 (the white-line top). If the Larch e0 lies on the final
    rise it is kept (so both modes agree on ordinary spectra); otherwise e0 is the maximum of the
    smoothed derivative on the final rise. If no half-step crossing exists the Larch e0 is kept.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from spt_stream.normalize._energy_axis import (
    clamp_step,
    larch_estep,
    smoothing_matrix,
    smoothing_plan,
)
from spt_stream.normalize.params import E0Mode, NormParams

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

__all__ = ["find_e0", "find_e0_indices"]

#: Normalized level (fraction of the edge step) that marks the main edge in robust mode.
ROBUST_HALF_STEP = 0.5
#: Below this normalized level a point is taken as "before the final rise" in robust mode.
ROBUST_FLOOR = 0.1


#: Grids up to this many points smooth by a cached matrix (one matmul for the whole batch);
#: longer ones by FFT convolution (a 4096-point matrix would cost more than it saves). The choice
#: depends on the grid only, so a batch and its rows one by one take the same path.
MATRIX_SMOOTHING_MAX_POINTS = 1024


def _smooth(x: FloatArray, y: FloatArray, xstep: float) -> FloatArray:
    """Larch's Lorentzian smoothing of rows ``y`` on grid ``x`` (see :mod:`._energy_axis`)."""
    if x.shape[0] <= MATRIX_SMOOTHING_MAX_POINTS:
        out: FloatArray = y @ smoothing_matrix(x, xstep)
        return out
    return smoothing_plan(x, xstep)(y)


def _unit_gradient(y: FloatArray) -> FloatArray:
    """``numpy.gradient(y, axis=-1)`` (unit spacing, first-order ends), the same arithmetic
    without its generic set-up (which dominated a one-frame call)."""
    out = np.empty_like(y)
    out[..., 1:-1] = (y[..., 2:] - y[..., :-2]) / 2.0
    out[..., 0] = y[..., 1] - y[..., 0]
    out[..., -1] = y[..., -1] - y[..., -2]
    return out


def _derivative(energy: FloatArray, mu: FloatArray) -> FloatArray:
    """d mu / dE along the last axis, with numpy.gradient's second-order interior formula."""
    out: FloatArray = _unit_gradient(mu) / _unit_gradient(energy)[None, :]
    return out


def _pick_max(dmu: FloatArray) -> IntArray:
    """Larch's choice of the edge index among "high-derivative" points, per row.

    ``dmu`` is scaled to [0, 1] on the grid less its outer 2% (at least 3 points each side);
    candidates exceed 0.6 (0.3 for <= 20 points; halved up to twice when fewer than 3 points
    qualify, then every point qualifies), have both neighbours among the candidates, and the
    largest wins (the first one on ties). Rows with no winner give index 0.
    """
    b, m = dmu.shape
    d = np.where(np.isfinite(dmu), dmu, -1.0)
    nmin = max(3, int(m * 0.02))
    inner = d[:, nmin:-nmin]
    dmin = inner.min(axis=1, keepdims=True)
    dptp = np.maximum(1e-10, inner.max(axis=1, keepdims=True) - dmin)
    d = (d - dmin) / dptp
    dhigh = 0.60 if m > 20 else 0.30
    # Larch lowers the threshold (halving, at most twice) only when fewer than 3 points pass,
    # stops as soon as more than 3 pass, and finally lets every point pass.
    high0, high1, high2 = d > dhigh, d > 0.5 * dhigh, d > 0.25 * dhigh
    c0, c1, c2 = high0.sum(axis=1), high1.sum(axis=1), high2.sum(axis=1)
    high = np.where(
        (c0 >= 3)[:, None],
        high0,
        np.where((c1 > 3)[:, None], high1, np.where((c2 >= 3)[:, None], high2, True)),
    )
    idx = np.arange(m)
    neighbours = np.zeros_like(high)
    neighbours[:, 1:-1] = high[:, :-2] & high[:, 2:]
    ok = high & neighbours & (idx >= nmin) & (idx <= m - nmin) & (d > 0)
    score = np.where(ok, d, -np.inf)
    best = np.argmax(score, axis=1)
    found = np.isfinite(score[np.arange(b), best])
    return np.where(found, best, 0).astype(np.int64)


def _larch_indices(energy: FloatArray, mu: FloatArray) -> IntArray:
    """Grid index of Larch's e0 for every row (see the module docstring)."""
    n = energy.shape[0]
    b = mu.shape[0]
    # Pass 1: raw derivative on the grid less its last point (Larch drops it).
    en1 = energy[:-1]
    ie1 = _pick_max(_derivative(en1, mu[:, :-1]))
    estep1 = clamp_step(larch_estep(energy))
    out = np.empty(b, dtype=np.int64)
    # Pass 2, grouped by the first answer: rows sharing it share window and smoothing step.
    for ie0 in np.unique(ie1):
        rows = np.nonzero(ie1 == ie0)[0]
        e1 = float(en1[ie0])
        istart, istop = max(3, int(ie0) - 75), min(int(ie0) + 75, n - 3)
        if ie0 < 0.05 * n:
            e1 = float(energy.mean())
            istart, istop = max(3, int(ie0) - 20), n - 3
        estep = 0.5 * (estep1 + clamp_step(e1 / 25000.0))
        seg = energy[istart:istop][:-1]
        dmu = _derivative(seg, mu[rows, istart:istop][:, :-1])
        ix = _pick_max(_smooth(seg, dmu, estep))
        out[rows] = np.where(ix < 1, istart + 2, istart + ix)
    return out


def _robust_indices(energy: FloatArray, mu: FloatArray, larch_idx: IntArray) -> IntArray:
    """Move e0 from a pre-edge peak onto the final rise into the edge (module docstring)."""
    from spt_stream.normalize._core import normalize_core

    n = energy.shape[0]
    b = mu.shape[0]
    core = normalize_core(energy, mu, energy[larch_idx], NormParams(), make_flat=False)
    norm = core.norm
    estep = 0.5 * (clamp_step(larch_estep(energy)) + clamp_step(float(energy.mean()) / 25000.0))
    d = _smooth(energy, _derivative(energy, norm), estep)
    idx = np.arange(n)[None, :]
    tail_min = np.minimum.accumulate(norm[:, ::-1], axis=1)[:, ::-1]
    above = tail_min >= ROBUST_HALF_STEP
    has_cross = above.any(axis=1)
    ic = np.argmax(above, axis=1)[:, None]
    low = ((d <= 0) | (norm < ROBUST_FLOOR)) & (idx < ic)
    i_lo = np.where(low, idx, -1).max(axis=1) + 1
    top = (d <= 0) & (idx >= ic)
    i_hi = np.where(top, idx, n).min(axis=1) - 1
    on_rise = (larch_idx >= i_lo) & (larch_idx <= i_hi)
    window = (idx >= i_lo[:, None]) & (idx <= i_hi[:, None])
    best = np.argmax(np.where(window, d, -np.inf), axis=1)
    valid = has_cross & (i_hi >= i_lo) & np.isfinite(d[np.arange(b), best])
    return np.where(valid & ~on_rise, best, larch_idx).astype(np.int64)


def find_e0_indices(energy: FloatArray, mu: FloatArray, mode: E0Mode = "robust") -> IntArray:
    """Grid index of e0 per row of ``mu`` (b, n) on the shared increasing grid ``energy`` (n,)."""
    larch_idx = _larch_indices(energy, mu)
    if mode == "larch":
        return larch_idx
    return _robust_indices(energy, mu, larch_idx)


def find_e0(energy: FloatArray, mu: FloatArray, mode: E0Mode = "robust") -> FloatArray:
    """e0 (eV) per row of ``mu`` (b, n); ``energy`` (n,) strictly increasing, values finite.

    ``mode`` is ``"larch"`` or ``"robust"`` (module docstring). A 1-D ``mu`` is taken as one row.
    """
    energy = np.asarray(energy, dtype=np.float64)
    mu2 = np.atleast_2d(np.asarray(mu, dtype=np.float64))
    out: FloatArray = energy[find_e0_indices(energy, mu2, mode)]
    return out

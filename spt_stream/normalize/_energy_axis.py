"""Batched helpers on one shared, strictly increasing energy grid (pure numpy).

Index conventions are Larch's: ``index_of(E, v)`` is the last index with ``E <= v`` (0 below the
grid), ``index_nearest(E, v)`` the index of the closest energy (the lower one on a tie).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from scipy.signal import fftconvolve

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

__all__ = [
    "index_nearest",
    "index_of",
    "interp_weights",
    "larch_estep",
    "lorentzian_smooth",
    "smoothing_matrix",
    "smoothing_plan",
]


def index_of(energy: FloatArray, values: FloatArray) -> IntArray:
    """Per value: last index ``i`` with ``energy[i] <= value``; 0 when below the grid."""
    idx = np.searchsorted(energy, values, side="right") - 1
    return np.maximum(idx, 0).astype(np.int64)


def index_nearest(energy: FloatArray, values: FloatArray) -> IntArray:
    """Per value: index of the nearest energy (the lower index on an exact tie)."""
    n = energy.shape[0]
    hi = np.clip(np.searchsorted(energy, values, side="left"), 1, n - 1)
    lo = hi - 1
    take_lo = np.abs(energy[lo] - values) <= np.abs(energy[hi] - values)
    return np.where(take_lo, lo, hi).astype(np.int64)


def interp_weights(xp: FloatArray, x: FloatArray) -> tuple[IntArray, FloatArray]:
    """``(lo, w)`` so that ``y(x) = y[..., lo] * (1 - w) + y[..., lo + 1] * w``.

    Linear interpolation from the increasing grid ``xp``, clamped to the end values outside it
    (``numpy.interp`` semantics), reusable for any number of rows sharing ``xp``.
    """
    n = xp.shape[0]
    lo = np.clip(np.searchsorted(xp, x, side="right") - 1, 0, n - 2)
    span = xp[lo + 1] - xp[lo]
    w = np.clip((x - xp[lo]) / span, 0.0, 1.0)
    return lo.astype(np.int64), w.astype(np.float64)


def apply_weights(y: FloatArray, lo: IntArray, w: FloatArray) -> FloatArray:
    """Apply :func:`interp_weights` to rows ``y`` of shape ``(b, len(xp))``."""
    out: FloatArray = y[:, lo] * (1.0 - w) + y[:, lo + 1] * w
    return out


def larch_estep(energy: FloatArray) -> float:
    """Larch's robust energy step of a grid (``find_energy_step`` on the grid less its last point).

    Returns NaN for grids under ~100 points, exactly as Larch does (it then averages nothing);
    callers clamp the value to [0.01, 1] eV where NaN becomes 1 eV.
    """
    en = energy[:-1]
    nskip = int(0.01 * en.shape[0])
    body = en[:-1][nskip : en.shape[0] - 1 - nskip] if nskip > 0 else en[:0]
    steps = np.sort(np.diff(body))[nskip : nskip + 10]
    return float(steps.mean()) if steps.size else math.nan


def clamp_step(value: float) -> float:
    """Clamp to [0.01, 1.0] with Python's ``max(0.01, min(1.0, v))`` (NaN -> 1.0)."""
    return max(0.01, min(1.0, value))


class SmoothingPlan:
    """Precomputed Lorentzian smoothing of rows on grid ``x`` (Larch's ``smooth``, batched).

    The rows are resampled onto a uniform grid of step ``xstep`` padded by 5 steps, mirrored at
    both ends, convolved with a Lorentzian of half-width one step, and interpolated back.
    """

    def __init__(self, x: FloatArray, xstep: float) -> None:
        m = x.shape[0]
        xmin = xstep * math.trunc((float(x.min()) - 5 * xstep) / xstep)
        xmax = xstep * math.trunc((float(x.max()) + 5 * xstep) / xstep)
        npts1 = 1 + math.trunc(abs(xmax - xmin + xstep * 0.1) / xstep)
        npts = min(npts1, 50 * m)
        x0 = np.linspace(xmin, xmax, npts)
        sigma = xstep * (1.0 / xstep)
        k = np.arange(2 * npts, dtype=np.float64)
        win = 1.0 / (1.0 + ((k - npts) / sigma) ** 2) / (math.pi * sigma)
        self.npts = npts
        self.window: FloatArray = win / win.sum()
        self.to_uniform = interp_weights(x, x0)
        self.from_uniform = interp_weights(x0, x)

    def __call__(self, y: FloatArray) -> FloatArray:
        npts = self.npts
        y0 = apply_weights(y, *self.to_uniform)
        y1 = np.concatenate((y0[:, npts - 1 : 0 : -1], y0, y0[:, ::-1]), axis=1)
        y2 = fftconvolve(y1, self.window[None, :], mode="valid", axes=1)[:, :npts]
        return apply_weights(y2, *self.from_uniform)

    def matrix(self) -> FloatArray:
        """The smoothing as a matrix ``R`` (m, m), ``self(y) == y @ R`` (to rounding), built
        directly: ~5x faster than smoothing the identity (which the engine would pay on the
        first frame of every new grid or e0 search window).

        ``self`` is ``y -> A_to @ M @ A_from`` with ``A_to`` / ``A_from`` the two linear
        interpolations (two weights per column) and ``M`` (npts, npts) the mirrored
        convolution: with the mirrored row ``y1 = [y0[npts-1:0:-1], y0, y0[::-1]]`` and the
        ``valid`` convolution, ``M[a, i] = win[npts + i - a] + win[npts + i + a] (a >= 1,
        i + a < npts) + win[i + a - npts + 1] (i + a >= npts - 1)``. Only the columns of ``M``
        that ``A_from`` reads are formed.
        """
        npts = self.npts
        lo_t, w_t = self.to_uniform  # (npts,) into x
        lo_f, w_f = self.from_uniform  # (m,) into the uniform grid
        m = lo_f.shape[0]
        if npts < 2 or m < 2:
            out: FloatArray = self(np.eye(m))
            return out
        # The window padded with zeros, so that out-of-range terms read 0.
        pad = 2 * npts
        win = np.concatenate((np.zeros(pad), self.window, np.zeros(2 * pad)))
        c0 = int(lo_f.min())
        cols = np.arange(c0, int(lo_f.max()) + 2)  # every column A_from reads
        a = np.arange(npts)[:, None]
        s = cols[None, :] + a
        mcols = win[pad + npts + cols[None, :] - a] + win[pad + s - npts + 1]
        left = win[pad + npts + s]  # zero where s >= npts (padding)
        left[0, :] = 0.0  # a = 0 is not mirrored on the left
        mcols += left
        b = mcols[:, lo_f - c0] * (1.0 - w_f) + mcols[:, lo_f + 1 - c0] * w_f  # (npts, m)
        r = np.zeros((m, m))
        for rows, wt in ((lo_t, 1.0 - w_t), (lo_t + 1, w_t)):
            starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
            r[rows[starts]] += np.add.reduceat(b * wt[:, None], starts, axis=0)
        return r


@lru_cache(maxsize=1024)
def _smoothing_matrix_cached(key: bytes, xstep: float) -> FloatArray:
    x = np.frombuffer(key, dtype=np.float64)
    out = SmoothingPlan(x, xstep).matrix()
    out.setflags(write=False)
    return out


def smoothing_matrix(x: FloatArray, xstep: float) -> FloatArray:
    """The smoothing of :class:`SmoothingPlan` as a matrix ``R`` (m, m): ``smooth(Y) = Y @ R``.

    The smoothing is linear, so its impulse responses give it exactly; one small matmul then
    smooths any number of rows (numpy or torch, CPU or GPU). Cached per grid and step.
    """
    return _smoothing_matrix_cached(np.ascontiguousarray(x, dtype=np.float64).tobytes(), xstep)


def smoothing_plan(x: FloatArray, xstep: float) -> SmoothingPlan:
    """A reusable :class:`SmoothingPlan` for grid ``x`` and step ``xstep`` (eV)."""
    return SmoothingPlan(x, xstep)


def lorentzian_smooth(x: FloatArray, y: FloatArray, xstep: float) -> FloatArray:
    """Smooth rows ``y`` (b, len(x)) with a Lorentzian of half-width ``xstep`` (see the plan)."""
    return SmoothingPlan(x, xstep)(y)

"""Batched XANES normalization (pure numpy): :func:`normalize_batch`.

One call normalizes ``b`` spectra that share one energy grid (a quick-XAS stream, or frames
grouped by grid): e0 (:mod:`spt_stream.normalize.e0`), pre-edge line, post-edge polynomial,
edge step, flattening (:mod:`spt_stream.normalize._core`, Larch's conventions) and the quality
flags of :mod:`spt_stream.normalize.flags`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from spt_stream.errors import NormalizationError
from spt_stream.normalize._core import normalize_core
from spt_stream.normalize.e0 import find_e0_indices
from spt_stream.normalize.flags import MAX_NONFINITE_FRACTION, SATURATION_MIN_POINTS, QualityFlag
from spt_stream.normalize.params import NormParams, NormResult

FloatArray = npt.NDArray[np.float64]
FlagArray = npt.NDArray[np.uint32]

__all__ = ["MIN_POINTS", "check_grid", "noise_level", "normalize_batch"]

#: Fewest grid points a spectrum must have to be normalized.
MIN_POINTS = 16


def check_grid(energy: FloatArray, mu: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Validate and return ``(energy (n,), mu (b, n))`` as float64; raise NormalizationError."""
    energy = np.asarray(energy, dtype=np.float64)
    mu = np.asarray(mu, dtype=np.float64)
    if mu.ndim == 1:
        mu = mu[None, :]
    if energy.ndim != 1 or mu.ndim != 2 or mu.shape[1] != energy.shape[0]:
        raise NormalizationError(
            f"energy must be (n,) and mu (b, n); got {energy.shape} and {mu.shape}"
        )
    if energy.shape[0] < MIN_POINTS:
        raise NormalizationError(f"need at least {MIN_POINTS} points, got {energy.shape[0]}")
    if not np.all(np.isfinite(energy)):
        raise NormalizationError("energy grid holds NaN/inf")
    if np.any(np.diff(energy) <= 0):
        raise NormalizationError("energy grid must be strictly increasing")
    return energy, mu


def _repair_nonfinite(
    energy: FloatArray, mu: FloatArray
) -> tuple[FloatArray, FlagArray, FlagArray]:
    """Fill sparse NaN/inf by interpolation; return (mu, NAN flags, rows beyond repair)."""
    bad = ~np.isfinite(mu)
    flags = np.where(bad.any(axis=1), np.uint32(QualityFlag.NAN), np.uint32(0)).astype(np.uint32)
    dead = np.zeros(mu.shape[0], dtype=np.uint32)
    if not bad.any():
        return mu, flags, dead
    mu = mu.copy()
    limit = MAX_NONFINITE_FRACTION * mu.shape[1]
    for row in np.nonzero(bad.any(axis=1))[0]:
        good = ~bad[row]
        if bad[row].sum() > limit or good.sum() < 2:
            mu[row] = 0.0
            dead[row] = 1
        else:
            mu[row, ~good] = np.interp(energy[~good], energy[good], mu[row, good])
    return mu, flags, dead


def noise_level(mu: FloatArray) -> FloatArray:
    """Robust per-row noise (b,): MAD-based std of each point about its 3-point median."""
    resid = _spike_residual(mu)
    out: FloatArray = 1.4826 * np.median(np.abs(resid), axis=1)
    return out


def _spike_residual(mu: FloatArray) -> FloatArray:
    """mu minus the median of (left, self, right), interior points only: (b, n-2)."""
    a, b, c = mu[:, :-2], mu[:, 1:-1], mu[:, 2:]
    med = np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))
    out: FloatArray = b - med
    return out


def _quality_flags(
    mu: FloatArray, raw_step: FloatArray, edge_step: FloatArray, params: NormParams
) -> FlagArray:
    resid = _spike_residual(mu)
    noise = 1.4826 * np.median(np.abs(resid), axis=1)
    flags = np.zeros(mu.shape[0], dtype=np.uint32)
    small = (edge_step < params.min_edge_step) | (edge_step < params.min_step_to_noise * noise)
    flags |= np.where(small, np.uint32(QualityFlag.SMALL_EDGE_STEP), np.uint32(0))
    spike = np.maximum(params.glitch_step_fraction * edge_step, params.glitch_noise_sigma * noise)
    glitch = (np.abs(resid) > spike[:, None]).any(axis=1)
    flags |= np.where(glitch, np.uint32(QualityFlag.GLITCH), np.uint32(0))
    hi = (mu == mu.max(axis=1, keepdims=True)).sum(axis=1)
    lo = (mu == mu.min(axis=1, keepdims=True)).sum(axis=1)
    sat = (hi >= SATURATION_MIN_POINTS) | (lo >= SATURATION_MIN_POINTS)
    flags |= np.where(sat, np.uint32(QualityFlag.SATURATED), np.uint32(0))
    flags |= np.where(raw_step < 0, np.uint32(QualityFlag.NEGATIVE_EDGE_STEP), np.uint32(0))
    return flags


def normalize_batch(
    energy: FloatArray,
    mu: FloatArray,
    params: NormParams | None = None,
    *,
    e0: FloatArray | None = None,
) -> NormResult:
    """Normalize ``b`` spectra ``mu`` (b, n) sharing the grid ``energy`` (n,), eV, increasing.

    ``e0`` (b,) overrides ``params.e0`` per row (e.g. from a calibration); an e0 outside
    ``(energy[1], energy[-2])`` is searched for instead (as Larch does) and flagged
    ``E0_OUT_OF_RANGE``. Rows with too many NaN/inf come back as NaN with the ``NAN`` flag.
    Raises :class:`~spt_stream.errors.NormalizationError` for a grid that cannot be used.
    """
    params = params or NormParams()
    energy, mu = check_grid(energy, mu)
    b, n = mu.shape
    mu, flags, dead = _repair_nonfinite(energy, mu)

    if e0 is None and params.e0 is not None:
        e0 = np.full(b, float(params.e0))
    if e0 is not None:
        e0_rows = np.broadcast_to(np.asarray(e0, dtype=np.float64), (b,)).copy()
        outside = ~((e0_rows >= energy[1]) & (e0_rows <= energy[-2]))
        flags |= np.where(outside, np.uint32(QualityFlag.E0_OUT_OF_RANGE), np.uint32(0))
        if outside.any():
            found = find_e0_indices(energy, mu[outside], params.e0_mode)
            e0_rows[outside] = energy[found]
    else:
        e0_rows = energy[find_e0_indices(energy, mu, params.e0_mode)]

    core = normalize_core(energy, mu, e0_rows, params, make_flat=params.make_flat)
    r = core.ranges
    flags |= _quality_flags(mu, core.raw_step, core.edge_step, params)
    cramped = (
        (r.ie0 < 2) | (r.ie0 > n - 3) | (r.pre_hi - r.pre_lo < 2) | (r.post_hi - r.post_lo < 2)
    )
    flags |= np.where(cramped, np.uint32(QualityFlag.E0_OUT_OF_RANGE), np.uint32(0))

    arrays = [core.norm, core.flat, core.pre_edge, core.post_edge]
    edge_step = core.edge_step
    if dead.any():
        kill = dead.astype(bool)
        for arr in arrays:
            arr[kill] = np.nan
        edge_step = np.where(kill, np.nan, edge_step)
        e0_rows = np.where(kill, np.nan, e0_rows)
    return NormResult(
        energy=energy,
        e0=e0_rows,
        edge_step=edge_step,
        norm=core.norm,
        flat=core.flat,
        pre_edge=core.pre_edge,
        post_edge=core.post_edge,
        flags=flags.astype(np.uint32),
        pre1=r.pre1,
        pre2=r.pre2,
        norm1=r.norm1,
        norm2=r.norm2,
        nnorm=r.nnorm,
        nvict=r.nvict,
        params=params,
    )

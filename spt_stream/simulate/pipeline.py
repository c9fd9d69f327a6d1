"""From a site to what the model sees: raw-like acquisition, then the engine's own normalization.

Simulated spectra go through the SAME path as measured ones: a raw ``mu(E)`` on an absolute
energy grid (pre-edge background with slope/curvature, edge step not 1, atomic post-edge
decline, noise, glitches, calibration offset, resolution, self-absorption-like damping), then
:func:`spt_stream.normalize.normalize_batch` and resampling onto the model grid
(:data:`spt_stream.core.grid.MODEL_GRID_REL`, relative to the TABULATED edge energy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spt_stream.core.frames import FloatArray
from spt_stream.core.grid import edge_energy
from spt_stream.simulate.environment import LocalEnvironment
from spt_stream.simulate.physics import PhysicsParams, broaden, core_hole_width, site_spectrum

__all__ = [
    "FINE_REL",
    "FINE_STEP",
    "Acquisition",
    "AugmentRanges",
    "acquisition_grid",
    "fine_spectrum",
    "normalize_to_model_grid",
    "raw_spectrum",
    "sample_acquisition",
]

FINE_STEP = 0.25
#: Fine simulation grid relative to the tabulated edge (eV).
FINE_REL: FloatArray = np.arange(-240.0, 1000.0, FINE_STEP)
FINE_REL.setflags(write=False)


@dataclass(frozen=True, slots=True)
class AugmentRanges:
    """Ranges the per-spectrum instrument/sample effects are drawn from (uniform unless noted)."""

    resolution_fwhm: tuple[float, float] = (0.6, 2.5)
    calibration_sigma: float = 0.4
    shift_spread_sigma: float = 0.5
    edge_step: tuple[float, float] = (0.05, 3.0)
    background_offset: tuple[float, float] = (-0.5, 3.0)
    #: Pre-edge background slope per 100 eV, in units of the edge step.
    background_slope: tuple[float, float] = (-0.35, 0.08)
    background_curvature: tuple[float, float] = (-0.02, 0.04)
    #: Noise standard deviation in units of the edge step (log-uniform).
    noise: tuple[float, float] = (1e-4, 2e-2)
    self_absorption_prob: float = 0.25
    self_absorption: tuple[float, float] = (0.05, 0.8)
    glitch_prob: float = 0.1
    glitch_amplitude: tuple[float, float] = (0.02, 0.3)
    start_rel: tuple[float, float] = (-200.0, -35.0)
    stop_rel: tuple[float, float] = (95.0, 900.0)
    quick_xas_prob: float = 0.4
    edge_step_ev: tuple[float, float] = (0.2, 1.0)
    white_line_scale: tuple[float, float] = (0.8, 1.2)
    pre_edge_scale: tuple[float, float] = (0.7, 1.4)
    s02_scale: tuple[float, float] = (0.85, 1.15)


@dataclass(frozen=True, slots=True)
class Acquisition:
    """Instrument and sample effects of one simulated measurement."""

    resolution_fwhm: float = 1.2
    calibration_offset: float = 0.0
    edge_shift: float = 0.0
    edge_step: float = 1.0
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    noise: float = 0.0
    self_absorption: float = 0.0
    glitches: tuple[tuple[float, float], ...] = ()


def acquisition_grid(rng: np.random.Generator, ranges: AugmentRanges) -> FloatArray:
    """A measurement energy grid relative to the tabulated edge (eV): quick-XAS or step scan."""
    start = rng.uniform(*ranges.start_rel)
    stop = rng.uniform(*ranges.stop_rel)
    if rng.random() < ranges.quick_xas_prob:
        step = rng.uniform(0.15, 1.0)
        return np.arange(start, stop, step)
    pre_step = rng.uniform(2.0, 10.0)
    edge_step = rng.uniform(*ranges.edge_step_ev)
    lo, hi = rng.uniform(-30.0, -15.0), rng.uniform(30.0, 60.0)
    pre = np.arange(start, lo, pre_step)
    mid = np.arange(lo, hi, edge_step)
    k_lo = np.sqrt(0.2625 * hi)
    k = np.arange(k_lo, np.sqrt(0.2625 * stop), rng.uniform(0.03, 0.06))
    post = k * k / 0.2625
    return np.unique(np.concatenate([pre, mid, post[post > hi]]))


def sample_acquisition(rng: np.random.Generator, ranges: AugmentRanges) -> Acquisition:
    """Draw one spectrum's instrument/sample effects."""
    step = rng.uniform(*ranges.edge_step)
    glitches: tuple[tuple[float, float], ...] = ()
    if rng.random() < ranges.glitch_prob:
        glitches = tuple(
            (
                rng.uniform(-20.0, 90.0),
                rng.choice([-1.0, 1.0]) * rng.uniform(*ranges.glitch_amplitude),
            )
            for _ in range(int(rng.integers(1, 4)))
        )
    sa = rng.uniform(*ranges.self_absorption) if rng.random() < ranges.self_absorption_prob else 0.0
    lo, hi = np.log(ranges.noise[0]), np.log(ranges.noise[1])
    return Acquisition(
        resolution_fwhm=rng.uniform(*ranges.resolution_fwhm),
        calibration_offset=rng.normal(0.0, ranges.calibration_sigma),
        edge_shift=rng.normal(0.0, ranges.shift_spread_sigma),
        edge_step=step,
        background=(
            rng.uniform(*ranges.background_offset),
            rng.uniform(*ranges.background_slope),
            rng.uniform(*ranges.background_curvature),
        ),
        noise=float(np.exp(rng.uniform(lo, hi))),
        self_absorption=sa,
        glitches=glitches,
    )


def fine_spectrum(
    envs: list[LocalEnvironment] | LocalEnvironment,
    params: PhysicsParams,
    *,
    weights: list[float] | None = None,
    edge_shift: float = 0.0,
) -> FloatArray:
    """Unbroadened normalized mu on :data:`FINE_REL` (+ the tabulated edge) of one or more sites.

    Several sites (same element) are averaged with ``weights`` (e.g. a spinel's Td and Oh sites).
    """
    sites = [envs] if isinstance(envs, LocalEnvironment) else list(envs)
    w = np.asarray(weights if weights is not None else [1.0] * len(sites), dtype=np.float64)
    w = w / w.sum()
    energy = FINE_REL + edge_energy(sites[0].element)
    out = np.zeros_like(energy)
    for wi, env in zip(w, sites, strict=True):
        out += wi * site_spectrum(env, energy, params, edge_shift=edge_shift)
    return out


def raw_spectrum(
    fine_mu: FloatArray,
    element: str,
    grid_rel: FloatArray,
    acq: Acquisition,
    rng: np.random.Generator,
) -> FloatArray:
    """Raw-like mu on ``grid_rel + E_tab`` from a fine normalized spectrum (b=1 or (b, n_fine)).

    Broadening (core hole + ``acq.resolution_fwhm``), self-absorption-like damping
    ``n -> n (1 + beta) / (1 + beta n)``, calibration offset (the spectrum appears at
    ``E + offset``), edge step, polynomial background, glitches and noise (standard deviation
    ``noise * step * (1 + 0.5 n)``, Poisson-like growth with absorption).
    """
    mu = broaden(fine_mu, FINE_STEP, core_hole_width(element), acq.resolution_fwhm)
    if acq.self_absorption > 0:
        b = acq.self_absorption
        mu = mu * (1.0 + b) / (1.0 + b * np.maximum(mu, 0.0))
    shape = np.interp(grid_rel - acq.calibration_offset, FINE_REL, mu)
    x = grid_rel / 100.0
    a0, a1, a2 = acq.background
    raw = acq.edge_step * (shape + a0 + a1 * x + a2 * x * x)
    for pos, amp in acq.glitches:
        i = int(np.argmin(np.abs(grid_rel - pos)))
        raw[i] += amp * acq.edge_step
    if acq.noise > 0:
        raw = raw + rng.normal(size=raw.shape) * acq.noise * acq.edge_step * (
            1.0 + 0.5 * np.abs(shape)
        )
    out: FloatArray = raw
    return out


def normalize_to_model_grid(
    energy: FloatArray, mu: FloatArray, element: str, *, use_flat: bool = True
) -> FloatArray:
    """Normalize rows ``mu`` (b, n) on the absolute ``energy`` grid with the engine's own
    :func:`~spt_stream.normalize.normalize_batch` (default :class:`NormParams`) and resample
    with :func:`~spt_stream.normalize.resample_to_model_grid`; returns (b, 224) float64.

    ``use_flat`` picks the flattened spectrum, as the engine does with ``make_flat`` (default).
    """
    from spt_stream.normalize import NormParams, normalize_batch, resample_to_model_grid

    e = np.asarray(energy, dtype=np.float64)
    res = normalize_batch(e, np.atleast_2d(mu), NormParams(make_flat=use_flat))
    values = res.flat if use_flat else res.norm
    out, _flags = resample_to_model_grid(e, values, element)
    return out

"""Generation at scale: labelled, normalized spectra on the model grid, deterministic from a seed.

Rows are produced in chunks of ``recipe.chunk_size``; chunk ``i`` draws everything from
``numpy.random.SeedSequence(seed, spawn_key=(i,))``, so the data set depends on ``(recipe, n,
seed)`` only, never on the number of worker processes. Each chunk: sample sites -> build
geometry -> descriptors -> physics jitter -> fine spectrum -> raw-like acquisition on one of a few
measurement grids -> the engine's normalization -> model grid.

A mixed-valence sample (``recipe.mixture_prob``, :func:`~spt_stream.simulate.sampler.sample_sites`)
is two sites of one element: its fine spectrum is the weighted sum of the site spectra (same
physics draw and acquisition), its labels the weighted site averages
(:func:`~spt_stream.simulate.site_descriptors.describe_mixture`); ``provenance["mixture_rows"]``
counts them.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from spt_stream.core.frames import FloatArray
from spt_stream.core.grid import MODEL_GRID_REL, edge_energy
from spt_stream.simulate.environment import LocalEnvironment, build_environment
from spt_stream.simulate.physics import PhysicsParams
from spt_stream.simulate.pipeline import (
    Acquisition,
    acquisition_grid,
    fine_spectrum,
    normalize_to_model_grid,
    raw_spectrum,
    sample_acquisition,
)
from spt_stream.simulate.sampler import Recipe, sample_sites
from spt_stream.simulate.site_descriptors import LABEL_NAMES, describe_mixture

__all__ = [
    "ChunkResult",
    "SampleDraw",
    "draw_sample",
    "generate_arrays",
    "generate_dataset",
    "simulate_chunk",
]

ChunkResult = dict[str, Any]
_GRIDS_PER_CHUNK = 4


@dataclass(frozen=True, eq=False)
class SampleDraw:
    """One sample before acquisition: its sites and weights, labels, physics and fine spectrum."""

    envs: tuple[LocalEnvironment, ...]
    weights: tuple[float, ...]
    #: Site-averaged labels (:func:`~spt_stream.simulate.site_descriptors.describe_mixture`).
    labels: dict[str, float]
    #: The physics parameters after this sample's jitter.
    params: PhysicsParams
    acquisition: Acquisition
    #: ``sum_i w_i * site_spectrum_i`` on :data:`~spt_stream.simulate.pipeline.FINE_REL`.
    fine: FloatArray

    @property
    def element(self) -> str:
        return self.envs[0].element


def draw_sample(rng: np.random.Generator, recipe: Recipe, params: PhysicsParams) -> SampleDraw:
    """Sites (one, or a mixed-valence pair) -> geometry -> labels -> physics jitter ->
    acquisition effects -> the weighted fine spectrum (what one row of a chunk starts from)."""
    aug = recipe.augment
    specs, weights = sample_sites(rng, recipe)
    envs = tuple(build_environment(spec, rng) for spec in specs)
    labels = describe_mixture(envs, weights)
    p = replace(
        params,
        wl0=params.wl0 * rng.uniform(*aug.white_line_scale),
        wl_os=params.wl_os * rng.uniform(*aug.white_line_scale),
        pre_quad=params.pre_quad * rng.uniform(*aug.pre_edge_scale),
        pre_dip=params.pre_dip * rng.uniform(*aug.pre_edge_scale),
        s02=params.s02 * rng.uniform(*aug.s02_scale),
    )
    acq = sample_acquisition(rng, aug)
    fine = fine_spectrum(list(envs), p, weights=list(weights), edge_shift=acq.edge_shift)
    return SampleDraw(envs, weights, labels, p, acq, fine)


def simulate_chunk(
    recipe: Recipe, params: PhysicsParams, seed: int, index: int, n_rows: int
) -> ChunkResult:
    """Simulate ``n_rows`` rows of chunk ``index`` (pure function of its arguments)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    aug = recipe.augment
    grids = [acquisition_grid(rng, aug) for _ in range(_GRIDS_PER_CHUNK)]
    elements: list[str] = []
    labels = {k: np.empty(n_rows, dtype=np.float32) for k in LABEL_NAMES}
    raw_rows: list[FloatArray] = []
    fines: list[tuple[FloatArray, Acquisition]] = []
    grid_of: list[int] = []
    mixtures = 0
    for r in range(n_rows):
        d = draw_sample(rng, recipe, params)
        mixtures += len(d.envs) > 1
        for k, v in d.labels.items():
            labels[k][r] = v
        g = int(rng.integers(_GRIDS_PER_CHUNK))
        raw_rows.append(raw_spectrum(d.fine, d.element, grids[g], d.acquisition, rng))
        fines.append((d.fine, d.acquisition))
        grid_of.append(g)
        elements.append(d.element)
    spectra = np.empty((n_rows, len(MODEL_GRID_REL)), dtype=np.float64)
    el_arr = np.asarray(elements)
    g_arr = np.asarray(grid_of)
    fallback = 0
    for el in sorted(set(elements)):
        for g in range(_GRIDS_PER_CHUNK):
            rows = np.flatnonzero((el_arr == el) & (g_arr == g))
            if len(rows) == 0:
                continue
            energy = grids[g] + edge_energy(el)
            out = normalize_to_model_grid(
                energy, np.stack([raw_rows[i] for i in rows]), el, use_flat=recipe.use_flat
            )
            bad = ~np.all(np.isfinite(out), axis=1) | (np.abs(out).max(axis=1) > 10.0)
            if bad.any():  # a noisy draw normalization cannot handle: use its noise-free twin
                fallback += int(bad.sum())
                clean = np.stack([_noise_free(fines[i], el, grids[g], rng) for i in rows[bad]])
                out[bad] = normalize_to_model_grid(energy, clean, el, use_flat=recipe.use_flat)
            spectra[rows] = out
    return {
        "spectra": spectra.astype(np.float32),
        "element": el_arr,
        "labels": labels,
        "fallback": fallback,
        "mixtures": mixtures,
    }


def _noise_free(
    item: tuple[FloatArray, Acquisition], element: str, grid: FloatArray, rng: np.random.Generator
) -> FloatArray:
    fine, acq = item
    clean = Acquisition(
        resolution_fwhm=acq.resolution_fwhm, calibration_offset=acq.calibration_offset
    )
    return raw_spectrum(fine, element, grid, clean, rng)


def _chunk_task(args: tuple[Recipe, PhysicsParams, int, int, int]) -> ChunkResult:
    return simulate_chunk(*args)


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for i, start in enumerate(range(0, n, size)):
        yield i, min(size, n - start)


def generate_arrays(
    recipe: Recipe,
    params: PhysicsParams,
    n: int,
    seed: int,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> ChunkResult:
    """All ``n`` rows, in order, from ``workers`` processes (result independent of ``workers``)."""
    tasks = [(recipe, params, seed, i, m) for i, m in _chunks(n, recipe.chunk_size)]
    parts: list[ChunkResult] = []
    if workers <= 1:
        for t in tasks:
            parts.append(_chunk_task(t))
            if progress:
                progress(t[4])
    else:
        ctx = mp.get_context("spawn")
        with ctx.Pool(workers) as pool:
            for part in pool.imap(_chunk_task, tasks):
                parts.append(part)
                if progress:
                    progress(len(part["element"]))
    if not parts:
        return {
            "spectra": np.zeros((0, len(MODEL_GRID_REL)), np.float32),
            "element": np.array([], dtype=str),
            "labels": {k: np.zeros(0, np.float32) for k in LABEL_NAMES},
            "fallback": 0,
            "mixtures": 0,
        }
    return {
        "spectra": np.concatenate([p["spectra"] for p in parts]),
        "element": np.concatenate([p["element"] for p in parts]),
        "labels": {k: np.concatenate([p["labels"][k] for p in parts]) for k in LABEL_NAMES},
        "fallback": int(sum(p["fallback"] for p in parts)),
        "mixtures": int(sum(p["mixtures"] for p in parts)),
    }


def generate_dataset(
    recipe: Recipe,
    n: int,
    seed: int,
    workers: int = 1,
    out: Path | None = None,
    *,
    params: PhysicsParams | None = None,
    progress: Callable[[int], None] | None = None,
    recipe_source: str | None = None,
) -> Any:
    """Generate ``n`` labelled spectra as a :class:`spt_stream.training.datasets.SpectraDataset`.

    Saved with :func:`spt_stream.training.datasets.save_dataset` when ``out`` is given. Each row is
    its
    own structure (``groups = row index``). ``params`` defaults to the recipe's physics file
    (``spt_stream/configs/simulate/calibrated.yaml``) or the built-in defaults. With
    ``recipe.mixture_prob > 0`` some rows are mixed-valence samples whose labels are site averages
    (fractional ``os``, ``cn``, ...; see :mod:`spt_stream.simulate.site_descriptors`).
    """
    from spt_stream.simulate.calibrate import load_params
    from spt_stream.training.datasets import SpectraDataset, save_dataset

    if params is None:
        params = PhysicsParams()
        if recipe.physics:
            from spt_stream.config import CONFIG_DIR

            path = Path(recipe.physics)
            path = path if path.is_absolute() else CONFIG_DIR / "simulate" / path
            if path.exists():
                params = load_params(path)
    arrays = generate_arrays(recipe, params, n, seed, workers, progress)
    ds = SpectraDataset(
        spectra=arrays["spectra"],
        energy_rel=np.array(MODEL_GRID_REL, dtype=np.float64),
        element=arrays["element"].astype(np.str_),
        edge=np.full(n, "K"),
        labels=arrays["labels"],
        groups=np.arange(n, dtype=np.int64),
        provenance={
            "generator": "spt_stream.simulate.generate_dataset",
            "seed": seed,
            "n": n,
            "recipe": recipe_source or "in-memory",
            "recipe_values": _jsonable(asdict(recipe)),
            "physics": params.as_dict(),
            "normalized": "flat" if recipe.use_flat else "norm",
            "noise_free_fallback_rows": arrays["fallback"],
            "mixture_rows": arrays["mixtures"],
        },
    )
    if out is not None:
        save_dataset(ds, out)
    return ds


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x

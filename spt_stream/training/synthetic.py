"""A toy XANES-like generator for tests, benchmarks and smoke training runs.

NOT physics: the real simulator is :mod:`spt_stream.simulate`. Each toy spectrum is an edge
(error function) whose position moves 3.8 eV per unit of oxidation state, a white line, a
pre-edge peak that is strong for 4-fold (tetrahedral-like) and weak for 6-fold sites, and a
damped post-edge oscillation ``sin(2 k R)`` whose frequency follows the mean neighbour distance
R and whose damping follows the bond-length spread (nnrs). That gives the network a learnable
task with the same label kinds as the real one (os, cn discrete; nnrs, mean_nn_distance
continuous) and a group structure (several spectra per "structure").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import erf

from spt_stream.core.grid import MODEL_GRID_REL
from spt_stream.training.datasets import SpectraDataset

__all__ = ["TOY_DESCRIPTORS", "make_toy_dataset", "toy_spectra"]

TOY_DESCRIPTORS = ("os", "cn", "nnrs", "mean_nn_distance")
_ELEMENT_OFFSET = {"Mn": -1.0, "Fe": 0.0, "Co": 0.5, "Ni": 1.0}


def toy_spectra(
    os_: np.ndarray,
    cn: np.ndarray,
    r: np.ndarray,
    nnrs: np.ndarray,
    offset: np.ndarray,
    grid: np.ndarray = MODEL_GRID_REL,
) -> np.ndarray:
    """Noise-free toy spectra (N, G) for the given per-row parameters (see module doc)."""
    e = np.asarray(grid, dtype=np.float64)[None, :]
    e0 = (3.8 * (os_ - 2.0) - 2.0 + offset)[:, None]
    step = 0.5 * (1.0 + erf((e - e0) / 2.0))
    wl_amp = 0.25 + 0.1 * (cn[:, None] - 4.0) / 2.0
    white = wl_amp * np.exp(-0.5 * ((e - e0 - 4.0) / 3.0) ** 2)
    pre_amp = np.where(cn == 4, 0.18, np.where(cn == 5, 0.09, 0.03))[:, None]
    pre = pre_amp * np.exp(-0.5 * ((e - e0 + 10.0) / 1.2) ** 2)
    de = np.clip(e - e0 - 8.0, 0.0, None)
    k = np.sqrt(0.2625 * de)
    sig2 = (nnrs**2 + 0.003)[:, None]
    osc = (
        0.12 * (cn[:, None] / 6.0) * np.sin(2.0 * k * r[:, None] * 1.6)
        * np.exp(-2.0 * k**2 * sig2 * 4.0) * (1.0 - np.exp(-de / 6.0))
    )  # fmt: skip
    out: np.ndarray = (step + white + pre + osc).astype(np.float32)
    return out


def make_toy_dataset(
    n_structures: int = 200,
    per_structure: int = 4,
    elements: Sequence[str] = ("Mn", "Fe", "Co", "Ni"),
    noise: float = 0.005,
    seed: int = 0,
) -> SpectraDataset:
    """A toy dataset: ``n_structures`` groups of ``per_structure`` jittered spectra each."""
    rng = np.random.default_rng(seed)
    n = n_structures * per_structure
    g = np.repeat(np.arange(n_structures), per_structure)
    el = rng.choice(np.asarray(elements), size=n_structures)[g]
    os_ = rng.choice([2.0, 3.0, 4.0], size=n_structures)[g]
    cn = rng.choice([4.0, 5.0, 6.0], size=n_structures, p=[0.35, 0.15, 0.5])[g]
    base_r = 1.80 + 0.07 * (cn - 4.0) - 0.04 * (os_ - 2.0)
    r = (base_r[::per_structure] + rng.normal(0, 0.03, n_structures))[g]
    r = r + rng.normal(0, 0.005, n)  # small per-site variation within a structure
    nnrs = (rng.uniform(0.0, 0.12, n_structures))[g] + rng.uniform(0, 0.01, n)
    offset = np.array([_ELEMENT_OFFSET.get(x, 0.0) for x in el]) + rng.normal(0, 0.3, n)
    spectra = toy_spectra(os_, cn, r, nnrs, offset)
    spectra += rng.normal(0, noise, spectra.shape).astype(np.float32)
    return SpectraDataset(
        spectra=spectra,
        energy_rel=np.array(MODEL_GRID_REL, dtype=np.float64),
        element=el.astype(np.str_),
        edge=np.full(n, "K"),
        labels={
            "os": os_.astype(np.float32),
            "cn": cn.astype(np.float32),
            "nnrs": nnrs.astype(np.float32),
            "mean_nn_distance": r.astype(np.float32),
        },
        groups=g.astype(np.int64),
        provenance={"generator": "spt_stream.training.synthetic (toy, not physics)", "seed": seed},
    )

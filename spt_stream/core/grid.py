"""The model's energy grid.

Every frame is resampled onto one fixed grid before the network sees it (SPT.md: the input grid is
fixed at training time). The grid is defined RELATIVE TO THE TABULATED EDGE ENERGY of the
absorber (xraydb, e.g. Co K = 7709.0 eV), not relative to each frame's fitted e0: the chemical
shift of the edge (~3.75-3.9 eV per unit of oxidation state for Fe and Mn oxides) is the strongest
oxidation-state signal and would be erased by aligning every frame on its own e0. Calibration
(reference foil or fixed shift) therefore happens before resampling.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from spt_stream.core.frames import FloatArray
from spt_stream.errors import SptValueError

__all__ = [
    "GRID_POINTS",
    "GRID_START_EV",
    "GRID_STEP_EV",
    "MODEL_GRID_REL",
    "edge_energy",
    "model_grid_abs",
]

GRID_START_EV = -20.0
GRID_STEP_EV = 0.5
GRID_POINTS = 224
#: Energies relative to the tabulated edge, eV: -20.0 ... +91.5.
MODEL_GRID_REL: FloatArray = GRID_START_EV + GRID_STEP_EV * np.arange(GRID_POINTS, dtype=np.float64)
MODEL_GRID_REL.setflags(write=False)


@lru_cache(maxsize=256)
def edge_energy(element: str, edge: str = "K") -> float:
    """Tabulated absorption-edge energy in eV (xraydb), e.g. ``edge_energy("Co") == 7709.0``."""
    import xraydb

    try:
        return float(xraydb.xray_edge(element, edge).energy)
    except Exception as exc:  # xraydb raises ValueError/KeyError/AttributeError variously
        raise SptValueError(f"unknown element/edge {element!r} {edge!r}: {exc}") from exc


def model_grid_abs(
    element: str, edge: str = "K", grid_rel: FloatArray = MODEL_GRID_REL
) -> FloatArray:
    """The model grid in absolute energy (eV) for one absorber."""
    out: FloatArray = grid_rel + edge_energy(element, edge)
    return out

"""Descriptors computed from a site's geometry, with the SPT paper's definitions.

- ``os``: oxidation state of the absorber.
- ``cn``: first-shell coordination number (number of first-shell neighbours).
- ``cn2``: second-shell coordination number (number of second-shell metal neighbours).
- ``ocn``: number of oxygen atoms among the first-shell neighbours.
- ``nnrs``: population standard deviation of the absorber-neighbour bond lengths (Angstrom).
- ``mood``: minimum O-O distance among first-shell oxygens (Angstrom); NaN with fewer than 2 O.
- ``mean_nn_distance``: mean first-shell absorber-neighbour distance (Angstrom).
"""

from __future__ import annotations

import numpy as np

from spt_stream.simulate.environment import LocalEnvironment

__all__ = ["LABEL_NAMES", "describe"]

LABEL_NAMES: tuple[str, ...] = ("os", "cn", "cn2", "ocn", "nnrs", "mood", "mean_nn_distance")


def describe(env: LocalEnvironment) -> dict[str, float]:
    """All labels of one site as floats (NaN where a descriptor is undefined)."""
    d = env.first_distances
    is_o = np.array([s == "O" for s in env.first_species], dtype=bool)
    mood = float("nan")
    if int(is_o.sum()) >= 2:
        xyz = env.first_coords[is_o]
        diff = xyz[:, None, :] - xyz[None, :, :]
        dist = np.sqrt(np.sum(diff * diff, axis=-1))
        mood = float(np.min(dist[np.triu_indices(len(xyz), k=1)]))
    return {
        "os": float(env.oxidation_state),
        "cn": float(len(d)),
        "cn2": float(len(env.second_species)),
        "ocn": float(is_o.sum()),
        "nnrs": float(np.std(d)) if len(d) else float("nan"),
        "mood": mood,
        "mean_nn_distance": float(np.mean(d)) if len(d) else float("nan"),
    }

"""Descriptors computed from a site's geometry, with the SPT paper's definitions.

- ``os``: oxidation state of the absorber.
- ``cn``: first-shell coordination number (number of first-shell neighbours).
- ``cn2``: second-shell coordination number (number of second-shell metal neighbours).
- ``ocn``: number of oxygen atoms among the first-shell neighbours.
- ``nnrs``: population standard deviation of the absorber-neighbour bond lengths (Angstrom).
- ``mood``: minimum O-O distance among first-shell oxygens (Angstrom); NaN with fewer than 2 O.
- ``mean_nn_distance``: mean first-shell absorber-neighbour distance (Angstrom).

A mixed-valence sample (several sites of one element with weights, e.g. Co3+/Co4+) is labelled
with the SITE AVERAGE of every descriptor (:func:`describe_mixture`): ``os`` becomes fractional
(3 + x in Li(1-x)CoO2), and so do the discrete ``cn``/``cn2``/``ocn`` (a Td/Oh spinel pair at
w = 0.5 has cn 5.0) and the structural ones (``nnrs`` is the weighted mean of the per-site bond
spreads, not the spread of the pooled bonds). A descriptor undefined on one site (``mood``) is
undefined (NaN) for the mixture.

These are the simulator's labels; which of them the model predicts, and how, is the descriptor
schema (:mod:`spt_stream.model.descriptors`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from spt_stream.errors import SptValueError
from spt_stream.simulate.environment import LocalEnvironment

__all__ = ["LABEL_NAMES", "describe", "describe_mixture"]

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


def describe_mixture(
    envs: Sequence[LocalEnvironment], weights: Sequence[float]
) -> dict[str, float]:
    """Labels of a multi-site sample: the ``weights``-averaged (normalized) site labels.

    One site with weight 1 gives exactly :func:`describe`; NaN on any site gives NaN.
    """
    w = np.asarray(weights, dtype=np.float64)
    if len(envs) == 0 or len(w) != len(envs) or np.any(w < 0) or w.sum() <= 0:
        raise SptValueError(f"need one non-negative weight per site, got {list(weights)}")
    w = w / w.sum()
    per = [describe(env) for env in envs]
    return {k: float(sum(wi * d[k] for wi, d in zip(w, per, strict=True))) for k in LABEL_NAMES}

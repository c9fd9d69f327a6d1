"""Class targets of discrete descriptors from float labels, including fractional (mixture) ones.

Datasets store a discrete descriptor as its class value (``os`` 3.0). A mixed-valence sample
(e.g. Li(0.6)CoO2, ``os`` 3.4) has a label BETWEEN two adjacent class values; it becomes a
two-hot target distribution weighted by distance::

    y in [c_k, c_k+1]:  p(c_k) = (c_k+1 - y) / (c_k+1 - c_k),  p(c_k+1) = 1 - p(c_k)

so 3.4 -> 0.6 on class 3 and 0.4 on class 4, and the target's class expectation equals the label.
A label within ``tol`` of a class value is one-hot (integer labels behave exactly as before).
Where a single class is needed (macro-F1, accuracy, confusion matrix, ECE against rounded labels,
tree baselines) the label is rounded to the NEAREST class value, ties going to the lower class
(3.5 -> 3). Pure numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from spt_stream.errors import SptValueError

__all__ = ["nearest_class_index", "soft_class_targets"]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


def nearest_class_index(labels: npt.NDArray[np.floating], classes: Sequence[float]) -> I64:
    """Index of the nearest class value per label (ties to the lower class); -1 where NaN."""
    lab = np.asarray(labels, dtype=np.float64)
    cv = np.asarray(classes, dtype=np.float64)
    idx = np.full(lab.shape[0], -1, np.int64)
    ok = np.isfinite(lab)
    idx[ok] = np.abs(lab[ok, None] - cv[None, :]).argmin(axis=1)
    return idx


def soft_class_targets(
    labels: npt.NDArray[np.floating],
    classes: Sequence[float],
    *,
    name: str = "descriptor",
    tol: float = 1e-4,
) -> F32:
    """(N, C) float32 target distributions (module doc); all-zero rows where the label is NaN.

    Raises :class:`SptValueError` naming the descriptor when a label lies outside the class range.
    """
    lab = np.asarray(labels, dtype=np.float64)
    cv = np.asarray(classes, dtype=np.float64)
    out = np.zeros((lab.shape[0], len(cv)), np.float32)
    ok = np.flatnonzero(np.isfinite(lab))
    y = lab[ok]
    outside = (y < cv[0] - tol) | (y > cv[-1] + tol)
    if outside.any():
        vals = sorted(set(np.round(y[outside], 4).tolist()))
        raise SptValueError(
            f"descriptor {name!r}: label values {vals[:10]} lie outside its classes "
            f"{cv.tolist()} (spt_stream/configs/descriptors.yaml)"
        )
    y = np.clip(y, cv[0], cv[-1])
    hi = np.clip(np.searchsorted(cv, y, side="left"), 1, len(cv) - 1)  # c[hi-1] <= y <= c[hi]
    lo = hi - 1
    w_hi = (y - cv[lo]) / (cv[hi] - cv[lo])
    w_hi = np.where(np.abs(y - cv[lo]) <= tol, 0.0, np.where(np.abs(y - cv[hi]) <= tol, 1.0, w_hi))
    out[ok, lo] = (1.0 - w_hi).astype(np.float32)
    out[ok, hi] += w_hi.astype(np.float32)
    return out

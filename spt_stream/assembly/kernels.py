"""Pure numeric pieces of frame assembly (numpy only: no Kafka, Zarr, Tiled, event-model).

Conventions: energies in eV, strictly increasing; arrays returned here are float64, 1-D and
read-only, and never alias a buffer that someone else could still change (an input array is kept
without a copy only when it is read-only all the way down to an immutable ``bytes`` buffer, which
is what msgpack-numpy decoding produces). Problems raise :class:`FrameError` whose ``reason``
(a :class:`~spt_stream.errors.Reason`) is a short machine-readable code (``too_large``,
``not_numeric``, ``bad_shape``, ``empty``, ``too_short``, ``nonfinite``,
``non_monotonic_energy``, ``length_mismatch``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from spt_stream.core.frames import FloatArray
from spt_stream.errors import FrameError, Reason

__all__ = [
    "as_vector",
    "check_energy",
    "check_finite",
    "check_length",
    "frozen",
    "mu_fluorescence",
    "mu_transmission",
    "sweep_arrays",
]

_F64 = np.dtype(np.float64)


def _fail(reason: Reason, message: str) -> FrameError:
    return FrameError(message, reason=reason)


def _immutable(arr: np.ndarray[Any, Any]) -> bool:
    """True when ``arr`` is read-only down to an immutable ``bytes`` buffer."""
    base: Any = arr
    while isinstance(base, np.ndarray):
        if base.flags.writeable:
            return False
        base = base.base
    return isinstance(base, bytes)


def frozen(arr: np.ndarray[Any, Any]) -> FloatArray:
    """Mark a float64 array we own read-only and return it."""
    arr.flags.writeable = False
    return arr


def as_vector(value: Any, what: str, max_points: int) -> FloatArray:
    """``value`` (ndarray or list) as a safe 1-D float64 array of at most ``max_points`` points."""
    if type(value) is np.ndarray or isinstance(value, np.ndarray):
        arr = value
    elif isinstance(value, list | tuple):
        if len(value) > max_points:
            raise _fail(
                Reason.TOO_LARGE, f"{what} has {len(value)} points (max_points={max_points})"
            )
        try:
            arr = np.array(value)
        except (TypeError, ValueError) as exc:
            raise _fail(Reason.NOT_NUMERIC, f"{what} is not a numeric array ({exc})") from None
        if arr.dtype.kind not in "fiu":
            raise _fail(Reason.NOT_NUMERIC, f"{what} is not a numeric array (dtype {arr.dtype})")
        if arr.ndim != 1:
            raise _fail(Reason.BAD_SHAPE, f"{what} has shape {list(arr.shape)}, expected 1-D")
        return frozen(arr.astype(_F64, copy=False) if arr.dtype != _F64 else arr)
    else:
        raise _fail(Reason.NOT_ARRAY, f"{what} is a {type(value).__name__}, expected a 1-D array")
    if arr.ndim != 1:
        raise _fail(Reason.BAD_SHAPE, f"{what} has shape {list(arr.shape)}, expected 1-D")
    if arr.shape[0] > max_points:
        raise _fail(Reason.TOO_LARGE, f"{what} has {arr.shape[0]} points (max_points={max_points})")
    if arr.dtype != _F64:
        if arr.dtype.kind not in "fiu":
            raise _fail(Reason.NOT_NUMERIC, f"{what} is not a numeric array (dtype {arr.dtype})")
        return frozen(arr.astype(_F64))
    if arr.flags.writeable or not _immutable(arr):
        return frozen(arr.copy())
    return arr


def check_finite(arr: FloatArray, what: str, min_points: int) -> None:
    """Require at least ``min_points`` points, all finite."""
    n = arr.shape[0]
    if n < min_points:
        reason = Reason.EMPTY if n == 0 else Reason.TOO_SHORT
        raise _fail(reason, f"{what} has {n} points (min_points={min_points})")
    # A finite sum proves every value finite (NaN/inf propagate quietly); only a non-finite sum
    # (or one that overflowed) pays for the exact element-wise check.
    if not math.isfinite(arr.sum()) and not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr))
        raise _fail(
            Reason.NONFINITE,
            f"{what} has {bad.size} NaN/inf values (first at index {int(bad[0])})",
        )


def check_energy(energy: FloatArray, what: str, min_points: int) -> None:
    """Require a finite, strictly increasing energy grid of at least ``min_points`` points."""
    check_finite(energy, what, min_points)
    steps = np.diff(energy)
    if not (steps > 0).all():
        i = int(np.flatnonzero(steps <= 0)[0])
        raise _fail(
            Reason.NON_MONOTONIC_ENERGY,
            f"{what} is not strictly increasing: "
            f"E[{i}]={energy[i]!r} >= E[{i + 1}]={energy[i + 1]!r}",
        )


def check_length(arr: FloatArray, n: int, what: str) -> None:
    """Require ``len(arr) == n`` (the energy grid's length)."""
    if arr.shape[0] != n:
        raise _fail(
            Reason.EMPTY if arr.shape[0] == 0 else Reason.LENGTH_MISMATCH,
            f"{what} has {arr.shape[0]} points but the energy grid has {n}",
        )


def mu_transmission(i0: FloatArray, it: FloatArray, what: str = "mu") -> FloatArray:
    """Transmission absorption ``ln(I0/It)`` (also ``ln(It/Iref)`` for a reference foil)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        mu = np.log(i0 / it)
    _require_finite_result(mu, what, "I0/It must be positive")
    return frozen(mu)


def mu_fluorescence(i0: FloatArray, fluor: FloatArray, what: str = "mu") -> FloatArray:
    """Fluorescence absorption ``If/I0``."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        mu = fluor / i0
    _require_finite_result(mu, what, "I0 must be non-zero")
    return frozen(mu)


def _require_finite_result(mu: FloatArray, what: str, hint: str) -> None:
    if not np.isfinite(mu).all():
        bad = np.flatnonzero(~np.isfinite(mu))
        raise _fail(
            Reason.NONFINITE,
            f"{what} is NaN/inf at {bad.size} points (first at index {int(bad[0])}; {hint})",
        )


def sweep_arrays(
    energy: Sequence[float], channels: Mapping[str, Sequence[float]]
) -> tuple[FloatArray, dict[str, FloatArray]]:
    """Arrays of one step-scan sweep, sorted by increasing energy (a down-sweep is reversed)."""
    e = np.asarray(energy, dtype=_F64)
    out = {k: np.asarray(v, dtype=_F64) for k, v in channels.items()}
    if e.shape[0] > 1 and e[-1] < e[0]:
        e = e[::-1].copy()
        out = {k: v[::-1].copy() for k, v in out.items()}
    return e, out

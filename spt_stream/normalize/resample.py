"""Energy calibration and resampling onto the model's energy grid (pure numpy).

Calibration: a reference channel (typically a metal foil measured with every frame) has its e0
found the Larch way (maximum of the smoothed derivative, which is how tabulated K-edge energies
of metal foils are defined: the first inflection point); the shift that moves it onto the
tabulated edge energy (xraydb, :func:`spt_stream.core.grid.edge_energy`) is then added to the
frame's
energy axis. A fixed shift from configuration is simply added to every energy.

Resampling: the model grid is RELATIVE TO THE TABULATED EDGE of the frame's element (see
:mod:`spt_stream.core.grid`: aligning each frame on its own e0 would erase the chemical shift, the
strongest oxidation-state signal). Values are linearly interpolated from the (calibrated) energy
axis. Grid points outside the measured range take the nearest measured value ("edge value"
padding: 0-ish before the edge, ~1 after it for normalized spectra, which is what the model saw
in training far from the edge) and the frame is flagged ``GRID_NOT_COVERING``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from spt_stream.core.grid import MODEL_GRID_REL, edge_energy
from spt_stream.normalize.e0 import find_e0
from spt_stream.normalize.flags import MAX_CALIBRATION_SHIFT_EV, QualityFlag
from spt_stream.normalize.params import E0Mode

FloatArray = npt.NDArray[np.float64]
FlagArray = npt.NDArray[np.uint32]

__all__ = ["calibration_shift", "resample_to_model_grid"]


def calibration_shift(
    energy: FloatArray,
    reference_mu: FloatArray,
    element: str,
    edge: str = "K",
    *,
    mode: E0Mode = "larch",
) -> FloatArray:
    """Shift (eV, (b,)) to ADD to the energy axis so each reference's e0 is the tabulated edge.

    ``reference_mu`` (b, n) on the shared grid ``energy`` (n,). A shift larger than
    :data:`~spt_stream.normalize.flags.MAX_CALIBRATION_SHIFT_EV`, or from a reference with
    non-finite values, is NaN (callers flag ``CALIBRATION_FAILED`` and do not shift).
    """
    energy = np.asarray(energy, dtype=np.float64)
    ref = np.atleast_2d(np.asarray(reference_mu, dtype=np.float64))
    target = edge_energy(element, edge)
    shift = np.full(ref.shape[0], np.nan)
    ok = np.all(np.isfinite(ref), axis=1)
    if ok.any():
        shift[ok] = target - find_e0(energy, ref[ok], mode)
    shift[np.abs(shift) > MAX_CALIBRATION_SHIFT_EV] = np.nan
    return shift


def resample_to_model_grid(
    energy: FloatArray,
    values: FloatArray,
    element: str,
    edge: str = "K",
    grid_rel: FloatArray = MODEL_GRID_REL,
    *,
    shift: FloatArray | float = 0.0,
) -> tuple[FloatArray, FlagArray]:
    """Values (b, n) on ``energy`` (n,) -> (values (b, G) on edge_energy + grid_rel, flags (b,)).

    ``shift`` (scalar or (b,)) is a calibration shift already decided for each row: row ``i``'s
    true energies are ``energy + shift[i]``. Linear interpolation; outside the measured range
    the nearest measured value is used and ``GRID_NOT_COVERING`` is set.
    """
    energy = np.asarray(energy, dtype=np.float64)
    vals = np.atleast_2d(np.asarray(values, dtype=np.float64))
    b, n = vals.shape
    shifts = np.broadcast_to(np.asarray(shift, dtype=np.float64), (b,))
    target = edge_energy(element, edge) + np.asarray(grid_rel, dtype=np.float64)
    pos = target[None, :] - shifts[:, None]  # (b, G) positions on the measured axis
    lo = np.clip(np.searchsorted(energy, pos, side="right") - 1, 0, n - 2)
    e_lo, e_hi = energy[lo], energy[lo + 1]
    w = np.clip((pos - e_lo) / (e_hi - e_lo), 0.0, 1.0)
    v_lo = np.take_along_axis(vals, lo, axis=1)
    v_hi = np.take_along_axis(vals, lo + 1, axis=1)
    out: FloatArray = v_lo * (1.0 - w) + v_hi * w
    outside = (pos < energy[0]) | (pos > energy[-1])
    flags = np.where(
        outside.any(axis=1), np.uint32(QualityFlag.GRID_NOT_COVERING), np.uint32(0)
    ).astype(np.uint32)
    return out, flags

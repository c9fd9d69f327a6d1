"""Per-frame quality flags, carried with each frame into the traces.

Flags are bits of a ``uint32`` so a trace store keeps one integer per frame; they never stop the
engine: a flagged frame is still normalized (when possible) and written, and consumers decide.

Thresholds (all in :class:`spt_stream.normalize.NormParams` or the constants below):

``NAN``
    The input ``mu`` held NaN/inf. Up to :data:`MAX_NONFINITE_FRACTION` of the points are filled
    by linear interpolation from their finite neighbours; with more, the frame's outputs are NaN.
``SMALL_EDGE_STEP``
    ``edge_step < NormParams.min_edge_step`` (absolute, in mu units) or
    ``edge_step < NormParams.min_step_to_noise * noise``, where ``noise`` is the robust
    (median-absolute-deviation) standard deviation of a point about the median of itself and its
    two neighbours.
``GLITCH``
    Some point departs from the median of itself and its two neighbours by more than
    ``NormParams.glitch_step_fraction * edge_step`` AND by more than
    ``NormParams.glitch_noise_sigma * noise``: an isolated spike (monochromator glitch, detector
    hiccup) rather than a real, smooth XANES feature.
``SATURATED``
    At least :data:`SATURATION_MIN_POINTS` points sit exactly at the maximum (or the minimum) of
    ``mu``: a clipped detector or amplifier, or a full-scale ADC.
``E0_OUT_OF_RANGE``
    e0 lies within two points of either end of the grid, or the pre-edge or post-edge fit range
    holds fewer than 2 points, or a given e0 lay outside the grid (it was then searched for).
``NEGATIVE_EDGE_STEP``
    The post-edge curve lies below the pre-edge line at e0 (inverted or mislabelled channels);
    like Larch, the absolute value is used as the step.
``GRID_NOT_COVERING``
    The model's energy grid reaches outside the measured range; missing points were padded with
    the nearest measured value (see :func:`spt_stream.normalize.resample_to_model_grid`).
``NO_ELEMENT``
    The frame does not say which element/edge it is (or xraydb does not know it): it cannot be
    placed on the model grid, and its model-grid row is NaN.
``UNUSABLE``
    The frame could not be normalized at all (e.g. fewer grid points than
    :data:`spt_stream.normalize.kernels.MIN_POINTS`); all its outputs are NaN.
``EDGE_MISMATCH``
    After calibration, e0 is more than :data:`EDGE_MISMATCH_EV` from the tabulated edge of the
    frame's element: wrong element, wrong edge, or an uncalibrated energy axis.
``CALIBRATION_FAILED``
    Calibration from a reference channel was asked for but the frame has no reference, or the
    reference's e0 is more than :data:`MAX_CALIBRATION_SHIFT_EV` from the tabulated edge (the
    shift is then not applied).
``UNSORTED_ENERGY``
    A file's energy column was not strictly increasing: it was sorted and points closer than
    :data:`spt_stream.readers.DUPLICATE_ENERGY_EV` were merged.
``ELEMENT_INFERRED``
    The element/edge did not come from the file or run metadata but from the energy range
    (nearest tabulated edge).
"""

from __future__ import annotations

import enum

import numpy as np
import numpy.typing as npt

__all__ = [
    "EDGE_MISMATCH_EV",
    "MAX_CALIBRATION_SHIFT_EV",
    "MAX_NONFINITE_FRACTION",
    "SATURATION_MIN_POINTS",
    "QualityFlag",
    "describe_flags",
]

#: Largest fraction of non-finite points that is still repaired by interpolation.
MAX_NONFINITE_FRACTION = 0.1
#: Points exactly at the extreme value of mu needed to call a frame saturated.
SATURATION_MIN_POINTS = 3
#: |e0 - tabulated edge| beyond which a frame is flagged EDGE_MISMATCH (eV). Chemical shifts of
#: K edges reach ~15-20 eV for high oxidation states, so this stays above them.
EDGE_MISMATCH_EV = 30.0
#: A reference-channel calibration shift larger than this is refused (eV).
MAX_CALIBRATION_SHIFT_EV = 50.0


class QualityFlag(enum.IntFlag):
    """Bits of the per-frame ``flags`` (``uint32``). See the module docstring for thresholds."""

    NONE = 0
    NAN = 1 << 0
    SMALL_EDGE_STEP = 1 << 1
    GLITCH = 1 << 2
    SATURATED = 1 << 3
    E0_OUT_OF_RANGE = 1 << 4
    NEGATIVE_EDGE_STEP = 1 << 5
    GRID_NOT_COVERING = 1 << 6
    NO_ELEMENT = 1 << 7
    EDGE_MISMATCH = 1 << 8
    CALIBRATION_FAILED = 1 << 9
    UNSORTED_ENERGY = 1 << 10
    ELEMENT_INFERRED = 1 << 11
    UNUSABLE = 1 << 12


def describe_flags(flags: int | np.integer[npt.NBitBase]) -> list[str]:
    """Names of the bits set in ``flags``, lowest bit first (``[]`` for a clean frame)."""
    value = int(flags)
    return [f.name for f in QualityFlag if f.value and value & f.value and f.name is not None]

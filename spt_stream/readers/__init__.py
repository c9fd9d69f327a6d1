"""Spectrum file readers (XDI, SPEC-like ``#L`` scans, column ASCII); see :mod:`.text`."""

from spt_stream.readers.spectrum import Spectrum
from spt_stream.readers.text import (
    DUPLICATE_ENERGY_EV,
    KEV_THRESHOLD,
    infer_edge,
    read_spectra,
    read_spectrum,
)

__all__ = [
    "DUPLICATE_ENERGY_EV",
    "KEV_THRESHOLD",
    "Spectrum",
    "infer_edge",
    "read_spectra",
    "read_spectrum",
]

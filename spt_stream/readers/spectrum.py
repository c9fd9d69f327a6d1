"""The :class:`Spectrum` a reader returns: one measured mu(E) with what the file said about it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from spt_stream.core.frames import FloatArray, Mode

__all__ = ["Spectrum"]


@dataclass(frozen=True, eq=False)
class Spectrum:
    """One spectrum read from a file.

    Attributes
    ----------
    source:
        The file path, as given.
    energy, mu:
        float64, eV, strictly increasing (sorted and de-duplicated by the reader when the file
        was not; ``flags`` then carries ``UNSORTED_ENERGY``). ``mu`` may hold NaN where a
        channel was <= 0 (normalization repairs or flags it).
    element, edge:
        Absorber and edge (``"Fe"``, ``"K"``), from the file, or inferred from the energy range
        (``element_inferred`` True and ``ELEMENT_INFERRED`` in ``flags``), or None.
    mode:
        ``"transmission"`` (mu = ln(i0/it)), ``"fluorescence"`` (mu = if/i0) or ``"mu"`` (a mu
        column, or the second column of a plain two-column file).
    reference:
        mu of a reference channel (ln(it/iref)) on the same grid, when the file has one.
    channels:
        The raw detector channels found (``i0``, ``it``, ``if``, ``iref``), same grid.
    metadata:
        Header fields (XDI ``Family.member`` keys, SPEC ``#`` records, ``key: value`` and
        ``key = value`` lines); numeric values as float. ``mu_source`` says how mu was made.
    timestamp:
        Scan start as UNIX seconds (naive header times are taken as UTC), or None.
    flags:
        :class:`spt_stream.normalize.QualityFlag` bits set while reading.
    """

    source: str
    energy: FloatArray
    mu: FloatArray
    element: str | None = None
    edge: str | None = None
    mode: Mode = "mu"
    reference: FloatArray | None = None
    channels: Mapping[str, FloatArray] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    timestamp: float | None = None
    flags: int = 0
    element_inferred: bool = False

    @property
    def npts(self) -> int:
        return int(self.energy.shape[0])

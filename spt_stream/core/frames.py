"""The unit of work between ingest and normalization: one assembled XANES frame.

A frame is one spectrum of one run: mu(E) on the energy grid it was measured on, with where it
came from. Quick-XAS / dispersive detectors give one frame per event; step scans give one frame per
energy sweep (``seq_num`` is then the sweep number, and ``provenance["event_seq_nums"]`` the
events that built it). ``(run_uid, seq_num)`` identifies a frame: sinks are idempotent on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = ["FloatArray", "Frame", "Mode", "RunInfo"]

FloatArray = npt.NDArray[np.float64]
Mode = Literal["transmission", "fluorescence", "mu"]


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What the engine knows about a run once its start (and first descriptor) arrived."""

    run_uid: str
    element: str | None
    edge: str | None
    mode: Mode
    #: The data keys used: ``spectrum``/``energy`` for array detectors, or ``i0``/``it``/``if``/
    #: ``iref``/``energy`` for step scans.
    keys: Mapping[str, str]
    #: ``"array"`` (one frame per event) or ``"step"`` (one frame per sweep).
    layout: Literal["array", "step"]
    #: Where the mapping came from: ``"md"`` (start document), ``"profile:<name>"`` or
    #: ``"heuristic"``.
    resolved_by: str
    start_time: float
    #: The start document's metadata worth carrying to traces (plan name, scan id, sample...).
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, eq=False)
class Frame:
    """One XANES spectrum ready for normalization.

    Attributes
    ----------
    run_uid, seq_num:
        Identity of the frame (see module docstring).
    time:
        Event time (UNIX seconds, float); for step scans, the time of the sweep's last event.
    energy, mu:
        float64 arrays of equal length, energy strictly increasing, all finite (checked at
        assembly). ``mu`` is absorption: ln(I0/It), If/I0 or the detector's own mu.
    element, edge:
        Absorbing element symbol (``"Co"``) and edge (``"K"``), when known.
    mode:
        How ``mu`` was obtained.
    reference:
        mu of a reference channel (e.g. a foil after the sample) on the same grid, for energy
        calibration; None when the run has none.
    scalars:
        The event's scalar readings (potential, current, temperature, ...), by data key.
    provenance:
        Stream name, descriptor uid, event uid(s), transport position, source file.
    """

    run_uid: str
    seq_num: int
    time: float
    energy: FloatArray
    mu: FloatArray
    element: str | None = None
    edge: str | None = None
    mode: Mode = "mu"
    reference: FloatArray | None = None
    scalars: Mapping[str, float] = field(default_factory=dict)
    provenance: Mapping[str, Any] = field(default_factory=dict)

    @property
    def npts(self) -> int:
        return int(self.energy.shape[0])

    def same_data(self, other: Frame) -> bool:
        """True when both frames hold identical identity and arrays (bit for bit)."""
        return (
            self.run_uid == other.run_uid
            and self.seq_num == other.seq_num
            and self.time == other.time
            and np.array_equal(self.energy, other.energy)
            and np.array_equal(self.mu, other.mu)
            and (
                (self.reference is None and other.reference is None)
                or (
                    self.reference is not None
                    and other.reference is not None
                    and np.array_equal(self.reference, other.reference)
                )
            )
            and dict(self.scalars) == dict(other.scalars)
        )

"""Normalization parameters and results.

Parameter names and meanings follow Larch's ``pre_edge`` (Athena's conventions): all range
energies are in eV RELATIVE TO e0; ``None`` means "Larch's default for this spectrum".

- ``pre1``, ``pre2``: pre-edge fit range. Default ``pre1`` is the second energy point relative to
  e0, rounded to a multiple of 5 eV (2 eV when e0 is within the first 20 points) and never below
  the first point; default ``pre2 = pre1 / 2``.
- ``npre``: 1 fits a line over the pre-edge range, 0 takes the mean of mu there (Larch also
  falls back to 0 when the range holds fewer than 3 points).
- ``nvict``: the pre-edge line is fitted to ``mu * E**nvict`` (Victoreen-like), 0-4.
- ``norm1``, ``norm2``: post-edge fit range. Default ``norm2`` is the last energy relative to e0
  rounded to 5 eV (and never beyond the data); default ``norm1 = min(25, 5*round(norm2/15))``.
- ``nnorm``: degree of the post-edge polynomial, 0-2. Default 2 when ``norm2 - norm1 >= 300``
  eV, 1 when it is ``>= 30`` eV, else 0.
- ``e0``: edge energy (absolute, eV). ``None`` (or a value outside the grid) means "find it" with
  ``e0_mode``: ``"larch"`` (maximum of the smoothed derivative, Larch's ``find_e0``) or
  ``"robust"`` (the derivative maximum on the final rise into the edge, not fooled by strong
  pre-edge peaks; see :func:`spt_stream.normalize.find_e0`).
- ``make_flat``: also compute the flattened spectrum (post-edge curvature removed above e0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

from spt_stream.errors import ConfigError

if TYPE_CHECKING:
    from spt_stream.config import NormalizationSettings

__all__ = ["E0Mode", "NormParams", "NormResult"]

E0Mode = Literal["larch", "robust"]
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
FlagArray = npt.NDArray[np.uint32]


@dataclass(frozen=True)
class NormParams:
    """What to normalize with; validated once at construction (see module docstring)."""

    e0: float | None = None
    pre1: float | None = None
    pre2: float | None = None
    norm1: float | None = None
    norm2: float | None = None
    nnorm: int | None = None
    nvict: int = 0
    e0_mode: E0Mode = "robust"
    make_flat: bool = True
    #: Pre-edge model: 1 = line (Larch's default), 0 = constant (mean of mu over the range).
    npre: int = 1
    #: SMALL_EDGE_STEP below this absolute edge step (mu units).
    min_edge_step: float = 1e-4
    #: SMALL_EDGE_STEP below this many noise standard deviations.
    min_step_to_noise: float = 10.0
    #: GLITCH: a spike must exceed this fraction of the edge step ...
    glitch_step_fraction: float = 0.05
    #: ... and this many noise standard deviations.
    glitch_noise_sigma: float = 20.0

    def __post_init__(self) -> None:
        if self.nnorm is not None and self.nnorm not in (0, 1, 2):
            raise ConfigError(f"nnorm must be 0, 1, 2 or None, not {self.nnorm!r}")
        if self.npre not in (0, 1):
            raise ConfigError(f"npre must be 0 or 1, not {self.npre!r}")
        if self.nvict not in (0, 1, 2, 3, 4):
            raise ConfigError(f"nvict must be 0-4, not {self.nvict!r}")
        if self.e0_mode not in ("larch", "robust"):
            raise ConfigError(f"e0_mode must be 'larch' or 'robust', not {self.e0_mode!r}")
        for name in ("e0", "pre1", "pre2", "norm1", "norm2"):
            value = getattr(self, name)
            if value is not None and not np.isfinite(value):
                raise ConfigError(f"{name} must be finite, not {value!r}")
        self._check_ranges()
        if self.min_edge_step < 0 or self.min_step_to_noise < 0:
            raise ConfigError("min_edge_step and min_step_to_noise must be >= 0")
        if self.glitch_step_fraction <= 0 or self.glitch_noise_sigma <= 0:
            raise ConfigError("glitch thresholds must be > 0")

    def _check_ranges(self) -> None:
        """The given ranges are consistent: the pre-edge below e0 and before the post-edge, each
        range start below its end (``norm2 < 0`` is Larch's "this far below the data's end")."""
        pre1, pre2, norm1, norm2 = self.pre1, self.pre2, self.norm1, self.norm2
        if pre1 is not None and pre1 >= 0:
            raise ConfigError(f"pre1 = {pre1:g} eV: the pre-edge range must start below e0 (< 0)")
        if pre2 is not None and pre2 > 0:
            raise ConfigError(f"pre2 = {pre2:g} eV: the pre-edge range must end at or below e0")
        if pre1 is not None and pre2 is not None and pre1 >= pre2:
            raise ConfigError(f"pre1 = {pre1:g} eV must be below pre2 = {pre2:g} eV")
        if norm1 is not None and norm1 <= 0:
            raise ConfigError(f"norm1 = {norm1:g} eV: the post-edge range must start above e0")
        if norm1 is not None and norm2 is not None and norm2 > 0 and norm1 >= norm2:
            raise ConfigError(f"norm1 = {norm1:g} eV must be below norm2 = {norm2:g} eV")
        if pre2 is not None and norm1 is not None and pre2 >= norm1:
            raise ConfigError(f"pre2 = {pre2:g} eV must be below norm1 = {norm1:g} eV")

    @classmethod
    def from_settings(cls, settings: NormalizationSettings) -> NormParams:
        """Build from the engine's validated :class:`~spt_stream.config.NormalizationSettings`."""
        return cls(
            e0=settings.e0,
            pre1=settings.pre1,
            pre2=settings.pre2,
            norm1=settings.norm1,
            norm2=settings.norm2,
            nnorm=settings.nnorm,
            nvict=settings.nvict,
            e0_mode=settings.e0_mode,
            min_edge_step=settings.min_edge_step,
        )


@dataclass(frozen=True, eq=False)
class NormResult:
    """Batch normalization output; ``b`` spectra on one ``n``-point energy grid.

    ``e0`` and the ranges are in eV (``pre1``... relative to each row's e0, as Larch reports
    them); ``norm = (mu - pre_edge) / edge_step``; ``flat`` equals ``norm`` below e0 and has the
    post-edge curvature removed above it (``flat`` is ``norm`` when ``make_flat`` is False).
    """

    energy: FloatArray  # (n,)
    e0: FloatArray  # (b,)
    edge_step: FloatArray  # (b,)
    norm: FloatArray  # (b, n)
    flat: FloatArray  # (b, n)
    pre_edge: FloatArray  # (b, n)
    post_edge: FloatArray  # (b, n)
    flags: FlagArray  # (b,)
    #: The parameters actually used, per row (Larch's ``pre_edge_details``).
    pre1: FloatArray  # (b,)
    pre2: FloatArray  # (b,)
    norm1: FloatArray  # (b,)
    norm2: FloatArray  # (b,)
    nnorm: IntArray  # (b,)
    nvict: IntArray  # (b,)
    params: NormParams

    def __len__(self) -> int:
        return int(self.e0.shape[0])

"""The engine path: frames in, model-grid rows out (:func:`normalize_frames`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from spt_stream.core.frames import Frame
from spt_stream.core.grid import MODEL_GRID_REL, edge_energy
from spt_stream.errors import NormalizationError, SptValueError
from spt_stream.normalize.flags import EDGE_MISMATCH_EV, QualityFlag
from spt_stream.normalize.kernels import normalize_batch
from spt_stream.normalize.params import NormParams
from spt_stream.normalize.resample import calibration_shift, resample_to_model_grid

FloatArray = npt.NDArray[np.float64]

__all__ = ["NormalizedBatch", "normalize_frames"]


@dataclass(frozen=True, eq=False)
class NormalizedBatch:
    """Normalized frames, in input order.

    ``e0`` (b,) is on the calibrated energy axis (eV); ``energy_shift`` (b,) the total shift
    added to each frame's energies (fixed + reference calibration); ``norm`` (b, G) float32 is
    the normalized spectrum on the model grid ``grid_rel`` (eV relative to the tabulated edge) —
    the FLATTENED spectrum when ``params.make_flat`` (the default) else ``norm``; NaN rows for
    frames flagged ``NO_ELEMENT``/``UNUSABLE``. ``flags`` (b,) uint32 :class:`QualityFlag` bits.
    """

    e0: FloatArray
    edge_step: FloatArray
    norm: npt.NDArray[np.float32]
    flags: npt.NDArray[np.uint32]
    energy_shift: FloatArray
    grid_rel: FloatArray

    def __len__(self) -> int:
        return int(self.e0.shape[0])


def _group_by_grid(frames: Sequence[Frame]) -> list[list[int]]:
    groups: dict[bytes, list[int]] = {}
    for i, frame in enumerate(frames):
        key = np.ascontiguousarray(frame.energy, dtype=np.float64).tobytes()
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _known_edge(element: str | None, edge: str | None) -> float | None:
    if element is None:
        return None
    try:
        return edge_energy(element, edge or "K")
    except SptValueError:
        return None


def normalize_frames(
    frames: Sequence[Frame],
    params: NormParams,
    *,
    grid_rel: FloatArray = MODEL_GRID_REL,
    calibrate_from_reference: bool = False,
    energy_shift: float = 0.0,
) -> NormalizedBatch:
    """Normalize frames, calibrate their energy, and resample them onto the model grid.

    Frames sharing an identical energy grid (a quick-XAS stream) go through one
    :func:`normalize_batch` call. The fixed ``energy_shift`` (eV) is added to every energy
    first; with ``calibrate_from_reference`` each frame's reference channel adds the shift that
    puts its e0 on the tabulated edge (frames without a usable reference are flagged
    ``CALIBRATION_FAILED`` and keep the fixed shift only). Normalization runs on the measured
    grid (it is translation-invariant); the shift moves e0 and the resampling positions.
    A frame without a known element cannot be placed on the model grid: its row is NaN and
    flagged ``NO_ELEMENT`` (its e0 and edge step are still reported). Never raises for bad
    frame content: problems become flags.
    """
    grid_rel = np.asarray(grid_rel, dtype=np.float64)
    b, g = len(frames), grid_rel.shape[0]
    e0 = np.full(b, np.nan)
    step = np.full(b, np.nan)
    shift = np.full(b, float(energy_shift))
    flags = np.zeros(b, dtype=np.uint32)
    out = np.full((b, g), np.nan, dtype=np.float32)

    for rows in _group_by_grid(frames):
        idx = np.asarray(rows)
        energy = np.asarray(frames[rows[0]].energy, dtype=np.float64) + float(energy_shift)
        mu = np.stack([np.asarray(frames[i].mu, dtype=np.float64) for i in rows])
        try:
            res = normalize_batch(energy, mu, params)
        except NormalizationError:
            flags[idx] |= np.uint32(QualityFlag.UNUSABLE)
            continue
        e0[idx], step[idx] = res.e0, res.edge_step
        flags[idx] |= res.flags
        values = res.flat if params.make_flat else res.norm

        if calibrate_from_reference:
            for j, i in enumerate(rows):
                frame = frames[i]
                tab = _known_edge(frame.element, frame.edge)
                ok = frame.reference is not None and tab is not None
                s = (
                    calibration_shift(
                        energy,
                        np.asarray(frame.reference)[None, :],
                        str(frame.element),
                        frame.edge or "K",
                    )[0]
                    if ok
                    else np.nan
                )
                if np.isfinite(s):
                    shift[i] += s
                else:
                    flags[i] |= np.uint32(QualityFlag.CALIBRATION_FAILED)
                del j

        by_edge: dict[tuple[str, str], list[int]] = {}
        for j, i in enumerate(rows):
            frame = frames[i]
            if _known_edge(frame.element, frame.edge) is None:
                flags[i] |= np.uint32(QualityFlag.NO_ELEMENT)
                continue
            by_edge.setdefault((str(frame.element), frame.edge or "K"), []).append(j)
        for (element, edge), local in by_edge.items():
            sel = idx[local]
            extra = shift[sel] - float(energy_shift)
            resampled, rflags = resample_to_model_grid(
                energy, values[local], element, edge, grid_rel, shift=extra
            )
            out[sel] = resampled.astype(np.float32)
            flags[sel] |= rflags
            e0_cal = e0[sel] + extra
            e0[sel] = e0_cal
            far = np.abs(e0_cal - edge_energy(element, edge)) > EDGE_MISMATCH_EV
            flags[sel] |= np.where(far, np.uint32(QualityFlag.EDGE_MISMATCH), np.uint32(0))
        dead = np.isnan(res.edge_step)
        out[idx[dead]] = np.nan

    return NormalizedBatch(
        e0=e0, edge_step=step, norm=out, flags=flags, energy_shift=shift, grid_rel=grid_rel
    )

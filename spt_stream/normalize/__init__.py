"""Batched XANES normalization (pure numpy; no Kafka, Zarr or Tiled imports here).

- :func:`normalize_batch` / :func:`find_e0`: Larch-compatible pre-edge/post-edge normalization
  of spectra sharing one grid (:mod:`.kernels`, :mod:`.e0`, :mod:`._core`);
- :func:`calibration_shift`, :func:`resample_to_model_grid`: energy calibration and the model
  grid (:mod:`.resample`);
- :func:`normalize_frames`: the engine path from :class:`~spt_stream.core.frames.Frame` objects to
  model-grid rows (:mod:`.frames_to_grid`);
- :class:`QualityFlag`: per-frame quality bits (:mod:`.flags`);
- ``spt_stream.normalize.torch_kernels.normalize_batch_torch``: the same numbers in torch.
"""

from spt_stream.normalize.e0 import find_e0
from spt_stream.normalize.flags import QualityFlag, describe_flags
from spt_stream.normalize.frames_to_grid import NormalizedBatch, normalize_frames
from spt_stream.normalize.kernels import normalize_batch
from spt_stream.normalize.params import NormParams, NormResult
from spt_stream.normalize.resample import calibration_shift, resample_to_model_grid

__all__ = [
    "NormParams",
    "NormResult",
    "NormalizedBatch",
    "QualityFlag",
    "calibration_shift",
    "describe_flags",
    "find_e0",
    "normalize_batch",
    "normalize_frames",
    "resample_to_model_grid",
]

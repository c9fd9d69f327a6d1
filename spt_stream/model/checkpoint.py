"""SPT checkpoints: one safetensors file with the JSON metadata in its header.

``save_checkpoint`` writes every tensor of :class:`~spt_stream.model.network.SPTInference` (network
weights, temperatures, target scaling, OOD statistics) with safetensors, and stores a JSON
document under the header key ``"spt_stream"``: format and version, architecture
hyper-parameters, descriptor schema (class labels), energy grid, elements, normalization
settings, training-data hash, metrics, code version and a sha256 over the tensors.
``load_checkpoint`` parses only that JSON and raw tensors; it never unpickles. Any mismatch
(format, grid, architecture vs tensors, tensor hash) raises :class:`CheckpointError`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from spt_stream import __version__
from spt_stream.core.grid import MODEL_GRID_REL
from spt_stream.errors import CheckpointError, SptError
from spt_stream.model.descriptors import DescriptorSchema
from spt_stream.model.network import SPTConfig, SPTInference

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointMetadata",
    "default_checkpoint_path",
    "load_checkpoint",
    "read_metadata",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "spt-stream-checkpoint"
CHECKPOINT_VERSION = 1
_HEADER_KEY = "spt_stream"
DEFAULT_CHECKPOINT_NAME = "spt-default.safetensors"


def default_checkpoint_path() -> Path:
    """Where the packaged default model lives (``spt_stream/checkpoints/``)."""
    return Path(__file__).resolve().parents[1] / "checkpoints" / DEFAULT_CHECKPOINT_NAME


@dataclass(frozen=True)
class CheckpointMetadata:
    """What a checkpoint says about itself (the JSON in the safetensors header)."""

    architecture: SPTConfig
    schema: DescriptorSchema
    grid_rel: tuple[float, ...]
    normalization: Mapping[str, Any] = field(default_factory=dict)
    data_hash: str | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    code_version: str = __version__
    created: float = 0.0
    calibrated: bool = False
    ood_fitted: bool = False
    name: str = "spt"
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def elements(self) -> tuple[str, ...]:
        return self.architecture.elements

    def to_json(self, tensor_sha256: str) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "name": self.name,
            "architecture": self.architecture.to_json(),
            "descriptors": self.schema.to_json(),
            "grid_rel": list(self.grid_rel),
            "elements": list(self.elements),
            "normalization": dict(self.normalization),
            "data_hash": self.data_hash,
            "metrics": dict(self.metrics),
            "code_version": self.code_version,
            "created": self.created,
            "calibrated": self.calibrated,
            "ood_fitted": self.ood_fitted,
            "extra": dict(self.extra),
            "tensor_sha256": tensor_sha256,
        }


def _tensor_hash(tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(name.encode() + str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(model: SPTInference, meta: CheckpointMetadata, path: str | Path) -> Path:
    """Write ``model`` and ``meta`` to ``path`` (a ``.safetensors`` file; parents created)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    if meta.created == 0.0:
        meta = CheckpointMetadata(**{**meta.__dict__, "created": time.time()})
    header = json.dumps(meta.to_json(_tensor_hash(tensors)), default=_json_default)
    tmp = p.with_suffix(p.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata={_HEADER_KEY: header})
    tmp.replace(p)
    return p


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serializable: {type(obj).__name__}")


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The raw JSON metadata of a checkpoint, without loading tensors."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError("checkpoint file not found", source=str(p))
    try:
        with safe_open(str(p), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"not a safetensors checkpoint: {exc}", source=str(p)) from exc
    if _HEADER_KEY not in header:
        raise CheckpointError("safetensors file carries no spt-stream metadata", source=str(p))
    try:
        data: dict[str, Any] = json.loads(header[_HEADER_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint metadata is not JSON: {exc}", source=str(p)) from exc
    return data


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[SPTInference, CheckpointMetadata]:
    """Rebuild the model from ``path``; returns ``(model in eval mode, metadata)``."""
    p = Path(path)
    raw = read_metadata(p)
    if raw.get("format") != CHECKPOINT_FORMAT or int(raw.get("version", -1)) != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"unsupported checkpoint format {raw.get('format')!r} v{raw.get('version')}",
            source=str(p),
        )
    try:
        arch = SPTConfig.from_json(raw["architecture"])
        schema = DescriptorSchema.from_json(raw["descriptors"])
        grid = tuple(float(v) for v in raw["grid_rel"])
    except (KeyError, TypeError, ValueError, SptError) as exc:
        raise CheckpointError(f"invalid checkpoint metadata: {exc}", source=str(p)) from exc
    if len(grid) != len(MODEL_GRID_REL) or not np.allclose(grid, MODEL_GRID_REL, atol=1e-9):
        raise CheckpointError(
            f"checkpoint grid ({len(grid)} points, {grid[0]}..{grid[-1]} eV) differs from the "
            f"engine's model grid ({len(MODEL_GRID_REL)} points)",
            source=str(p),
        )
    if tuple(h.name for h in arch.heads) != schema.names:
        raise CheckpointError("checkpoint heads do not match its descriptor schema", source=str(p))
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(p), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            tensors[key] = f.get_tensor(key)
    if _tensor_hash(tensors) != raw.get("tensor_sha256"):
        raise CheckpointError(
            "checkpoint tensors do not match their sha256 (corrupt?)", source=str(p)
        )
    model = SPTInference(arch)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"weights do not fit the architecture: {exc}", source=str(p)) from exc
    meta = CheckpointMetadata(
        architecture=arch,
        schema=schema,
        grid_rel=grid,
        normalization=raw.get("normalization", {}),
        data_hash=raw.get("data_hash"),
        metrics=raw.get("metrics", {}),
        code_version=str(raw.get("code_version", "")),
        created=float(raw.get("created", 0.0)),
        calibrated=bool(raw.get("calibrated", False)),
        ood_fitted=bool(raw.get("ood_fitted", False)),
        name=str(raw.get("name", "spt")),
        extra=raw.get("extra", {}),
    )
    return model.to(device).eval(), meta

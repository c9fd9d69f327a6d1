"""Training and fine-tuning of the SPT model.

Joint multi-target loss (paper 5.3, "Multi-Target Joint SPT"), summed over descriptors with the
weights of the descriptor schema (default 1.0 each, overridable per config):

* discrete descriptor: cross-entropy against the target class distribution, averaged over rows
  where the label is defined (NaN labels are masked out). Integer labels are one-hot; a label
  between two adjacent class values (a mixed-valence sample, ``os`` 3.4) is a two-hot soft target
  weighted by distance (0.6 on class 3, 0.4 on class 4; :mod:`spt_stream.training.targets`), so
  the class expectation learns the fractional value;
* continuous descriptor: Gaussian negative log-likelihood of the standardized target
  ``(y - loc) / scale`` (loc/scale from the training split) under the predicted mean and
  log-variance, weighted by the detached predicted variance to the power 0.5 ("beta-NLL",
  Seitzer et al. 2022, which keeps the mean from being neglected), masked like the above. An
  anchored head (``model: {anchors: [[os_cont, os]], anchor_kind: gate}``,
  :mod:`spt_stream.model.network.spt`) is trained under the same loss through its combination
  with the (detached) classifier probabilities. With ``init_from``, ``model`` overrides the
  stored architecture's fields (weights whose shapes still fit are transferred).

Augmentation (training batches only): energy shift (uniform, +-``shift_max_ev``, applied by
linear interpolation on the grid, so mu(E) -> mu(E - dE)), amplitude jitter (edge-step error,
uniform +-``scale_jitter``) and Gaussian noise with a per-spectrum sigma drawn uniformly from
[0, ``noise_max``] (edge-step units).

One module: the training loop, its losses, calibration of the heads and the written metrics are one
recipe (configs/train/*.yaml) read end to end.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor, nn

from spt_stream import __version__
from spt_stream.config import read_yaml
from spt_stream.core.grid import GRID_STEP_EV, MODEL_GRID_REL
from spt_stream.errors import ConfigError, SptValueError
from spt_stream.model.checkpoint import CheckpointMetadata, load_checkpoint, save_checkpoint
from spt_stream.model.descriptors import DescriptorSchema, load_descriptor_schema
from spt_stream.model.network import HeadSpec, SPTConfig, SPTInference
from spt_stream.training.datasets import SpectraDataset, load_dataset, split_by_group
from spt_stream.training.targets import nearest_class_index, soft_class_targets

__all__ = [
    "AugmentSettings",
    "EncodedSet",
    "TrainConfig",
    "TrainResult",
    "augment",
    "encode",
    "fit",
    "heads_from_schema",
    "joint_loss",
    "load_train_config",
    "resolve_device",
    "soft_class_targets",
    "train",
]


class AugmentSettings(BaseModel):
    """Training-time augmentation (see module doc)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    noise_max: float = Field(0.02, ge=0.0)
    shift_max_ev: float = Field(0.5, ge=0.0)
    scale_jitter: float = Field(0.02, ge=0.0, lt=1.0)
    #: Chemical-shift augmentation (sigma, eV): a rigid edge shift delta ~ N(0, sigma) of a
    #: compound's spectrum (os >= 1) WITH its oxidation-state labels (``os``, ``os_cont``)
    #: moved by delta / ``state_slope_ev`` -- what a small change of state does to an otherwise
    #: unchanged spectrum. Without it the network treats edge position as nuisance (the
    #: simulator's calibration and chemical-shift spreads move edges at fixed state) and reads a
    #: pure edge shift at ~0.4 of the physical slope.
    state_shift_ev: float = Field(0.0, ge=0.0)
    #: eV per oxidation-state unit for that augmentation; None: the measured slope of the
    #: packaged edge calibration (spt_stream.classical.edge_os).
    state_slope_ev: float | None = Field(None, gt=0.0)


class ToyDataSettings(BaseModel):
    """Train on the toy generator (:mod:`spt_stream.training.synthetic`) instead of a file."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    n_structures: int = Field(400, ge=4)
    per_structure: int = Field(4, ge=1)
    seed: int = 0


class TrainConfig(BaseModel):
    """``spt-stream train --config`` file contents (YAML)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "spt"
    #: Dataset directory (:func:`spt_stream.training.datasets.save_dataset`); or ``toy`` below.
    dataset: Path | None = None
    toy: ToyDataSettings | None = None
    #: Optional explicit validation/test datasets; otherwise ``split`` by group.
    val_dataset: Path | None = None
    test_dataset: Path | None = None
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    #: Descriptors to train (default: all the dataset has that the schema knows).
    descriptors: tuple[str, ...] | None = None
    descriptor_schema: Path | None = None
    loss_weights: dict[str, float] = Field(default_factory=dict)
    #: Architecture overrides (fields of :class:`spt_stream.model.network.SPTConfig`).
    model: dict[str, Any] = Field(default_factory=dict)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    patience: int = Field(6, ge=1)
    seed: int = 0
    augment: AugmentSettings = AugmentSettings()
    #: Fine-tuning: start from this checkpoint (the paper's transfer learning).
    init_from: Path | None = None
    freeze_backbone: bool = False
    output: Path = Path("out/spt.safetensors")
    metrics_output: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int | None = Field(None, ge=1)
    calibrate: bool = True
    ood_quantile: float = Field(0.99, gt=0.5, lt=1.0)
    #: Noise levels (sigma, edge-step units) for the test-set stress test; empty = skip.
    noise_levels: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1)
    baselines: bool = False
    #: Normalization settings the training spectra were prepared with (stored in metadata).
    normalization: dict[str, Any] = Field(default_factory=dict)


def load_train_config(path: Path) -> TrainConfig:
    """Read a training YAML; relative paths in it are resolved against the current directory."""
    data = read_yaml(path)
    try:
        return TrainConfig(**data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid training config: {problems}", source=str(path)) from exc


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available")
    return torch.device(device)


def heads_from_schema(schema: DescriptorSchema) -> tuple[HeadSpec, ...]:
    """Model heads in schema order."""
    return tuple(HeadSpec(d.name, d.n_classes, tuple(d.classes)) for d in schema.descriptors)


@dataclass
class EncodedSet:
    """A dataset as tensors: inputs (N, G), element indices (N,), per discrete descriptor the
    nearest class index (N,) (-1 = no label; where a hard class is needed) and the target class
    distribution ``soft`` (N, C) (zero rows = no label; the training target), per continuous
    descriptor the standardized target (N,) (NaN = no label)."""

    x: Tensor
    element: Tensor
    cls: dict[str, Tensor]
    reg: dict[str, Tensor]
    soft: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def take(self, idx: Tensor) -> EncodedSet:
        return EncodedSet(
            self.x[idx], self.element[idx],
            {k: v[idx] for k, v in self.cls.items()}, {k: v[idx] for k, v in self.reg.items()},
            {k: v[idx] for k, v in self.soft.items()},
        )  # fmt: skip

    def to(self, device: torch.device) -> EncodedSet:
        return EncodedSet(
            self.x.to(device), self.element.to(device),
            {k: v.to(device) for k, v in self.cls.items()},
            {k: v.to(device) for k, v in self.reg.items()},
            {k: v.to(device) for k, v in self.soft.items()},
        )  # fmt: skip


def encode(
    ds: SpectraDataset,
    schema: DescriptorSchema,
    arch: SPTConfig,
    loc: Mapping[str, float],
    scale: Mapping[str, float],
) -> EncodedSet:
    """Tensors for training/evaluation (see :class:`EncodedSet`).

    Discrete labels may be fractional (two-hot soft targets, module doc); a label outside the
    class range raises :class:`SptValueError` naming the descriptor.
    """
    if ds.spectra.shape[1] != arch.n_points or not np.allclose(ds.energy_rel, MODEL_GRID_REL):
        raise SptValueError(
            f"dataset grid ({ds.spectra.shape[1]} points) is not the model grid; import it with "
            "spt_stream.training.datasets.import_table to resample"
        )
    el = torch.tensor([arch.element_index(str(e)) for e in ds.element], dtype=torch.long)
    cls: dict[str, Tensor] = {}
    reg: dict[str, Tensor] = {}
    soft: dict[str, Tensor] = {}
    for d in schema.descriptors:
        lab = ds.labels.get(d.name)
        if lab is None:
            lab = np.full(len(ds), np.nan, np.float32)
        if d.kind == "discrete":
            soft[d.name] = torch.from_numpy(soft_class_targets(lab, d.classes, name=d.name))
            cls[d.name] = torch.from_numpy(nearest_class_index(lab, d.classes))
        else:
            reg[d.name] = torch.from_numpy((lab - loc[d.name]) / scale[d.name]).float()
    return EncodedSet(torch.from_numpy(np.ascontiguousarray(ds.spectra)), el, cls, reg, soft)


def augment(x: Tensor, aug: AugmentSettings, gen: torch.Generator | None = None) -> Tensor:
    """Shift (interpolated on the grid), amplitude jitter and noise; per spectrum."""
    b, g = x.shape
    dev = x.device

    def u(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=gen, device=dev) * 2 - 1

    if aug.shift_max_ev > 0:
        shift = u(b, 1) * (aug.shift_max_ev / GRID_STEP_EV)  # in grid points
        pos = (torch.arange(g, device=dev, dtype=x.dtype)[None, :] - shift).clamp(0, g - 1)
        i0 = pos.floor().long().clamp(max=g - 2)
        w = pos - i0
        x = torch.gather(x, 1, i0) * (1 - w) + torch.gather(x, 1, i0 + 1) * w
    if aug.scale_jitter > 0:
        x = x * (1 + u(b, 1) * aug.scale_jitter)
    if aug.noise_max > 0:
        sigma = (u(b, 1) + 1) / 2 * aug.noise_max
        x = x + sigma * torch.randn(x.shape, generator=gen, device=dev)
    return x


def joint_loss(
    out: Mapping[str, Tensor], batch: EncodedSet, schema: DescriptorSchema
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of per-descriptor losses (module doc); rows without a label are masked."""
    total = out["features"].new_zeros(())
    parts: dict[str, Tensor] = {}
    for d in schema.descriptors:
        o = out[d.name].float()
        if d.kind == "discrete":
            t = batch.soft[d.name]  # (B, C) target distribution; zero row = no label
            valid = t.sum(dim=1) > 0
            ce = nn.functional.cross_entropy(o, t, reduction="none")
            loss = (ce * valid).sum() / valid.sum().clamp_min(1)
        else:
            y = batch.reg[d.name]
            valid = torch.isfinite(y)
            mean, logvar = o[:, 0], o[:, 1].clamp(-10.0, 10.0)
            var = logvar.exp()
            yy = torch.where(valid, y, mean.detach())
            nll = 0.5 * (logvar + (yy - mean) ** 2 / var) * var.detach().sqrt()
            loss = (nll * valid).sum() / valid.sum().clamp_min(1)
        parts[d.name] = loss.detach()
        total = total + d.weight * loss
    return total, parts


def _evaluate_loss(
    model: SPTInference, data: EncodedSet, schema: DescriptorSchema, batch_size: int
) -> float:
    model.eval()
    tot, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(data), batch_size):
            b = data.take(torch.arange(i, min(i + batch_size, len(data)), device=data.x.device))
            loss, _ = joint_loss(model.net(b.x, b.element), b, schema)
            tot += float(loss) * len(b)
            n += len(b)
    return tot / max(n, 1)


ProgressFn = Callable[[int, int, float, float], None]


def fit(
    model: SPTInference,
    train_set: EncodedSet,
    val_set: EncodedSet,
    schema: DescriptorSchema,
    cfg: TrainConfig,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``model.net`` in place with early stopping on validation loss; returns history."""
    device = train_set.x.device
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed)
    net = model.net
    if cfg.freeze_backbone:
        for p in net.backbone_parameters():
            p.requires_grad_(False)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    warm = max(1, total_steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / warm)
            * 0.5
            * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))
        ),
    )
    best_val, best_state, best_epoch, bad_epochs = float("inf"), None, -1, 0
    history: list[dict[str, float]] = []
    state_shift = _state_shift_fn(model, schema, cfg.augment)
    bar = _progress(progress)
    task = bar.add_task("training", total=total_steps) if bar else None
    t0 = time.perf_counter()
    try:
        if bar:
            bar.start()
        for epoch in range(cfg.epochs):
            net.train()
            perm = torch.randperm(len(train_set), generator=gen, device=device)
            run_loss = 0.0
            for s in range(steps_per_epoch):
                b = train_set.take(perm[s * cfg.batch_size : (s + 1) * cfg.batch_size])
                x = augment(b.x, cfg.augment, gen)
                if state_shift is not None:
                    x, b = state_shift(x, b, gen)
                loss, _ = joint_loss(net(x, b.element), b, schema)
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                nn.utils.clip_grad_norm_(params, 5.0)
                opt.step()
                sched.step()
                run_loss += float(loss.detach())
                if bar and task is not None:
                    bar.update(
                        task,
                        advance=1,
                        description=f"epoch {epoch + 1}/{cfg.epochs} loss {run_loss / (s + 1):.3f}",
                    )
            val = _evaluate_loss(model, val_set, schema, 1024)
            history.append(
                {"epoch": epoch + 1, "train_loss": run_loss / steps_per_epoch, "val_loss": val}
            )
            if progress and not (bar and bar.console.is_terminal):
                # plain, greppable lines when the output is not a terminal (logs, CI)
                print(
                    f"epoch {epoch + 1}/{cfg.epochs} train_loss {run_loss / steps_per_epoch:.4f} "
                    f"val_loss {val:.4f} elapsed_s {time.perf_counter() - t0:.0f}",
                    flush=True,
                )
            if val < best_val - 1e-4:
                best_val, best_epoch, bad_epochs = val, epoch + 1, 0
                best_state = copy.deepcopy(net.state_dict())
            else:
                bad_epochs += 1
                if bad_epochs >= cfg.patience:
                    break
    finally:
        if bar:
            bar.stop()
    if best_state is not None:
        net.load_state_dict(best_state)
    for p in net.parameters():
        p.requires_grad_(True)
    model.eval()
    return {
        "history": history,
        "best_epoch": best_epoch,
        "best_val_loss": best_val,
        "train_seconds": time.perf_counter() - t0,
    }


def _shift_rows(x: Tensor, shift_points: Tensor) -> Tensor:
    """Rows of ``x`` moved by ``shift_points`` grid points (linear interpolation, edges held)."""
    g = x.shape[1]
    pos = (torch.arange(g, device=x.device, dtype=x.dtype)[None, :] - shift_points).clamp(0, g - 1)
    i0 = pos.floor().long().clamp(max=g - 2)
    w = pos - i0
    return torch.gather(x, 1, i0) * (1 - w) + torch.gather(x, 1, i0 + 1) * w


def _two_hot(values: Tensor, classes: Tensor) -> Tensor:
    """(B, C) distributions putting a label between two adjacent classes on both (by distance)."""
    v = values.clamp(float(classes[0]), float(classes[-1]))
    hi = torch.searchsorted(classes, v.contiguous()).clamp(1, len(classes) - 1)
    lo = hi - 1
    w = ((v - classes[lo]) / (classes[hi] - classes[lo])).clamp(0.0, 1.0)
    out = torch.zeros(len(v), len(classes), dtype=torch.float32, device=v.device)
    out.scatter_(1, lo[:, None], (1 - w)[:, None].float())
    out.scatter_add_(1, hi[:, None], w[:, None].float())
    return out


def _state_shift_fn(
    model: SPTInference, schema: DescriptorSchema, aug: AugmentSettings
) -> Callable[[Tensor, EncodedSet, torch.Generator | None], tuple[Tensor, EncodedSet]] | None:
    """The chemical-shift augmentation of :class:`AugmentSettings` (None when off)."""
    if aug.state_shift_ev <= 0 or "os_cont" not in schema.names:
        return None
    slope = aug.state_slope_ev
    if slope is None:
        from spt_stream.classical.edge_os import load_edge_calibration

        slope = load_edge_calibration().slope
    i_c = [d.name for d in schema.continuous].index("os_cont")
    loc, scale = float(model.target_loc[i_c]), float(model.target_scale[i_c])
    classes = (
        torch.tensor(schema.get("os").classes, dtype=torch.float32)
        if "os" in schema.names and schema.get("os").kind == "discrete"
        else None
    )
    sigma = aug.state_shift_ev

    def apply(x: Tensor, b: EncodedSet, gen: torch.Generator | None) -> tuple[Tensor, EncodedSet]:
        y = b.reg["os_cont"] * scale + loc  # physical units
        compound = torch.isfinite(y) & (y >= 1.0)
        delta = torch.randn(len(y), generator=gen, device=x.device) * sigma * compound
        x = _shift_rows(x, (delta / GRID_STEP_EV)[:, None].to(x.dtype))
        new_y = (y + delta / slope).clamp(min=0.0)
        reg = {**b.reg, "os_cont": torch.where(compound, (new_y - loc) / scale, b.reg["os_cont"])}
        soft = dict(b.soft)
        if classes is not None and "os" in soft:
            moved = _two_hot(new_y.clamp(max=float(classes[-1])), classes.to(x.device))
            soft["os"] = torch.where(compound[:, None], moved, soft["os"])
        return x, EncodedSet(b.x, b.element, b.cls, reg, soft)

    return apply


def _progress(enabled: bool) -> Any:
    if not enabled:
        return None
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), TimeRemainingColumn()
    )


@dataclass
class TrainResult:
    """What :func:`train` produced."""

    model: SPTInference
    metadata: CheckpointMetadata
    metrics: dict[str, Any]
    checkpoint: Path
    splits: tuple[SpectraDataset, SpectraDataset, SpectraDataset]
    extra: dict[str, Any] = field(default_factory=dict)


#: Labels derived from another label when a data set lacks them: ``os_cont`` (the regression
#: head of the oxidation state) learns the same, possibly fractional, ``os`` label.
DERIVED_LABELS: dict[str, str] = {"os_cont": "os"}


def with_derived_labels(ds: SpectraDataset, wanted: tuple[str, ...] = ()) -> SpectraDataset:
    """``ds`` with the :data:`DERIVED_LABELS` named in ``wanted`` that it lacks added (copies of
    their source label). Only asked-for heads are derived: a config that does not list
    ``os_cont`` trains the heads its data set labels, as before."""
    extra = {
        name: np.array(ds.labels[src], copy=True)
        for name, src in DERIVED_LABELS.items()
        if name in wanted and name not in ds.labels and src in ds.labels
    }
    if not extra:
        return ds
    return dataclasses.replace(ds, labels={**ds.labels, **extra})


def _load_splits(cfg: TrainConfig) -> tuple[SpectraDataset, SpectraDataset, SpectraDataset]:
    tr, va, te = _load_raw_splits(cfg)
    wanted = tuple(cfg.descriptors or ())
    return (
        with_derived_labels(tr, wanted),
        with_derived_labels(va, wanted),
        with_derived_labels(te, wanted),
    )


def _load_raw_splits(
    cfg: TrainConfig,
) -> tuple[SpectraDataset, SpectraDataset, SpectraDataset]:
    if cfg.dataset is not None:
        ds = load_dataset(cfg.dataset)
    elif cfg.toy is not None:
        from spt_stream.training.synthetic import make_toy_dataset

        ds = make_toy_dataset(cfg.toy.n_structures, cfg.toy.per_structure, seed=cfg.toy.seed)
    else:
        raise ConfigError("training config needs 'dataset' (a dataset directory) or 'toy'")
    if cfg.val_dataset is not None:
        val = load_dataset(cfg.val_dataset)
        test = load_dataset(cfg.test_dataset) if cfg.test_dataset is not None else val
        return ds, val, test
    tr, va, te = split_by_group(ds, cfg.split, cfg.seed)
    if len(va) == 0 or len(tr) == 0:
        raise ConfigError(f"split {cfg.split} left an empty train or validation part")
    return tr, va, te if len(te) else va


def _build_model(cfg: TrainConfig, schema: DescriptorSchema) -> tuple[SPTInference, str | None]:
    heads = heads_from_schema(schema)
    if cfg.init_from is None:
        try:
            arch = SPTConfig(heads=heads, **cfg.model)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid model settings {cfg.model}: {exc}") from exc
        return SPTInference(arch), None
    base, meta = load_checkpoint(cfg.init_from)
    arch = SPTConfig.from_json(
        {**meta.architecture.to_json(), **cfg.model, "heads": [h.__dict__ for h in heads]}
    )
    model = SPTInference(arch)
    own = model.net.state_dict()
    # Transfer the backbone and every head whose shape still fits (same name and classes).
    transferred = {
        k: v for k, v in base.net.state_dict().items() if k in own and own[k].shape == v.shape
    }
    model.net.load_state_dict(transferred, strict=False)
    return model, str(cfg.init_from)


def train(cfg: TrainConfig, progress: bool = True) -> TrainResult:
    """Train (or fine-tune), calibrate, evaluate and write a checkpoint + metrics JSON."""
    from spt_stream.training.calibration import fit_ood, fit_temperatures
    from spt_stream.training.evaluate import evaluate_model

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    tr, va, te = _load_splits(cfg)
    full = load_descriptor_schema(cfg.descriptor_schema)
    names = cfg.descriptors or tuple(n for n in full.names if n in tr.labels)
    if not names:
        raise ConfigError(f"dataset labels {list(tr.labels)} name no descriptor of the schema")
    schema = full.subset(names, cfg.loss_weights)
    loc = {d.name: float(np.nanmean(tr.labels[d.name])) for d in schema.continuous}
    scale = {d.name: float(np.nanstd(tr.labels[d.name]) or 1.0) for d in schema.continuous}
    model, init_from = _build_model(cfg, schema)
    arch = model.cfg
    for i, d in enumerate(schema.continuous):
        model.target_loc[i] = loc[d.name]
        model.target_scale[i] = scale[d.name]
    for c, _ in arch.anchors:
        getattr(model.net, f"anchor_norm_{c}").copy_(torch.tensor([loc[c], scale[c]]))
    enc_tr = encode(tr, schema, arch, loc, scale)
    enc_va = encode(va, schema, arch, loc, scale)
    model.to(device)
    history = fit(model, enc_tr.to(device), enc_va.to(device), schema, cfg, progress)
    model.cpu().eval()
    metrics: dict[str, Any] = {
        "training": history,
        "n_train": len(tr),
        "n_val": len(va),
        "n_test": len(te),
    }
    if cfg.calibrate and schema.discrete:
        # soft targets: fitting T to rounded classes would sharpen mixtures toward integers
        metrics["temperatures"] = fit_temperatures(model, enc_va.x, enc_va.element, enc_va.soft)
    metrics["ood"] = fit_ood(
        model, enc_tr.x, enc_tr.element, enc_va.x, enc_va.element, cfg.ood_quantile
    )
    if cfg.noise_levels:
        metrics["test"] = evaluate_model(model, te, schema, cfg.noise_levels, seed=cfg.seed)
    if cfg.baselines:
        from spt_stream.training.baselines import evaluate_baselines

        metrics["baselines"] = evaluate_baselines(tr, te, schema, cfg.noise_levels, seed=cfg.seed)
    meta = CheckpointMetadata(
        architecture=arch,
        schema=schema,
        grid_rel=tuple(float(v) for v in MODEL_GRID_REL),
        normalization=cfg.normalization,
        data_hash=tr.content_hash(),
        metrics=_headline(metrics),
        code_version=__version__,
        calibrated=bool(cfg.calibrate and schema.discrete),
        ood_fitted=True,
        name=cfg.name,
        extra={"init_from": init_from, "freeze_backbone": cfg.freeze_backbone,
               "train_config": cfg.model_dump(mode="json"),
               "provenance": json.loads(json.dumps(dict(tr.provenance), default=str))},
    )  # fmt: skip
    path = save_checkpoint(model, meta, cfg.output)
    metrics_path = cfg.metrics_output or path.with_suffix(".metrics.json")
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(metrics, indent=2, default=float), encoding="utf-8")
    return TrainResult(model, meta, metrics, path, (tr, va, te), {"metrics_path": metrics_path})


def _headline(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The compact metrics stored in the checkpoint header (full set goes to the JSON file)."""
    out: dict[str, Any] = {k: metrics[k] for k in ("n_train", "n_val", "n_test") if k in metrics}
    test = metrics.get("test", {})
    clean = test.get("levels", {}).get("0.0") if isinstance(test, Mapping) else None
    if clean:
        out["test_clean"] = {
            k: {
                m: v
                for m, v in d.items()
                if m in ("f1_macro", "accuracy", "mae_expectation", "r2", "mae")
            }
            for k, d in clean.items()
            if isinstance(d, Mapping)
        }
    if "temperatures" in metrics:
        out["temperatures"] = metrics["temperatures"]
    if "ood" in metrics:
        out["ood"] = metrics["ood"]
    return out

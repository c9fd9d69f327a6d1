"""Calibration and uncertainty: temperature scaling, ECE / reliability, OOD statistics.

* Temperature scaling (Guo et al. 2017): one scalar T per discrete head, fitted on validation
  logits by minimising the negative log-likelihood over log T; stored in the model's
  ``temperature`` buffer. With soft targets (mixed-valence labels, :mod:`.targets`) the NLL is
  the cross-entropy against the target distribution, the training objective: fitting T to the
  rounded classes instead would sharpen mixture predictions toward integer classes.
* Expected calibration error: top-label confidence in equal-width bins,
  ``ECE = sum_b n_b / N * |accuracy_b - confidence_b|``. With soft targets the "accuracy" of a
  row is the target mass on the predicted class (1 or 0 for integer labels, as usual; 0.6 for
  predicting class 3 on a 3.4 label); pass :func:`.targets.nearest_class_index` labels instead
  for the ECE against rounded classes.
* OOD: a Gaussian of the pooled training features per absorbing element with one shared,
  shrunk covariance; the threshold is a high quantile of the validation scores.
* Predictive std: one forward gives the class-distribution spread (discrete) and the predicted
  sigma (continuous). :func:`mc_dropout_outputs` gives the MC-dropout alternative, so the two can
  be compared for cost and calibration (:func:`std_calibration`).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from spt_stream.model.network import SPTInference

__all__ = [
    "expected_calibration_error",
    "fit_ood",
    "fit_temperatures",
    "mc_dropout_outputs",
    "network_outputs",
    "reliability_table",
    "std_calibration",
]

F64 = npt.NDArray[np.float64]


@torch.no_grad()
def network_outputs(
    model: SPTInference, x: Tensor, element: Tensor, batch_size: int = 1024
) -> dict[str, Tensor]:
    """Raw network outputs (features, logits, mean/log-var) for a whole set, in eval mode."""
    was_training = model.training
    model.eval()
    parts: list[dict[str, Tensor]] = []
    for i in range(0, x.shape[0], batch_size):
        parts.append(
            {
                k: v.float().cpu()
                for k, v in model.net(x[i : i + batch_size], element[i : i + batch_size]).items()
            }
        )
    model.train(was_training)
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def fit_temperature(logits: Tensor, target: Tensor, max_iter: int = 100) -> float:
    """The temperature minimising validation NLL for one head.

    ``target``: class indices (N,) (rows < 0 ignored) or target distributions (N, C) (zero rows
    ignored; module doc).
    """
    keep = target.sum(dim=1) > 0 if target.dim() == 2 else target >= 0
    if int(keep.sum()) < 2:
        return 1.0
    z = logits[keep].double()
    y = target[keep].double() if target.dim() == 2 else target[keep]
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    t = float(log_t.detach().exp())
    return t if np.isfinite(t) and 0.05 < t < 20.0 else 1.0


def fit_temperatures(
    model: SPTInference, x: Tensor, element: Tensor, class_targets: dict[str, Tensor]
) -> dict[str, float]:
    """Fit and set the temperature of every discrete head on (validation) data; targets as in
    :func:`fit_temperature` (class indices or target distributions)."""
    out = network_outputs(model, x, element)
    temps: dict[str, float] = {}
    for i, h in enumerate(h for h in model.cfg.heads if h.discrete):
        t = fit_temperature(out[h.name], class_targets[h.name])
        model.temperature[i] = t
        temps[h.name] = t
    return temps


def reliability_table(
    probs: npt.NDArray[Any], target: npt.NDArray[Any], n_bins: int = 10
) -> list[dict[str, float]]:
    """Per confidence bin: count, mean confidence, accuracy.

    ``target``: class indices (N,) (rows < 0 ignored) or target distributions (N, C) (zero rows
    ignored; accuracy = target mass on the predicted class, module doc).
    """
    target = np.asarray(target)
    if target.ndim == 2:
        keep = target.sum(axis=1) > 0
        p = probs[keep]
        pred = p.argmax(axis=1)
        correct = target[keep][np.arange(len(pred)), pred].astype(np.float64)
    else:
        keep = target >= 0
        p = probs[keep]
        correct = (p.argmax(axis=1) == target[keep]).astype(np.float64)
    conf = p.max(axis=1)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    rows = []
    for lo, hi in itertools.pairwise(edges):
        m = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        n = int(m.sum())
        rows.append(
            {
                "lo": float(lo),
                "hi": float(hi),
                "count": n,
                "confidence": float(conf[m].mean()) if n else float("nan"),
                "accuracy": float(correct[m].mean()) if n else float("nan"),
            }
        )
    return rows


def expected_calibration_error(
    probs: npt.NDArray[Any], target: npt.NDArray[Any], n_bins: int = 10
) -> float:
    """ECE of the top-label confidence; targets as in :func:`reliability_table` (module doc)."""
    rows = reliability_table(probs, target, n_bins)
    total = sum(r["count"] for r in rows)
    if total == 0:
        return float("nan")
    return float(
        sum(r["count"] / total * abs(r["accuracy"] - r["confidence"]) for r in rows if r["count"])
    )


@torch.no_grad()
def fit_ood(
    model: SPTInference,
    x_train: Tensor,
    el_train: Tensor,
    x_val: Tensor,
    el_val: Tensor,
    quantile: float = 0.99,
    shrinkage: float = 0.1,
) -> dict[str, float]:
    """Fit the feature Gaussians on training data and the threshold on validation scores."""
    f = network_outputs(model, x_train, el_train)["features"].double()
    n_el, dim = model.ood_mean.shape
    global_mean = f.mean(dim=0)
    means = global_mean.repeat(n_el, 1)
    centred = f - global_mean
    for e in torch.unique(el_train).tolist():
        m = el_train == e
        if int(m.sum()) >= 2:
            means[e] = f[m].mean(dim=0)
            centred[m] = f[m] - means[e]
    cov = centred.t() @ centred / max(f.shape[0] - 1, 1)
    target = torch.diag(torch.diagonal(cov)).clamp_min(1e-8)
    cov = (1 - shrinkage) * cov + shrinkage * target + 1e-6 * torch.eye(dim, dtype=cov.dtype)
    model.ood_mean.copy_(means.float())
    model.ood_precision.copy_(torch.linalg.inv(cov).float())
    fv = network_outputs(model, x_val, el_val)["features"]
    scores = model.ood_score(fv, el_val)
    thr = float(torch.quantile(scores.double(), quantile))
    model.ood_threshold.fill_(thr)
    ft = model.ood_score(f.float(), el_train)
    return {
        "threshold": thr,
        "quantile": quantile,
        "train_median": float(ft.median()),
        "val_median": float(scores.median()),
    }


def mc_dropout_outputs(
    model: SPTInference, x: Tensor, element: Tensor, samples: int = 8
) -> tuple[Tensor, Tensor, Tensor]:
    """MC-dropout prediction: (values, stds, probs) combining ``samples`` stochastic passes.

    Discrete: probabilities averaged over passes (then expectation and spread as usual);
    continuous: law of total variance (mean aleatoric variance + variance of the means).
    """
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.train()
    try:
        with torch.no_grad():
            runs = [model(x, element) for _ in range(samples)]
    finally:
        model.eval()
    vals = torch.stack([r[0] for r in runs])
    stds = torch.stack([r[1] for r in runs])
    probs = torch.stack([r[2] for r in runs]).mean(0)
    v_out, s_out = vals.mean(0).clone(), torch.sqrt((stds**2).mean(0) + vals.var(0, unbiased=False))
    off = 0
    for j, h in enumerate(model.cfg.heads):
        if h.discrete:
            p = probs[:, off : off + h.n_classes]
            cv = torch.tensor(h.class_values)
            mean = p @ cv
            v_out[:, j] = mean
            s_out[:, j] = (p @ (cv * cv) - mean * mean).clamp_min(0).sqrt()
            off += h.n_classes
    return v_out, s_out, probs


def std_calibration(
    values: npt.NDArray[Any], stds: npt.NDArray[Any], target: npt.NDArray[Any]
) -> dict[str, float]:
    """How well a predicted std matches the error of a continuous descriptor.

    ``coverage_1sigma`` (ideal 0.683) and ``coverage_2sigma`` (0.954) of |y - mu| <= k sigma,
    Gaussian NLL, and the rank correlation between sigma and |error| (higher = more informative).
    """
    keep = np.isfinite(target)
    y, mu, s = target[keep], values[keep], np.maximum(stds[keep], 1e-9)
    err = np.abs(y - mu)
    if len(y) < 3:
        return {"n": float(len(y))}
    from scipy.stats import spearmanr

    return {
        "n": float(len(y)),
        "coverage_1sigma": float((err <= s).mean()),
        "coverage_2sigma": float((err <= 2 * s).mean()),
        "nll": float(np.mean(0.5 * np.log(2 * np.pi * s**2) + 0.5 * (err / s) ** 2)),
        "spearman_sigma_error": float(spearmanr(s, err).statistic),
    }

"""The served model: the SPT network plus its calibration, as one module with one forward.

Buffers (saved in the checkpoint next to the weights):

* ``temperature`` (n_discrete,): temperature scaling per discrete head (fitted on validation).
* ``class_values_<i>``: class values of discrete head i (for the class expectation).
* ``target_loc``, ``target_scale`` (n_continuous,): continuous heads are trained on standardized
  targets ``(y - loc) / scale``; outputs are mapped back to physical units here.
* ``ood_mean`` (E+1, F), ``ood_precision`` (F, F), ``ood_threshold`` (): a Gaussian of the
  pooled training features per absorbing element (shared covariance; row 0 = all elements,
  used for unknown elements). ``ood_score = (f - mu_el)^T P (f - mu_el) / F`` (about 1 in
  distribution); ``ood = ood_score > ood_threshold`` (a high quantile of validation scores).

``forward(x, element) -> (values (B, H), stds (B, H), probs (B, sum C), ood_score (B,))`` where
H runs over the heads in order, ``probs`` concatenates the calibrated class probabilities of the
discrete heads in order. Discrete value = class expectation, std = spread of the calibrated
class distribution; continuous value = predicted mean, std = predicted (aleatoric) sigma.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from spt_stream.model.network.spt import SPT, SPTConfig

__all__ = ["SPTInference"]


class SPTInference(nn.Module):
    """SPT + temperature scaling + target de-standardization + OOD statistics."""

    temperature: Tensor
    target_loc: Tensor
    target_scale: Tensor
    ood_mean: Tensor
    ood_precision: Tensor
    ood_threshold: Tensor

    def __init__(self, cfg: SPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = SPT(cfg)
        disc = [h for h in cfg.heads if h.discrete]
        cont = [h for h in cfg.heads if not h.discrete]
        self.register_buffer("temperature", torch.ones(len(disc)))
        for i, h in enumerate(disc):
            self.register_buffer(
                f"class_values_{i}", torch.tensor(h.class_values, dtype=torch.float32)
            )
        self.register_buffer("target_loc", torch.zeros(len(cont)))
        self.register_buffer("target_scale", torch.ones(len(cont)))
        n_el, f = len(cfg.elements) + 1, cfg.feature_dim
        self.register_buffer("ood_mean", torch.zeros(n_el, f))
        self.register_buffer("ood_precision", torch.eye(f))
        self.register_buffer("ood_threshold", torch.tensor(float("inf")))

    def ood_score(self, features: Tensor, element: Tensor) -> Tensor:
        """(B,) squared Mahalanobis distance / F to the element's training-feature mean."""
        diff = features.float() - self.ood_mean[element]
        return ((diff @ self.ood_precision) * diff).sum(-1) / diff.shape[-1]

    def forward(self, x: Tensor, element: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        out = self.net(x, element)
        values, stds, probs = [], [], []
        i_d = i_c = 0
        for h in self.cfg.heads:
            o = out[h.name].float()
            if h.discrete:
                cv: Tensor = getattr(self, f"class_values_{i_d}")
                p = torch.softmax(o / self.temperature[i_d], dim=-1)
                mean = p @ cv
                var = p @ (cv * cv) - mean * mean
                values.append(mean)
                stds.append(var.clamp_min(0.0).sqrt())
                probs.append(p)
                i_d += 1
            else:
                loc, scale = self.target_loc[i_c], self.target_scale[i_c]
                values.append(o[:, 0] * scale + loc)
                stds.append(torch.exp(0.5 * o[:, 1].clamp(-20.0, 20.0)) * scale)
                i_c += 1
        empty = x.new_zeros((x.shape[0], 0), dtype=torch.float32)
        return (
            torch.stack(values, dim=1),
            torch.stack(stds, dim=1),
            torch.cat(probs, dim=1) if probs else empty,
            self.ood_score(out["features"], element),
        )

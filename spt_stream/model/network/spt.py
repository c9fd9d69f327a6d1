"""The Spectral Pattern Translator network (paper section 4.3), pure torch.

Input: normalized mu on the model grid, ``x`` float (B, G) (G = 224 points, 0.5 eV apart,
-20 ... +91.5 eV relative to the tabulated edge), and the absorbing element as an index
``element`` int64 (B,) into :attr:`SPTConfig.elements` shifted by one (0 = unknown element).

Layout::

    x (B, G) --Conv1d(1->d, kernel patch+2, stride patch)--> (B, T=G/patch, d)
      + learned position embedding (T, d) + element embedding (E+1, d)
    n_blocks x [ x += FrequencyBandBlock(LN x)      # multi-band 2-D convs, per-sample top-k
                 x += LocalGraphAttention(LN x)     # windowed graph attention, |i-j| <= w
                 x += FFN(LN x) ]
    LN -> features = [mean over tokens || max over tokens] (B, 2d)
    one MLP head per descriptor: logits (B, C) for discrete, (mean, log-variance) for continuous

An **anchored** continuous head (``SPTConfig.anchors``: (continuous head, discrete head) pairs)
is combined with the discrete head's class probabilities (softmax of the raw logits, detached:
the classifier is trained only by its own cross-entropy), in one of two ways
(``SPTConfig.anchor_kind``):

* ``"expectation"``: mean = the class expectation (standardized with the continuous head's
  training loc/scale) + the head's own output, a residual;
* ``"gate"``: mean = (1 - p_0) * own + p_0 * v_0, with p_0 the probability of the LOWEST class
  (value v_0; for ``os`` the metal): the regression serves compounds, the classifier decides
  whether the absorber is metallic. A metal's edge sits where +2 compounds' edges sit, and a
  head that must read compounds' edge shifts at the physical slope reads metals ~0.3 high,
  while the classifier, which sees the metal's shape, reads 0.02 (docs/MODEL.md); the
  chemical-shift augmentation, likewise, moves compounds only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from spt_stream.model.network.layers import FrequencyBandBlock, LocalGraphAttention

__all__ = ["DEFAULT_ELEMENTS", "SPT", "HeadSpec", "SPTConfig"]

#: 3d transition metals (K edges) plus the other elements of battery oxides the paper covers.
DEFAULT_ELEMENTS: tuple[str, ...] = (
    "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn",
)  # fmt: skip


@dataclass(frozen=True)
class HeadSpec:
    """One output head: ``n_classes`` > 0 for a softmax head, 0 for a (mean, log-var) head."""

    name: str
    n_classes: int
    #: Class values (for the class expectation); empty for continuous heads.
    class_values: tuple[float, ...] = ()

    @property
    def discrete(self) -> bool:
        return self.n_classes > 0


@dataclass(frozen=True)
class SPTConfig:
    """Architecture hyper-parameters (all stored in checkpoint metadata)."""

    heads: tuple[HeadSpec, ...]
    n_points: int = 224
    patch: int = 2
    d_model: int = 32
    n_blocks: int = 2
    #: Candidate band frequencies (cycles per spectrum, over the T tokens); periods ceil(T/f).
    candidate_freqs: tuple[int, ...] = (1, 2, 3, 4, 6, 8)
    top_k: int = 3
    band_channels: int = 16
    kernel_sizes: tuple[int, ...] = (1, 3)
    #: Graph-attention half window w (tokens): edges |i - j| <= w.
    window: int = 4
    n_heads: int = 2
    d_attn: int = 8
    ffn_mult: int = 2
    d_head: int = 32
    dropout: float = 0.1
    elements: tuple[str, ...] = DEFAULT_ELEMENTS
    #: (continuous head, discrete head) pairs: the continuous head's mean is combined with the
    #: discrete head's class probabilities as ``anchor_kind`` says (module doc).
    anchors: tuple[tuple[str, str], ...] = ()
    #: How an anchored head is combined with its classifier: "expectation" or "gate" (module doc).
    anchor_kind: str = "expectation"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_points % self.patch:
            raise ValueError(f"n_points={self.n_points} must be a multiple of patch={self.patch}")
        if not self.heads:
            raise ValueError("an SPT model needs at least one head")
        object.__setattr__(self, "anchors", tuple((str(c), str(d)) for c, d in self.anchors))
        if self.anchor_kind not in ("expectation", "gate"):
            raise ValueError(f"anchor_kind {self.anchor_kind!r}: expected 'expectation' or 'gate'")
        by_name = {h.name: h for h in self.heads}
        for c, d in self.anchors:
            if c not in by_name or by_name[c].discrete:
                raise ValueError(f"anchor {c!r} is not a continuous head of this model")
            if d not in by_name or not by_name[d].discrete:
                raise ValueError(f"anchor {c!r} -> {d!r}: {d!r} is not a discrete head")

    @property
    def n_tokens(self) -> int:
        return self.n_points // self.patch

    @property
    def feature_dim(self) -> int:
        return 2 * self.d_model

    def element_index(self, symbol: str) -> int:
        """Index into the element embedding: 1 + position in ``elements``, 0 when unknown."""
        try:
            return 1 + self.elements.index(symbol.strip().capitalize())
        except ValueError:
            return 0

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(json.dumps(asdict(self)))
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SPTConfig:
        d = dict(data)
        d["heads"] = tuple(
            HeadSpec(h["name"], int(h["n_classes"]), tuple(float(c) for c in h["class_values"]))
            for h in d["heads"]
        )
        for key in ("candidate_freqs", "kernel_sizes"):
            d[key] = tuple(int(v) for v in d[key])
        d["elements"] = tuple(d["elements"])
        d["anchors"] = tuple((str(c), str(h)) for c, h in d.get("anchors", ()))
        return cls(**d)


class _Block(nn.Module):
    def __init__(self, cfg: SPTConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.norm_f = nn.LayerNorm(d)
        self.freq = FrequencyBandBlock(
            d, cfg.n_tokens, cfg.candidate_freqs, cfg.top_k, cfg.band_channels,
            cfg.kernel_sizes, dropout=cfg.dropout,
        )  # fmt: skip
        self.norm_g = nn.LayerNorm(d)
        self.graph = LocalGraphAttention(
            d, cfg.n_tokens, cfg.window, cfg.n_heads, cfg.d_attn, dropout=cfg.dropout
        )
        self.norm_m = nn.LayerNorm(d)
        self.ffn = nn.Sequential(
            nn.Linear(d, cfg.ffn_mult * d), nn.GELU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.ffn_mult * d, d),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.freq(self.norm_f(x))
        x = x + self.graph(self.norm_g(x))
        out: Tensor = x + self.ffn(self.norm_m(x))
        return out


class SPT(nn.Module):
    """The SPT network; ``forward`` returns features and raw head outputs (see module doc)."""

    def __init__(self, cfg: SPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.embed = nn.Conv1d(1, d, kernel_size=cfg.patch + 2, stride=cfg.patch, padding=1)
        self.pos = nn.Parameter(torch.zeros(1, cfg.n_tokens, d))
        nn.init.normal_(self.pos, std=0.02)
        self.element = nn.Embedding(len(cfg.elements) + 1, d)
        nn.init.normal_(self.element.weight, std=0.1)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.n_blocks))
        self.norm = nn.LayerNorm(d)
        self.heads = nn.ModuleDict(
            {
                h.name: nn.Sequential(
                    nn.Linear(cfg.feature_dim, cfg.d_head),
                    nn.GELU(),
                    nn.Dropout(cfg.dropout),
                    nn.Linear(cfg.d_head, h.n_classes if h.discrete else 2),
                )
                for h in cfg.heads
            }
        )
        by_name = {h.name: h for h in cfg.heads}
        self._anchors = cfg.anchors
        self._gate = cfg.anchor_kind == "gate"
        for c, disc in cfg.anchors:
            values = torch.tensor(by_name[disc].class_values, dtype=torch.float32)
            self.register_buffer(f"anchor_values_{c}", values)
            # (loc, scale) of the continuous head's standardized target; set by the trainer
            self.register_buffer(f"anchor_norm_{c}", torch.tensor([0.0, 1.0]))

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Everything but the heads (frozen when fine-tuning with ``freeze_backbone``)."""
        head_ids = {id(p) for p in self.heads.parameters()}
        return [p for p in self.parameters() if id(p) not in head_ids]

    def features(self, x: Tensor, element: Tensor) -> Tensor:
        """Pooled representation (B, 2d): token mean and token max after the last block."""
        h = self.embed(x[:, None, :]).transpose(1, 2)  # (B, T, d)
        h = h + self.pos + self.element(element)[:, None, :]
        for blk in self.blocks:
            h = blk(h)
        h = self.norm(h)
        return torch.cat([h.mean(dim=1), h.amax(dim=1)], dim=-1)

    def forward(self, x: Tensor, element: Tensor) -> dict[str, Tensor]:
        """``{"features": (B, 2d), <head>: logits (B, C) or (B, 2) [mean, log-variance]}``."""
        f = self.features(x, element)
        out = {"features": f}
        for name, head in self.heads.items():
            out[name] = head(f)
        for c, d in self._anchors:
            values: Tensor = getattr(self, f"anchor_values_{c}")
            norm: Tensor = getattr(self, f"anchor_norm_{c}")
            p = out[d].detach().float().softmax(dim=-1)
            o = out[c]
            if self._gate:
                p0 = p[:, :1]
                low = (values[0] - norm[0]) / norm[1]
                mean = (1.0 - p0) * o[:, :1].float() + p0 * low
            else:
                expect = ((p * values).sum(dim=-1, keepdim=True) - norm[0]) / norm[1]
                mean = o[:, :1].float() + expect
            out[c] = torch.cat([mean.to(o.dtype), o[:, 1:]], dim=1)
        return out

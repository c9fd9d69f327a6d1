"""Building blocks of the SPT network (paper section 4.3), pure torch.

Shapes: ``B`` spectra, ``T`` energy tokens, ``d`` channels. Every block works on ``(B, T, d)``
and keeps it. Nothing here reads a tensor value on the host (no ``.item()``, ``.cpu()``,
data-dependent shapes or Python branches on values), so the forward pass never synchronises with
a GPU and ``torch.compile`` sees one static graph. Every operation acts on each spectrum of the
batch separately, so a spectrum's output does not depend on its batch-mates.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812 (the torch convention)
from torch import Tensor, nn

__all__ = ["FoldedInception2d", "FrequencyBandBlock", "LocalGraphAttention", "band_assignment"]


class FoldedInception2d(nn.Module):
    """Inception-style 2-D convolution: the mean of parallel convs with kernel sizes ``ks``.

    The parallel branches are linear and share 'same' padding, so their mean equals ONE conv with
    the zero-padded kernels averaged; the forward pass folds them and runs a single conv2d
    (multi-scale receptive field at the cost of the largest kernel).
    """

    def __init__(self, c_in: int, c_out: int, kernel_sizes: tuple[int, ...] = (1, 3)) -> None:
        super().__init__()
        if any(k % 2 == 0 for k in kernel_sizes):
            raise ValueError(f"kernel sizes must be odd, got {kernel_sizes}")
        sizes = sorted(set(kernel_sizes))
        self.kmax = sizes[-1]
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(c_out, c_in, k, k)) for k in sizes)
        self.bias = nn.Parameter(torch.zeros(c_out))
        for w in self.weights:
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        self._folded: tuple[tuple[tuple[int, int], ...], Tensor] | None = None

    def folded_weight(self) -> Tensor:
        """The single kernel (c_out, c_in, kmax, kmax) equivalent to the branch mean."""
        ws = list(self.weights)  # ascending kernel sizes: the last one is the largest
        total: Tensor = ws[-1]
        for w in ws[:-1]:
            pad = (self.kmax - w.shape[-1]) // 2
            total = total + F.pad(w, (pad, pad, pad, pad))
        return total / len(ws)

    def _weight(self) -> Tensor:
        """The folded kernel; outside autograd it is kept until a weight changes (inference
        would otherwise re-fold it on every call: ~15 % of an eager batch-1 forward)."""
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return self.folded_weight()
        key = tuple((w.data_ptr(), w._version) for w in self.weights)
        if self._folded is None or self._folded[0] != key:
            with torch.no_grad():
                self._folded = (key, self.folded_weight())
        return self._folded[1]

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self._weight(), self.bias, padding=self.kmax // 2)


def band_assignment(n_tokens: int, candidate_freqs: tuple[int, ...]) -> Tensor:
    """A (n_bins, P) 0/1 matrix giving each rFFT bin 1..n_tokens//2 to its candidate band.

    Bin ``f`` joins the candidate nearest in log-frequency, if it lies within half a log-step of
    the outermost candidates; higher bins (fine ripple and noise) belong to no band and so never
    influence which bands are chosen (the paper's low-pass argument).
    """
    freqs = torch.tensor(candidate_freqs, dtype=torch.float64)
    logc = torch.log(freqs)
    n_bins = n_tokens // 2
    bins = torch.arange(1, n_bins + 1, dtype=torch.float64)
    dist = (torch.log(bins)[:, None] - logc[None, :]).abs()
    nearest = dist.argmin(dim=1)
    half_step = (logc[-1] - logc[-2]) / 2 if len(candidate_freqs) > 1 else torch.tensor(0.7)
    keep = torch.log(bins) <= logc[-1] + half_step
    m = F.one_hot(nearest, len(candidate_freqs)).to(torch.float32)
    return m * keep[:, None].to(torch.float32)


class FrequencyBandBlock(nn.Module):
    """Multi-scale spectral semantic discovery (paper 4.3.1), batch invariant with static shapes.

    1. Amplitude spectrum of each sample's own embedding (rFFT over tokens, mean over channels),
       summed into P fixed candidate bands (frequencies ``candidate_freqs``, periods
       ``ceil(T / f)``).
    2. Per-sample top-k band selection, expressed as a soft mask: with the k-th and (k+1)-th
       largest log band amplitudes a_k, a_k+1 and threshold m = (a_k + a_k+1) / 2, the mask is
       sigmoid((a - m) / tau). It equals the hard top-k when amplitudes are well separated and
       stays continuous at near-ties, so float noise cannot flip a choice.
    3. Each candidate: pad the (reduced-channel) sequence to a multiple of its period, reshape to
       a 2-D (T/p rows x p columns) tensor, Inception 2-D conv, GELU, back to length T. All P are
       computed (fixed shapes); unselected ones get zero weight.
    4. A spectral query, projected from the global context (token mean) by an MLP, scores the P
       bands against learned band keys; softmax over the selected bands gives the fusion weights.
    """

    assign: Tensor

    def __init__(
        self,
        d_model: int,
        n_tokens: int,
        candidate_freqs: tuple[int, ...],
        top_k: int,
        band_channels: int,
        kernel_sizes: tuple[int, ...] = (1, 3),
        d_query: int = 16,
        tau: float = 0.1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= len(candidate_freqs):
            raise ValueError(f"top_k={top_k} must be in 1..{len(candidate_freqs)}")
        if max(candidate_freqs) > n_tokens // 2 or min(candidate_freqs) < 1:
            raise ValueError(f"candidate frequencies must lie in 1..{n_tokens // 2}")
        self.n_tokens = n_tokens
        self.top_k = top_k
        self.tau = tau
        self.periods = tuple(math.ceil(n_tokens / f) for f in candidate_freqs)
        self.register_buffer("assign", band_assignment(n_tokens, candidate_freqs), persistent=False)
        self.reduce = nn.Linear(d_model, band_channels)
        self.convs = nn.ModuleList(
            FoldedInception2d(band_channels, band_channels, kernel_sizes) for _ in self.periods
        )
        self.expand = nn.Linear(band_channels, d_model)
        self.query = nn.Sequential(
            nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, d_query)
        )
        self.band_keys = nn.Parameter(torch.randn(len(self.periods), d_query) / math.sqrt(d_query))
        self.drop = nn.Dropout(dropout)

    def band_log_amplitude(self, x: Tensor) -> Tensor:
        """(B, P) log of each candidate band's summed amplitude, per sample."""
        spec = torch.fft.rfft(x.float(), dim=1)  # (B, T//2+1, d)
        amp = spec.abs().mean(dim=-1)[:, 1 : self.assign.shape[0] + 1]  # drop the DC bin
        return torch.log(amp @ self.assign + 1e-6)

    def selection_mask(self, log_amp: Tensor) -> Tensor:
        """(B, P) soft top-k mask in [0, 1] (see class docstring)."""
        p = log_amp.shape[-1]
        if self.top_k >= p:
            return torch.ones_like(log_amp)
        top = torch.topk(log_amp, self.top_k + 1, dim=-1).values
        thresh = 0.5 * (top[:, self.top_k - 1] + top[:, self.top_k])
        return torch.sigmoid((log_amp - thresh[:, None]) / self.tau)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        mask = self.selection_mask(self.band_log_amplitude(x))
        q = self.query(x.mean(dim=1))  # (B, dq)
        scores = q @ self.band_keys.t() / math.sqrt(q.shape[-1])
        weights = torch.softmax(scores.float() + torch.log(mask + 1e-9), dim=-1).to(x.dtype)
        y = self.reduce(x).transpose(1, 2)  # (B, c, T): channels first, so 2-D views are free
        c = y.shape[1]
        fused = torch.zeros_like(y)
        for i, (period, conv) in enumerate(zip(self.periods, self.convs, strict=True)):
            rows = math.ceil(t / period)
            z = F.pad(y, (0, rows * period - t)).reshape(b, c, rows, period)
            z = F.gelu(conv(z)).reshape(b, c, rows * period)[:, :, :t]
            fused = fused + weights[:, i, None, None] * z
        fused = fused.transpose(1, 2)
        out: Tensor = self.drop(self.expand(fused))
        return out


class LocalGraphAttention(nn.Module):
    """Graph attention over energy tokens within a window (paper 4.3.2).

    Edge j -> i iff |i - j| <= w. Score e_ij = a^T LeakyReLU(W [h_i || h_j]) per head, softmax
    over the window (edges past the spectrum's ends are masked), h_i' = sum_j alpha_ij V h_j.
    ``W [h_i || h_j] = W_1 h_i + W_2 h_j``, so both projections are computed once per token and
    the window is gathered with ``unfold``: O(B T (2w+1) d), fixed shapes.
    """

    edge_bias: Tensor

    def __init__(
        self,
        d_model: int,
        n_tokens: int,
        window: int,
        n_heads: int = 2,
        d_attn: int = 16,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.window = window
        self.n_heads = n_heads
        self.d_attn = d_attn
        self.proj_i = nn.Linear(d_model, n_heads * d_attn, bias=True)
        self.proj_j = nn.Linear(d_model, n_heads * d_attn, bias=False)
        self.value = nn.Linear(d_model, d_model)
        self.att = nn.Parameter(torch.randn(n_heads, d_attn) / math.sqrt(d_attn))
        self.out = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(dropout)
        k = 2 * window + 1
        offs = torch.arange(k) - window
        pos = torch.arange(n_tokens)[:, None] + offs[None, :]
        valid = (pos >= 0) & (pos < n_tokens)
        self.register_buffer(
            "edge_bias", torch.where(valid, 0.0, float("-inf")).to(torch.float32), persistent=False
        )

    def _windows(self, z: Tensor) -> Tensor:
        """(B, T, C) -> (B, T, K, C): the 2w+1 neighbours of every token (zero-padded ends)."""
        w = self.window
        zp = F.pad(z, (0, 0, w, w))
        return zp.unfold(1, 2 * w + 1, 1).transpose(-1, -2)

    def forward(self, h: Tensor) -> Tensor:
        b, t, d = h.shape
        nh, da = self.n_heads, self.d_attn
        hi = self.proj_i(h).reshape(b, t, 1, nh, da)
        hj = self._windows(self.proj_j(h)).reshape(b, t, -1, nh, da)
        e = (F.leaky_relu(hi + hj, 0.2) * self.att).sum(-1)  # (B, T, K, H)
        e = e.float() + self.edge_bias[:t, :, None]
        alpha = torch.softmax(e, dim=2).to(h.dtype)
        v = self._windows(self.value(h)).reshape(b, t, -1, nh, d // nh)
        out = (alpha[..., None] * v).sum(dim=2).reshape(b, t, d)
        result: Tensor = self.drop(self.out(out))
        return result

"""The batched normalization in torch, for the GPU path: :func:`normalize_batch_torch`.

Same algorithm and numbers as :func:`spt_stream.normalize.normalize_batch` (float64 agrees to
~1e-9, float32 to ~1e-4 in ``norm``), on whatever device and float dtype ``mu`` has. Everything
is tensor ops on that device except two host synchronisations per call: whether any value is
NaN/inf (clean batches skip the repair), and the distinct first-pass
e0 indices (usually a handful for a quick-XAS stream) choose the window of Larch's second e0
pass. The Lorentzian smoothing is a matrix that depends only on the grid and window, built once
on the host (numpy), cached per grid on the device, and applied as one matmul.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from spt_stream.normalize._energy_axis import clamp_step, larch_estep, smoothing_matrix
from spt_stream.normalize.flags import MAX_NONFINITE_FRACTION, SATURATION_MIN_POINTS, QualityFlag
from spt_stream.normalize.kernels import check_grid
from spt_stream.normalize.params import E0Mode, NormParams

__all__ = ["TorchNormResult", "find_e0_torch", "normalize_batch_torch"]

Tensor = torch.Tensor


class TorchNormResult:
    """Tensors on the input's device: e0 (b,) float64 eV; edge_step (b,); norm, flat, pre_edge,
    post_edge (b, n) in the input dtype; flags (b,) int64 (:class:`QualityFlag` bits)."""

    __slots__ = ("e0", "edge_step", "flags", "flat", "norm", "post_edge", "pre_edge")

    def __init__(self, **kw: Tensor) -> None:
        for k, v in kw.items():
            setattr(self, k, v)

    e0: Tensor
    edge_step: Tensor
    norm: Tensor
    flat: Tensor
    pre_edge: Tensor
    post_edge: Tensor
    flags: Tensor


def _gradient(y: Tensor) -> Tensor:
    """numpy.gradient along the last axis, unit spacing, first-order ends."""
    g = torch.empty_like(y)
    g[..., 1:-1] = 0.5 * (y[..., 2:] - y[..., :-2])
    g[..., 0] = y[..., 1] - y[..., 0]
    g[..., -1] = y[..., -1] - y[..., -2]
    return g


def _derivative(energy: Tensor, mu: Tensor) -> Tensor:
    return _gradient(mu) / _gradient(energy)[None, :]


def _median(x: Tensor) -> Tensor:
    """Row median with numpy's convention (mean of the two middle values for even counts)."""
    s, _ = torch.sort(x, dim=-1)
    m = s.shape[-1]
    return 0.5 * (s[..., (m - 1) // 2] + s[..., m // 2])


def _pick_max(dmu: Tensor) -> Tensor:
    _b, m = dmu.shape
    d = torch.where(torch.isfinite(dmu), dmu, torch.full_like(dmu, -1.0))
    nmin = max(3, int(m * 0.02))
    inner = d[:, nmin:-nmin]
    dmin = inner.amin(dim=1, keepdim=True)
    dptp = torch.clamp(inner.amax(dim=1, keepdim=True) - dmin, min=1e-10)
    d = (d - dmin) / dptp
    dhigh = 0.60 if m > 20 else 0.30
    high0, high1, high2 = d > dhigh, d > 0.5 * dhigh, d > 0.25 * dhigh
    c0, c1, c2 = high0.sum(1, keepdim=True), high1.sum(1, keepdim=True), high2.sum(1, keepdim=True)
    every = torch.ones_like(high0)
    high = torch.where(
        c0 >= 3, high0, torch.where(c1 > 3, high1, torch.where(c2 >= 3, high2, every))
    )
    idx = torch.arange(m, device=d.device)
    neighbours = torch.zeros_like(high)
    neighbours[:, 1:-1] = high[:, :-2] & high[:, 2:]
    ok = high & neighbours & (idx >= nmin) & (idx <= m - nmin) & (d > 0)
    score = torch.where(ok, d, torch.full_like(d, -torch.inf))
    best = torch.argmax(score, dim=1)
    found = torch.isfinite(score.gather(1, best[:, None])[:, 0])
    return torch.where(found, best, torch.zeros_like(best))


@lru_cache(maxsize=512)
def _smoother(
    key: bytes, lo: int, hi: int, estep: float, device: str, dtype: torch.dtype
) -> Tensor:
    """The cached smoothing matrix (see :func:`~spt_stream.normalize._energy_axis.smoothing_matrix`)
    for ``energy[lo:hi]`` as a tensor on ``device``."""
    energy = np.frombuffer(key, dtype=np.float64)
    matrix = smoothing_matrix(energy[lo:hi], estep).copy()
    return torch.as_tensor(matrix, device=device, dtype=dtype)


def _larch_indices(energy_np: np.ndarray, energy: Tensor, mu: Tensor) -> Tensor:
    n = energy.shape[0]
    key = energy_np.tobytes()
    ie1 = _pick_max(_derivative(energy[:-1], mu[:, :-1]))
    estep1 = clamp_step(larch_estep(energy_np))
    out = torch.empty_like(ie1)
    for ie0 in torch.unique(ie1).tolist():  # the one host sync
        rows = ie1 == ie0
        e1 = float(energy_np[ie0])
        istart, istop = max(3, ie0 - 75), min(ie0 + 75, n - 3)
        if ie0 < 0.05 * n:
            e1 = float(energy_np.mean())
            istart, istop = max(3, ie0 - 20), n - 3
        estep = 0.5 * (estep1 + clamp_step(e1 / 25000.0))
        smooth = _smoother(key, istart, istop - 1, estep, str(mu.device), mu.dtype)
        seg = energy[istart:istop][:-1]
        dmu = _derivative(seg, mu[rows, istart:istop][:, :-1])
        ix = _pick_max(dmu @ smooth)
        out[rows] = torch.where(ix < 1, istart + 2, istart + ix)
    return out


def _round(x: Tensor, unit: float) -> Tensor:
    return unit * torch.round(x / unit)


def _index_of(energy: Tensor, v: Tensor) -> Tensor:
    return torch.clamp(torch.searchsorted(energy, v.contiguous(), right=True) - 1, min=0)


def _index_nearest(energy: Tensor, v: Tensor) -> Tensor:
    n = energy.shape[0]
    hi = torch.clamp(torch.searchsorted(energy, v.contiguous()), 1, n - 1)
    lo = hi - 1
    take_lo = (energy[lo] - v).abs() <= (energy[hi] - v).abs()
    return torch.where(take_lo, lo, hi)


def _index_of_rel(energy: Tensor, e0: Tensor, rel: Tensor) -> Tensor:
    """``index_of(energy - e0, rel)`` per row (search, then a one-step exact correction)."""
    n = energy.shape[0]
    i = torch.clamp(torch.searchsorted(energy, (e0 + rel).contiguous(), right=True) - 1, 0, n - 1)
    up = (i + 1 < n) & ((energy[torch.clamp(i + 1, max=n - 1)] - e0) <= rel)
    i = torch.where(up, i + 1, i)
    down = (i > 0) & ((energy[i] - e0) > rel)
    return torch.where(down, i - 1, i)


def _window(n: int, lo: Tensor, hi: Tensor, dtype: torch.dtype) -> Tensor:
    idx = torch.arange(n, device=lo.device)[None, :]
    return ((idx >= lo[:, None]) & (idx < hi[:, None])).to(dtype)


def _polyfit(basis: Tensor, w: Tensor, y: Tensor, degree: Tensor) -> Tensor:
    moments = w @ basis
    rhs = (w * y) @ basis[:, :3]
    a = torch.stack([moments[:, i : i + 3] for i in range(3)], dim=1)
    k = torch.arange(3, device=w.device)
    unused = k[None, :] > degree[:, None]
    pin = unused[:, :, None] | unused[:, None, :]
    eye = torch.eye(3, device=w.device, dtype=w.dtype).expand_as(a)
    a = torch.where(pin, eye, a)
    rhs = torch.where(unused, torch.zeros_like(rhs), rhs)
    coef: Tensor = torch.linalg.solve(a, rhs[:, :, None])[:, :, 0]
    return coef


def _core(
    energy: Tensor, scale: Tensor, mu: Tensor, e0: Tensor, p: NormParams, make_flat: bool
) -> dict[str, Tensor]:
    """Larch's pre/post-edge rules; ``energy`` and ``e0`` may share any origin (translation
    invariant); ``scale`` is the absolute ``E / E[0]`` for the ``nvict`` weighting."""
    n = energy.shape[0]
    b = mu.shape[0]
    dt = mu.dtype
    emin, emax = energy[0], energy[-1]
    ie0 = _index_nearest(energy, e0)
    full = torch.full((b,), 0.0, dtype=dt, device=mu.device)
    if p.pre1 is None:
        rel = energy[1] - e0
        pre1 = torch.where(ie0 > 20, _round(rel, 5.0), _round(rel, 2.0))
    else:
        pre1 = full + p.pre1
    pre1 = torch.maximum(pre1, emin - e0)
    pre2 = 0.5 * pre1 if p.pre2 is None else full + p.pre2
    pre1, pre2 = torch.minimum(pre1, pre2), torch.maximum(pre1, pre2)
    ar = torch.arange(n, device=mu.device)[None, :]
    ipre1 = _index_of_rel(energy, e0, pre1)
    ipre2 = _index_of_rel(energy, e0, pre2)
    short = (ipre2 - ipre1) < 3
    npre = torch.where(short, 0, p.npre)
    nvict = torch.where(npre == 0, 0, p.nvict)
    top = emax - e0
    norm2 = _round(top, 5.0) if p.norm2 is None else full + p.norm2
    norm2 = torch.minimum(torch.where(norm2 < 0, top - norm2, norm2), top)
    norm1 = (
        torch.clamp(5.0 * torch.round(norm2 / 15.0), max=25.0)
        if p.norm1 is None
        else full + p.norm1
    )
    norm1, norm2 = torch.minimum(norm1, norm2), torch.maximum(norm1, norm2)
    norm1 = torch.minimum(norm1, norm2 - 2.0)
    if p.nnorm is None:
        span = norm2 - norm1
        nnorm = torch.where(span < 30, 0, torch.where(span < 300, 1, 2))
    else:
        nnorm = torch.full((b,), int(p.nnorm), device=mu.device)
    p1 = _index_of(energy, pre1 + e0)
    p2 = _index_nearest(energy, pre2 + e0)
    p2 = torch.where((npre == 0) & (p2 == p1), p2 + 1, p2)
    p2 = torch.where((npre == 1) & (p2 - p1 < 2), torch.clamp(p1 + 2, max=n), p2)
    q1 = torch.clamp(_index_of(energy, norm1 + e0), max=n - 3)
    q2 = _index_nearest(energy, norm2 + e0)
    tiny = (q2 - q1) < 2
    q1 = torch.where(tiny, q1 - 2, q1)
    nnorm = torch.where(tiny, 0, torch.where((q2 - q1) < 5, torch.clamp(nnorm, max=1), nnorm))

    # The fits accumulate in float64 whatever the input dtype: sums over thousands of points
    # in float32 would cost ~1e-3 in norm; the (b, n) x (n, 5) products are cheap.
    f64 = torch.float64
    e64 = energy.to(f64)
    centre = 0.5 * (e64[0] + e64[-1])
    half = torch.clamp(0.5 * (e64[-1] - e64[0]), min=1e-12)
    t = (e64 - centre) / half
    basis = torch.stack([t**k for k in range(5)], dim=1)
    mu64 = mu.to(f64)
    vict = scale.to(f64)[None, :] ** nvict[:, None].to(f64)
    pre_c = _polyfit(basis, _window(n, p1, p2, f64), mu64 * vict, npre)
    pre64 = (pre_c @ basis[:, :3].T) / vict
    post_c = _polyfit(basis, _window(n, q1, q2, f64), mu64 - pre64, nnorm)
    poly64 = post_c @ basis[:, :3].T
    pre_edge, poly = pre64.to(dt), poly64.to(dt)
    rows = torch.arange(b, device=mu.device)
    raw_step = poly[rows, ie0]
    step = torch.clamp(raw_step.abs(), min=1e-12)
    norm = ((mu64 - pre64) / poly64[rows, ie0].abs().clamp(min=1e-12)[:, None]).to(dt)
    if make_flat:
        residue = poly / step[:, None]
        flat = torch.where(ar >= ie0[:, None], norm - residue + residue[rows, ie0][:, None], norm)
    else:
        flat = norm.clone()
    return {
        "ie0": ie0,
        "pre_edge": pre_edge,
        "post_edge": pre_edge + poly,
        "raw_step": raw_step,
        "edge_step": step,
        "norm": norm,
        "flat": flat,
        "p1": p1,
        "p2": p2,
        "q1": q1,
        "q2": q2,
    }


def _robust_indices(
    energy_np: np.ndarray, energy: Tensor, scale: Tensor, mu: Tensor, larch_idx: Tensor
) -> Tensor:
    n = energy.shape[0]
    norm = _core(energy, scale, mu, energy[larch_idx], NormParams(), False)["norm"]
    estep = 0.5 * (
        clamp_step(larch_estep(energy_np)) + clamp_step(float(energy_np.mean()) / 25000.0)
    )
    smooth = _smoother(energy_np.tobytes(), 0, n, estep, str(mu.device), mu.dtype)
    d = _derivative(energy, norm) @ smooth
    idx = torch.arange(n, device=mu.device)[None, :]
    tail_min = torch.flip(torch.cummin(torch.flip(norm, dims=(1,)), dim=1).values, dims=(1,))
    above = tail_min >= 0.5
    has_cross = above.any(1)
    ic = torch.argmax(above.to(torch.int8), dim=1)[:, None]
    low = ((d <= 0) | (norm < 0.1)) & (idx < ic)
    i_lo = torch.where(low, idx, torch.full_like(idx, -1)).amax(1) + 1
    top = (d <= 0) & (idx >= ic)
    i_hi = torch.where(top, idx, torch.full_like(idx, n)).amin(1) - 1
    on_rise = (larch_idx >= i_lo) & (larch_idx <= i_hi)
    window = (idx >= i_lo[:, None]) & (idx <= i_hi[:, None])
    best = torch.argmax(torch.where(window, d, torch.full_like(d, -torch.inf)), dim=1)
    valid = has_cross & (i_hi >= i_lo) & torch.isfinite(d.gather(1, best[:, None])[:, 0])
    return torch.where(valid & ~on_rise, best, larch_idx)


def find_e0_torch(energy: Tensor, mu: Tensor, mode: E0Mode = "robust") -> Tensor:
    """e0 (b,) per row of ``mu`` (b, n) on the grid ``energy`` (n,); see :mod:`.e0`."""
    energy_np = energy.detach().cpu().numpy().astype(np.float64)
    e_rel, scale = _relative(energy_np, mu)
    li = _larch_indices(energy_np, e_rel, mu)
    idx = li if mode == "larch" else _robust_indices(energy_np, e_rel, scale, mu, li)
    return torch.as_tensor(energy_np, device=mu.device)[idx]


def _relative(energy_np: np.ndarray, mu: Tensor) -> tuple[Tensor, Tensor]:
    """The grid relative to its first point (keeps float32 precise) and ``E / E[0]``."""
    e_rel = torch.as_tensor(energy_np - energy_np[0], device=mu.device, dtype=mu.dtype)
    scale = torch.as_tensor(energy_np / energy_np[0], device=mu.device, dtype=mu.dtype)
    return e_rel, scale


def normalize_batch_torch(
    energy: Tensor | np.ndarray, mu: Tensor, params: NormParams | None = None
) -> TorchNormResult:
    """Torch twin of :func:`spt_stream.normalize.normalize_batch` (no per-row e0 override).

    ``mu`` (b, n) float32/float64 on any device; ``energy`` (n,) strictly increasing (eV).
    """
    params = params or NormParams()
    energy_np = np.asarray(
        energy.detach().cpu().numpy() if isinstance(energy, Tensor) else energy, dtype=np.float64
    )
    check_grid(energy_np, np.zeros((1, energy_np.shape[0])))
    if mu.ndim == 1:
        mu = mu[None, :]
    b, n = mu.shape
    e_t, scale = _relative(energy_np, mu)
    e_abs = torch.as_tensor(energy_np, device=mu.device)
    mu, flags, dead = _repair_nonfinite(e_t, mu)
    if params.e0 is not None and energy_np[1] <= params.e0 <= energy_np[-2]:
        e0 = torch.full((b,), float(params.e0), dtype=torch.float64, device=mu.device)
        e0_rel = (e0 - float(energy_np[0])).to(mu.dtype)
    else:
        if params.e0 is not None:
            flags = flags | int(QualityFlag.E0_OUT_OF_RANGE)
        li = _larch_indices(energy_np, e_t, mu)
        idx = li if params.e0_mode == "larch" else _robust_indices(energy_np, e_t, scale, mu, li)
        e0, e0_rel = e_abs[idx], e_t[idx]
    c = _core(e_t, scale, mu, e0_rel, params, params.make_flat)
    flags = flags | _flags(mu, c["raw_step"], c["edge_step"], params)
    cramped = (
        (c["ie0"] < 2) | (c["ie0"] > n - 3) | (c["p2"] - c["p1"] < 2) | (c["q2"] - c["q1"] < 2)
    )
    flags = flags | torch.where(cramped, int(QualityFlag.E0_OUT_OF_RANGE), 0)
    nan = torch.tensor(torch.nan, dtype=mu.dtype, device=mu.device)
    kill = dead[:, None]
    return TorchNormResult(
        e0=torch.where(dead, torch.tensor(torch.nan, dtype=e0.dtype, device=e0.device), e0),
        edge_step=torch.where(dead, nan, c["edge_step"]),
        norm=torch.where(kill, nan, c["norm"]),
        flat=torch.where(kill, nan, c["flat"]),
        pre_edge=torch.where(kill, nan, c["pre_edge"]),
        post_edge=torch.where(kill, nan, c["post_edge"]),
        flags=flags,
    )


def _repair_nonfinite(energy: Tensor, mu: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Fill NaN/inf by linear interpolation between the nearest finite neighbours (constant
    beyond the ends), as :func:`numpy.interp` does; rows with more than
    MAX_NONFINITE_FRACTION bad points are marked dead (zeros in, NaN out)."""
    b, n = mu.shape
    good = torch.isfinite(mu)
    nbad = (~good).sum(1)
    flags = torch.where(nbad > 0, int(QualityFlag.NAN), 0)
    if bool(good.all()):  # a host sync, but it skips ~15 (b, n) operations on clean batches
        return mu, flags, torch.zeros(b, dtype=torch.bool, device=mu.device)
    idx = torch.arange(n, device=mu.device).expand(b, n)
    prev = torch.cummax(torch.where(good, idx, torch.full_like(idx, -1)), dim=1).values
    nxt = torch.flip(
        torch.cummin(
            torch.flip(torch.where(good, idx, torch.full_like(idx, n)), dims=(1,)), dim=1
        ).values,
        dims=(1,),
    )
    has_prev, has_next = prev >= 0, nxt < n
    pi, ni = prev.clamp(0, n - 1), nxt.clamp(0, n - 1)
    safe = torch.where(good, mu, torch.zeros_like(mu))
    pv, nv = safe.gather(1, pi), safe.gather(1, ni)
    ep, en = energy[pi], energy[ni]
    w = torch.where(
        ni > pi, (energy[None, :] - ep) / (en - ep).clamp(min=1e-300), torch.zeros_like(ep)
    )
    inner = pv + (nv - pv) * w
    fill = torch.where(has_prev & has_next, inner, torch.where(has_prev, pv, nv))
    dead = (nbad > MAX_NONFINITE_FRACTION * n) | (good.sum(1) < 2)
    fixed = torch.where(good, mu, fill)
    fixed = torch.where(dead[:, None], torch.zeros_like(fixed), fixed)
    return fixed, flags, dead


def _flags(mu: Tensor, raw_step: Tensor, step: Tensor, p: NormParams) -> Tensor:
    a, b, c = mu[:, :-2], mu[:, 1:-1], mu[:, 2:]
    resid = b - torch.maximum(torch.minimum(a, b), torch.minimum(torch.maximum(a, b), c))
    noise = 1.4826 * _median(resid.abs())
    small = (step < p.min_edge_step) | (step < p.min_step_to_noise * noise)
    out = torch.where(small, int(QualityFlag.SMALL_EDGE_STEP), 0)
    spike = torch.maximum(p.glitch_step_fraction * step, p.glitch_noise_sigma * noise)
    glitch = (resid.abs() > spike[:, None]).any(1)
    out = out | torch.where(glitch, int(QualityFlag.GLITCH), 0)
    hi = (mu == mu.amax(1, keepdim=True)).sum(1)
    lo = (mu == mu.amin(1, keepdim=True)).sum(1)
    sat = (hi >= SATURATION_MIN_POINTS) | (lo >= SATURATION_MIN_POINTS)
    out = out | torch.where(sat, int(QualityFlag.SATURATED), 0)
    return out | torch.where(raw_step < 0, int(QualityFlag.NEGATIVE_EDGE_STEP), 0)

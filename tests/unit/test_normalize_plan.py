"""The cached fit operators of the normalization core (``spt_stream.normalize._core._Plan``).

The pre- and post-edge fits are linear in mu for a fixed grid, parameters and e0, so the core
keeps one (n, 3) projection per e0 and reuses it. These tests hold it to an independent
least-squares fit, to itself across cache states, and check the e0 values that cannot be cache
keys (NaN) or that would grow it without bound (arbitrary floats).
"""

from __future__ import annotations

import numpy as np
import pytest

from spt_stream.normalize import NormParams, normalize_batch
from spt_stream.normalize import _core as core
from tests.unit.test_normalize_kernels import synthetic


def _lstsq_fit(energy: np.ndarray, y: np.ndarray, lo: int, hi: int, degree: int) -> np.ndarray:
    """Polynomial of ``degree`` through ``y[lo:hi]`` evaluated on the whole grid (numpy lstsq)."""
    centre = 0.5 * (energy[0] + energy[-1])
    half = 0.5 * (energy[-1] - energy[0])
    t = (energy - centre) / half
    a = np.stack([t[lo:hi] ** k for k in range(degree + 1)], axis=1)
    coef, *_ = np.linalg.lstsq(a, y[lo:hi], rcond=None)
    fit: np.ndarray = sum(c * t**k for k, c in enumerate(coef))
    return fit


@pytest.mark.parametrize(
    "params", [NormParams(), NormParams(nnorm=2), NormParams(npre=0), NormParams(nvict=2)]
)
def test_core_matches_an_independent_least_squares_fit(params: NormParams) -> None:
    energy, mu = synthetic(shifts=(0.0, 3.0, -4.0), seed=3)
    e0 = energy[[150, 160, 140]]
    res = core.normalize_core(energy, mu, e0, params, make_flat=False)
    r = res.ranges
    for i in range(mu.shape[0]):
        vict = (energy / energy[0]) ** int(r.nvict[i])
        pre = _lstsq_fit(energy, mu[i] * vict, r.pre_lo[i], r.pre_hi[i], int(r.npre[i])) / vict
        post = _lstsq_fit(energy, mu[i] - pre, r.post_lo[i], r.post_hi[i], int(r.nnorm[i]))
        np.testing.assert_allclose(res.pre_edge[i], pre, rtol=0, atol=1e-10)
        np.testing.assert_allclose(res.post_edge[i], pre + post, rtol=0, atol=1e-10)
        step = max(1e-12, abs(post[r.ie0[i]]))
        np.testing.assert_allclose(res.norm[i], (mu[i] - pre) / step, rtol=0, atol=1e-9)


def test_cached_and_fresh_operators_give_the_same_rows() -> None:
    energy, mu = synthetic(shifts=(0.0, 1.0, 2.0, 5.0), seed=4)
    core._plan_cached.cache_clear()
    first = normalize_batch(energy, mu)  # builds the operators
    again = normalize_batch(energy, mu)  # reuses them
    singles = [normalize_batch(energy, mu[i : i + 1]) for i in range(mu.shape[0])]
    np.testing.assert_array_equal(first.norm, again.norm)
    np.testing.assert_array_equal(first.flat, again.flat)
    for i, one in enumerate(singles):
        np.testing.assert_allclose(one.flat[0], first.flat[i], rtol=0, atol=1e-12)
        assert one.e0[0] == first.e0[i]


def test_arbitrary_e0_values_keep_the_cache_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    energy, mu = synthetic(shifts=(0.0,) * 8, seed=5)
    core._plan_cached.cache_clear()
    plan = core._plan(energy, NormParams())
    monkeypatch.setattr(plan, "_max_rows", 16)
    rng = np.random.default_rng(0)
    reference = core.normalize_core(energy, mu, np.full(8, 7709.25), NormParams(), make_flat=True)
    for _ in range(10):
        e0 = 7709.0 + rng.uniform(-3, 3, size=8)  # not grid energies: a new key every time
        core.normalize_core(energy, mu, e0, NormParams(), make_flat=True)
        assert len(plan._rows) <= 16
    again = core.normalize_core(energy, mu, np.full(8, 7709.25), NormParams(), make_flat=True)
    np.testing.assert_allclose(again.flat, reference.flat, rtol=0, atol=1e-12)


def test_nan_e0_rows_are_computed_without_caching() -> None:
    energy, mu = synthetic(shifts=(0.0, 0.0), seed=6)
    core._plan_cached.cache_clear()
    e0 = np.array([np.nan, energy[150]])
    res = core.normalize_core(energy, mu, e0, NormParams(), make_flat=False)
    plan = core._plan(energy, NormParams())
    assert len(plan._rows) == 0  # a batch holding a NaN e0 is computed, not cached
    ok = core.normalize_core(energy, mu[1:], e0[1:], NormParams(), make_flat=False)
    np.testing.assert_allclose(res.norm[1], ok.norm[0], rtol=0, atol=1e-12)

"""Agreement of spt-stream's batched normalization with xraylarch's ``pre_edge``/``find_e0``.

Every measured spectrum in spt_stream/data/xas-references is read with spt-stream's reader and
the same arrays go to Larch and to spt-stream.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

from spt_stream.data import REFERENCE_DIR
from spt_stream.normalize import NormParams, find_e0, normalize_batch
from spt_stream.readers import read_spectrum

pytestmark = pytest.mark.larch


REFERENCE_FILES = sorted(p.name for p in REFERENCE_DIR.glob("*") if p.suffix not in (".md", ".tsv"))
#: Files where Larch's own e0 is not the absorption edge: the scan stops at 7108.6 eV, before
#: the Fe K edge (7112 eV), and Larch's e0 (7103.6 eV) is a point on the rising pre-edge.
LARCH_E0_WRONG = {"fe_xanes_8ch.xdi"}


def _larch(energy: np.ndarray, mu: np.ndarray, **kw: Any) -> Any:
    import larch  # test-only reference (scripts/setup.sh installs it); missing = a failure
    from larch.xafs import pre_edge

    group = larch.Group(energy=energy.copy(), mu=mu.copy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pre_edge(group, **kw)
    return group


def test_every_reference_file_is_covered() -> None:
    """The agreement tests run on all 45 reference spectra (none silently skipped)."""
    assert len(REFERENCE_FILES) == 45


@pytest.mark.parametrize("name", REFERENCE_FILES)
def test_norm_and_flat_match_larch_at_larch_e0(name: str) -> None:
    """With Larch's e0 passed to both, norm and flat agree within 0.01 from e0-20 to e0+80 eV."""
    spec = read_spectrum(REFERENCE_DIR / name)
    g = _larch(spec.energy, spec.mu)
    res = normalize_batch(spec.energy, spec.mu[None, :], NormParams(e0=g.e0))
    window = (spec.energy >= g.e0 - 20) & (spec.energy <= g.e0 + 80)
    assert window.sum() >= 10
    assert np.max(np.abs(res.norm[0] - g.norm)[window]) <= 0.01
    assert np.max(np.abs(res.flat[0] - g.flat)[window]) <= 0.01
    assert res.edge_step[0] == pytest.approx(g.edge_step, rel=1e-6)
    details = g.pre_edge_details
    assert (res.pre1[0], res.pre2[0], res.norm1[0], res.norm2[0], res.nnorm[0]) == pytest.approx(
        (details.pre1, details.pre2, details.norm1, details.norm2, details.nnorm)
    )


@pytest.mark.parametrize("name", REFERENCE_FILES)
def test_larch_mode_e0_matches_larch(name: str) -> None:
    """Larch-mode e0 is within 0.5 eV of Larch's find_e0 (it is the same grid point here)."""
    spec = read_spectrum(REFERENCE_DIR / name)
    g = _larch(spec.energy, spec.mu)
    ours = find_e0(spec.energy, spec.mu[None, :], "larch")[0]
    assert abs(ours - g.e0) <= 0.5


@pytest.mark.parametrize("name", sorted(set(REFERENCE_FILES) - LARCH_E0_WRONG))
def test_robust_mode_agrees_where_larch_is_right(name: str) -> None:
    """On these spectra (no strong pre-edge peaks) the robust e0 is Larch's e0 within 0.5 eV."""
    spec = read_spectrum(REFERENCE_DIR / name)
    g = _larch(spec.energy, spec.mu)
    ours = find_e0(spec.energy, spec.mu[None, :], "robust")[0]
    assert abs(ours - g.e0) <= 0.5


@pytest.mark.parametrize("nnorm", [0, 1, 2])
@pytest.mark.parametrize("name", ["co_metal_rt.xdi", "Mn__MnO.txt", "MnO2_rt_01.xdi"])
def test_explicit_parameters_match_larch(name: str, nnorm: int) -> None:
    """Explicit pre1/pre2/norm1/norm2/nnorm/nvict have Larch's meanings (relative to e0)."""
    spec = read_spectrum(REFERENCE_DIR / name)
    kw: dict[str, Any] = {
        "pre1": -60.0,
        "pre2": -25.0,
        "norm1": 30.0,
        "norm2": 90.0,
        "nnorm": nnorm,
        "nvict": 1,
    }
    g = _larch(spec.energy, spec.mu, **kw)
    res = normalize_batch(spec.energy, spec.mu[None, :], NormParams(e0=g.e0, **kw))
    window = (spec.energy >= g.e0 - 20) & (spec.energy <= g.e0 + 80)
    assert np.max(np.abs(res.norm[0] - g.norm)[window]) <= 0.01


@pytest.mark.parametrize("name", ["Fe2O3_rt_01.xdi", "Mn__MnCl2.txt"])
def test_constant_pre_edge_matches_larch(name: str) -> None:
    """npre=0 (a constant pre-edge, the mean of mu over the range) agrees with Larch."""
    spec = read_spectrum(REFERENCE_DIR / name)
    g = _larch(spec.energy, spec.mu, npre=0)
    res = normalize_batch(spec.energy, spec.mu[None, :], NormParams(e0=g.e0, npre=0))
    window = (spec.energy >= g.e0 - 20) & (spec.energy <= g.e0 + 80)
    assert np.max(np.abs(res.norm[0] - g.norm)[window]) <= 0.01


def _pre_edge_peak_spectrum() -> tuple[np.ndarray, np.ndarray, float, float]:
    """Synthetic tetrahedral-Co-like K edge: a tall, narrow pre-edge peak 12 eV below the edge."""
    energy = np.arange(7600.0, 7900.0, 0.5)
    edge, peak = 7721.0, 7709.0
    step = 0.5 + np.arctan((energy - edge) / 2.5) / np.pi
    pre = 0.6 * np.exp(-0.5 * ((energy - peak) / 0.9) ** 2)
    white = 0.25 * np.exp(-0.5 * ((energy - edge - 6.0) / 4.0) ** 2) * (energy > edge)
    mu = 0.3 - 2e-4 * (energy - 7600.0) + 1.2 * (step + pre + white)
    return energy, mu, edge, peak


def test_robust_e0_lands_on_main_edge_with_strong_pre_edge_peak() -> None:
    """Larch's e0 goes to the pre-edge peak; the robust e0 stays on the main edge."""
    energy, mu, edge, peak = _pre_edge_peak_spectrum()
    g = _larch(energy, mu)
    assert abs(g.e0 - peak) < 2.0  # Larch is fooled: this is what robust mode is for
    larch_mode = find_e0(energy, mu[None, :], "larch")[0]
    robust = find_e0(energy, mu[None, :], "robust")[0]
    assert abs(larch_mode - g.e0) <= 0.5
    assert abs(robust - edge) <= 1.5

"""The spectrum model: chemical shift, pre-edge, post-edge oscillations, broadening, pipeline."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from spt_stream.config import CONFIG_DIR
from spt_stream.core.grid import MODEL_GRID_REL, edge_energy
from spt_stream.simulate.calibrate import load_params, trend_features
from spt_stream.simulate.environment import SiteSpec, build_environment
from spt_stream.simulate.physics import K_GRID, PhysicsParams, acentricity, broaden, chi_k
from spt_stream.simulate.pipeline import (
    FINE_REL,
    FINE_STEP,
    Acquisition,
    fine_spectrum,
    normalize_to_model_grid,
    raw_spectrum,
)

P = PhysicsParams()


def _model_grid(spec: SiteSpec, acq: Acquisition | None = None) -> np.ndarray:
    env = build_environment(spec, np.random.default_rng(0))
    fine = fine_spectrum(env, P)
    grid = np.arange(-150.0, 400.0, 0.5)
    raw = raw_spectrum(fine, spec.element, grid, acq or Acquisition(), np.random.default_rng(1))
    out: np.ndarray = normalize_to_model_grid(
        grid + edge_energy(spec.element), raw[None, :], spec.element
    )[0]
    return out


@pytest.mark.parametrize("element", ["Mn", "Fe", "Co"])
def test_edge_shift_is_monotonic_with_oxidation_state(element: str) -> None:
    """Normalized half-height edge position rises with OS, by roughly the per-unit shift."""
    states = {"Mn": (2, 3, 4), "Fe": (2, 3, 4), "Co": (2, 3, 4)}[element]
    edges = [
        trend_features(_model_grid(SiteSpec(element, s, "octahedral", ("O",) * 6)))["edge"]
        for s in states
    ]
    assert np.all(np.diff(edges) > 1.5), edges
    metal = trend_features(_model_grid(SiteSpec(element, 0, "hcp")))["edge"]
    assert metal < edges[0]


def test_pre_edge_tetrahedral_stronger_than_octahedral() -> None:
    """Fe3+ Td pre-edge peak is several times the Oh one; d10 Zn2+ has none; acentricity
    is 0 for Oh/square-planar and 1 for Td."""

    def pre_height(spec: SiteSpec) -> float:
        y = _model_grid(spec)
        sel = (MODEL_GRID_REL > -5) & (MODEL_GRID_REL < 5)
        return float(y[sel].max())

    td = pre_height(SiteSpec("Fe", 3, "tetrahedral", ("O",) * 4))
    oh = pre_height(SiteSpec("Fe", 3, "octahedral", ("O",) * 6))
    assert td > 2.5 * oh
    rng = np.random.default_rng(0)
    assert acentricity(build_environment(SiteSpec("Fe", 3, "tetrahedral", ("O",) * 4))) == (
        pytest.approx(1.0)
    )
    assert acentricity(build_environment(SiteSpec("Ni", 2, "square_planar", ("O",) * 4))) < 1e-9
    sqp = build_environment(SiteSpec("Cu", 2, "square_pyramidal", ("O",) * 5), rng)
    assert 0.05 < acentricity(sqp) < 1.0
    zn = build_environment(SiteSpec("Zn", 2, "tetrahedral", ("O",) * 4))
    fine = fine_spectrum(zn, PhysicsParams(pre_quad=0.0, pre_dip=0.0))
    assert np.allclose(fine, fine_spectrum(zn, P))  # no 3d holes: pre-edge terms absent


def test_post_edge_oscillation_follows_bond_length() -> None:
    """The Fourier transform of chi(k) of a single shell peaks at R minus the phase shift: a
    longer bond moves the peak out by the same amount (the duality SPT relies on)."""

    def ft_peak(scale: float) -> float:
        base = SiteSpec("Fe", 3, "octahedral", ("O",) * 6)
        env = build_environment(base)
        env2 = type(env)(
            env.element, env.oxidation_state, env.geometry, env.first_species,
            env.first_coords * scale, (), np.zeros((0, 3)),
        )  # fmt: skip
        chi = chi_k(env2, PhysicsParams(ms_scale=0.0))
        sel = (K_GRID > 2.0) & (K_GRID < 12.0)
        k, y = K_GRID[sel], chi[sel] * K_GRID[sel] ** 2 * np.hanning(int(sel.sum()))
        r = np.linspace(0.5, 5.0, 900)
        amp = np.abs(np.exp(2j * np.outer(r, k)) @ y)
        return float(r[np.argmax(amp)])

    r1, r2 = ft_peak(1.0), ft_peak(1.15)
    r_bond = 2.015  # Fe3+-O, BVS
    assert r2 - r1 == pytest.approx(0.15 * r_bond, abs=0.05)
    assert 1.4 < r1 < 2.0  # below R by the phase shift (~0.3-0.5 A)


def test_first_post_edge_minimum_moves_down_with_longer_bonds() -> None:
    """In the spectrum itself, longer bonds bring the first post-white-line minimum lower in
    energy (E ~ 1/R^2 scaling of the scattering resonances)."""
    short = trend_features(_model_grid(SiteSpec("Mn", 4, "octahedral", ("O",) * 6)))["first_min"]
    long_ = trend_features(_model_grid(SiteSpec("Mn", 2, "octahedral", ("O",) * 6)))["first_min"]
    assert long_ < short


def test_broaden_preserves_area_and_step() -> None:
    """Convolution keeps a peak's area and leaves a step's far plateaus in place."""
    x = FINE_REL.copy()
    peak = np.exp(-0.5 * (x / 0.3) ** 2)
    out = broaden(peak, FINE_STEP, 1.3, 1.5)
    assert out.sum() == pytest.approx(peak.sum(), rel=2e-3)
    assert out.max() < peak.max()
    step = (x > 0).astype(float)
    s = broaden(step, FINE_STEP, 1.3, 1.5)
    assert s[0] == pytest.approx(0.0, abs=5e-3)
    assert s[-1] == pytest.approx(1.0, abs=5e-3)


def test_raw_spectrum_is_raw_like_and_normalizes_back() -> None:
    """Raw output has the requested edge step and background; the engine's normalization brings
    it back to the clean normalized shape."""
    spec = SiteSpec("Fe", 3, "octahedral", ("O",) * 6)
    acq = Acquisition(edge_step=0.3, background=(1.5, -0.2, 0.01), noise=0.0)
    env = build_environment(spec)
    grid = np.arange(-150.0, 400.0, 0.5)
    raw = raw_spectrum(fine_spectrum(env, P), "Fe", grid, acq, np.random.default_rng(0))
    assert raw[0] == pytest.approx(0.3 * (1.5 - 0.2 * -1.5 + 0.01 * 2.25), abs=0.01)
    clean = _model_grid(spec)
    dirty = _model_grid(spec, acq)
    assert np.sqrt(np.mean((clean - dirty) ** 2)) < 0.02


# -- covalency, d10, glasses, catalogue (issue 15) ------------------------------------------------


def test_sulfide_and_selenide_edges_lie_below_the_oxide_by_the_fitted_covalency() -> None:
    """At the same state and geometry an S4 / Se4 shell's edge lies below the O4 one by
    shift_per_chi x (chi_O - chi_X) (the calibrated parameter), and its white line is flatter."""
    from spt_stream.simulate.physics import (
        ELECTRONEGATIVITY,
        edge_position,
        ligand_white_line_factor,
    )

    p = load_params(CONFIG_DIR / "simulate" / "calibrated.yaml")
    rng = np.random.default_rng(0)
    pos = {}
    for lig in ("O", "S", "Se"):
        env = build_environment(SiteSpec("Zn", 2, "tetrahedral", (lig,) * 4), rng)
        pos[lig] = edge_position(env, p)
    for lig in ("S", "Se"):
        want = p.shift_per_chi * (ELECTRONEGATIVITY["O"] - ELECTRONEGATIVITY[lig])
        assert pos["O"] - pos[lig] == pytest.approx(want, abs=1e-9)
        assert want > 0.5  # the fit found covalent ligands lower the edge
        assert ligand_white_line_factor(lig, p) < ligand_white_line_factor("O", p)


def test_d10_ions_have_no_pre_edge() -> None:
    """Zn2+ and Cu+ (3d10): no 1s->3d term at all (the spectrum equals the one computed without
    pre-edge physics); Fe3+ Td has one."""
    from spt_stream.simulate.physics import site_spectrum

    p = load_params(CONFIG_DIR / "simulate" / "calibrated.yaml")
    rng = np.random.default_rng(0)
    for el, os_, pre in (("Zn", 2, False), ("Cu", 1, False), ("Fe", 3, True)):
        env = build_environment(SiteSpec(el, os_, "tetrahedral", ("O",) * 4), rng)
        e = edge_energy(el) + FINE_REL
        p_no_pre = replace(p, pre_quad=0.0, pre_dip=0.0)
        diff = site_spectrum(env, e, p) - site_spectrum(env, e, p_no_pre)
        assert (float(np.max(np.abs(diff))) > 0.01) == pre, (el, os_)


def test_glass_sites_have_low_broad_coordination_and_their_cn_label_follows_the_shell() -> None:
    from dataclasses import replace as dc_replace

    from spt_stream.simulate.environment import build_environment
    from spt_stream.simulate.sampler import Recipe, sample_site
    from spt_stream.simulate.site_descriptors import describe

    recipe = dc_replace(Recipe(elements={"Fe": 1.0}, metal_weight=0.0), glass_prob=1.0)
    rng = np.random.default_rng(5)
    cns = []
    for _ in range(40):
        spec = sample_site(rng, recipe)
        env = build_environment(spec, rng)
        assert describe(env)["cn"] == len(env.first_species)
        assert set(env.first_species) == {"O"}
        assert spec.bond_jitter >= 0.04
        cns.append(len(env.first_species))
    assert set(cns) >= {4, 5, 6}
    assert np.mean(cns) < 5.2


def test_every_catalogued_state_is_generated() -> None:
    """Each (element, state) of the catalogue, the electrochemical ones included, comes out of
    the sampler (Ni4+, Co4+, Fe4+, Mn5+, Cu3+, V2+, Cr5+...)."""
    from spt_stream.simulate.sampler import SITE_CATALOGUE, Recipe, sample_site

    for el, combos in SITE_CATALOGUE.items():
        seen = set()
        rng = np.random.default_rng(1)
        for _ in range(400):
            seen.add(sample_site(rng, Recipe(elements={el: 1.0})).oxidation_state)
        assert seen == {o for o, _, _ in combos}, el
    assert {4} <= {o for o, _, _ in SITE_CATALOGUE["Ni"]}
    assert {3} <= {o for o, _, _ in SITE_CATALOGUE["Cu"]}
    assert {2, 3, 4, 5} <= {o for o, _, _ in SITE_CATALOGUE["V"]}
    assert {2, 3, 4, 5, 6} <= {o for o, _, _ in SITE_CATALOGUE["Cr"]}

"""Local-environment geometry, bond valence and the descriptors computed from it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spt_stream.errors import ConfigError, SptValueError
from spt_stream.simulate.environment import BV_B, SiteSpec, bond_valence_r0, build_environment
from spt_stream.simulate.sampler import Recipe, load_recipe, sample_site
from spt_stream.simulate.site_descriptors import LABEL_NAMES, describe


def _bvs(spec: SiteSpec) -> float:
    env = build_environment(spec, np.random.default_rng(0))
    r0 = np.array([bond_valence_r0(spec.element, spec.oxidation_state, x) for x in spec.ligands])
    return float(np.sum(np.exp((r0 - env.first_distances) / BV_B)))


def test_ideal_octahedron_descriptors() -> None:
    """An ideal FeO6 octahedron: CN 6, OCN 6, NNRS 0, MOOD = sqrt(2) R, mean distance R."""
    env = build_environment(SiteSpec("Fe", 3, "octahedral", ("O",) * 6), np.random.default_rng(0))
    d = describe(env)
    r = float(env.first_distances[0])
    assert set(d) == set(LABEL_NAMES)
    assert d["cn"] == 6
    assert d["ocn"] == 6
    assert d["os"] == 3
    assert d["nnrs"] == pytest.approx(0.0, abs=1e-12)
    assert d["mood"] == pytest.approx(math.sqrt(2.0) * r, rel=1e-9)
    assert d["mean_nn_distance"] == pytest.approx(r)
    assert 1.95 < r < 2.1  # Fe3+-O from bond valence (hematite ~2.03 A)


def test_tetrahedron_mood_and_mixed_ligands() -> None:
    """Td: MOOD = R sqrt(8/3); replacing ligands by Cl lowers OCN; <2 O gives MOOD NaN."""
    env = build_environment(SiteSpec("Zn", 2, "tetrahedral", ("O",) * 4), np.random.default_rng(0))
    r = float(env.first_distances[0])
    assert describe(env)["mood"] == pytest.approx(r * math.sqrt(8.0 / 3.0), rel=1e-9)
    mixed = build_environment(
        SiteSpec("Zn", 2, "tetrahedral", ("O", "Cl", "Cl", "Cl")), np.random.default_rng(0)
    )
    d = describe(mixed)
    assert d["ocn"] == 1
    assert math.isnan(d["mood"])
    assert d["nnrs"] > 0.1  # Zn-Cl bonds are much longer than Zn-O


def test_bond_valence_sum_equals_oxidation_state_under_distortion() -> None:
    """Jahn-Teller, trigonal and random distortions keep the bond valence sum equal to the OS."""
    for spec in (
        SiteSpec("Mn", 3, "octahedral", ("O",) * 6, jahn_teller=0.3),
        SiteSpec("Fe", 3, "octahedral", ("O",) * 6, trigonal=0.15, bond_jitter=0.05),
        SiteSpec("Cu", 2, "square_pyramidal", ("O", "O", "N", "N", "O"), jahn_teller=0.2),
    ):
        assert _bvs(spec) == pytest.approx(spec.oxidation_state, rel=1e-9)
    jt = describe(build_environment(SiteSpec("Mn", 3, "octahedral", ("O",) * 6, jahn_teller=0.3)))
    assert jt["nnrs"] > 0.1


def test_metals_and_second_shell() -> None:
    """bcc metals have 8 neighbours, fcc/hcp 12, both 6 in the second shell; compounds count
    edge + corner-sharing metal neighbours as CN2."""
    bcc = describe(build_environment(SiteSpec("Fe", 0, "bcc")))
    fcc = describe(build_environment(SiteSpec("Cu", 0, "fcc")))
    assert (bcc["cn"], bcc["cn2"], bcc["ocn"], bcc["os"]) == (8, 6, 0, 0)
    assert (fcc["cn"], fcc["cn2"]) == (12, 6)
    assert bcc["mean_nn_distance"] == pytest.approx(2.48)
    site = SiteSpec("Co", 3, "octahedral", ("O",) * 6, n_edge=6, n_corner=3)
    env = build_environment(site, np.random.default_rng(1))
    assert describe(env)["cn2"] == 9
    assert np.all(env.second_distances > env.first_distances.max())


def test_bad_specs_raise() -> None:
    """Unknown element, wrong ligand count and bad recipe keys are clear errors."""
    with pytest.raises(SptValueError, match="unsupported absorber"):
        build_environment(SiteSpec("Pb", 2, "octahedral", ("O",) * 6))
    with pytest.raises(SptValueError, match="needs 6 ligands"):
        build_environment(SiteSpec("Fe", 2, "octahedral", ("O",) * 4))
    with pytest.raises(ConfigError, match="not in"):
        Recipe(elements={"Xx": 1.0})


def test_sampler_draws_plausible_sites(tmp_path: object) -> None:
    """Sampled sites build, have finite labels within the recipe's ranges, and d10 ions (Zn2+,
    Cu+) never appear with OS outside the catalogue; the default recipe file loads."""
    from spt_stream.config import CONFIG_DIR

    recipe = load_recipe(CONFIG_DIR / "simulate" / "default.yaml")
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(150):
        spec = sample_site(rng, recipe)
        env = build_environment(spec, rng)
        d = describe(env)
        seen.add((spec.element, spec.oxidation_state))
        assert 2 <= d["cn"] <= 12
        assert 0 <= d["ocn"] <= d["cn"]
        assert 1.5 < d["mean_nn_distance"] < 3.0
        if spec.oxidation_state > recipe.oxo_only_above:
            assert d["ocn"] == d["cn"]
    assert ("Zn", 3) not in seen
    assert ("Ti", 7) not in seen
    assert len({e for e, _ in seen}) == 9

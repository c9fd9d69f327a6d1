"""Generation at scale: determinism, worker independence, the dataset format, mixed-valence
samples and the CLI."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from spt_stream.core.grid import MODEL_GRID_REL, edge_energy
from spt_stream.simulate.generate import generate_arrays, generate_dataset
from spt_stream.simulate.physics import PhysicsParams
from spt_stream.simulate.sampler import Recipe
from spt_stream.training.datasets import load_dataset

RECIPE = Recipe(chunk_size=6)


def test_deterministic_from_seed_and_independent_of_workers() -> None:
    """Same seed -> identical arrays with 1 or 2 worker processes; another seed differs."""
    p = PhysicsParams()
    a = generate_arrays(RECIPE, p, 16, seed=5, workers=1)
    b = generate_arrays(RECIPE, p, 16, seed=5, workers=2)
    c = generate_arrays(RECIPE, p, 16, seed=6, workers=1)
    assert np.array_equal(a["spectra"], b["spectra"])
    assert np.array_equal(a["element"], b["element"])
    for k in a["labels"]:
        np.testing.assert_array_equal(a["labels"][k], b["labels"][k])
    assert not np.array_equal(a["spectra"], c["spectra"])


def test_generated_dataset_round_trips_through_load_dataset(tmp_path: Path) -> None:
    """The saved data set loads with the model engineer's loader: model grid, finite
    normalized spectra (edge step ~1 far above the edge), the paper's labels, provenance."""
    ds = generate_dataset(RECIPE, 24, seed=1, workers=1, out=tmp_path / "ds")
    back = load_dataset(tmp_path / "ds")
    assert len(back) == 24
    np.testing.assert_array_equal(back.energy_rel, MODEL_GRID_REL)
    np.testing.assert_array_equal(back.spectra, ds.spectra)
    assert set(back.labels) == {"os", "cn", "cn2", "ocn", "nnrs", "mood", "mean_nn_distance"}
    assert np.all(np.isfinite(back.spectra))
    assert 0.8 < float(np.median(back.spectra[:, -1])) < 1.2
    assert float(np.median(back.spectra[:, 0])) < 0.1
    assert back.provenance["seed"] == 1
    assert back.provenance["normalized"] == "flat"
    assert set(back.edge.tolist()) == {"K"}


def test_recipe_restricts_elements() -> None:
    """A recipe with one element and no metals yields only that element with OS > 0."""
    rec = replace(RECIPE, elements={"Co": 1.0}, metal_weight=0.0)
    out = generate_arrays(rec, PhysicsParams(), 12, seed=0)
    assert set(out["element"].tolist()) == {"Co"}
    assert np.all(out["labels"]["os"] >= 2)


def test_cli_simulate_writes_a_dataset(tmp_path: Path) -> None:
    """`spt-stream simulate` as a user runs it: writes a loadable dataset and reports the rate."""
    from spt_stream.commands import simulate

    app = typer.Typer()
    simulate.register(app)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("elements: {Fe: 1.0, Mn: 1.0}\nchunk_size: 8\nphysics: null\n")
    res = CliRunner().invoke(
        app,
        ["simulate", "--recipe", str(recipe), "--n", "10", "--seed", "0", "--workers", "1",
         "--out", str(tmp_path / "o")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "spectra/s" in res.output
    assert len(load_dataset(tmp_path / "o")) == 10
    bad = tmp_path / "bad.yaml"
    bad.write_text("elements: {Xx: 1}\n")
    res = CliRunner().invoke(app, ["simulate", "--recipe", str(bad), "--out", str(tmp_path / "b")])
    assert res.exit_code == 2
    assert "not in" in res.output


MIX = Recipe(chunk_size=8, elements={"Co": 1.0}, mixture_prob=1.0, physics=None)


def test_mixture_sites_are_adjacent_catalogue_states_of_one_element() -> None:
    """A mixed-valence sample is two catalogue sites of one element in ADJACENT states of the
    catalogue (metal/lowest compound included), weights (1 - w, w) summing to 1; every adjacent
    pair of every element is catalogued (fractional states dense over each element's range)."""
    from spt_stream.simulate.sampler import MIXED_VALENCE, SITE_CATALOGUE, sample_sites

    for el, pairs in MIXED_VALENCE.items():
        known = {(o, g) for o, g, _ in SITE_CATALOGUE[el]}
        states = sorted({o for o, _ in known})
        adjacent = set(itertools.pairwise(states))
        assert {(lo, hi) for lo, _, hi, _, _ in pairs} == adjacent, el
        for lo, g_lo, hi, g_hi, _ in pairs:
            assert (lo, g_lo) in known, (el, lo, g_lo)
            assert (hi, g_hi) in known, (el, hi, g_hi)
    rng = np.random.default_rng(3)
    for _ in range(30):
        specs, weights = sample_sites(rng, replace(MIX, elements={"Fe": 1.0, "Mn": 1.0}))
        assert len(specs) == 2
        assert specs[0].element == specs[1].element
        states = sorted({o for o, _, _ in SITE_CATALOGUE[specs[0].element]})
        lo = states.index(specs[0].oxidation_state)
        assert specs[1].oxidation_state == states[lo + 1]
        assert sum(weights) == pytest.approx(1.0)
        assert 0.0 <= weights[1] <= 1.0


def test_mixture_labels_are_weighted_means_and_spectrum_the_weighted_sum() -> None:
    """draw_sample (the per-row step of generation): every label is the weight-averaged site
    label (os = (1 - w) OS_low + w OS_high, fractional), and the fine spectrum is
    sum_i w_i * site spectrum_i."""
    from spt_stream.simulate.generate import draw_sample
    from spt_stream.simulate.physics import site_spectrum
    from spt_stream.simulate.pipeline import FINE_REL
    from spt_stream.simulate.site_descriptors import describe

    rng = np.random.default_rng(11)
    for _ in range(6):
        d = draw_sample(rng, MIX, PhysicsParams())
        assert len(d.envs) == 2
        w = d.weights[1]
        lo, hi = (describe(e) for e in d.envs)
        o_lo, o_hi = d.envs[0].oxidation_state, d.envs[1].oxidation_state
        assert d.labels["os"] == pytest.approx((1 - w) * o_lo + w * o_hi)
        for k in ("cn", "cn2", "ocn", "nnrs", "mean_nn_distance"):
            assert d.labels[k] == pytest.approx((1 - w) * lo[k] + w * hi[k]), k
        energy = FINE_REL + edge_energy("Co")
        parts = [
            site_spectrum(e, energy, d.params, edge_shift=d.acquisition.edge_shift) for e in d.envs
        ]
        np.testing.assert_allclose(d.fine, (1 - w) * parts[0] + w * parts[1], atol=1e-12)
        assert not np.allclose(parts[0], parts[1], atol=1e-3)  # the two valences differ


def test_generated_mixtures_have_fractional_labels_and_are_deterministic() -> None:
    """mixture_prob=1: all rows are mixtures (fractional os, counted in the provenance), finite,
    identical from the same seed; mixture_prob=0 gives integer os."""
    a = generate_arrays(MIX, PhysicsParams(), 16, seed=2, workers=1)
    b = generate_arrays(MIX, PhysicsParams(), 16, seed=2, workers=1)
    assert np.array_equal(a["spectra"], b["spectra"])
    np.testing.assert_array_equal(a["labels"]["os"], b["labels"]["os"])
    assert a["mixtures"] == 16
    os_ = a["labels"]["os"]
    assert np.all(np.abs(os_ - np.round(os_)) > 0)
    assert np.all((os_ > 0) & (os_ < 4))  # Co0/Co2+, Co2+/Co3+, Co3+/Co4+ pairs
    assert np.any(os_ < 2)  # the metal/oxide pair is drawn too
    assert np.all(np.isfinite(a["spectra"]))
    plain = generate_arrays(replace(MIX, mixture_prob=0.0), PhysicsParams(), 8, seed=2)
    assert plain["mixtures"] == 0
    np.testing.assert_array_equal(plain["labels"]["os"], np.round(plain["labels"]["os"]))


def test_mixture_prob_is_validated() -> None:
    """A mixture probability outside [0, 1] is a ConfigError naming the field."""
    from spt_stream.errors import ConfigError

    with pytest.raises(ConfigError, match="mixture_prob"):
        Recipe(mixture_prob=1.5)

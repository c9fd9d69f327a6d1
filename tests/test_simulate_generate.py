"""Generation at scale: determinism, worker independence, the dataset format and the CLI."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import typer
from typer.testing import CliRunner

from spt_stream.datasets import load_dataset
from spt_stream.grid import MODEL_GRID_REL
from spt_stream.simulate.generate import generate_arrays, generate_dataset
from spt_stream.simulate.physics import PhysicsParams
from spt_stream.simulate.sampler import Recipe

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

"""Datasets (format, importer, group splits) and checkpoints (safetensors round trip)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pytest
import torch

from spt_stream.core.grid import MODEL_GRID_REL
from spt_stream.errors import CheckpointError, SptValueError
from spt_stream.model.checkpoint import (
    CheckpointMetadata,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from spt_stream.model.descriptors import load_descriptor_schema
from spt_stream.model.network import SPTConfig, SPTInference
from spt_stream.training.datasets import import_table, load_dataset, save_dataset, split_by_group
from spt_stream.training.synthetic import make_toy_dataset
from spt_stream.training.train import heads_from_schema


def test_dataset_round_trip_and_hash(tmp_path: Path) -> None:
    """save/load keeps every array; a modified array is detected by the content hash."""
    ds = make_toy_dataset(10, 2, seed=3)
    save_dataset(ds, tmp_path / "ds")
    back = load_dataset(tmp_path / "ds")
    assert np.array_equal(back.spectra, ds.spectra)
    assert back.element.tolist() == ds.element.tolist()
    assert set(back.labels) == set(ds.labels)
    assert np.array_equal(back.labels["os"], ds.labels["os"])
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())
    assert meta["sha256"] == ds.content_hash()
    assert meta["grid"]["n_points"] == 224
    arrays = dict(np.load(tmp_path / "ds" / "arrays.npz"))
    arrays["spectra"][0, 0] += 1.0
    np.savez(tmp_path / "ds" / "arrays.npz", **arrays)
    with pytest.raises(SptValueError, match="sha256"):
        load_dataset(tmp_path / "ds")


def test_split_by_group_keeps_groups_whole() -> None:
    """No structure appears in two parts, and the parts cover every row."""
    ds = make_toy_dataset(50, 3, seed=0)
    parts = split_by_group(ds, (0.6, 0.2, 0.2), seed=1)
    sets = [set(p.groups.tolist()) for p in parts]
    assert not (sets[0] & sets[1])
    assert not (sets[0] & sets[2])
    assert not (sets[1] & sets[2])
    assert sum(len(p) for p in parts) == len(ds)
    assert 0.45 < len(parts[0]) / len(ds) < 0.75


def test_import_csv_resamples_onto_model_grid(tmp_path: Path) -> None:
    """A CSV with absolute energies as columns is resampled onto the grid; labels, groups kept."""
    e_abs = 7709.0 + np.arange(-30.0, 120.0, 1.0)  # Co K edge, 1 eV steps
    mu = np.tanh((e_abs - 7712.0) / 3.0) * 0.5 + 0.5
    df = pd.DataFrame([mu, mu * 0.9], columns=[f"{e:.1f}" for e in e_abs])
    df["element"] = ["Co", "co"]
    df["os"] = [3.0, np.nan]
    df["group"] = ["mp-1", "mp-1"]
    df.to_csv(tmp_path / "t.csv", index=False)
    ds = import_table(tmp_path / "t.csv", energy_reference="absolute")
    assert ds.spectra.shape == (2, len(MODEL_GRID_REL))
    expected = np.interp(MODEL_GRID_REL + 7709.0, e_abs, mu)
    assert np.allclose(ds.spectra[0], expected, atol=1e-6)
    assert ds.element.tolist() == ["Co", "Co"]
    assert ds.groups.tolist() == [0, 0]
    assert ds.labels["os"][0] == 3.0
    assert np.isnan(ds.labels["os"][1])


def test_import_npz_needs_element(tmp_path: Path) -> None:
    """An NPZ table without an element column is refused unless element= is given."""
    np.savez(tmp_path / "t.npz", spectra=np.ones((3, 50)), energy=np.linspace(-30, 100, 50),
             label__cn=np.array([4.0, 6.0, 6.0]))  # fmt: skip
    with pytest.raises(SptValueError, match="element"):
        import_table(tmp_path / "t.npz")
    ds = import_table(tmp_path / "t.npz", element="Fe")
    assert ds.labels["cn"].tolist() == [4.0, 6.0, 6.0]
    assert ds.element.tolist() == ["Fe"] * 3


def _small_model() -> tuple[SPTInference, CheckpointMetadata]:
    schema = load_descriptor_schema().subset(["os", "nnrs"])
    cfg = SPTConfig(heads=heads_from_schema(schema), d_model=16, band_channels=8, n_blocks=1)
    model = SPTInference(cfg).eval()
    model.temperature.fill_(1.7)
    model.ood_threshold.fill_(3.0)
    meta = CheckpointMetadata(
        architecture=cfg, schema=schema, grid_rel=tuple(MODEL_GRID_REL.tolist()),
        metrics={"x": 1.0}, data_hash="abc",
    )  # fmt: skip
    return model, meta


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    """Weights, calibration buffers and metadata survive save/load; outputs are identical."""
    model, meta = _small_model()
    path = save_checkpoint(model, meta, tmp_path / "m.safetensors")
    loaded, meta2 = load_checkpoint(path)
    x, el = torch.rand(4, 224), torch.tensor([1, 2, 6, 0])
    with torch.no_grad():
        for a, b in zip(model(x, el), loaded(x, el), strict=True):
            assert torch.equal(a, b)
    assert float(loaded.temperature[0]) == pytest.approx(1.7)
    assert meta2.schema == meta.schema
    assert meta2.architecture == meta.architecture
    assert meta2.data_hash == "abc"
    assert meta2.metrics["x"] == 1.0
    raw = read_metadata(path)
    assert raw["format"] == "spt-stream-checkpoint"
    assert raw["elements"][0] == "Sc"


def test_checkpoint_rejects_tampering_and_other_grids(tmp_path: Path) -> None:
    """Changed bytes, a different grid, or a non-checkpoint file raise CheckpointError."""
    model, meta = _small_model()
    path = save_checkpoint(model, meta, tmp_path / "m.safetensors")
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0xFF
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(bad)
    other = CheckpointMetadata(
        **{**meta.__dict__, "grid_rel": tuple((MODEL_GRID_REL + 1).tolist())}
    )
    with pytest.raises(CheckpointError, match="grid"):
        load_checkpoint(save_checkpoint(model, other, tmp_path / "g.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "junk.safetensors")

"""The shipped default checkpoint: loads safely, matches its metadata, reads real spectra."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from spt_stream.checkpoint import default_checkpoint_path, load_checkpoint, read_metadata
from spt_stream.commands.predict import predict_files
from spt_stream.grid import MODEL_GRID_REL


def test_checkpoint_matches_its_metadata() -> None:
    """The packaged model loads (no pickle), its grid and heads match the recorded metadata, and
    the metrics file next to it is the one its header summarises."""
    path = default_checkpoint_path()
    assert path.stat().st_size < 20 * 1024 * 1024
    model, meta = load_checkpoint(path)
    header = read_metadata(path)
    assert tuple(header["grid_rel"]) == tuple(float(v) for v in MODEL_GRID_REL)
    assert header["name"] == meta.name == "spt-default"
    assert [h.name for h in model.cfg.heads] == [
        d["name"] for d in header["descriptors"]["descriptors"]
    ]
    assert {"Mn", "Fe", "Co"} <= set(header["elements"])
    assert meta.calibrated
    assert meta.ood_fitted
    full = json.loads(path.with_name("spt-default.metrics.json").read_text())
    assert header["metrics"]["n_train"] == full["n_train"]
    assert len(hashlib.sha256(path.read_bytes()).hexdigest()) == 64


@pytest.mark.parametrize(
    ("name", "nominal"),
    [("Fe2O3_rt_01.xdi", 3.0), ("MnO_rt_01.xdi", 2.0), ("co_metal_rt.xdi", 0.0)],
)
def test_reads_real_references_within_uncertainty(
    reference_dir: Path, name: str, nominal: float
) -> None:
    """Real measured spectra (not trained on) come out at their nominal oxidation state within
    two standard deviations, and are not flagged out of distribution."""
    records, errors = predict_files([reference_dir / name], None, None)
    assert not errors
    (rec,) = records
    assert abs(rec["os"] - nominal) <= max(2 * rec["os_std"], 0.25)
    assert rec["ood"] is False

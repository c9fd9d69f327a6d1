"""The shipped default checkpoint: loads safely, matches its metadata, reads real spectra."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from spt_stream.core.grid import MODEL_GRID_REL
from spt_stream.model.checkpoint import default_checkpoint_path, load_checkpoint, read_metadata
from spt_stream.model.predict_files import predict_files


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


def test_scores_on_every_measured_reference_beside_the_edge_baseline(reference_dir: Path) -> None:
    """The shipped model on all the measured references (regression guard at the levels measured
    for docs/MODEL.md; the issue's targets are reported there as met or missed): exact class
    >= 90 % (measured 95 %), MAE < 0.25 (0.227), nominal within 2 std >= 90 % (100 %), at most one
    confident error (measured 0), and on compounds the network at or below os_edge's MAE."""
    from spt_stream.training.real_eval import _scores_of, evaluate_references

    rows = evaluate_references(reference_dir)
    spt = _scores_of(rows, "os")
    assert spt.n >= 40
    assert spt.exact >= 0.90, spt
    assert spt.mae < 0.25, spt
    assert spt.within_2std >= 0.90, spt
    assert spt.confident_errors <= 1, spt
    compounds = [r for r in rows if (r["nominal"] or 0) > 0]
    assert _scores_of(compounds, "os").mae <= _scores_of(compounds, "os_edge").mae
    sulfides = [r for r in rows if r["sample"] in ("FeS2", "ZnS")]
    assert len(sulfides) == 3
    assert all(abs(r["os"] - 2.0) < 1.0 for r in sulfides)  # read as metals (~0) before


def test_real_data_mixtures_track_the_fraction(reference_dir: Path) -> None:
    """Normalized two-reference mixtures (a two-phase sample): the predicted state rises with
    the fraction (Pearson >= 0.94 per pair; measured 0.951-0.998)."""
    from spt_stream.training.real_eval import mixture_fit, mixture_series

    fits = mixture_fit(mixture_series(reference_dir, None), "os")
    assert len(fits) == 6
    for pair, (r, slope) in fits.items():
        assert r >= 0.94, (pair, r)
        assert slope > 0.5, (pair, slope)


def test_a_pure_edge_shift_moves_os_near_the_physical_slope(reference_dir: Path) -> None:
    """Measured compound references shifted rigidly on the model grid: d(os)/dE x (eV per unit)
    has a median in 0.7-1.3 per element, the issue's band (measured Fe 0.86, Mn 0.98, Zn 1.00; with
    the weaker augmentation 0.68, 0.74, 0.51; without it 0.44, 0.36, 0.00: the network read edge
    position as nuisance). os_edge's response is 1 by design."""
    import numpy as np

    from spt_stream.training.fidelity import sensitivity

    rows = sensitivity(None, reference_dir)
    for el in ("Fe", "Mn", "Zn"):
        spt = np.median([r["spt"] for r in rows if r["element"] == el])
        assert 0.7 <= spt <= 1.3, (el, spt)
        edge = np.median([r["os_edge"] for r in rows if r["element"] == el])
        assert abs(edge - 1.0) < 0.05, (el, edge)

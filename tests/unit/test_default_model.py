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
    """The shipped model on all the measured references (regression guard near the levels
    measured for docs/MODEL.md; the issue's targets are reported there as met or missed): exact
    class >= 95 % (measured 98 %), MAE <= 0.16 (0.146), nominal within 2 std >= 90 % (100 %), no
    confident error (0), metals read as metals (foils 0.00-0.28), and on compounds the network
    below os_edge's MAE (0.174 vs 0.200)."""
    from spt_stream.training.real_eval import _scores_of, evaluate_references

    rows = evaluate_references(reference_dir)
    spt = _scores_of(rows, "os")
    assert spt.n >= 40
    assert spt.exact >= 0.95, spt
    assert spt.mae <= 0.16, spt
    assert spt.within_2std >= 0.90, spt
    assert spt.confident_errors == 0, spt
    metals = [r for r in rows if r["nominal"] == 0]
    assert len(metals) >= 8 and all(r["os"] < 0.4 for r in metals), [r["os"] for r in metals]
    compounds = [r for r in rows if (r["nominal"] or 0) > 0]
    assert _scores_of(compounds, "os").mae < _scores_of(compounds, "os_edge").mae
    # sulfides: read as metals (~0, small std) by the classifier model before issue 16; now
    # none reads below 1 and none is a confident error (FeS2, low-spin and covalent, reads 3.1
    # +- 0.55 and is flagged out of distribution; the two ZnS within 0.2)
    sulfides = [r for r in rows if r["sample"] in ("FeS2", "ZnS")]
    assert len(sulfides) == 3
    for r in sulfides:
        assert r["os"] > 1.0, r
        assert abs(r["os"] - 2.0) <= 2 * r["os_std"] or r["ood"], r


def test_real_data_mixtures_track_the_fraction(reference_dir: Path) -> None:
    """Normalized two-reference mixtures (a two-phase sample): between two compounds the
    predicted state rises with the fraction (Pearson >= 0.97 per pair; measured 0.980-0.998);
    metal + compound (Fe foil + Fe3O4) rises monotonically from the metal's 0 to the oxide's
    state but not linearly (Pearson 0.927: the classifier's metal probability falls off late,
    docs/MODEL.md), guarded at its end points and its ordering."""
    import numpy as np

    from spt_stream.training.real_eval import mixture_fit, mixture_series

    series = mixture_series(reference_dir, None)
    fits = mixture_fit(series, "os")
    assert len(fits) == 6
    for pair, (r, slope) in fits.items():
        if "metal" in pair:
            continue
        assert r >= 0.97, (pair, r)
        assert slope > 0.5, (pair, slope)
    metal = [row for row in series if "Fe_metal" in row["pair"]]
    os_ = np.array([row["os"] for row in sorted(metal, key=lambda row: row["nominal"])])
    nominal = np.sort([row["nominal"] for row in metal])
    assert abs(os_[0] - nominal[0]) < 0.2 and abs(os_[-1] - nominal[-1]) < 0.2, os_
    assert (np.diff(os_) > -0.05).all(), os_
    assert fits[next(p for p in fits if "metal" in p)][0] >= 0.9


def test_a_pure_edge_shift_moves_os_near_the_physical_slope(reference_dir: Path) -> None:
    """Measured compound references shifted rigidly on the model grid: d(os)/dE x (eV per unit)
    has a median in 0.7-1.3 per element, the issue's band (measured Fe 0.81, Mn 0.87, Zn 1.10; the
    ungated model before 0.86, 0.98, 1.00; with
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

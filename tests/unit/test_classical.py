"""Classical descriptors (edge features, os_edge, os_delta) against their definitions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import erf

from spt_stream.classical.edge_os import (
    CALIBRATION_PATH,
    fit_edge_calibration,
    leave_one_element_out,
    load_edge_calibration,
    reference_edges,
)
from spt_stream.classical.features import edge_features
from spt_stream.classical.tracking import ClassicalStage
from spt_stream.core.grid import MODEL_GRID_REL

G = MODEL_GRID_REL


def _spectrum(
    edge: float, *, wl: float = 0.4, wl_at: float = 6.0, pre: float = 0.0, pre_at: float = 0.0
) -> np.ndarray:
    """Erf step (half height at ``edge``), Lorentzian white line, Gaussian pre-edge."""
    step = 0.5 * (1 + erf((G - edge) / 2.0))
    white = wl / (1 + ((G - edge - wl_at) / 2.5) ** 2)
    pre_peak = pre * np.exp(-0.5 * ((G - pre_at) / 0.8) ** 2)
    return step + white * step + pre_peak


def test_half_height_is_the_step_midpoint_and_follows_sub_grid_shifts() -> None:
    """A pure step's half height is its centre; a 0.1 eV shift moves it by 0.1 eV (the grid is
    0.5 eV: the crossing is interpolated, not snapped)."""
    steps = np.array([0.5 * (1 + erf((G - e) / 2.0)) for e in (7.0, 7.1, 7.33, 12.0)])
    e_half = edge_features(steps).e_half
    np.testing.assert_allclose(e_half, [7.0, 7.1, 7.33, 12.0], atol=0.03)
    assert abs((e_half[1] - e_half[0]) - 0.1) < 0.01


def test_white_line_position_and_height() -> None:
    f = edge_features(_spectrum(8.0, wl=0.5, wl_at=7.0)[None, :])
    assert abs(f.wl_energy[0] - 15.0) < 0.6
    assert 1.3 < f.wl_height[0] < 1.55


def test_pre_edge_centroid_and_area_on_a_convex_foot() -> None:
    """A 0.1-high Gaussian pre-edge (area 0.2 eV) 8 eV below the edge: centroid within 0.3 eV,
    area within 30 %; no pre-edge -> NaN centroid and near-zero area (d10 ions)."""
    with_pre = _spectrum(10.0, pre=0.1, pre_at=2.0)
    without = _spectrum(10.0)
    f = edge_features(np.stack([with_pre, without]))
    assert abs(f.pre_centroid[0] - 2.0) < 0.3
    assert 0.14 < f.pre_area[0] < 0.26
    assert np.isnan(f.pre_centroid[1])
    assert f.pre_area[1] < 0.02


def test_strong_pre_edge_above_half_height_is_not_the_edge() -> None:
    """A tetrahedral d0 pre-edge can exceed half the step (KMnO4): the edge is the crossing on
    the way up to the white line."""
    x = _spectrum(14.0, pre=0.8, pre_at=2.0)
    assert abs(edge_features(x[None, :]).e_half[0] - 14.0) < 0.1


def test_nan_rows_give_nan_features_and_leave_the_others_alone() -> None:
    x = np.stack([_spectrum(7.0), np.full(len(G), np.nan), _spectrum(9.0)])
    f = edge_features(x)
    assert np.isnan(f.e_half[1])
    assert np.isnan(f.wl_height[1])
    alone = edge_features(x[[0, 2]])
    np.testing.assert_allclose(f.e_half[[0, 2]], alone.e_half, atol=1e-12)
    np.testing.assert_allclose(f.pre_area[[0, 2]], alone.pre_area, atol=1e-12)


def test_packaged_calibration_is_the_fit_of_the_packaged_references() -> None:
    """Drift test: edge_calibration.json equals a fresh fit of the shipped references."""
    refs = reference_edges()
    fresh = fit_edge_calibration(refs)
    stored = load_edge_calibration()
    assert stored.slope == pytest.approx(fresh.slope, abs=1e-9)
    for el, off in fresh.offsets.items():
        assert stored.offsets[el] == pytest.approx(off, abs=1e-9)
    assert set(stored.files) == set(fresh.files)
    assert json.loads(CALIBRATION_PATH.read_text())["slope"] == stored.slope


def test_edge_calibration_inverts_its_own_line_and_widens_for_unseen_elements() -> None:
    cal = load_edge_calibration()
    assert 2.5 < cal.slope < 5.0  # eV per oxidation-state unit (literature: 2-5)
    e = cal.offsets["Fe"] + cal.slope * np.array([2.0, 3.0])
    os_, std = cal.predict(e, ["Fe", "Fe"])
    np.testing.assert_allclose(os_, [2.0, 3.0], atol=1e-9)
    _, std_unseen = cal.predict(e, ["Ni", "Ni"])
    assert np.all(std_unseen > std)


def test_leave_one_element_out_scores_every_element_with_compounds() -> None:
    rows = leave_one_element_out(reference_edges())
    assert {r["element"] for r in rows} >= {"Fe", "Mn", "Zn"}
    assert all(np.isfinite(r["os"]) and r["std"] > 0 for r in rows)


def _series(edges: list[float]) -> np.ndarray:
    return np.stack([_spectrum(e) for e in edges])


def test_os_delta_is_the_edge_shift_over_the_slope() -> None:
    stage = ClassicalStage(reference_frames=3)
    slope = stage.calibration.slope
    edges = [8.0, 8.0, 8.0, 8.0 + slope * 0.25, 8.0 + slope * 0.5]
    cols = stage.columns(["r"] * 5, list(range(5)), ["Co"] * 5, _series(edges), G)
    np.testing.assert_allclose(cols["os_delta"], [0, 0, 0, 0.25, 0.5], atol=0.01)
    assert np.all(cols["os_delta_std"] > 0)
    assert cols["os_delta_std"][4] < 0.1
    # os_edge moves by the same amount (same slope), whatever its absolute offset
    d_edge = cols["os_edge"] - cols["os_edge"][0]
    np.testing.assert_allclose(d_edge, cols["os_delta"], atol=0.01)


def test_os_delta_after_a_restart_equals_the_uninterrupted_run() -> None:
    """Frames written before a restart are observed (not analysed again): the reference, and so
    every later os_delta, is what the uninterrupted run computed."""
    edges = [8.0, 8.05, 7.97, 8.4, 8.9, 9.3]
    spectra = _series(edges)
    whole = ClassicalStage(reference_frames=3).columns(
        ["r"] * 6, list(range(6)), ["Fe"] * 6, spectra, G
    )
    resumed = ClassicalStage(reference_frames=3)
    resumed.observe(["r"] * 4, list(range(4)), spectra[:4], G)
    assert not resumed.needs_reference("r")
    tail = resumed.columns(["r"] * 2, [4, 5], ["Fe"] * 2, spectra[4:], G)
    np.testing.assert_allclose(tail["os_delta"], whole["os_delta"][4:], atol=1e-12)
    np.testing.assert_allclose(tail["os_delta_std"], whole["os_delta_std"][4:], atol=1e-12)


def test_runs_have_their_own_references() -> None:
    stage = ClassicalStage(reference_frames=1)
    cols = stage.columns(["a", "b", "a", "b"], [0, 0, 1, 1], ["Fe"] * 4, _series([8, 10, 9, 10]), G)
    s = stage.calibration.slope
    np.testing.assert_allclose(cols["os_delta"], [0, 0, 1 / s, 0], atol=0.01)
    stage.close_run("a")
    assert stage.needs_reference("a")
    assert not stage.needs_reference("b")


def test_named_reference_run_serves_its_element_only() -> None:
    """A named reference (stored run's edges) is the reference of later runs of its element from
    their first frame; a run of another element keeps its own first frames."""
    from spt_stream.classical.tracking import NamedReference

    e_ref = edge_features(_series([8.0, 8.1, 7.9])).e_half
    named = NamedReference("pristine", "Fe", tuple(float(e) for e in e_ref))
    stage = ClassicalStage(reference_frames=3, named=named)
    assert stage.start_run("charge", "Fe") == "pristine"
    assert stage.start_run("other", "Mn") == "first 3 frames"
    assert not stage.needs_reference("charge")
    assert stage.needs_reference("other")
    s = stage.calibration.slope
    cols = stage.columns(["charge", "other"], [1, 1], ["Fe", "Mn"], _series([9.0, 9.0]), G)
    np.testing.assert_allclose(cols["os_delta"], [1.0 / s, 0.0], atol=0.005)

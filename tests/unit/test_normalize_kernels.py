"""Properties of the batched normalization kernels (numpy and torch), flags, calibration,
resampling and the frame path."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spt_stream.config import NormalizationSettings
from spt_stream.core.frames import Frame
from spt_stream.core.grid import MODEL_GRID_REL, edge_energy
from spt_stream.data import REFERENCE_DIR
from spt_stream.errors import ConfigError, NormalizationError
from spt_stream.normalize import (
    NormParams,
    QualityFlag,
    calibration_shift,
    describe_flags,
    find_e0,
    normalize_batch,
    normalize_frames,
    resample_to_model_grid,
)
from spt_stream.normalize.torch_kernels import normalize_batch_torch
from spt_stream.readers import read_spectrum


def synthetic(
    edge: float = 7709.0, n: int = 400, shifts: tuple[float, ...] = (0.0,), seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Arctan K edges with a white line and EXAFS-like wiggles on one grid (b = len(shifts))."""
    rng = np.random.default_rng(seed)
    energy = np.linspace(edge - 150, edge + 250, n)
    rows = []
    for s in shifts:
        e = energy - edge - s
        mu = (
            0.5
            - 1e-4 * e
            + 0.5
            + np.arctan(e / 2.0) / np.pi
            + 0.3 * np.exp(-0.5 * ((e - 8) / 4) ** 2)
            + 0.03 * np.sin(e / 12.0) * (e > 20)
            + rng.normal(0, 1e-3, n)
        )
        rows.append(mu)
    return energy, np.array(rows)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    offset=st.floats(-50, 50, allow_nan=False),
    scale=st.floats(0.01, 100, allow_nan=False),
    mode=st.sampled_from(["larch", "robust"]),
)
def test_invariant_to_offset_and_positive_scale(offset: float, scale: float, mode: str) -> None:
    """norm, flat and e0 do not change when mu is shifted by a constant or scaled by c > 0."""
    energy, mu = synthetic(shifts=(0.0, 3.0))
    params = NormParams(e0_mode=mode)  # type: ignore[arg-type]
    a = normalize_batch(energy, mu, params)
    b = normalize_batch(energy, scale * mu + offset, params)
    np.testing.assert_array_equal(a.e0, b.e0)
    np.testing.assert_allclose(b.norm, a.norm, atol=1e-8)
    np.testing.assert_allclose(b.flat, a.flat, atol=1e-8)
    np.testing.assert_allclose(b.edge_step, scale * a.edge_step, rtol=1e-8)


@settings(max_examples=10, deadline=None)
@given(shifts=st.lists(st.floats(-15, 15), min_size=2, max_size=6))
def test_batch_equals_one_by_one(shifts: list[float]) -> None:
    """Normalizing a batch gives exactly what normalizing each spectrum alone gives."""
    energy, mu = synthetic(shifts=tuple(shifts))
    batch = normalize_batch(energy, mu)
    for i in range(mu.shape[0]):
        one = normalize_batch(energy, mu[i : i + 1])
        assert one.e0[0] == batch.e0[i]
        np.testing.assert_allclose(one.norm[0], batch.norm[i], rtol=0, atol=1e-12)
        np.testing.assert_allclose(one.flat[0], batch.flat[i], rtol=0, atol=1e-12)
        assert one.flags[0] == batch.flags[i]


def test_batch_of_reference_spectra_equals_one_by_one() -> None:
    """Real spectra resampled to one grid: batch == single calls, e0 included."""
    energy = np.linspace(6400.0, 7000.0, 400)
    names = ["Mn__MnO.txt", "Mn__Mn2O3x.txt", "Mn__Pyrolusite.txt", "Mn__Mn_foil.txt"]
    mu = np.array(
        [np.interp(energy, (s := read_spectrum(REFERENCE_DIR / n)).energy, s.mu) for n in names]
    )
    modes: tuple[Literal["larch", "robust"], ...] = ("larch", "robust")
    for mode in modes:
        batch = normalize_batch(energy, mu, NormParams(e0_mode=mode))
        for i in range(len(names)):
            one = normalize_batch(energy, mu[i : i + 1], NormParams(e0_mode=mode))
            assert one.e0[0] == batch.e0[i]
            np.testing.assert_allclose(one.norm[0], batch.norm[i], atol=1e-12)


@pytest.mark.parametrize("mode", ["larch", "robust"])
def test_torch_matches_numpy(mode: str) -> None:
    """torch float64 on CPU matches numpy within 1e-9, float32 within 1e-4; same e0 and flags."""
    energy, mu = synthetic(shifts=(0.0, -4.0, 2.5, 7.0), seed=3)
    mu[1, 50] += 0.4  # a glitch, to compare flags too
    params = NormParams(e0_mode=mode)  # type: ignore[arg-type]
    ref = normalize_batch(energy, mu, params)
    t64 = normalize_batch_torch(energy, torch.tensor(mu), params)
    t32 = normalize_batch_torch(torch.tensor(energy), torch.tensor(mu, dtype=torch.float32), params)
    np.testing.assert_array_equal(t64.e0.numpy(), ref.e0)
    np.testing.assert_array_equal(t32.e0.numpy(), ref.e0)
    np.testing.assert_allclose(t64.norm.numpy(), ref.norm, atol=1e-9)
    np.testing.assert_allclose(t64.flat.numpy(), ref.flat, atol=1e-9)
    np.testing.assert_allclose(t64.edge_step.numpy(), ref.edge_step, rtol=1e-9)
    np.testing.assert_allclose(t32.norm.double().numpy(), ref.norm, atol=1e-4)
    np.testing.assert_array_equal(t64.flags.numpy(), ref.flags)
    assert int(ref.flags[1]) & QualityFlag.GLITCH


def test_torch_repairs_nan_like_numpy() -> None:
    """Sparse NaN are interpolated (flag NAN) identically; a mostly-NaN row becomes NaN."""
    energy, mu = synthetic(shifts=(0.0, 1.0, 2.0))
    mu[0, [0, 100, 101, 399]] = np.nan
    mu[2, :200] = np.nan
    ref = normalize_batch(energy, mu)
    tor = normalize_batch_torch(energy, torch.tensor(mu))
    assert ref.flags[0] & QualityFlag.NAN
    assert not ref.flags[1] & QualityFlag.NAN
    assert np.all(np.isfinite(ref.norm[0]))
    assert np.all(np.isnan(ref.norm[2]))
    np.testing.assert_allclose(tor.norm.numpy(), ref.norm, atol=1e-9, equal_nan=True)
    np.testing.assert_array_equal(tor.flags.numpy(), ref.flags)


def test_quality_flags_on_bad_frames() -> None:
    """Glitch, saturation, tiny edge and inverted edge each raise their own flag only."""
    energy, mu = synthetic(shifts=(0.0,) * 5)
    mu[1, 300] += 0.5  # spike
    mu[2] = np.minimum(mu[2], np.quantile(mu[2], 0.9))  # clipped top
    mu[3] = 1.0 + 1e-6 * (mu[3] - mu[3].mean())  # edge far below 1e-4 absolute
    mu[4] = -mu[4]  # inverted channels
    res = normalize_batch(energy, mu, NormParams(e0=7709.0))
    names = [set(describe_flags(f)) for f in res.flags]
    assert names[0] == set()
    assert names[1] == {"GLITCH"}
    assert "SATURATED" in names[2]
    assert "SMALL_EDGE_STEP" in names[3]
    assert "NEGATIVE_EDGE_STEP" in names[4]


def test_reference_spectra_raise_no_false_flags() -> None:
    """Clean measured spectra get no GLITCH/SATURATED/SMALL_EDGE_STEP flags."""
    for name in ["co_metal_rt.xdi", "Fe2O3_rt_01.xdi", "Mn__MnO.txt", "Co-foil_EXAFS_23107.dat"]:
        s = read_spectrum(REFERENCE_DIR / name)
        assert normalize_batch(s.energy, s.mu).flags[0] == 0, name


def test_e0_outside_grid_is_searched_and_flagged() -> None:
    """An e0 beyond the data is replaced by the found one and flagged E0_OUT_OF_RANGE."""
    energy, mu = synthetic()
    res = normalize_batch(energy, mu, NormParams(e0=1000.0))
    assert res.flags[0] & QualityFlag.E0_OUT_OF_RANGE
    assert abs(res.e0[0] - 7709.0) < 2.0


def test_bad_grid_and_params_raise_named_errors() -> None:
    """Unusable grids raise NormalizationError; invalid parameters raise ConfigError."""
    energy, mu = synthetic()
    with pytest.raises(NormalizationError, match="strictly increasing"):
        normalize_batch(energy[::-1], mu)
    with pytest.raises(NormalizationError, match=r"\(b, n\)"):
        normalize_batch(energy, mu[:, :-1])
    with pytest.raises(ConfigError, match="nnorm"):
        NormParams(nnorm=3)


def test_from_settings_copies_every_field() -> None:
    """NormParams.from_settings carries the engine's normalization settings across."""
    s = NormalizationSettings(
        e0_mode="larch",
        pre1=-100,
        pre2=-30,
        norm1=40,
        norm2=300,
        nnorm=1,
        nvict=2,
        min_edge_step=0.01,
    )
    p = NormParams.from_settings(s)
    assert (p.e0_mode, p.pre1, p.pre2, p.norm1, p.norm2, p.nnorm, p.nvict, p.min_edge_step) == (
        "larch",
        -100,
        -30,
        40,
        300,
        1,
        2,
        0.01,
    )


def test_find_e0_tracks_a_shifted_edge() -> None:
    """find_e0 follows known edge shifts (the chemical-shift signal the model needs)."""
    energy, mu = synthetic(shifts=(0.0, 2.0, 4.0), n=800)
    e0 = find_e0(energy, mu, "robust")
    np.testing.assert_allclose(np.diff(e0), [2.0, 2.0], atol=0.6)


def test_resample_is_relative_to_tabulated_edge_and_flags_short_grids() -> None:
    """Model-grid points sit at edge_energy + grid_rel; missing ones are edge-padded + flagged."""
    energy = np.linspace(7600.0, 7900.0, 601)
    values = np.vstack([energy - 7709.0, energy - 7709.0])
    out, flags = resample_to_model_grid(energy, values, "Co", shift=np.array([0.0, 1.0]))
    np.testing.assert_allclose(out[0], MODEL_GRID_REL, atol=1e-9)
    np.testing.assert_allclose(out[1], MODEL_GRID_REL - 1.0, atol=1e-9)
    assert not flags.any()
    short = energy[energy < 7750.0]
    out, flags = resample_to_model_grid(short, (short - 7709.0)[None], "Co")
    assert flags[0] & QualityFlag.GRID_NOT_COVERING
    assert out[0, -1] == pytest.approx(short[-1] - 7709.0)


def test_calibration_shift_puts_reference_on_tabulated_edge() -> None:
    """A foil measured 3.2 eV too low gets a shift of about +3.2 eV; absurd shifts are NaN."""
    s = read_spectrum(REFERENCE_DIR / "co_metal_rt.xdi")
    grid = np.arange(7600.0, 7850.0, 0.25)
    ref = np.interp(grid + 3.2, s.energy, s.mu)[None]
    shift = calibration_shift(grid, ref, "Co")
    assert shift[0] == pytest.approx(3.2 + (7709.0 - 7709.0), abs=0.5)
    assert np.isnan(calibration_shift(grid, ref, "Fe")[0])  # 600 eV away: refused


def _frame(seq: int, energy: np.ndarray, mu: np.ndarray, **kw: object) -> Frame:
    return Frame(run_uid="run", seq_num=seq, time=float(seq), energy=energy, mu=mu, **kw)  # type: ignore[arg-type]


def test_normalize_frames_groups_grids_keeps_order_and_flags_missing_element() -> None:
    """Frames on two grids come back in input order; a frame without element gets a NaN row."""
    e1, m1 = synthetic(shifts=(0.0, 3.0))
    e2, m2 = synthetic(shifts=(1.0,), n=350)
    frames = [
        _frame(0, e1, m1[0], element="Co", edge="K"),
        _frame(1, e2, m2[0], element="Co", edge="K"),
        _frame(2, e1, m1[1], element=None),
        _frame(3, e1, m1[1], element="Co", edge="K"),
    ]
    out = normalize_frames(frames, NormParams())
    assert out.norm.shape == (4, MODEL_GRID_REL.shape[0])
    assert out.norm.dtype == np.float32
    single = normalize_batch(e2, m2)
    assert out.e0[1] == single.e0[0]
    assert out.e0[3] - out.e0[0] == pytest.approx(3.0, abs=0.6)
    assert out.flags[2] & QualityFlag.NO_ELEMENT
    assert np.all(np.isnan(out.norm[2]))
    assert np.all(np.isfinite(out.norm[[0, 1, 3]]))
    assert out.norm[0, 0] == pytest.approx(0.0, abs=0.05)
    assert out.norm[0, -1] == pytest.approx(1.0, abs=0.15)


def test_normalize_frames_calibrates_from_reference_and_fixed_shift() -> None:
    """Reference calibration adds the foil's shift; frames without reference are flagged."""
    s = read_spectrum(REFERENCE_DIR / "co_metal_rt.xdi")
    grid = np.arange(7600.0, 7850.0, 0.5)
    foil = np.interp(grid + 2.0, s.energy, s.mu)  # energy axis reads 2 eV low
    frames = [
        _frame(0, grid, foil, element="Co", edge="K", reference=foil),
        _frame(1, grid, foil, element="Co", edge="K"),
    ]
    out = normalize_frames(
        frames, NormParams(e0_mode="larch"), calibrate_from_reference=True, energy_shift=0.5
    )
    assert out.energy_shift[0] == pytest.approx(2.0, abs=0.5)
    assert out.e0[0] == pytest.approx(edge_energy("Co"), abs=0.01)
    assert out.flags[1] & QualityFlag.CALIBRATION_FAILED
    assert out.energy_shift[1] == 0.5

"""Fractional (mixed-valence) labels of discrete descriptors: two-hot soft targets, the loss,
temperature scaling / ECE with soft targets, and a tiny training run on toy mixtures.

The toy mixtures are linear combinations of two toy spectra (spt_stream.training.synthetic) whose
oxidation states differ by one, labelled with the weighted mean, as the simulator labels its
mixed-valence samples. One thread, a few hundred rows: seconds on the shared machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from spt_stream.datasets import SpectraDataset, save_dataset
from spt_stream.descriptors import load_descriptor_schema
from spt_stream.errors import SptValueError
from spt_stream.grid import MODEL_GRID_REL
from spt_stream.training.calibration import expected_calibration_error, fit_temperature
from spt_stream.training.synthetic import toy_spectra
from spt_stream.training.targets import nearest_class_index, soft_class_targets
from spt_stream.training.train import TrainConfig, train

OS_CLASSES = (0, 1, 2, 3, 4, 5, 6, 7)
TINY = {
    "patch": 4, "d_model": 16, "n_blocks": 1, "band_channels": 8, "candidate_freqs": [1, 2, 4, 8],
    "top_k": 2, "window": 3, "d_attn": 8, "d_head": 16,
}  # fmt: skip


def test_fractional_label_becomes_two_hot_by_distance() -> None:
    """os 3.4 -> 0.6 on class 3 and 0.4 on class 4; integers stay one-hot; NaN -> zero row;
    the target's class expectation equals the label; non-uniform class values interpolate."""
    t = soft_class_targets(np.array([3.4, 3.0, 7.0, np.nan, 0.25], np.float32), OS_CLASSES)
    assert t[0, 3] == pytest.approx(0.6, abs=1e-6)
    assert t[0, 4] == pytest.approx(0.4, abs=1e-6)
    assert t[0].sum() == pytest.approx(1.0)
    np.testing.assert_array_equal(t[1], np.eye(8, dtype=np.float32)[3])
    np.testing.assert_array_equal(t[2], np.eye(8, dtype=np.float32)[7])
    assert not t[3].any()
    expect = t[[0, 1, 2, 4]] @ np.asarray(OS_CLASSES, np.float32)
    np.testing.assert_allclose(expect, [3.4, 3.0, 7.0, 0.25], atol=1e-6)
    psgo = soft_class_targets(np.array([5.0]), (1, 2, 3, 4, 6, 8))  # halfway between 4 and 6
    np.testing.assert_allclose(psgo[0], [0, 0, 0, 0.5, 0.5, 0], atol=1e-6)
    idx = nearest_class_index(np.array([3.4, 3.6, 3.5, np.nan]), OS_CLASSES)
    assert idx.tolist() == [3, 4, 3, -1]  # rounded; ties to the lower class


def test_label_outside_the_classes_is_a_clear_error() -> None:
    """A label beyond the class range names the descriptor and the value."""
    with pytest.raises(SptValueError, match=r"'os'.*7\.5"):
        soft_class_targets(np.array([3.0, 7.5]), OS_CLASSES, name="os")


def test_soft_cross_entropy_matches_index_loss_on_integer_labels() -> None:
    """For one-hot targets the soft cross-entropy equals the class-index loss; for a mixture
    target it is minimised by logits whose softmax is the target."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 8, generator=gen)
    idx = torch.tensor([0, 3, 4, 7, 2])
    onehot = torch.from_numpy(soft_class_targets(idx.numpy().astype(np.float64), OS_CLASSES))
    torch.testing.assert_close(
        nn.functional.cross_entropy(logits, onehot), nn.functional.cross_entropy(logits, idx)
    )
    target = torch.from_numpy(soft_class_targets(np.array([3.4]), OS_CLASSES))
    best = torch.log(target.clamp_min(1e-9))
    assert nn.functional.cross_entropy(best, target) < nn.functional.cross_entropy(
        torch.log(torch.tensor([[0, 0, 0, 0.9, 0.1, 0, 0, 0]]).clamp_min(1e-9)), target
    )


def test_temperature_and_ece_with_soft_targets() -> None:
    """Temperature fitted on soft targets recovers the temperature that produced them (a
    rounded-class fit would sharpen instead); ECE against soft targets is ~0 for predictions equal
    to the targets and counts them as miscalibrated against rounded classes."""
    gen = torch.Generator().manual_seed(1)
    true_logits = torch.randn(400, 8, generator=gen) * 2.0
    soft = torch.softmax(true_logits, dim=1)
    t = fit_temperature(true_logits * 2.5, soft)  # over-confident logits: T ~ 2.5
    assert t == pytest.approx(2.5, rel=0.05)
    t_hard = fit_temperature(true_logits * 2.5, soft.argmax(dim=1))
    assert t_hard < t
    labels = np.array([3.4, 3.7, 2.2, 5.0] * 25)
    target = soft_class_targets(labels, OS_CLASSES)
    assert expected_calibration_error(target, target) == pytest.approx(0.0, abs=1e-6)
    rounded = nearest_class_index(labels, OS_CLASSES)
    assert expected_calibration_error(target, rounded) > 0.1


def _toy_mixtures(n: int, seed: int) -> SpectraDataset:
    """Toy spectra of OS 2..4, half of them two-valence mixtures labelled with the mean OS."""
    rng = np.random.default_rng(seed)
    lo = rng.choice([2.0, 3.0], size=n)
    w = np.where(rng.random(n) < 0.5, rng.uniform(0, 1, n), rng.choice([0.0, 1.0], size=n))
    cn = np.full(n, 6.0)
    r = rng.normal(1.95, 0.03, n)
    nnrs = rng.uniform(0.0, 0.1, n)
    off = rng.normal(0, 0.2, n)
    spectra = (1 - w)[:, None] * toy_spectra(lo, cn, r, nnrs, off) + w[:, None] * toy_spectra(
        lo + 1, cn, r, nnrs, off
    )
    spectra += rng.normal(0, 0.004, spectra.shape)
    return SpectraDataset(
        spectra=spectra.astype(np.float32),
        energy_rel=np.array(MODEL_GRID_REL, dtype=np.float64),
        element=np.full(n, "Co").astype(np.str_),
        edge=np.full(n, "K"),
        labels={"os": (lo + w).astype(np.float32), "cn": cn.astype(np.float32)},
        groups=np.arange(n, dtype=np.int64),
        provenance={"generator": "tests/test_model_mixtures.py"},
    )


def test_training_on_soft_labels_tracks_fractional_oxidation_state(tmp_path: Path) -> None:
    """A tiny model trained on toy mixtures: its class expectation follows held-out fractional
    labels; metrics report macro-F1 on rounded labels, MAE of the expectation and soft ECE."""
    save_dataset(_toy_mixtures(320, 0), tmp_path / "tr")
    save_dataset(_toy_mixtures(160, 1), tmp_path / "te")
    threads = torch.get_num_threads()
    cfg = TrainConfig(
        dataset=tmp_path / "tr", val_dataset=tmp_path / "te", test_dataset=tmp_path / "te",
        descriptors=("os", "cn"), model=TINY, epochs=15, batch_size=32, lr=5e-3, patience=15,
        num_threads=1, noise_levels=(0.0,), output=tmp_path / "m.safetensors",
    )  # fmt: skip
    try:
        res = train(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    m = res.metrics["test"]["levels"]["0.0"]["os"]
    assert m["n_fractional"] > 40
    assert m["pearson_fractional"] > 0.9, m
    assert m["mae_expectation_fractional"] < 0.2, m
    assert m["mae_expectation"] < 0.2, m
    assert 0.0 <= m["f1_macro"] <= 1.0
    cal = res.metrics["test"]["calibration"]["os"]
    assert {"ece", "ece_rounded", "ece_uncalibrated"} <= set(cal)
    assert np.isfinite(res.metrics["temperatures"]["os"])
    assert np.isfinite(res.metrics["ood"]["threshold"])
    assert load_descriptor_schema().get("os").classes == tuple(float(c) for c in OS_CLASSES)

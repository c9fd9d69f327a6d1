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
from sklearn.metrics import f1_score
from torch import nn

from spt_stream.core.grid import MODEL_GRID_REL
from spt_stream.errors import SptValueError
from spt_stream.model.descriptors import load_descriptor_schema
from spt_stream.training.calibration import expected_calibration_error, fit_temperature
from spt_stream.training.datasets import SpectraDataset, save_dataset
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
        provenance={"generator": "tests/pipeline/test_model_mixtures.py"},
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


# -- the continuous oxidation state (issue 16) --------------------------------------------------


def test_regression_head_is_served_as_os_with_the_classifier_as_probs(tmp_path: Path) -> None:
    """A model with ``os`` (classes) and ``os_cont`` (regression) heads serves ``os`` from the
    regression (continuous, its own std), keeps ``os_probs`` from the classifier, does not serve
    ``os_cont`` on its own, follows fractional labels, and adds the checkpoint's per-element
    sim-to-real std in quadrature (``*`` for elements without references)."""
    import dataclasses

    from spt_stream.model.checkpoint import load_checkpoint, save_checkpoint
    from spt_stream.model.predictor import Predictor

    save_dataset(_toy_mixtures(320, 0), tmp_path / "tr")
    save_dataset(_toy_mixtures(160, 1), tmp_path / "te")
    threads = torch.get_num_threads()
    cfg = TrainConfig(
        dataset=tmp_path / "tr", val_dataset=tmp_path / "te", test_dataset=tmp_path / "te",
        descriptors=("os", "os_cont", "cn"), model={**TINY, "anchors": [["os_cont", "os"]]},
        epochs=15, batch_size=32, lr=5e-3, patience=15, num_threads=1, noise_levels=(0.0,),
        output=tmp_path / "m.safetensors",
    )  # fmt: skip
    try:
        res = train(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    test = _toy_mixtures(160, 1)
    pred = Predictor.from_checkpoint(res.checkpoint).predict(test.spectra, ["Co"] * len(test))
    assert "os_cont" not in pred.descriptor_names
    assert "os_probs" in pred.record(0)
    labels = test.labels["os"]
    reg = res.model(torch.from_numpy(test.spectra), torch.full((len(test),), 7))[0]
    i_cont = [h.name for h in res.model.cfg.heads].index("os_cont")
    np.testing.assert_allclose(pred.values["os"], reg[:, i_cont].detach().numpy(), atol=1e-5)
    assert np.corrcoef(pred.values["os"], labels)[0, 1] > 0.9
    # the shipped recipe's anchored head: the trainer set its standardization, the checkpoint
    # keeps it (the served values above came through a save and load)
    norm = res.model.net.anchor_norm_os_cont
    assert float(norm[0]) == pytest.approx(float(res.model.target_loc[0]))
    assert float(norm[1]) == pytest.approx(float(res.model.target_scale[0]))
    assert load_checkpoint(res.checkpoint, "cpu")[0].cfg.anchors == (("os_cont", "os"),)
    # the test metrics score the served value rounded to classes too (the noise table's F1)
    served = res.metrics["test"]["levels"]["0.0"]["os_cont"]
    classes = np.asarray(OS_CLASSES, dtype=np.float64)
    nearest = np.abs(pred.values["os"][:, None] - classes).argmin(1)
    truth = np.abs(labels[:, None] - classes - 1e-6).argmin(1)  # ties to the lower class
    assert served["accuracy_rounded"] == pytest.approx(np.mean(nearest == truth), abs=0.02)
    assert 0.0 < served["f1_rounded"] <= 1.0
    # ... and on the single-valence rows alone (integer labels: the paper's task)
    whole = np.abs(labels - np.round(labels)) < 1e-4
    expected = f1_score(truth[whole], nearest[whole], labels=np.unique(truth[whole]),
                        average="macro", zero_division=0)  # fmt: skip
    assert served["f1_rounded_integer"] == pytest.approx(expected, abs=0.02)
    frac = np.abs(labels - np.round(labels)) > 0.2
    assert np.mean(np.abs(pred.values["os"][frac] - labels[frac])) < 0.3
    # the sim-to-real term: per element, "*" for the rest, in quadrature
    model, meta = load_checkpoint(res.checkpoint, "cpu")
    extra = {**dict(meta.extra), "real_std": {"os": {"Co": 0.3, "*": 0.6}}}
    save_checkpoint(model, dataclasses.replace(meta, extra=extra), tmp_path / "cal.safetensors")
    served = Predictor.from_checkpoint(tmp_path / "cal.safetensors")
    x = test.spectra[:2]
    both = served.predict(x, ["Co", "Ni"])
    bare = Predictor.from_checkpoint(res.checkpoint).predict(x, ["Co", "Ni"])  # same elements
    np.testing.assert_allclose(both.std["os"][0], np.hypot(bare.std["os"][0], 0.3), rtol=1e-5)
    np.testing.assert_allclose(both.std["os"][1] ** 2, bare.std["os"][1] ** 2 + 0.36, rtol=1e-5)
    np.testing.assert_allclose(both.values["os"], bare.values["os"], atol=1e-6)


def test_chemical_shift_augmentation_moves_spectrum_and_state_together() -> None:
    """A compound's spectrum shifted by delta eV carries its os labels moved by delta/slope;
    metals (os < 1) and unlabelled rows are left alone; the class target stays two-hot."""
    from spt_stream.classical.features import edge_features
    from spt_stream.model.descriptors import load_descriptor_schema
    from spt_stream.model.network import SPTConfig, SPTInference
    from spt_stream.training.train import (
        AugmentSettings,
        EncodedSet,
        _state_shift_fn,
        _two_hot,
        heads_from_schema,
    )

    classes = torch.tensor(OS_CLASSES, dtype=torch.float32)
    th = _two_hot(torch.tensor([2.0, 2.25, 6.9]), classes)
    assert th[0, 2] == 1.0
    assert th[1, 2] == pytest.approx(0.75)
    assert th[1, 3] == pytest.approx(0.25)
    assert th[2, 6] == pytest.approx(0.1, abs=1e-6)
    assert th[2, 7] == pytest.approx(0.9, abs=1e-6)
    schema = load_descriptor_schema().subset(["os", "os_cont"])
    model = SPTInference(SPTConfig(heads=heads_from_schema(schema), **TINY))
    model.target_loc[0], model.target_scale[0] = 2.5, 1.0
    fn = _state_shift_fn(model, schema, AugmentSettings(state_shift_ev=1.5, state_slope_ev=4.0))
    assert fn is not None
    y = torch.tensor([3.0, 0.0, float("nan")])
    x = toy_spectra(np.array([3.0, 0.0, 3.0]), np.full(3, 6.0), np.full(3, 1.95),
                    np.zeros(3), np.zeros(3))  # fmt: skip
    xt = torch.tensor(x, dtype=torch.float32)
    soft = {"os": _two_hot(torch.nan_to_num(y), classes)}
    batch = EncodedSet(xt, torch.zeros(3, dtype=torch.long), {}, {"os_cont": y - 2.5}, soft)
    x2, b2 = fn(xt, batch, torch.Generator().manual_seed(3))
    moved = b2.reg["os_cont"][0] + 2.5 - 3.0  # in OS units
    e0, e1 = edge_features(x[:1]).e_half[0], edge_features(x2[:1].numpy()).e_half[0]
    assert abs(float(moved)) > 0.01
    assert (e1 - e0) / 4.0 == pytest.approx(float(moved), abs=0.03)
    assert torch.equal(x2[1], xt[1])  # the metal row: unchanged
    assert torch.equal(b2.reg["os_cont"][1], batch.reg["os_cont"][1])
    assert torch.isnan(b2.reg["os_cont"][2])
    assert b2.soft["os"][0].sum() == pytest.approx(1.0)
    expect = float((b2.soft["os"][0] * classes).sum())
    assert expect == pytest.approx(3.0 + float(moved), abs=1e-5)

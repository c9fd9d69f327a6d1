"""Training, calibration, OOD, serving and `spt-stream predict` on a small generated task.

One tiny model is trained once per module on the toy generator (spt_stream.training.synthetic)
with one thread, so the file runs in seconds on the shared 2-core machine.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from spt_stream.commands import predict as predict_cmd
from spt_stream.errors import CheckpointError, SptValueError
from spt_stream.model.checkpoint import default_checkpoint_path, load_checkpoint
from spt_stream.model.predictor import Predictor
from spt_stream.training.calibration import mc_dropout_outputs
from spt_stream.training.train import TrainConfig, TrainResult, train

TINY = {
    "patch": 4, "d_model": 16, "n_blocks": 1, "band_channels": 8, "candidate_freqs": [1, 2, 4, 8],
    "top_k": 2, "window": 3, "d_attn": 8, "d_head": 16,
}  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainResult]:
    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("spt") / "tiny.safetensors"
    cfg = TrainConfig(
        toy={"n_structures": 150, "per_structure": 3, "seed": 1}, split=(0.6, 0.2, 0.2),
        model=TINY, epochs=30, batch_size=32, lr=5e-3, patience=30, num_threads=1,
        noise_levels=(0.0, 0.05), output=out,
    )  # fmt: skip
    try:
        yield train(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)


def test_training_learns_well_above_chance(trained: TrainResult) -> None:
    """Oxidation state (3 classes, chance 1/3) and mean distance are learned on held-out groups."""
    clean = trained.metrics["test"]["levels"]["0.0"]
    assert clean["os"]["accuracy"] > 0.8
    assert clean["cn"]["accuracy"] > 0.6  # majority class is 0.5
    assert clean["mean_nn_distance"]["r2"] > 0.5
    hist = trained.metrics["training"]["history"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    noisy = trained.metrics["test"]["levels"]["0.05"]
    assert noisy["os"]["f1_macro"] <= clean["os"]["f1_macro"] + 0.05


def test_checkpoint_and_metrics_written(trained: TrainResult) -> None:
    """The checkpoint loads with its schema and data hash; the metrics JSON has every section."""
    _model, meta = load_checkpoint(trained.checkpoint)
    assert meta.schema.names == ("os", "cn", "nnrs", "mean_nn_distance")
    assert meta.data_hash == trained.splits[0].content_hash()
    assert meta.calibrated
    assert meta.ood_fitted
    metrics = json.loads(Path(trained.extra["metrics_path"]).read_text())
    assert {"training", "temperatures", "ood", "test"} <= set(metrics)
    assert len(metrics["test"]["levels"]["0.0"]["os"]["confusion"]) == 8


def test_temperature_scaling_does_not_hurt_heldout_calibration(trained: TrainResult) -> None:
    """On the held-out test split, ECE after temperature scaling is not worse than before."""
    cal = trained.metrics["test"]["calibration"]
    for name in ("os", "cn"):
        assert cal[name]["ece"] <= cal[name]["ece_uncalibrated"] + 0.02, (name, cal[name])
        assert sum(r["count"] for r in cal[name]["reliability"]) == trained.metrics["n_test"]
    assert 0.0 < cal["mean_nn_distance"]["coverage_2sigma"] <= 1.0


def test_ood_score_separates_unfamiliar_spectra(trained: TrainResult) -> None:
    """Flat, noise-only and edge-inverted spectra score above threshold; test data mostly not."""
    pred = Predictor.from_checkpoint(trained.checkpoint, device="cpu")
    test = trained.splits[2]
    ind = pred.predict(test.spectra, test.element.tolist())
    rng = np.random.default_rng(0)
    weird = np.stack([
        np.zeros(224, np.float32),
        rng.uniform(0, 1.5, 224).astype(np.float32),
        (1.2 - test.spectra[0]).astype(np.float32),
    ])  # fmt: skip
    out = pred.predict(weird, ["Co"] * 3)
    assert out.ood.all(), out.ood_score
    assert out.ood_score.min() > np.median(ind.ood_score) * 3
    assert ind.ood.mean() < 0.2


def test_predictor_matches_model_and_isolates_bad_rows(trained: TrainResult) -> None:
    """Predictor output equals the model's; a NaN row gives NaN + invalid without harming others."""
    pred = Predictor.from_checkpoint(trained.checkpoint, device="cpu")
    x = trained.splits[2].spectra[:4].copy()
    els = trained.splits[2].element[:4].tolist()
    ref = pred.predict(x, els)
    x[1, 10] = np.nan
    out = pred.predict(x, els)
    assert out.valid.tolist() == [True, False, True, True]
    assert out.ood[1]
    assert np.isnan(out.values["os"][1])
    assert np.isnan(out.probs["os"][1]).all()
    for i in (0, 2, 3):
        assert out.values["os"][i] == pytest.approx(ref.values["os"][i], abs=1e-6)
    assert out.probs["os"].shape == (4, 8)
    assert pred.class_labels["os"][2] == "2"
    rec = out.record(0)
    assert set(rec) >= {"os", "os_std", "os_probs", "nnrs", "nnrs_std", "ood_score", "ood"}
    with pytest.raises(SptValueError):
        pred.predict(np.zeros((2, 100), np.float32), ["Co", "Co"])


def test_default_checkpoint_or_clear_error() -> None:
    """Without --model the packaged checkpoint is used, or a CheckpointError says how to get one."""
    if default_checkpoint_path().is_file():
        assert Predictor.from_checkpoint(None, device="cpu").descriptor_names
    else:
        with pytest.raises(CheckpointError, match="no default SPT checkpoint"):
            Predictor.from_checkpoint(None, device="cpu")


def test_mc_dropout_gives_nonzero_spread(trained: TrainResult) -> None:
    """MC dropout (the measured alternative to single-pass std) returns well-formed outputs."""
    model, _ = load_checkpoint(trained.checkpoint)
    x = torch.from_numpy(trained.splits[2].spectra[:8])
    el = torch.full((8,), model.cfg.element_index("Co"))
    values, stds, probs = mc_dropout_outputs(model, x, el, samples=4)
    assert values.shape == (8, 4)
    assert probs.shape == (8, 19)
    assert (stds >= 0).all()
    assert (stds[:, 2:] > 0).all()
    assert torch.isfinite(values).all()
    assert not any(m.training for m in model.modules())


def test_finetune_with_frozen_backbone(trained: TrainResult, tmp_path: Path) -> None:
    """init_from + freeze_backbone changes only the heads (the paper's transfer learning)."""
    cfg = TrainConfig(
        toy={"n_structures": 30, "per_structure": 2, "seed": 5}, init_from=trained.checkpoint,
        freeze_backbone=True, descriptors=("os", "cn"), epochs=2, batch_size=32, num_threads=1,
        noise_levels=(), output=tmp_path / "ft.safetensors",
    )  # fmt: skip
    ft = train(cfg, progress=False)
    base = trained.model.net.state_dict()
    new = ft.model.net.state_dict()
    assert torch.equal(new["embed.weight"], base["embed.weight"])
    assert not torch.equal(new["heads.os.3.weight"], base["heads.os.3.weight"])
    assert ft.metadata.extra["init_from"] == str(trained.checkpoint)


def test_predict_command_json_schema(trained: TrainResult, reference_dir: Path) -> None:
    """`spt-stream predict --format json` on real files: one object per file with every field."""
    app = typer.Typer()
    predict_cmd.register(app)
    files = [reference_dir / "Fe2O3_rt_01.xdi", reference_dir / "MnO_rt_01.xdi"]
    res = CliRunner().invoke(
        app, [*map(str, files), "--format", "json", "--model", str(trained.checkpoint)]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [d["source"] for d in data] == [str(f) for f in files]
    for d in data:
        assert d["element"] in ("Fe", "Mn")
        assert d["edge"] == "K"
        assert d["e0"] > 6000
        for name in ("os", "cn", "nnrs", "mean_nn_distance"):
            assert isinstance(d[name], float)
            assert d[f"{name}_std"] >= 0
        assert set(d["os_probs"]) == {str(i) for i in range(8)}
        assert sum(d["os_probs"].values()) == pytest.approx(1.0, abs=1e-4)
        assert "nnrs_probs" not in d
        assert isinstance(d["ood"], bool)
    table = CliRunner().invoke(app, [str(files[0]), "--model", str(trained.checkpoint)])
    assert table.exit_code == 0
    assert "os" in table.stdout


def test_predict_command_reports_bad_files(trained: TrainResult, tmp_path: Path) -> None:
    """An unreadable file is reported by name on stderr with exit code 1."""
    app = typer.Typer()
    predict_cmd.register(app)
    bad = tmp_path / "bad.dat"
    bad.write_text("nothing here\n")
    res = CliRunner().invoke(
        app, [str(bad), "--format", "json", "--model", str(trained.checkpoint)]
    )
    assert res.exit_code == 1
    assert "bad.dat" in res.stderr

"""The model and the engine on a CUDA GPU: skipped where torch sees none (CI has none).

Run on a machine with a GPU (the lent device machine here, see docs/BENCHMARKS.md "On a GPU").
The CPU eager model is the reference throughout: the GPU in fp32 must agree with it to float32
rounding (TF32 off), in bf16 (the default on CUDA) to what a scientist could not tell apart on
real measured spectra; the compiled model (CUDA graphs) must agree when called from another
thread than the one that warmed it up (the engine's model thread); the engine end to end
(RunEngine -> engine on CUDA -> Zarr) must hold every frame once with the CPU's descriptors.
Measured differences are printed (``pytest -s``) for the notes.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from spt_stream.config import load_settings
from spt_stream.core.frames import Frame
from spt_stream.engine.pipeline import build_pipeline
from spt_stream.errors import SptError
from spt_stream.model.predictor import PredictionBatch, Predictor
from spt_stream.normalize import NormParams, normalize_frames
from spt_stream.readers import read_spectrum
from spt_stream.sinks.deadletter import MemoryDeadLetter
from spt_stream.sinks.zarr_trace import open_trace
from tests._runengine import run_delithiation

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none; see the module doc)"
)


@pytest.fixture(autouse=True)
def _no_tf32() -> None:
    # fp32 means fp32: TF32 matmuls/convolutions would round to 10 mantissa bits.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(scope="module")
def real_spectra(reference_dir: Path) -> tuple[np.ndarray, list[str]]:
    """Every shipped reference spectrum that reads and normalizes, on the model grid."""
    frames = []
    for i, path in enumerate(sorted(reference_dir.iterdir())):
        if path.suffix not in (".xdi", ".dat", ".txt") or path.name == "README.md":
            continue
        try:
            spec = read_spectrum(path)
        except SptError:  # files the readers reject are not what is tested here
            continue
        if spec.element is None:
            continue
        frames.append(
            Frame(
                run_uid="cuda", seq_num=i, time=0.0, energy=spec.energy, mu=spec.mu,
                element=spec.element, edge=spec.edge or "K", mode=spec.mode,
            )
        )  # fmt: skip
    norm = normalize_frames(frames, NormParams())
    keep = [i for i in range(len(frames)) if np.isfinite(norm.norm[i]).all()]
    assert len(keep) >= 15, f"only {len(keep)} reference spectra normalized"
    x = np.asarray(norm.norm[keep], np.float32)
    return x, [str(frames[i].element) for i in keep]


@pytest.fixture(scope="module")
def cpu_ref(real_spectra: tuple[np.ndarray, list[str]]) -> PredictionBatch:
    x, el = real_spectra
    return Predictor.from_checkpoint(None, device="cpu", backend="eager").predict(x, el)


def _max_diffs(a: PredictionBatch, b: PredictionBatch) -> dict[str, float]:
    return {n: float(np.nanmax(np.abs(a.values[n] - b.values[n]))) for n in a.descriptor_names}


def test_fp32_on_the_gpu_equals_the_cpu(
    real_spectra: tuple[np.ndarray, list[str]], cpu_ref: PredictionBatch
) -> None:
    x, el = real_spectra
    p = Predictor.from_checkpoint(None, device="cuda", backend="eager", precision="fp32")
    assert p.device.type == "cuda"
    assert not p.autocast
    got = p.predict(x, el)
    diffs = _max_diffs(got, cpu_ref)
    print(f"\nfp32 GPU vs CPU, max |diff| over {len(x)} real spectra: {diffs}")
    for n in got.descriptor_names:
        scale = max(1.0, float(np.nanmax(np.abs(cpu_ref.values[n]))))
        assert diffs[n] <= 1e-4 * scale, (n, diffs[n])
    assert np.array_equal(got.ood, cpu_ref.ood)


def test_bf16_default_on_the_gpu_reads_real_spectra_as_the_cpu_does(
    real_spectra: tuple[np.ndarray, list[str]], cpu_ref: PredictionBatch
) -> None:
    """bf16 autocast (the default on CUDA): oxidation state within 0.05 of the fp32 CPU value
    on every real spectrum and the most probable class of each discrete descriptor the same on
    at least 95 % of them."""
    x, el = real_spectra
    p = Predictor.from_checkpoint(None, device="cuda", backend="eager")
    assert p.autocast
    got = p.predict(x, el)
    diffs = _max_diffs(got, cpu_ref)
    agree = {
        n: float(np.mean(got.probs[n].argmax(1) == cpu_ref.probs[n].argmax(1))) for n in got.probs
    }
    print(f"\nbf16 GPU vs fp32 CPU, max |diff|: {diffs}; class agreement: {agree}")
    assert diffs["os"] <= 0.05
    assert all(a >= 0.95 for a in agree.values()), agree


def test_batches_pinned_buffer_and_bad_rows(
    real_spectra: tuple[np.ndarray, list[str]], cpu_ref: PredictionBatch
) -> None:
    """Rows come back in order through the pinned host buffer whatever the batch: one row, a
    batch above ``max_batch`` (cut into chunks), a NaN row (invalid, OOD, its batch intact)."""
    x, el = real_spectra
    p = Predictor.from_checkpoint(
        None, device="cuda", backend="eager", precision="fp32", max_batch=8
    )
    assert p._pinned is not None
    assert p._pinned.is_pinned()
    reps = -(-40 // len(x))
    big_x, big_el = np.tile(x, (reps, 1))[:40], (el * reps)[:40]
    big = p.predict(big_x, big_el)
    ref_big = np.tile(cpu_ref.values["os"], reps)[:40]
    assert np.allclose(big.values["os"], ref_big, atol=1e-4)
    one = p.predict(x[3], [el[3]])
    assert np.allclose(one.values["os"], cpu_ref.values["os"][3], atol=1e-4)
    bad = x[:3].copy()
    bad[1, 7] = np.nan
    out = p.predict(bad, el[:3])
    assert out.valid.tolist() == [True, False, True]
    assert out.ood[1]
    assert np.isnan(out.values["os"][1])
    assert np.allclose(out.values["os"][[0, 2]], cpu_ref.values["os"][[0, 2]], atol=1e-4)


def test_cuda_graphs_from_the_engines_model_thread(
    real_spectra: tuple[np.ndarray, list[str]], cpu_ref: PredictionBatch
) -> None:
    """``compile`` with CUDA graphs (mode reduce-overhead), warmed up on this thread and then
    called from another, as the engine's model thread does: same rows as the CPU."""
    x, el = real_spectra
    p = Predictor.from_checkpoint(
        None, device="cuda", backend="compile", precision="fp32", max_batch=16,
        compile_mode="reduce-overhead",
    )  # fmt: skip
    p.warmup(batch_sizes=(1, 4, 16))
    results: list[PredictionBatch] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for lo in range(0, 12, 3):  # batches of 3: padded to the 4-row graph
                results.append(p.predict(x[lo : lo + 3], el[lo : lo + 3]))
        except BaseException as exc:
            errors.append(exc)

    th = threading.Thread(target=work)
    th.start()
    th.join(300)
    assert not errors, errors
    got = np.concatenate([r.values["os"] for r in results])
    diff = float(np.max(np.abs(got - cpu_ref.values["os"][:12])))
    print(f"\ncompiled + CUDA graphs (other thread) vs CPU eager, os max |diff|: {diff:.2e}")
    assert diff <= 1e-3


def test_engine_end_to_end_on_the_gpu(tmp_path: Path) -> None:
    """RunEngine + simulated quick-XAS detector -> engine (model on CUDA, settings as packaged)
    -> Zarr trace: every frame once, descriptors equal to the CPU model's on the stored
    normalized spectra within bf16's rounding."""
    settings = load_settings(
        None,
        {"zarr": {"root": tmp_path / "traces"}, "dead_letter": {"path": None}, "device": "cuda"},
    )
    pipe = build_pipeline(settings, dead_letter=MemoryDeadLetter())
    assert pipe.model.info["device"].startswith("cuda")
    uid = run_delithiation(pipe.engine, frames=40, rate_hz=200.0, seed=2)
    pipe.close()
    ds = open_trace(tmp_path / "traces" / f"{uid}.zarr").load()
    assert ds.sizes["time"] == 40
    assert ds["seq_num"].values.tolist() == list(range(1, 41))
    assert ds.attrs["status"] == "success"
    norm = ds["norm"].values.astype(np.float32)
    ref = Predictor.from_checkpoint(None, device="cpu", backend="eager").predict(norm, ["Co"] * 40)
    diff = float(np.max(np.abs(ds["os"].values - ref.values["os"])))
    print(f"\nengine on CUDA (bf16) vs CPU eager on the stored spectra, os max |diff|: {diff:.3f}")
    assert diff <= 0.05

"""The ahead-of-time compiled model (``model_backend: aot``, the engine's default on the CPU).

One real AOTInductor compile of the packaged model for the module (~40 s on one core), into a
temporary cache: outputs against the eager model on real measured spectra and random rows for
several batch sizes, the cache (a second predictor loads instead of compiling; a damaged
package is rebuilt), the key, the fallbacks of ``auto``, and the engine end to end on it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import spt_stream.model.aot as aot
from spt_stream.config import load_settings
from spt_stream.engine.pipeline import ModelRunner, build_pipeline
from spt_stream.errors import ModelError
from spt_stream.model.predictor import Predictor
from spt_stream.sinks.deadletter import MemoryDeadLetter
from spt_stream.sinks.zarr_trace import open_trace
from tests._runengine import run_delithiation


def _serving(p: Predictor) -> object:
    """The forward callable ``p`` serves with now (the runner of its current backend)."""
    return p._serving[1]


@pytest.fixture(autouse=True)
def _settings_from_files_not_the_suite_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPT_MODEL_BACKEND", raising=False)  # conftest sets eager for the suite


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("aot-cache")


@pytest.fixture(scope="module")
def eager() -> Predictor:
    return Predictor.from_checkpoint(None, device="cpu", backend="eager")


@pytest.fixture(scope="module")
def compiled(cache: Path) -> Iterator[Predictor]:
    """Compiled with one compute thread, as the engine on a 2-core machine (the thread count is
    part of the package's key), so the engine and the CLI below find this package."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        p = Predictor.from_checkpoint(None, device="cpu", backend="aot", aot_cache_dir=cache)
        assert p.aot_info is not None
        assert p.aot_info["compiled"] is True
        yield p
    finally:
        torch.set_num_threads(before)


def _inputs(eager: Predictor, n: int) -> tuple[np.ndarray, list[str]]:
    """Rows shaped like normalized XANES (a smooth edge plus noise): the model's domain."""
    g = np.linspace(-20, 91.5, eager.n_points)
    rng = np.random.default_rng(3)
    shift = rng.uniform(-3, 3, size=(n, 1))
    x = 1 / (1 + np.exp(-(g[None, :] - shift) / 2.0)) + 0.02 * rng.normal(size=(n, eager.n_points))
    return x.astype(np.float32), [("Co", "Ni", "Mn", "Fe")[i % 4] for i in range(n)]


@pytest.mark.parametrize("b", [1, 2, 3, 64, 130])
def test_aot_matches_eager_for_any_batch(eager: Predictor, compiled: Predictor, b: int) -> None:
    x, el = _inputs(eager, b)
    x[0, 5] = np.nan  # a non-finite row keeps its NaN/invalid handling on this backend too
    a, c = eager.predict(x, el), compiled.predict(x, el)
    assert compiled.backend == "aot"
    assert not compiled.compiled
    assert (a.valid == c.valid).all()
    assert not c.valid[0]
    for name in a.descriptor_names:
        assert np.allclose(a.values[name], c.values[name], rtol=1e-4, atol=1e-4, equal_nan=True)
        assert np.allclose(a.std[name], c.std[name], rtol=1e-4, atol=1e-4, equal_nan=True)
    for name in a.probs:
        assert np.allclose(a.probs[name][1:], c.probs[name][1:], atol=1e-5)
    assert np.allclose(a.ood_score[1:], c.ood_score[1:], rtol=1e-4, atol=1e-4)
    assert (a.ood == c.ood).all()


def test_second_start_loads_from_the_cache(cache: Path, compiled: Predictor) -> None:
    again = Predictor.from_checkpoint(None, device="cpu", backend="aot", aot_cache_dir=cache)
    assert again.aot_info is not None
    assert again.aot_info["compiled"] is False
    assert again.aot_info["path"] == compiled.aot_info["path"]  # type: ignore[index]
    assert again.aot_info["seconds"] < 10
    x, el = _inputs(again, 8)
    assert np.array_equal(again.predict(x, el).values["os"], compiled.predict(x, el).values["os"])


def test_forward_runs_without_the_interpreter_lock(compiled: Predictor) -> None:
    """Python keeps running beside the forward pass: a thread counting in pure Python gets
    more done beside a loop of batch-512 forward passes through the package runner than beside
    the same package run by torch's loader, which holds the interpreter lock for every call
    (measured: 97 % vs 18 % of the counter's pace alone)."""
    assert compiled.aot_info is not None
    assert isinstance(_serving(compiled), aot._NativeRunner)
    x = torch.rand(512, compiled.n_points)
    el = torch.full((512,), 7, dtype=torch.int64)
    loader = torch._inductor.aoti_load_package(compiled.aot_info["path"])

    def count_beside(forward: object) -> int:
        stop = threading.Event()

        def work() -> None:
            with torch.inference_mode():
                while not stop.is_set():
                    forward(x, el)  # type: ignore[operator]

        th = threading.Thread(target=work, daemon=True)
        th.start()
        time.sleep(0.05)
        n, end = 0, time.perf_counter() + 0.6
        while time.perf_counter() < end:
            n += 1
        stop.set()
        th.join()
        return n

    assert count_beside(_serving(compiled)) > 2 * count_beside(loader)


def test_damaged_package_is_rebuilt(tmp_path: Path, eager: Predictor, compiled: Predictor) -> None:
    assert compiled.aot_info is not None
    bad = tmp_path / Path(compiled.aot_info["path"]).name  # the name this model's package gets
    bad.write_bytes(b"not a package")
    p = Predictor.from_checkpoint(None, device="cpu", backend="aot", aot_cache_dir=tmp_path)
    assert p.aot_info is not None
    assert p.aot_info["compiled"] is True
    assert p.aot_info["path"] == str(bad)
    x, el = _inputs(eager, 4)
    assert np.allclose(p.predict(x, el).values["os"], eager.predict(x, el).values["os"], atol=1e-4)
    assert not list(tmp_path.glob(".part-*"))  # no half-written package left behind


def test_cache_key_names_weights_and_batch_range(eager: Predictor) -> None:
    m, cpu = eager.model, torch.device("cpu")
    k = aot.aot_cache_key(m, 512, cpu)
    assert k == aot.aot_cache_key(m, 512, cpu)
    assert k != aot.aot_cache_key(m, 64, cpu)
    other = Predictor.from_checkpoint(None, device="cpu", backend="eager").model
    with torch.no_grad():
        other.net.pos.add_(1e-6)
    assert aot.aot_cache_key(other, 512, cpu) != k


def test_auto_falls_back_to_eager_without_a_compiler(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no c++ / g++ / clang++ anywhere
    monkeypatch.setenv("CXX", "no-such-compiler")
    assert aot.aot_available() is not None
    with caplog.at_level(logging.WARNING, logger="spt_stream.model.predictor"):
        p = Predictor.from_checkpoint(None, device="cpu", backend="auto", aot_cache_dir=tmp_path)
    assert p.backend == "eager"
    assert "no C++ compiler" in caplog.text
    assert not list(tmp_path.glob("*.pt2"))


def test_failed_compile_auto_falls_back_explicit_raises(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("inductor exploded")

    monkeypatch.setattr(aot, "_compile", broken)
    with caplog.at_level(logging.WARNING, logger="spt_stream.model.predictor"):
        p = Predictor.from_checkpoint(None, device="cpu", backend="auto", aot_cache_dir=tmp_path)
    assert p.backend == "eager"
    assert "inductor exploded" in caplog.text
    with pytest.raises(ModelError, match=r"ahead-of-time compilation .* inductor exploded"):
        Predictor.from_checkpoint(None, device="cpu", backend="aot", aot_cache_dir=tmp_path)


def test_settings_backend_default_and_old_compile_flag(tmp_path: Path) -> None:
    assert load_settings(None).model_backend == "auto"
    old = tmp_path / "old.yaml"
    old.write_text("compile_model: true\n")
    assert load_settings(old).model_backend == "compile"
    old.write_text("compile_model: false\n")
    assert load_settings(old).model_backend == "auto"


def test_engine_on_the_aot_model(tmp_path: Path, cache: Path, compiled: Predictor) -> None:
    """RunEngine -> engine (backend aot from settings, the cached package) -> Zarr trace."""
    settings = load_settings(
        None,
        {
            "zarr": {"root": tmp_path / "traces"},
            "dead_letter": {"path": None},
            "model_backend": "aot",
            "model_cache_dir": cache,
            "device": "cpu",
            "compute_threads": 1,
        },
    )
    pipe = build_pipeline(settings, dead_letter=MemoryDeadLetter())
    assert isinstance(pipe.model, ModelRunner)
    assert pipe.model.info["backend"] == "aot"
    # batch.overlap auto: the lock-free model runs on the engine's model thread
    assert pipe.model.lock_free
    assert pipe.engine._worker is not None
    uid = run_delithiation(pipe.engine, frames=30, rate_hz=150.0, seed=1)
    pipe.close()
    ds = open_trace(tmp_path / "traces" / f"{uid}.zarr").load()
    assert ds.sizes["time"] == 30
    assert ds["seq_num"].values.tolist() == list(range(1, 31))
    assert np.isfinite(ds["os"].values).all()
    assert ds.attrs["status"] == "success"
    # Same rows through the eager model: the backend changes nothing a scientist would see.
    norm = ds["norm"].values.astype(np.float32)
    ref = Predictor.from_checkpoint(None, device="cpu", backend="eager").predict(norm, ["Co"] * 30)
    assert np.allclose(ds["os"].values, ref.values["os"], atol=1e-4)


def test_torch_loader_when_the_c_interface_is_unusable(
    monkeypatch: pytest.MonkeyPatch, cache: Path, compiled: Predictor, eager: Predictor
) -> None:
    """A torch whose package library lacks the C entry points the runner calls: the package
    still runs, through torch's own loader (which holds the interpreter lock)."""

    def missing(*args: object, **kwargs: object) -> None:
        raise AttributeError("undefined symbol: AOTInductorModelContainerRun")

    monkeypatch.setattr(aot._NativeRunner, "__init__", missing)
    p = Predictor.from_checkpoint(None, device="cpu", backend="aot", aot_cache_dir=cache)
    assert p.backend == "aot"
    assert not isinstance(_serving(p), aot._NativeRunner)
    x, el = _inputs(eager, 5)
    assert np.allclose(p.predict(x, el).values["os"], eager.predict(x, el).values["os"], atol=1e-4)


def test_native_runner_equals_torch_loader_bit_for_bit(
    compiled: Predictor, eager: Predictor
) -> None:
    """The lock-free runner (ctypes on the package's C interface, torch internals) and torch's
    public loader run the same package to the same bits; the runner is used only on a torch
    release it was checked against, otherwise the public loader."""
    assert compiled.aot_info is not None
    package = Path(compiled.aot_info["path"])
    native = aot._NativeRunner(aot._library(package))
    public = torch._inductor.aoti_load_package(str(package))
    x, el = _inputs(eager, 7)
    xt = torch.from_numpy(x)
    codes = torch.from_numpy(eager.element_indices(el))
    with torch.no_grad():
        ours, theirs = native(xt, codes), tuple(public(xt, codes))
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    assert aot.native_runner_tested()


def test_untested_torch_release_uses_the_public_loader(
    monkeypatch: pytest.MonkeyPatch, compiled: Predictor
) -> None:
    assert compiled.aot_info is not None
    monkeypatch.setattr(torch, "__version__", "2.99.0")
    assert not aot.native_runner_tested()
    forward = aot._load(Path(compiled.aot_info["path"]))
    assert not isinstance(forward, aot._NativeRunner)


def test_compile_model_command_uses_the_engines_cache(
    monkeypatch: pytest.MonkeyPatch, cache: Path, compiled: Predictor, tmp_path: Path
) -> None:
    """``spt-stream compile-model`` builds/finds the very package the engine will load (same
    settings, same thread cap), and names a bad checkpoint instead of failing obscurely."""
    from typer.testing import CliRunner

    from spt_stream.cli import app

    assert compiled.aot_info is not None
    monkeypatch.setenv("SPT_MODEL_CACHE_DIR", str(cache))
    monkeypatch.setenv("SPT_COMPUTE_THREADS", "1")
    res = CliRunner().invoke(app, ["compile-model"])
    assert res.exit_code == 0, res.output
    assert "already cached" in res.output
    assert Path(compiled.aot_info["path"]).name in res.output
    bad = tmp_path / "nope.safetensors"
    bad.write_bytes(b"not a checkpoint")
    res = CliRunner().invoke(app, ["compile-model", "--model", str(bad)])
    assert res.exit_code == 1
    assert "nope.safetensors" in res.output


def _slow_compiler(monkeypatch: pytest.MonkeyPatch, package: str, seconds: float) -> None:
    """The background compiler replaced by a process that waits ``seconds``, then puts the
    module's real package (compiled once above) where the compile would (same key)."""
    import json
    import sys

    script = (
        "import json, os, shutil, sys, time; cfg = json.loads(sys.argv[1]); "
        f"time.sleep({seconds}); os.unlink(cfg['module']); "
        f"shutil.copy({package!r}, cfg['dest'] + '.tmp'); "
        "os.replace(cfg['dest'] + '.tmp', cfg['dest'])"
    )
    monkeypatch.setattr(
        aot, "_child_argv", lambda cfg: [sys.executable, "-c", script, json.dumps(cfg)]
    )


def test_first_start_serves_at_once_then_switches_to_aot(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    compiled: Predictor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An empty model cache: the engine starts at once on the eager model and analyses a whole
    run while the AOT model compiles (here a stand-in compiler that takes 6 s), says so in one
    line, then switches to the package between two batches, says so in one line, and the
    status, snapshot and metrics name the backend serving. Both backends give the same numbers.
    Before: the first start compiled in the foreground (~40 s) before reading anything."""
    assert compiled.aot_info is not None
    _slow_compiler(monkeypatch, compiled.aot_info["path"], seconds=6.0)
    settings = load_settings(
        None,
        {
            "zarr": {"root": tmp_path / "traces"},
            "dead_letter": {"path": None},
            "model_backend": "auto",
            "model_cache_dir": tmp_path / "empty-cache",
            "device": "cpu",
            "compute_threads": 1,  # the key of the package compiled above
        },
    )
    with caplog.at_level(logging.INFO, logger="spt_stream.engine.pipeline"):
        t0 = time.monotonic()
        pipe = build_pipeline(settings, dead_letter=MemoryDeadLetter())
        try:
            assert time.monotonic() - t0 < 30
            runner = pipe.model
            assert runner.compiling
            assert runner.backend == "eager"
            assert pipe.engine.snapshot()["model"] == {"backend": "eager", "compiling": True}
            assert "model: eager now; compiling the AOT model in the background" in caplog.text
            first = run_delithiation(pipe.engine, frames=12, rate_hz=150.0, seed=1)
            assert runner.compiling, "the stand-in compiler finished before the run did"
            assert pipe.engine.snapshot()["frames"] == 12
            assert runner.predictor.background is not None
            assert runner.predictor.background.join(60)
            assert runner.backend == "aot"
            assert runner.info["backend"] == "aot"
            assert runner.lock_free
            assert pipe.engine.snapshot()["model"] == {"backend": "aot", "compiling": False}
            metrics = pipe.engine.metrics.exposition().decode()
            assert 'spt_model_backend{backend="aot"} 1.0' in metrics
            assert "spt_model_compiling 0.0" in metrics
            assert "model: switched to AOT (compiled in" in caplog.text
            lines = [r.message for r in caplog.records if r.message.startswith("model: ")]
            assert len(lines) == 2, lines
            second = run_delithiation(pipe.engine, frames=12, rate_hz=150.0, seed=2)
            assert pipe.engine._worker is not None  # overlap auto: on once lock-free
        finally:
            pipe.close()
    eager = Predictor.from_checkpoint(None, device="cpu", backend="eager")
    for uid in (first, second):
        ds = open_trace(tmp_path / "traces" / f"{uid}.zarr").load()
        assert ds.sizes["time"] == 12
        ref = eager.predict(ds["norm"].values.astype(np.float32), ["Co"] * 12)
        assert np.allclose(ds["os"].values, ref.values["os"], atol=1e-4)
    assert not list((tmp_path / "empty-cache").glob(".module-*"))


def test_background_compiler_process_finds_or_builds_the_package(
    tmp_path: Path, compiled: Predictor, eager: Predictor
) -> None:
    """The real compiler process: it loads the model the engine saved for it, checks the key,
    takes the key's lock and (the package being there already, put by a concurrent engine)
    leaves without compiling; the engine then loads the package, which matches eager."""
    import shutil

    from spt_stream.model.predictor import _Packed

    assert compiled.aot_info is not None
    done: list[tuple[object, dict[str, object], BaseException | None]] = []
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the key of the package compiled above
    try:
        shutil.copy(compiled.aot_info["path"], tmp_path / Path(compiled.aot_info["path"]).name)
        job = aot.BackgroundCompile(
            _Packed(eager.model),
            max_batch=eager.max_batch,
            cache_dir=tmp_path,
            on_done=lambda f, i, e: done.append((f, i, e)),
        )
        assert job.join(120)
    finally:
        torch.set_num_threads(before)
    ((forward, info, error),) = done
    assert error is None, error
    assert info["background"] is True
    assert info["path"] == str(tmp_path / Path(compiled.aot_info["path"]).name)
    assert not list(tmp_path.glob(".module-*"))  # the compiler removed the model it was given
    assert "compiled" in job.log_path.read_text()
    x, _ = _inputs(eager, 3)
    with torch.inference_mode():
        (got,) = forward(torch.from_numpy(x), torch.zeros(3, dtype=torch.int64))  # type: ignore[misc]
        want = _Packed(eager.model)(torch.from_numpy(x), torch.zeros(3, dtype=torch.int64))[0]
    assert torch.allclose(got, want, atol=1e-4)


def test_closing_the_engine_stops_a_compile_still_running(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    compiled: Predictor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The engine stops before the background compile is done: the compiler process ends with
    it (nothing outlives the engine) and no switch is announced."""
    assert compiled.aot_info is not None
    _slow_compiler(monkeypatch, compiled.aot_info["path"], seconds=120.0)
    settings = load_settings(
        None,
        {
            "zarr": {"root": tmp_path / "traces"},
            "dead_letter": {"path": None},
            "model_cache_dir": tmp_path / "empty-cache",
            "device": "cpu",
            "compute_threads": 1,
        },
    )
    with caplog.at_level(logging.INFO, logger="spt_stream.engine.pipeline"):
        pipe = build_pipeline(settings, dead_letter=MemoryDeadLetter())
        job = pipe.model.predictor.background
        assert job is not None
        assert job.running
        pipe.close()
        assert job.join(30)
    assert job._proc.poll() is not None
    assert pipe.model.backend == "eager"
    assert "switched" not in caplog.text

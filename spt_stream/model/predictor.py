"""Serving the SPT model: normalized spectra on the model grid in, descriptors out.

``Predictor.from_checkpoint(path | None, device="auto")`` loads a checkpoint (the packaged default
when ``None``); :meth:`Predictor.predict` runs ONE forward pass per call (inputs above
``max_batch`` rows are cut into chunks of that size) and returns numpy arrays in a
:class:`PredictionBatch`. On CUDA the input goes through a pinned host buffer with a
non-blocking copy, the forward runs under bf16 autocast unless ``precision="fp32"``, and all
outputs come back in one device-to-host copy. ``compile=True`` wraps the model in
``torch.compile`` and pads each batch to the next power of four (a bounded set of static
shapes, :meth:`Predictor.bucket_sizes`, each compiled once at warm-up; rows do not interact, so
padding never changes a real row's result). Compiling costs about 25 s per shape on one CPU core
the first time; TorchInductor caches the result on disk, so later starts take seconds.

``backend="aot"`` (CPU) runs the model compiled ahead of time by AOTInductor
(:mod:`spt_stream.model.aot`): one compile for every batch size, cached on disk per model, torch and
CPU, and a forward pass that never takes the interpreter lock (the engine's other threads cannot
stall it). ``backend="auto"`` picks it on the CPU when a C++ compiler is present and falls back
to the eager model, with a warning, when compilation is impossible or fails; on CUDA it picks the
eager model (bf16 autocast). With ``aot_background=True`` (what the engine asks) a package
not yet in the cache is compiled in a separate lower-priority process while the eager model
serves at once; when it is ready (and agrees with the eager model on a warm-up batch) it serves
from the next batch on (:attr:`Predictor.backend` says which serves, :meth:`add_listener` hears
the switch). A cached package is loaded at once either way.

Rows with non-finite input are not sent through the network's result: they come back with NaN
descriptors, ``valid=False`` and ``ood=True``, so one bad frame never spoils its batch.

One module: the model's serving contract (checkpoint, backends, bucketing, batch invariance, OOD,
calibration terms) lives in one class whose parts share its state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from spt_stream.errors import CheckpointError, ModelError, SptValueError
from spt_stream.model.checkpoint import CheckpointMetadata, default_checkpoint_path, load_checkpoint
from spt_stream.model.network import SPTInference

if TYPE_CHECKING:
    from spt_stream.model.aot import BackgroundCompile

log = logging.getLogger(__name__)

__all__ = ["CONT_SUFFIX", "Backend", "Precision", "PredictionBatch", "Predictor"]

#: A continuous head ``<name>_cont`` beside a discrete head ``<name>`` is served as ``<name>``.
CONT_SUFFIX = "_cont"

F32 = npt.NDArray[np.float32]
#: How the network runs: ``eager`` PyTorch, ``compile`` (torch.compile, static bucket shapes),
#: ``aot`` (AOTInductor package, CPU), ``auto`` (``aot`` on the CPU when possible, else eager).
Backend = Literal["auto", "eager", "compile", "aot"]
#: ``auto``: bf16 autocast on CUDA, fp32 on the CPU.
Precision = Literal["auto", "fp32", "bf16"]


@dataclass(frozen=True)
class PredictionBatch:
    """Predictions for b spectra; every array has b rows, in input order.

    ``values[name]``: class expectation (discrete) or predicted mean (continuous; a descriptor
    with a regression head ``<name>_cont`` beside its classifier, as ``os``, is served from the
    regression: fractional, continuous);
    ``std[name]``: spread of the calibrated class distribution / predicted sigma, with the
    checkpoint's sim-to-real term added in quadrature where it has one;
    ``probs[name]`` (b, C) for discrete descriptors with ``class_labels[name]``;
    ``ood_score`` (about 1 in distribution) and ``ood`` (score above the fitted threshold);
    ``valid``: False where the input row was not finite (its outputs are NaN).
    """

    descriptor_names: tuple[str, ...]
    values: dict[str, F32]
    std: dict[str, F32]
    probs: dict[str, F32]
    class_labels: dict[str, tuple[str, ...]]
    ood_score: F32
    ood: npt.NDArray[np.bool_]
    valid: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return int(self.ood_score.shape[0])

    def record(self, i: int) -> dict[str, Any]:
        """Row ``i`` as a JSON-able dict: ``<name>``, ``<name>_std``, ``<name>_probs``, ood."""
        out: dict[str, Any] = {}
        for name in self.descriptor_names:
            out[name] = _num(self.values[name][i])
            out[f"{name}_std"] = _num(self.std[name][i])
            if name in self.probs:
                out[f"{name}_probs"] = {
                    lab: _num(p)
                    for lab, p in zip(self.class_labels[name], self.probs[name][i], strict=True)
                }
        out["ood_score"] = _num(self.ood_score[i])
        out["ood"] = bool(self.ood[i])
        return out


def _num(v: Any) -> float | None:
    f = float(v)
    return f if np.isfinite(f) else None


class _Packed(torch.nn.Module):
    """The served model with its four outputs packed into one (B, K) float32 tensor, columns as
    :meth:`Predictor._unpack` reads them: what the ``aot`` backend compiles."""

    def __init__(self, model: SPTInference) -> None:
        super().__init__()
        self.model = model
        self.cfg = model.cfg

    def forward(self, x: torch.Tensor, element: torch.Tensor) -> tuple[torch.Tensor]:
        values, stds, probs, ood = self.model(x, element)
        packed = torch.cat([values.float(), stds.float(), probs.float(), ood.float()[:, None]], 1)
        return (packed,)


class Predictor:
    """A loaded SPT model ready to serve (see module doc)."""

    def __init__(
        self,
        model: SPTInference,
        metadata: CheckpointMetadata,
        device: str | torch.device = "auto",
        precision: Precision = "auto",
        compile: bool = False,
        max_batch: int = 512,
        *,
        backend: Backend | None = None,
        aot_cache_dir: str | Path | None = None,
        compile_mode: str | None = None,
        aot_background: bool = False,
    ) -> None:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise CheckpointError("device 'cuda' requested but CUDA is not available")
        self.metadata = metadata
        self.model = model.to(self.device).eval()
        self.max_batch = int(max_batch)
        self.autocast = precision == "bf16" or (precision == "auto" and self.device.type == "cuda")
        chosen: Backend = backend if backend is not None else ("compile" if compile else "eager")
        #: What ran the compile/load of an ``aot`` model (path, key, compiled, seconds).
        self.aot_info: dict[str, Any] | None = None
        #: The compile of the ``aot`` package running in the background (``aot_background``),
        #: while the eager model serves; None when there is none.
        self.background: BackgroundCompile | None = None
        self._listeners: list[Callable[[str, Mapping[str, Any]], None]] = []
        self._aot_forward: Any = None
        self._pending_background: tuple[Any, str | Path | None] | None = None
        self._closed = False
        resolved = self._resolve_backend(chosen, aot_cache_dir, aot_background)
        self.compiled = resolved == "compile"
        #: torch.compile's mode for ``compile`` (None: its default; "reduce-overhead" adds
        #: CUDA graphs on a GPU).
        self.compile_mode = compile_mode
        forward: Any = self._aot_forward
        if resolved == "compile":
            forward = torch.compile(self.model, dynamic=False, mode=compile_mode)
        elif resolved == "eager":
            forward = self.model
        #: (backend, forward) serving now: read once per batch, replaced in one assignment when
        #: a background compile finishes (between two batches, never inside one).
        self._serving: tuple[Backend, Any] = (resolved, forward)
        cfg = model.cfg
        self.n_points = cfg.n_points
        #: The network's heads, in output order.
        self.head_names: tuple[str, ...] = tuple(h.name for h in cfg.heads)
        #: What is served: the heads, with a regression head ``X_cont`` served AS ``X`` (value
        #: and std; the classifier ``X`` keeps its class probabilities) and not on its own.
        self.continuous_of: dict[str, str] = {
            h[: -len(CONT_SUFFIX)]: h
            for h in self.head_names
            if h.endswith(CONT_SUFFIX) and h[: -len(CONT_SUFFIX)] in self.head_names
        }
        self.descriptor_names: tuple[str, ...] = tuple(
            h for h in self.head_names if h not in self.continuous_of.values()
        )
        #: Sim-to-real uncertainty added (in quadrature) to the served std of a descriptor, per
        #: absorbing element, with "*" for elements without measured references (checkpoint
        #: metadata ``extra["real_std"]``, fitted on the measured references; see
        #: spt_stream.training.real_calibration).
        self.real_std: dict[str, dict[str, float]] = {
            str(k): {str(e): float(s) for e, s in v.items()}
            for k, v in dict(metadata.extra.get("real_std", {})).items()
        }
        self.class_labels: dict[str, tuple[str, ...]] = {
            d.name: d.class_labels for d in metadata.schema.descriptors if d.kind == "discrete"
        }
        self.ood_threshold = float(model.ood_threshold)  # read once: no device sync per batch
        self._pinned: torch.Tensor | None = None
        if self.device.type == "cuda":
            self._pinned = torch.empty(
                (self.max_batch, self.n_points), dtype=torch.float32
            ).pin_memory()
        self._start_background()

    @property
    def backend(self) -> Backend:
        """The backend serving now (``eager`` until a background compile switches to ``aot``)."""
        return self._serving[0]

    @property
    def compiling(self) -> bool:
        """The ``aot`` package is being compiled in the background (the eager model serves)."""
        return self.background is not None and self.background.running

    def add_listener(self, fn: Callable[[str, Mapping[str, Any]], None]) -> None:
        """Call ``fn(event, info)`` when a background compile ends: ``"switched"`` (the
        package serves from the next batch on; ``info`` = :attr:`aot_info`) or ``"failed"``
        (``{"error": message}``; the eager model keeps serving). From the compile's thread."""
        self._listeners.append(fn)

    def close(self) -> None:
        """No switch after this; a background compile still running is stopped (the next start
        compiles again)."""
        self._closed = True
        if self.background is not None:
            self.background.stop()

    def _resolve_backend(
        self, chosen: Backend, cache_dir: str | Path | None, background: bool = False
    ) -> Backend:
        """Settle ``auto``, and for ``aot`` compile or load the package (sets ``_aot_forward``);
        with ``background`` and no package in the cache, start compiling it in the background
        and serve with the eager model meanwhile (see :meth:`_background_done`)."""
        if chosen == "auto":
            if self.device.type != "cpu":
                return "eager"
            from spt_stream.model.aot import aot_available

            why = aot_available()
            if why is not None:
                log.warning("model backend auto: %s; running the eager model", why)
                return "eager"
        elif chosen != "aot":
            return chosen
        if self.device.type != "cpu":
            raise ModelError(
                f"model backend 'aot' is built for the CPU here, not {self.device.type!r} "
                "(use 'eager' or 'compile' on a GPU)"
            )
        from spt_stream.model.aot import aot_forward, aot_load_cached

        packed = _Packed(self.model)
        try:
            if background:
                cached = aot_load_cached(
                    packed, max_batch=self.max_batch, device=self.device, cache_dir=cache_dir
                )
                if cached is None:  # started at the end of __init__ (see _start_background)
                    self._pending_background = (packed, cache_dir)
                    return "eager"
                self._aot_forward, self.aot_info = cached
            else:
                self._aot_forward, self.aot_info = aot_forward(
                    packed, max_batch=self.max_batch, device=self.device, cache_dir=cache_dir
                )
        except ModelError as exc:
            if chosen == "aot":
                raise
            log.warning("model backend auto: %s; running the eager model", exc)
            return "eager"
        return "aot"

    def _start_background(self) -> None:
        """Start the compile :meth:`_resolve_backend` put off (once the predictor is complete:
        its end checks the package against this predictor's eager model)."""
        pending, self._pending_background = self._pending_background, None
        if pending is None:
            return
        from spt_stream.model.aot import BackgroundCompile

        packed, cache_dir = pending
        try:
            self.background = BackgroundCompile(
                packed, max_batch=self.max_batch, device=self.device, cache_dir=cache_dir,
                on_done=self._background_done,
            )  # fmt: skip
        except OSError as exc:  # no process, no cache folder: the eager model it is
            log.warning("model: cannot compile the AOT model in the background (%s); "
                        "serving with the eager model", exc)  # fmt: skip

    def _background_done(
        self, forward: Any, info: dict[str, Any], error: BaseException | None
    ) -> None:
        """The background compile ended (its thread): check the package against the eager model
        on a warm-up batch, then serve with it from the next batch on; on any failure keep
        the eager model and say why."""
        if self._closed:  # the engine has stopped: nothing to switch, nobody to tell
            return
        event, detail = "failed", {}
        if error is None and forward is not None:
            try:
                self._check_against_eager(forward)
            except Exception as exc:
                error = exc
            else:
                self.aot_info = info
                self._serving = ("aot", forward)
                event, detail = "switched", info
        if error is not None:
            detail = {"error": f"{type(error).__name__}: {error}"}
        for fn in list(self._listeners):
            try:
                fn(event, detail)
            except Exception:
                log.exception("model backend listener failed")

    @torch.inference_mode()
    def _check_against_eager(self, forward: Any) -> None:
        """The package's outputs on a warm-up batch (its first call's costs paid here, not on a
        frame) match the eager model's (fp32) to 1e-3; else :class:`ModelError`."""
        g = np.linspace(-1.0, 1.0, self.n_points, dtype=np.float32)
        x = np.stack([1.0 / (1.0 + np.exp(-(g - s) * 20.0)) for s in (-0.2, 0.0, 0.1, 0.3)])
        x = x.astype(np.float32)
        el = np.zeros(len(x), dtype=np.int64)
        for b in (1, len(x)):
            (got,) = forward(torch.from_numpy(x[:b]), torch.from_numpy(el[:b]))
        values, stds, probs, ood = self.model(torch.from_numpy(x), torch.from_numpy(el))
        want = torch.cat([values.float(), stds.float(), probs.float(), ood.float()[:, None]], 1)
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-3, atol=1e-3):
            diff = float((got - want).abs().max()) if got.shape == want.shape else float("nan")
            raise ModelError(f"the compiled model disagrees with the eager one (max diff {diff})")

    @property
    def lock_free(self) -> bool:
        """The forward pass runs without the interpreter lock: the ``aot`` package called through
        its C interface (torch's own loader, the fallback, holds the lock)."""
        backend, forward = self._serving
        if backend != "aot":
            return False
        from spt_stream.model.aot import _NativeRunner

        return isinstance(forward, _NativeRunner)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path | None = None, device: str | torch.device = "auto", **kwargs: Any
    ) -> Predictor:
        """Load ``path`` (default: the packaged checkpoint, see :func:`default_checkpoint_path`)."""
        p = Path(path) if path is not None else default_checkpoint_path()
        if path is None and not p.is_file():
            raise CheckpointError(
                "no default SPT checkpoint is installed; pass a model file (--model PATH) or "
                "train one with `spt-stream train --config spt_stream/configs/train/<name>.yaml`",
                source=str(p),
            )
        model, meta = load_checkpoint(p, "cpu")
        return cls(model, meta, device=device, **kwargs)

    @property
    def elements(self) -> tuple[str, ...]:
        """Elements the model was built for (others are accepted as 'unknown')."""
        return self.model.cfg.elements

    def element_indices(self, elements: Sequence[str]) -> npt.NDArray[np.int64]:
        return np.array([self.model.cfg.element_index(str(e)) for e in elements], dtype=np.int64)

    def bucket_sizes(self, up_to: int | None = None) -> tuple[int, ...]:
        """Batch shapes a compiled model runs (powers of four, then ``max_batch``)."""
        top = min(self.max_batch, up_to) if up_to is not None else self.max_batch
        sizes = [1]
        while sizes[-1] < top:
            sizes.append(min(sizes[-1] * 4, self.max_batch))
        return tuple(sizes)

    def _padded(self, b: int) -> int:
        return next((s for s in self.bucket_sizes() if s >= b), b)

    def warmup(self, batch_sizes: Sequence[int] | None = None, up_to: int = 64) -> None:
        """Run dummy batches so first real frames do not pay for allocation/compilation.

        ``None``: sizes 1 and ``up_to``, or, compiled, every bucket up to ``up_to`` (so no
        compilation ever happens in the middle of a run).
        """
        if batch_sizes is None:
            batch_sizes = self.bucket_sizes(up_to) if self.compiled else (1, up_to)
        for b in batch_sizes:
            self.predict(np.ones((b, self.n_points), np.float32), ["Co"] * b)

    def predict(
        self, norm: npt.ArrayLike | torch.Tensor, elements: Sequence[str]
    ) -> PredictionBatch:
        """Descriptors for ``norm`` (b, G) normalized mu on the model grid, one element per row."""
        x = norm.detach().cpu().numpy() if isinstance(norm, torch.Tensor) else np.asarray(norm)
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.n_points:
            raise SptValueError(
                f"predict expects (b, {self.n_points}) spectra on the model grid, got {x.shape}"
            )
        if len(elements) != x.shape[0]:
            raise SptValueError(f"{len(elements)} elements given for {x.shape[0]} spectra")
        valid = np.isfinite(x).all(axis=1)
        if not valid.all():
            x = np.where(valid[:, None], x, 0.0).astype(np.float32)
        el = self.element_indices(elements)
        chunks = [
            self._run(x[i : i + self.max_batch], el[i : i + self.max_batch])
            for i in range(0, len(x), self.max_batch)
        ]
        out = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
        return self._unpack(out, valid, elements)

    @torch.inference_mode()
    def _run(self, x: F32, el: npt.NDArray[np.int64]) -> F32:
        backend, forward = self._serving  # once per batch: a switch lands between batches
        if backend == "aot":
            # One foreign call, outputs already packed (_Packed): the interpreter lock is
            # given up and taken back once per batch, not around a dozen small tensor ops
            # (each a wait of up to the switch interval while another thread runs Python).
            (packed_aot,) = forward(torch.from_numpy(x), torch.from_numpy(el))
            out: F32 = packed_aot.numpy()
            return out
        b = x.shape[0]
        n = b
        if self.compiled:  # static shapes: pad to the next bucket
            n = self._padded(b)
            if n > b:
                x = np.concatenate([x, np.zeros((n - b, x.shape[1]), np.float32)])
                el = np.concatenate([el, np.zeros(n - b, np.int64)])
        if self._pinned is not None and n <= self.max_batch:
            host = self._pinned[:n]
            host.copy_(torch.from_numpy(x))
            xt = host.to(self.device, non_blocking=True)
        else:
            xt = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
        et = torch.from_numpy(el).to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            values, stds, probs, ood = forward(xt, et)
        packed = torch.cat(
            [values.float(), stds.float(), probs.float(), ood.float()[:, None]], dim=1
        )
        result: F32 = packed[:b].cpu().numpy()
        return result

    def _unpack(
        self, out: F32, valid: npt.NDArray[np.bool_], elements: Sequence[str]
    ) -> PredictionBatch:
        h = len(self.head_names)
        out = out.copy()
        out[~valid] = np.nan
        values = {n: out[:, j] for j, n in enumerate(self.head_names)}
        std = {n: out[:, h + j] for j, n in enumerate(self.head_names)}
        for served, cont in self.continuous_of.items():
            values[served] = values.pop(cont)
            std[served] = std.pop(cont)
        for name, per_el in self.real_std.items():
            if name in std and per_el:
                default = per_el.get("*", 0.0)
                extra = np.array(
                    [per_el.get(str(e).strip().capitalize(), default) for e in elements],
                    dtype=np.float32,
                )
                std[name] = np.sqrt(std[name] ** 2 + extra**2).astype(np.float32)
        probs: dict[str, F32] = {}
        off = 2 * h
        for head in self.model.cfg.heads:
            if head.discrete:
                probs[head.name] = out[:, off : off + head.n_classes]
                off += head.n_classes
        score = out[:, off]
        ood = ~valid | (score > self.ood_threshold)
        return PredictionBatch(
            descriptor_names=self.descriptor_names,
            values=values,
            std=std,
            probs=probs,
            class_labels=dict(self.class_labels),
            ood_score=score,
            ood=ood,
            valid=valid,
        )

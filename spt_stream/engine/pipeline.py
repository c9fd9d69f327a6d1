"""Putting an engine together from settings: model, sinks, dead-letter store.

Shared by ``spt-stream run``, ``replay`` and ``demo`` so the three build exactly the same pipeline
(a replayed run yields the same trace as the live one).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from spt_stream.classical.tracking import CLASSICAL_UNITS
from spt_stream.config import EngineSettings
from spt_stream.engine import CommitFn, Engine
from spt_stream.engine.metrics import EngineMetrics
from spt_stream.sinks.base import TraceSink
from spt_stream.sinks.deadletter import DeadLetterFile, DeadLetterSink, MemoryDeadLetter
from spt_stream.sinks.rows import Column2D

if TYPE_CHECKING:
    from spt_stream.model.predictor import Backend, Precision

__all__ = [
    "ModelRunner",
    "Pipeline",
    "build_pipeline",
    "column_attrs",
    "limit_compute_threads",
    "prediction_columns",
]

log = logging.getLogger(__name__)

#: Descriptors (value + ``_std``) the classical stage adds beside the network's.
CLASSICAL_DESCRIPTORS = ("os_edge", "os_delta")
#: See spt_stream.model.predictor.CONT_SUFFIX (kept here to avoid importing torch for a name).
CONT_SUFFIX = "_cont"


def prediction_columns(pred: Any) -> tuple[dict[str, np.ndarray[Any, Any]], dict[str, Column2D]]:
    """Trace columns of a :class:`~spt_stream.model.predictor.PredictionBatch`.

    ``<name>`` and ``<name>_std`` per descriptor, ``<name>_probs`` over ``<name>_class`` (the class
    values) for discrete ones, ``ood_score`` and ``ood``.
    """
    columns: dict[str, np.ndarray[Any, Any]] = {}
    arrays: dict[str, Column2D] = {}
    for name in pred.descriptor_names:
        columns[name] = np.asarray(pred.values[name], dtype=np.float64)
        columns[f"{name}_std"] = np.asarray(pred.std[name], dtype=np.float64)
        if name in pred.probs:
            coord = np.array([float(c) for c in pred.class_labels[name]], dtype=np.float64)
            arrays[f"{name}_probs"] = Column2D(
                values=np.asarray(pred.probs[name], dtype=np.float32),
                dim=f"{name}_class",
                coord=coord,
            )
    columns["ood_score"] = np.asarray(pred.ood_score, dtype=np.float64)
    columns["ood"] = np.asarray(pred.ood, dtype=bool)
    return columns, arrays


def column_attrs(predictor: Any) -> dict[str, dict[str, str]]:
    """Attributes of the columns a :class:`~spt_stream.model.predictor.Predictor` and the classical
    stage fill: ``units`` (where the descriptor has one) and ``long_name`` (its description,
    from the descriptor schema the checkpoint carries), for ``<name>``, ``<name>_std`` and
    ``<name>_probs``, and ``ood`` / ``ood_score``. Trace stores keep them as variable
    attributes; ``predict`` prints them."""
    out: dict[str, dict[str, str]] = {}
    for d in predictor.metadata.schema.descriptors:
        base = d.name.removesuffix(CONT_SUFFIX)
        entry = out.setdefault(base, {})
        if d.units:
            entry["units"] = d.units
        if d.description and (d.name == base or "long_name" not in entry):
            entry["long_name"] = d.description
        if d.kind == "discrete":
            out[f"{base}_probs"] = {"long_name": f"class probabilities of {base}"}
    for name, (units, meaning) in CLASSICAL_UNITS.items():
        out[name] = {"units": units, "long_name": meaning}
    for name, entry in list(out.items()):
        if not name.endswith("_probs"):
            std = {"long_name": f"one standard deviation of {name}"}
            out[f"{name}_std"] = {**({"units": entry["units"]} if "units" in entry else {}), **std}
    threshold = f"{predictor.ood_threshold:g}"
    out["ood_score"] = {"long_name": "out-of-distribution score (higher: less like training)"}
    out["ood"] = {"long_name": f"out of distribution: ood_score above {threshold}"}
    return out


def limit_compute_threads(threads: int | None = None) -> int:
    """Cap the threads of torch and of the BLAS/OpenMP pools numpy and torch use; returns the cap.

    ``None``: one per usable core minus one (at least one). The engine's thread already keeps a
    core busy between batches (decoding, assembly) and its sinks and Kafka client run threads of
    their own; intra-op pools sized to every core then contend with them, and on a loaded
    machine a spinning OpenMP/BLAS pool whose peer thread is descheduled is catastrophic (on the
    2-core development machine under load: SPT batch 64 in 1.8 s with 2 threads, 0.11 s with 1;
    see docs/BENCHMARKS.md). Process-wide.
    """
    import torch

    if threads is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cores = os.cpu_count() or 1
        threads = max(1, cores - 1)
    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]
    except ImportError:  # torch's own pool is capped; BLAS keeps its default
        log.debug("threadpoolctl not installed: BLAS thread pool left at its default")
    else:
        threadpool_limits(limits=threads)
    return threads


class ModelRunner:
    """The engine's view of a :class:`~spt_stream.model.predictor.Predictor`.

    ``threads`` caps the CPU threads of the model and numeric kernels (see
    :func:`limit_compute_threads`; ``None``: cores - 1); ``precision`` ``auto`` is bf16
    autocast on CUDA and fp32 on the CPU.

    ``background_compile`` (what the engine uses unless ``model_compile_wait``): an ``aot``
    package not in the cache yet is compiled in the background while the eager model serves
    from the first frame on, and serves itself from the batch after it is ready. One status
    line says so at start (:attr:`status_line`, logged) and one when it switches (or failed);
    :meth:`add_listener` hears them. :attr:`info` follows (``backend``, ``compiling``).
    """

    def __init__(
        self,
        model: Path | None = None,
        device: str = "auto",
        threads: int | None = None,
        *,
        backend: Backend = "eager",
        cache_dir: Path | None = None,
        max_batch: int = 64,
        precision: Precision = "auto",
        background_compile: bool = False,
    ) -> None:
        from spt_stream.model.checkpoint import default_checkpoint_path
        from spt_stream.model.predictor import Predictor

        self.path = Path(model) if model is not None else default_checkpoint_path()

        # Before the model is built: an ``aot`` package is compiled for the thread count that
        # will run it (see spt_stream.model.aot.aot_cache_key). On a GPU the cap still bounds the
        # normalization kernels' BLAS pools and torch's host-side ops.
        self.threads: int = limit_compute_threads(threads)
        self._listeners: list[Callable[[str], None]] = []
        self.predictor = Predictor.from_checkpoint(
            model, device=device, backend=backend, aot_cache_dir=cache_dir, precision=precision,
            aot_background=background_compile,
        )  # fmt: skip
        aot = self.predictor.aot_info
        #: What the model is doing, in one line (the latest: start, then switch or failure).
        self.status_line: str
        if self.predictor.background is not None:
            self.status_line = (
                "model: eager now; compiling the AOT model in the background (first start with "
                "this checkpoint, torch and CPU; the engine serves meanwhile)"
            )
            log.info("%s", self.status_line)
            self.predictor.add_listener(self._on_backend_event)
        elif aot is not None:
            how = "compiled" if aot["compiled"] else "loaded"
            self.status_line = f"model: AOT ({how} in {aot['seconds']:.1f} s)"
            log.info("model backend aot: %s %s in %.1f s", how, aot["path"], aot["seconds"])
        else:
            self.status_line = f"model: {self.predictor.backend}"
            log.info("model backend %s", self.predictor.backend)
        if self.predictor.compiled:
            log.info(
                "compiling the model for batch sizes %s (cached on disk after the first time)",
                self.predictor.bucket_sizes(max_batch),
            )
        self.predictor.warmup(up_to=max_batch)
        meta = self.predictor.metadata
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
        self._info: dict[str, Any] = {
            "name": meta.name,
            "version": meta.code_version,
            "sha256": digest,
            "path": str(self.path),
            "data_hash": meta.data_hash,
            "descriptors": list(self.predictor.descriptor_names),
            "device": str(self.predictor.device),
            "ood_threshold": self.predictor.ood_threshold,
            "compiled": self.predictor.compiled,
            "backend": self.predictor.backend,
            "compiling": self.predictor.compiling,
            "precision": "bf16" if self.predictor.autocast else "fp32",
            "lock_free": self.predictor.lock_free,
        }

    @property
    def info(self) -> Mapping[str, Any]:
        """The model's identity and how it runs (``backend``: serving now; ``compiling``)."""
        return self._info

    @property
    def backend(self) -> str:
        """The backend serving now."""
        return str(self.predictor.backend)

    @property
    def compiling(self) -> bool:
        """The AOT package is being compiled in the background (the eager model serves)."""
        return self.predictor.compiling

    def add_listener(self, fn: Callable[[str], None]) -> None:
        """Call ``fn(status_line)`` when the backend switches or its background compile fails
        (from the compile's thread)."""
        self._listeners.append(fn)

    def close(self) -> None:
        """No switch after this; a background compile still running is stopped."""
        self.predictor.close()

    def _on_backend_event(self, event: str, detail: Mapping[str, Any]) -> None:
        if event == "switched":
            self.status_line = f"model: switched to AOT (compiled in {detail['seconds']:.1f} s)"
            log.info("%s", self.status_line)
        else:
            self.status_line = (
                f"model: the AOT compile failed ({detail.get('error')}); the eager model keeps "
                "serving"
            )
            log.warning("%s", self.status_line)
        self._info = {
            **self._info,
            "backend": self.predictor.backend,
            "compiling": False,
            "lock_free": self.predictor.lock_free,
        }
        for fn in list(self._listeners):
            try:
                fn(self.status_line)
            except Exception:
                log.exception("model status listener failed")

    @property
    def lock_free(self) -> bool:
        """See :attr:`Predictor.lock_free` (what ``batch.overlap: auto`` asks)."""
        return self.predictor.lock_free

    @property
    def elements(self) -> tuple[str, ...]:
        """Absorbing elements the model was built for (the engine's warm-up looks up their
        edges)."""
        return tuple(self.predictor.elements)

    def thread_init(self) -> None:
        """Apply the compute-thread cap on the calling thread too (the engine's model thread).

        OpenMP keeps the pool size per thread: torch on a thread that never set it uses one
        thread per core whatever the main thread set (measured: 5-10x slower convolutions on
        the loaded 2-core machine).
        """
        limit_compute_threads(self.threads)

    @property
    def units(self) -> dict[str, str]:
        """Units of every descriptor the engine serves: the network's (``os`` from its
        regression head ``os_cont`` when the model has one) and the classical stage's."""
        out: dict[str, str] = {name: u for name, (u, _) in CLASSICAL_UNITS.items()}
        for d in self.predictor.metadata.schema.descriptors:
            if d.units:
                out[d.name.removesuffix(CONT_SUFFIX)] = d.units
        return out

    @property
    def column_attrs(self) -> dict[str, dict[str, str]]:
        """See :func:`column_attrs`."""
        return column_attrs(self.predictor)

    def predict_columns(
        self, norm: np.ndarray[Any, Any], elements: Sequence[str | None]
    ) -> tuple[dict[str, np.ndarray[Any, Any]], dict[str, Column2D]]:
        pred = self.predictor.predict(norm, [e if e else "?" for e in elements])
        return prediction_columns(pred)


@dataclass
class Pipeline:
    """An engine and what it owns (close it to flush and release everything)."""

    engine: Engine
    model: ModelRunner
    sinks: list[TraceSink]
    dead_letter: DeadLetterSink
    extras: dict[str, Any] = field(default_factory=dict)
    #: The model was made by :func:`build_pipeline` (closed with the pipeline: a background
    #: compile still running stops), not handed in by the caller.
    owns_model: bool = True

    def close(self) -> None:
        self.engine.close()
        self.dead_letter.close()
        if self.owns_model:
            self.model.close()


def build_pipeline(
    settings: EngineSettings,
    *,
    model: ModelRunner | None = None,
    commit: CommitFn | None = None,
    dead_letter: DeadLetterSink | None = None,
    metrics: EngineMetrics | None = None,
    warm_up: bool = True,
) -> Pipeline:
    """Model + sinks (Zarr always; Tiled and feedback when configured) + engine, warmed up
    (:meth:`Engine.warm_up`, before anything reads: ``warm_up=False`` skips it)."""
    from spt_stream.sinks.threaded import ThreadedSink, ZarrSink

    runner = model or ModelRunner(
        settings.model,
        device=settings.device,
        threads=settings.compute_threads,
        backend=settings.model_backend,
        cache_dir=settings.model_cache_dir,
        max_batch=settings.batch.max_size,
        precision=settings.model_precision,
        background_compile=not settings.model_compile_wait,
    )
    primary = ZarrSink(
        settings.zarr.root,
        block_rows=settings.zarr.block_rows,
        max_delay_s=settings.zarr.write_interval_s,
        process=settings.zarr.process,
    )
    sinks: list[TraceSink] = [primary]
    tiled = None
    if settings.tiled.url:
        from spt_stream.sinks.tiled_trace import TiledTraceWriter

        tiled = TiledTraceWriter(
            settings.tiled.url, api_key=settings.tiled.api_key, queue_size=settings.tiled.queue_size
        )
        sinks.append(tiled)
    fb = settings.feedback
    if fb.topic or fb.documents_topic:
        from spt_stream.feedback.publisher import FeedbackPublisher

        before_stop = (
            functools.partial(tiled.finalize_and_wait, timeout=30.0) if tiled is not None else None
        )
        publisher = FeedbackPublisher(
            settings.kafka.bootstrap_servers,
            frame_topic=fb.topic,
            documents_topic=fb.documents_topic,
            model_name=f"{runner.info['name']} {runner.info['version']}",
            model_info=runner.info,
            descriptors=[*runner.info["descriptors"], *CLASSICAL_DESCRIPTORS],
            units=runner.units,
            ood_threshold=runner.predictor.ood_threshold,
            before_stop=before_stop,
            kafka=settings.kafka,
        )
        sinks.append(ThreadedSink(publisher, name="feedback", coalesce_rows=256))
    if dead_letter is None:
        path = settings.dead_letter_path
        dead_letter = DeadLetterFile(path) if path is not None else MemoryDeadLetter()
    engine = Engine(
        settings,
        runner,
        primary,
        sinks[1:],
        dead_letter=dead_letter,
        commit=commit,
        metrics=metrics,
    )
    if warm_up:  # before any source reads: the first frame must not pay first-use costs
        import time

        t0 = time.perf_counter()
        steps = engine.warm_up()
        log.info(
            "engine warmed up in %.2f s (%s)",
            time.perf_counter() - t0,
            ", ".join(f"{k} {v:.2f} s" for k, v in steps.items()),
        )
    return Pipeline(
        engine=engine, model=runner, sinks=sinks, dead_letter=dead_letter, owns_model=model is None
    )

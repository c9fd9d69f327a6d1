"""Orchestration of ``spt-stream demo``: broker, RunEngine, engine, plot, summary, clean-up."""

from __future__ import annotations

import logging
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

__all__ = ["DemoResult", "JsonLinesDocuments", "prepare_out_dir", "run_demo"]

log = logging.getLogger(__name__)

TOPIC = "demo.bluesky.runengine.documents"
FEEDBACK_TOPIC = "demo.spt.feedback"


@dataclass
class DemoResult:
    run_uid: str
    frames_published: int
    frames_analysed: int
    acquisition_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    trace: Path
    plot: Path | None
    dead_letter: Path
    #: The run's Bluesky documents as JSON lines (``spt-stream replay`` reads them).
    documents: Path
    extra: dict[str, Any] = field(default_factory=dict)


def prepare_out_dir(out_dir: Path) -> Path:
    """Create the demo's output folder; :class:`SinkError` naming it when that is impossible
    (a file in its place or on its path, no permission)."""
    from spt_stream.errors import SinkError

    path = Path(out_dir).resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = exc.strerror or str(exc)
        if isinstance(exc, FileExistsError | NotADirectoryError):
            why = "a file is in the way (the output must be a folder)"
        raise SinkError(f"cannot create the output folder: {why}", source=str(out_dir)) from exc
    return path


class JsonLinesDocuments:
    """A RunEngine callback appending every document to a JSON-lines file, one
    ``{"name": ..., "doc": ...}`` per line (bluesky's JSONLinesWriter layout, arrays as lists)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = path.open("w", encoding="utf-8")

    def __call__(self, name: str, doc: Any) -> None:
        import json

        from event_model import sanitize_doc

        if not self._fh.closed:
            self._fh.write(json.dumps({"name": name, "doc": sanitize_doc(doc)}) + "\n")

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> JsonLinesDocuments:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_demo(
    out_dir: Path,
    *,
    frames: int = 300,
    rate_hz: float = 10.0,
    tiled: bool = False,
    model: Path | None = None,
    console: Console | None = None,
    tiled_server: Any = None,
) -> DemoResult:
    """Run the whole demo (see :mod:`spt_stream.commands.demo`); return where everything is.

    ``tiled_server``: a started :class:`~spt_stream.devtools.tiled_server.TiledServer` to write to
    (the
    caller's, left running: ``demo --tiled --view`` keeps showing its runs); otherwise ``tiled``
    starts one for the demo's duration."""
    from bluesky import RunEngine

    from spt_stream.config import load_settings
    from spt_stream.devtools.broker import LocalBroker, create_topic
    from spt_stream.devtools.demo.experiment import (
        DelithiationCell,
        QuickXASDetector,
        delithiation_plan,
    )
    from spt_stream.engine.pipeline import build_pipeline
    from spt_stream.errors import SptError
    from spt_stream.transports.kafka import KafkaDocumentSource
    from spt_stream.transports.publish import KafkaDocumentPublisher
    from spt_stream.view.plot import plot_trace

    console = console or Console(stderr=True)
    out_dir = prepare_out_dir(out_dir)
    documents = out_dir / "documents.jsonl"
    with ExitStack() as stack:
        console.print("[bold]1/5[/bold] starting the local Kafka-protocol broker (Tansu)")
        broker = stack.enter_context(LocalBroker())
        create_topic(broker.bootstrap, TOPIC, partitions=1)
        create_topic(broker.bootstrap, FEEDBACK_TOPIC, partitions=1)
        tiled_url = None
        tiled_key = None
        if tiled_server is not None:
            tiled_url, tiled_key = tiled_server.url, tiled_server.api_key
        elif tiled:
            from spt_stream.devtools.tiled_server import TiledServer

            console.print("      starting a local Tiled server")
            server = stack.enter_context(TiledServer(workdir=out_dir / "tiled"))
            tiled_url, tiled_key = server.url, server.api_key
        settings = load_settings(
            None,
            {
                "kafka": {
                    "bootstrap_servers": broker.bootstrap,
                    "topics": (TOPIC,),
                    "group_id": "spt-demo",
                },
                "zarr": {"root": out_dir / "traces"},
                "tiled": {"url": tiled_url, "api_key": tiled_key},
                "feedback": {"topic": FEEDBACK_TOPIC},
                "dead_letter": {"path": out_dir / "dead-letter.jsonl"},
                "model": model,
            },
        )
        console.print("[bold]2/5[/bold] loading the SPT model and starting the engine")
        source = KafkaDocumentSource(settings.kafka)
        with console.status("loading the model and warming up the engine"):
            pipeline = build_pipeline(settings, commit=source.commit)
        info = pipeline.model.info
        console.print(f"    model {info['name']} {info['version']} on {info['device']}")
        # One line for the backend; a first start serves with the eager model while the AOT
        # model compiles in the background, and one more line when it switches.
        console.print(f"    {pipeline.model.status_line}")
        pipeline.model.add_listener(lambda line: console.print(f"    {line}"))
        stop = threading.Event()
        errors: list[BaseException] = []

        def _consume() -> None:
            try:
                source.run(pipeline.engine, stop)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        thread = threading.Thread(target=_consume, name="spt-engine", daemon=True)
        thread.start()
        # The broker holds a group join for a few seconds; starting the plan before the engine
        # holds its partition would charge that wait to the first frames' latency.
        deadline = time.monotonic() + 30.0
        while not source.assigned.wait(0.1):
            if errors or time.monotonic() > deadline:
                break
        if errors:  # the consumer died while connecting: nothing would read the experiment
            pipeline.close()
            source.close()
            raise errors[0]
        if not source.assigned.is_set():
            log.warning("the engine has not joined its consumer group yet; starting anyway")

        console.print(
            f"[bold]3/5[/bold] running the operando experiment: {frames} Co K-edge spectra "
            f"at {rate_hz:g} Hz while a LiCoO2 cathode charges (RunEngine -> Kafka -> engine)"
        )
        cell = DelithiationCell(name="cell", duration_s=frames / rate_hz)
        det = QuickXASDetector(name="qxas", cell=cell)
        publisher = KafkaDocumentPublisher(broker.bootstrap, TOPIC)
        RE = RunEngine({}, call_returns_result=True)
        RE.subscribe(publisher)  # type: ignore[no-untyped-call]
        saved = stack.enter_context(JsonLinesDocuments(documents))
        RE.subscribe(saved)  # type: ignore[no-untyped-call]
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        task = progress.add_task("frames acquired", total=frames)
        RE.subscribe(  # type: ignore[no-untyped-call]
            lambda name, doc: progress.advance(task) if name == "event" else None
        )
        t0 = time.monotonic()
        with progress:
            result = RE(delithiation_plan(det, cell, frames=frames, rate_hz=rate_hz))
        acquisition_s = time.monotonic() - t0
        uids = result.run_start_uids if hasattr(result, "run_start_uids") else result
        run_uid = str(uids[0])
        publisher.close()
        saved.close()

        console.print("[bold]4/5[/bold] waiting for the engine to finish the run")
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline and not errors:
            runs = {r["run_uid"]: r for r in pipeline.engine.snapshot()["runs"]}
            if run_uid in runs and runs[run_uid]["status"] != "running":
                break
            time.sleep(0.1)
        stop.set()
        thread.join(timeout=30)
        snap = pipeline.engine.snapshot()
        if pipeline.model.compiling:  # a first start: let the compile finish for the next one
            why = "finishing the model's ahead-of-time compile for the next start (Ctrl-C skips)"
            try:
                with console.status(why):
                    while pipeline.model.compiling:
                        time.sleep(0.2)
            except KeyboardInterrupt:
                console.print("    compile skipped: the next start compiles the model again")
        pipeline.close()
        source.close()
        if errors:
            raise errors[0]

        trace = Path(settings.zarr.root) / f"{run_uid}.zarr"
        console.print("[bold]5/5[/bold] plotting the trace")
        png: Path | None
        try:
            png = plot_trace(
                trace,
                out_dir / "operando_co_oxidation.png",
                reference="cell_nominal_os",
                title="Operando Co K-edge XANES during LiCoO2 delithiation (simulated beamline)",
            )
        except (SptError, ValueError, KeyError) as exc:
            log.error("plot failed: %s", exc)
            png = None
        run = next((r for r in snap["runs"] if r["run_uid"] == run_uid), None)
        return DemoResult(
            run_uid=run_uid,
            frames_published=frames,
            frames_analysed=int(run["frames"]) if run else 0,
            acquisition_s=acquisition_s,
            latency_p50_ms=float(snap["latency_p50_ms"]),
            latency_p99_ms=float(snap["latency_p99_ms"]),
            trace=trace,
            plot=png,
            dead_letter=settings.dead_letter_path or out_dir / "dead-letter.jsonl",
            documents=documents,
            extra={"tiled": tiled_url} if tiled_url else {},
        )
    raise AssertionError("unreachable")  # pragma: no cover

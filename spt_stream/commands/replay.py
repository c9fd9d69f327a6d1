"""``spt-stream replay SOURCE...``: the live pipeline on stored data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from spt_stream.commands._engine_options import (
    BootstrapOpt,
    ConfigOpt,
    FeedbackTopicOpt,
    LogLevelOpt,
    ModelOpt,
    ReferenceRunOpt,
    TiledUrlOpt,
    ZarrOpt,
)
from spt_stream.view.options import ViewHostOpt, ViewOpt, ViewPortOpt

__all__ = ["register", "unreadable_source"]


def register(app: typer.Typer) -> None:
    @app.command("replay")
    def replay(
        sources: Annotated[
            list[str] | None,
            typer.Argument(
                help="Bluesky JSONL files, a Tiled URL (with --run/--search), or spectrum files "
                "(XDI/ASCII; one run, ordered by header timestamp, else by name)."
            ),
        ] = None,
        run: Annotated[
            list[str] | None, typer.Option("--run", help="Tiled run uid (repeatable).")
        ] = None,
        search: Annotated[
            list[str] | None,
            typer.Option("--search", help="Tiled metadata filter key=value (repeatable)."),
        ] = None,
        kafka_topic: Annotated[
            str | None,
            typer.Option("--kafka-topic", help="Replay a Kafka topic instead of files."),
        ] = None,
        from_offset: Annotated[
            int | None, typer.Option("--from-offset", help="Kafka: start offset (all partitions).")
        ] = None,
        from_time: Annotated[
            float | None,
            typer.Option("--from-time", help="Kafka: start at this UNIX time (seconds)."),
        ] = None,
        bootstrap_servers: BootstrapOpt = None,
        element: Annotated[
            str | None, typer.Option("--element", help="Element when files do not say.")
        ] = None,
        edge: Annotated[
            str | None, typer.Option("--edge", help="Edge when files do not say.")
        ] = None,
        zarr: ZarrOpt = None,
        tiled_url: TiledUrlOpt = None,
        feedback_topic: FeedbackTopicOpt = None,
        model: ModelOpt = None,
        reference_run: ReferenceRunOpt = None,
        config: ConfigOpt = None,
        log_level: LogLevelOpt = "WARNING",
        serve_view: ViewOpt = False,
        view_host: ViewHostOpt = "127.0.0.1",
        view_port: ViewPortOpt = 0,
    ) -> None:
        """Run stored scans through exactly the live pipeline and write their traces.

        Exit codes: 0 when every source was read and frames were analysed; 1 when a source
        could not be read or gave no run, or nothing was analysed; 2 for a path that does not
        exist or is not a readable file (checked before anything starts) and bad options."""
        import threading

        from rich.console import Console
        from rich.markup import escape

        from spt_stream.commands._engine_options import (
            configure_logging,
            print_summary,
            settings_overrides,
        )
        from spt_stream.config import load_settings
        from spt_stream.engine.pipeline import build_pipeline
        from spt_stream.errors import SptError

        configure_logging(log_level)
        console = Console(stderr=True, soft_wrap=True)
        if not sources and kafka_topic is None:
            console.print("[red]error:[/red] give SOURCE files/URL or --kafka-topic")
            raise typer.Exit(2)
        unreadable = [
            (src, why) for src in sources or [] if (why := unreadable_source(src)) is not None
        ]
        for src, why in unreadable:
            console.print(f"[red]error:[/red] cannot replay {escape(src)}: {why}")
        if unreadable:
            raise typer.Exit(2)
        try:
            settings = load_settings(
                config,
                settings_overrides(
                    zarr=zarr,
                    tiled_url=tiled_url,
                    feedback_topic=feedback_topic,
                    model=model,
                    bootstrap_servers=bootstrap_servers,
                    topics=[kafka_topic] if kafka_topic else None,
                    reference_run=reference_run,
                ),
            )
            pipeline = build_pipeline(settings)
        except SptError as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}")
            raise typer.Exit(2) from exc
        live_view = None
        if serve_view:  # the live web view, in its own process (exits with this one)
            from spt_stream.view.options import start_view

            try:
                snap = pipeline.engine.snapshot
                live_view = start_view(
                    settings.zarr.root,
                    view_host,
                    view_port,
                    snapshot=snap,
                    console=console,
                    tiled=settings.tiled,
                )
            except SptError as exc:
                console.print(f"[red]error:[/red] {escape(str(exc))}")
                pipeline.close()
                raise typer.Exit(2) from exc
        problems: list[str] = []
        try:
            if kafka_topic is not None:
                from spt_stream.transports.kafka import KafkaDocumentSource

                kafka = settings.kafka.model_copy(update={"group_id": None})
                topic_source = KafkaDocumentSource(
                    kafka,
                    start_timestamp_ms=int(from_time * 1000) if from_time is not None else None,
                    start_offsets=(
                        _all_partitions(kafka, from_offset) if from_offset is not None else None
                    ),
                )
                topic_source.run(pipeline.engine, threading.Event(), idle_timeout_s=2.0)
                topic_source.close()
            else:
                problems = _replay_each(
                    sources or [],
                    pipeline.engine,
                    run=run,
                    search=search,
                    api_key=settings.tiled.api_key,
                    element=element,
                    edge=edge,
                )
        except SptError as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}")
            pipeline.close()
            raise typer.Exit(1) from exc
        pipeline.close()
        print_summary(console, pipeline, live=False)
        if live_view is not None:
            console.print(f"serving the view at {live_view.url} until Ctrl-C")
            live_view.wait()
            live_view.stop()
        if not problems and not pipeline.engine.snapshot()["frames"]:
            given = ", ".join(sources or []) or f"topic {kafka_topic}"
            problems.append(f"nothing analysed: no frame came out of {given}")
        for problem in problems:
            console.print(f"[red]error:[/red] {escape(problem)}")
        if problems:
            raise typer.Exit(1)


def unreadable_source(source: str) -> str | None:
    """Why a local replay source cannot be read at all (None: it can, or it is a URL)."""
    import os
    from pathlib import Path

    if source.startswith(("http://", "https://")):
        return None
    path = Path(source)
    if not path.exists():
        return "no such file"
    if path.is_dir():
        return "is a directory (give the files in it)"
    if not path.is_file():
        return "not a regular file"
    if not os.access(path, os.R_OK):
        return "permission denied"
    return None


class _Watch:
    """Forwards to the engine; remembers which sources had input rejected, and why."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler
        self.rejected: dict[str, str] = {}

    def __call__(self, name: str, doc: Any, position: Any = None) -> None:
        self.handler(name, doc, position)

    def reject(self, error: Any, payload: bytes | None = None, position: Any = None) -> None:
        where = getattr(position, "file", None) or getattr(error, "source", None)
        if where is not None:
            self.rejected.setdefault(str(where), getattr(error, "message", str(error)))
        self.handler.reject(error, payload, position)

    # The engine's periodic hooks (spt_stream.protocols.PeriodicHandler), passed through.
    def tick(self) -> None:
        self.handler.tick()

    def idle(self) -> None:
        self.handler.idle()

    def time_until_due(self) -> float | None:
        due: float | None = self.handler.time_until_due()
        return due


def _replay_each(
    sources: list[str],
    handler: Any,
    *,
    run: list[str] | None,
    search: list[str] | None,
    api_key: Any,
    element: str | None,
    edge: str | None,
) -> list[str]:
    """Replay the sources (documents in order, then the spectrum files as one run); return
    one message per source that could not be read or held no run."""
    from spt_stream.transports.sources import DOCUMENT_SUFFIXES, replay_sources

    runs: list[str] | dict[str, object] | None = list(run) if run else None
    if search:
        from spt_stream.transports.tiled_replay import parse_tiled_filter

        runs = dict(parse_tiled_filter(search))
    documents = [
        s
        for s in sources
        if s.startswith(("http://", "https://")) or Path(s).suffix.lower() in DOCUMENT_SUFFIXES
    ]
    spectra = [s for s in sources if s not in documents]
    problems: list[str] = []
    for source in documents:
        stats = replay_sources([source], handler, runs=runs, api_key=api_key, progress=True)
        if not stats.runs:
            bad = f"; {stats.rejected} lines/records rejected" if stats.rejected else ""
            problems.append(f"{source}: no Bluesky run in it{bad}")
    if spectra:
        watch = _Watch(handler)
        replay_sources(spectra, watch, element=element, edge=edge, progress=True)
        for path in spectra:
            if path in watch.rejected:
                problems.append(f"{path}: {watch.rejected[path]}")
    return problems


def _all_partitions(kafka: object, offset: int) -> dict[tuple[str, int], int]:
    """``{(topic, p): offset}`` for every partition of the configured topics."""
    from kafka import KafkaConsumer

    from spt_stream.config import KafkaSettings

    assert isinstance(kafka, KafkaSettings)
    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap_servers.split(","))
    try:
        out: dict[tuple[str, int], int] = {}
        for topic in kafka.topics:
            for p in consumer.partitions_for_topic(topic) or ():
                out[(topic, p)] = offset
        return out
    finally:
        consumer.close()

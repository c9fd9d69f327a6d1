"""``spt-stream run``: the live engine on a Kafka topic."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spt_stream.commands._engine_options import (
    BootstrapOpt,
    ConfigOpt,
    FeedbackTopicOpt,
    LogLevelOpt,
    ModelOpt,
    TiledUrlOpt,
    ZarrOpt,
)

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        bootstrap_servers: BootstrapOpt = None,
        topic: Annotated[
            list[str] | None,
            typer.Option(
                "--topic", help="Topic to read (repeatable); '^regex' subscribes by pattern."
            ),
        ] = None,
        group_id: Annotated[str | None, typer.Option("--group-id", help="Consumer group.")] = None,
        zarr: ZarrOpt = None,
        tiled_url: TiledUrlOpt = None,
        feedback_topic: FeedbackTopicOpt = None,
        feedback_documents_topic: Annotated[
            str | None,
            typer.Option("--feedback-documents-topic", help="Derived-run documents topic."),
        ] = None,
        model: ModelOpt = None,
        config: ConfigOpt = None,
        stop_after_idle: Annotated[
            float | None,
            typer.Option(
                "--stop-after-idle", help="Stop after this many seconds without a message."
            ),
        ] = None,
        metrics_port: Annotated[
            int | None, typer.Option("--metrics-port", help="Serve Prometheus /metrics here.")
        ] = None,
        status: Annotated[bool, typer.Option(help="Show the live status view.")] = True,
        log_level: LogLevelOpt = "INFO",
    ) -> None:
        """Consume Bluesky documents from Kafka and write descriptor traces, live."""
        import threading
        from contextlib import nullcontext

        from rich.console import Console

        from spt_stream.commands._engine_options import (
            configure_logging,
            print_summary,
            settings_overrides,
        )
        from spt_stream.config import load_settings
        from spt_stream.consumers.kafka import KafkaDocumentSource, install_stop_signals
        from spt_stream.errors import SptError
        from spt_stream.runtime import build_pipeline
        from spt_stream.status import StatusView

        configure_logging(log_level)
        console = Console(stderr=True)
        try:
            settings = load_settings(
                config,
                settings_overrides(
                    zarr=zarr,
                    tiled_url=tiled_url,
                    feedback_topic=feedback_topic,
                    feedback_documents_topic=feedback_documents_topic,
                    model=model,
                    bootstrap_servers=bootstrap_servers,
                    topics=topic,
                    group_id=group_id,
                ),
            )
            source = KafkaDocumentSource(settings.kafka)
            pipeline = build_pipeline(settings, commit=source.commit)
        except SptError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
        if metrics_port is not None:
            pipeline.engine.metrics.serve(metrics_port)
        stop = threading.Event()
        restore = install_stop_signals(stop)
        console.print(
            f"spt-stream run: {settings.kafka.bootstrap_servers} "
            f"topics={list(settings.kafka.topics)} "
            f"group={settings.kafka.group_id} -> {Path(settings.zarr.root).resolve()}"
        )
        view = (
            StatusView(pipeline.engine.snapshot, lag=lambda: source.stats.lag)
            if status
            else nullcontext()
        )
        try:
            with view:
                source.run(pipeline.engine, stop, idle_timeout_s=stop_after_idle)
        finally:
            pipeline.close()
            source.close()
            restore()
        print_summary(console, pipeline)

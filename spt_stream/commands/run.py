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
    ReferenceRunOpt,
    TiledUrlOpt,
    ZarrOpt,
)
from spt_stream.view.options import ViewHostOpt, ViewOpt, ViewPortOpt

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
        reference_run: ReferenceRunOpt = None,
        config: ConfigOpt = None,
        stop_after_idle: Annotated[
            float | None,
            typer.Option(
                "--stop-after-idle",
                help="Stop after this many seconds without a message (counted once connected).",
            ),
        ] = None,
        connect_timeout: Annotated[
            float | None,
            typer.Option(
                "--connect-timeout",
                min=0.1,
                help="Exit 1 when no broker answered within this many seconds (default 120; "
                "later outages are retried without limit).",
            ),
        ] = None,
        metrics_port: Annotated[
            int | None, typer.Option("--metrics-port", help="Serve Prometheus /metrics here.")
        ] = None,
        status: Annotated[bool, typer.Option(help="Show the live status view.")] = True,
        log_level: LogLevelOpt = "INFO",
        serve_view: ViewOpt = False,
        view_host: ViewHostOpt = "127.0.0.1",
        view_port: ViewPortOpt = 0,
    ) -> None:
        """Consume Bluesky documents from Kafka and write descriptor traces, live.

        Exit codes: 0 after a clean stop (Ctrl-C/SIGTERM or --stop-after-idle: what was read is
        flushed, offsets of unfinished runs stay uncommitted and are read again on restart);
        1 when no broker answered within --connect-timeout; 2 for bad settings; 130 when
        interrupted before anything was read."""
        import threading
        from contextlib import nullcontext

        from rich.console import Console
        from rich.markup import escape

        from spt_stream.commands._engine_options import (
            configure_logging,
            print_summary,
            settings_overrides,
        )
        from spt_stream.config import load_settings
        from spt_stream.engine.pipeline import build_pipeline
        from spt_stream.engine.status import StatusView
        from spt_stream.errors import SptError
        from spt_stream.transports.kafka import KafkaDocumentSource, install_stop_signals

        configure_logging(log_level)
        console = Console(stderr=True, soft_wrap=True)
        overrides = settings_overrides(
            zarr=zarr,
            tiled_url=tiled_url,
            feedback_topic=feedback_topic,
            feedback_documents_topic=feedback_documents_topic,
            model=model,
            bootstrap_servers=bootstrap_servers,
            topics=topic,
            group_id=group_id,
            reference_run=reference_run,
        )
        overrides["kafka"]["connect_timeout_s"] = connect_timeout
        try:
            settings = load_settings(config, overrides)
            source = KafkaDocumentSource(settings.kafka)
            pipeline = build_pipeline(settings, commit=source.commit)
        except SptError as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}")
            raise typer.Exit(2) from exc
        except KeyboardInterrupt:
            console.print("[red]interrupted[/red] while starting: nothing was read")
            raise typer.Exit(130) from None
        if metrics_port is not None:
            pipeline.engine.metrics.serve(metrics_port)
        if serve_view:  # the live web view, in its own process (exits with this one)
            from spt_stream.view.options import start_view

            try:
                snap, lag = pipeline.engine.snapshot, lambda: source.stats.lag
                start_view(
                    settings.zarr.root,
                    view_host,
                    view_port,
                    snapshot=snap,
                    lag=lag,
                    console=console,
                    tiled=settings.tiled,
                )
            except SptError as exc:
                console.print(f"[red]error:[/red] {escape(str(exc))}")
                pipeline.close()
                source.close()
                raise typer.Exit(2) from exc
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
        failure: SptError | None = None
        try:
            with view:
                source.run(pipeline.engine, stop, idle_timeout_s=stop_after_idle)
        except SptError as exc:
            failure = exc
        finally:
            pipeline.close()
            source.close()
            restore()
        if failure is not None:
            console.print(f"[red]error:[/red] {escape(str(failure))}")
            raise typer.Exit(1)
        print_summary(console, pipeline)
        if stop.is_set() and not source.connected_once:
            console.print(
                f"[red]interrupted[/red] before any broker answered at "
                f"{settings.kafka.bootstrap_servers}: nothing was read"
            )
            raise typer.Exit(130)

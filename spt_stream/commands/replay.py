"""``spt-stream replay SOURCE...``: the live pipeline on stored data."""

from __future__ import annotations

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
        config: ConfigOpt = None,
        log_level: LogLevelOpt = "WARNING",
    ) -> None:
        """Run stored scans through exactly the live pipeline and write their traces."""
        import threading

        from rich.console import Console

        from spt_stream.commands._engine_options import (
            configure_logging,
            print_summary,
            settings_overrides,
        )
        from spt_stream.config import load_settings
        from spt_stream.errors import SptError
        from spt_stream.runtime import build_pipeline

        configure_logging(log_level)
        console = Console(stderr=True)
        if not sources and kafka_topic is None:
            console.print("[red]error:[/red] give SOURCE files/URL or --kafka-topic")
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
                ),
            )
            pipeline = build_pipeline(settings)
        except SptError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
        try:
            if kafka_topic is not None:
                from spt_stream.consumers.kafka import KafkaDocumentSource

                kafka = settings.kafka.model_copy(update={"group_id": None})
                src = KafkaDocumentSource(
                    kafka,
                    start_timestamp_ms=int(from_time * 1000) if from_time is not None else None,
                    start_offsets=(
                        _all_partitions(kafka, from_offset) if from_offset is not None else None
                    ),
                )
                src.run(pipeline.engine, threading.Event(), idle_timeout_s=2.0)
                src.close()
            else:
                from spt_stream.consumers.sources import replay_sources

                runs: list[str] | dict[str, object] | None = list(run) if run else None
                if search:
                    from spt_stream.consumers.tiled_replay import parse_tiled_filter

                    runs = dict(parse_tiled_filter(search))
                replay_sources(
                    sources or [],
                    pipeline.engine,
                    runs=runs,
                    element=element,
                    edge=edge,
                    progress=True,
                )
        except SptError as exc:
            console.print(f"[red]error:[/red] {exc}")
            pipeline.close()
            raise typer.Exit(1) from exc
        pipeline.close()
        print_summary(console, pipeline, live=False)


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

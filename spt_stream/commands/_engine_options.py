"""Options shared by ``spt-stream run``, ``replay`` and ``demo``, and their settings overrides."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

__all__ = [
    "BootstrapOpt",
    "ConfigOpt",
    "FeedbackTopicOpt",
    "LogLevelOpt",
    "ModelOpt",
    "TiledUrlOpt",
    "ZarrOpt",
    "configure_logging",
    "print_summary",
    "settings_overrides",
]

# Command-line options ``run`` and ``replay`` share (one declaration, one help text).
BootstrapOpt = Annotated[
    str | None, typer.Option("--bootstrap-servers", help="Kafka bootstrap servers.")
]
ZarrOpt = Annotated[Path | None, typer.Option("--zarr", help="Trace store root directory.")]
TiledUrlOpt = Annotated[
    str | None,
    typer.Option("--tiled-url", help="Also write traces to Tiled (key: SPT_TILED_API_KEY)."),
]
FeedbackTopicOpt = Annotated[
    str | None, typer.Option("--feedback-topic", help="Per-frame feedback messages topic.")
]
ModelOpt = Annotated[
    Path | None, typer.Option("--model", help="Checkpoint (default: the packaged model).")
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Engine YAML config.")]
LogLevelOpt = Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")]


def settings_overrides(
    *,
    zarr: Path | None = None,
    tiled_url: str | None = None,
    feedback_topic: str | None = None,
    feedback_documents_topic: str | None = None,
    model: Path | None = None,
    bootstrap_servers: str | None = None,
    topics: list[str] | None = None,
    group_id: str | None = None,
    device: str | None = None,
    dead_letter: Path | None = None,
) -> dict[str, Any]:
    """Nested settings overrides from command-line options (None = not given)."""
    return {
        "zarr": {"root": zarr},
        "tiled": {"url": tiled_url},
        "feedback": {"topic": feedback_topic, "documents_topic": feedback_documents_topic},
        "model": model,
        "device": device,
        "kafka": {
            "bootstrap_servers": bootstrap_servers,
            "topics": tuple(topics) if topics else None,
            "group_id": group_id,
        },
        "dead_letter": {"path": dead_letter},
    }


def configure_logging(level: str) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=level,
        format="%(name)s: %(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
        force=True,
    )


def print_summary(
    console: Console,
    pipeline: Any,
    extra: dict[str, Any] | None = None,
    *,
    live: bool = True,
) -> None:
    """What was done and where it is (``live=False``: no latency, it means nothing in a replay)."""
    snap = pipeline.engine.snapshot()
    ingest = snap["ingest"]
    latency = (
        f"[bold]latency[/bold] p50 {snap['latency_p50_ms']:.1f} ms, "
        f"p99 {snap['latency_p99_ms']:.1f} ms  "
        if live
        else ""
    )
    console.print(
        f"[bold]frames analysed[/bold] {snap['frames']}  {latency}"
        f"[bold]rejected[/bold] {ingest.get('rejected', 0)}"
    )
    root = Path(pipeline.engine.settings.zarr.root).resolve()
    for run in snap["runs"]:
        console.print(
            f"  run {run['run_uid']}  {run.get('element') or '?'}  frames={run['frames']} "
            f"duplicates={run['duplicates']} status={run['status']}\n"
            f"    trace: {root / (run['run_uid'] + '.zarr')}",
            soft_wrap=True,  # a path must stay whole to be copied from a terminal
        )
    dl = pipeline.engine.settings.dead_letter.path
    if ingest.get("rejected", 0) and dl is not None:
        console.print(f"  dead-letter records: {Path(dl).resolve()}", soft_wrap=True)
    for k, v in (extra or {}).items():
        console.print(f"  {k}: {v}", soft_wrap=True)

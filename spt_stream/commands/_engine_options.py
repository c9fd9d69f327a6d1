"""Options shared by ``spt-stream run``, ``replay`` and ``demo``, and their settings overrides."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

__all__ = [
    "CONNECTION_LOGGERS",
    "LEVELS",
    "PLAIN_FORMAT",
    "BootstrapOpt",
    "ConfigOpt",
    "FeedbackTopicOpt",
    "LogLevelOpt",
    "ModelOpt",
    "ReferenceRunOpt",
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
ReferenceRunOpt = Annotated[
    str | None,
    typer.Option(
        "--reference-run",
        help="os_delta against this stored run (uid under --zarr) for runs of its element; "
        "default: each run's own first frames.",
    ),
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Engine YAML config.")]
LogLevelOpt = Annotated[
    str, typer.Option(help="DEBUG (also the libraries' records), INFO, WARNING or ERROR.")
]


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
    reference_run: str | None = None,
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
        "tracking": {"reference_run": reference_run},
    }


#: One line per record when stderr is not a terminal (a log file, a pipe, journald, CI).
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
#: kafka-python's connection layer logs several ERROR/WARNING records per failed connection
#: attempt (816 lines in 11 minutes without a broker); the Kafka source reports connection state
#: itself, one line per retry. Shown with ``--log-level debug``.
CONNECTION_LOGGERS = ("kafka.net", "kafka.conn", "kafka.client_async")


def configure_logging(level: str, *, log_file: Path | None = None) -> None:
    """The engine's loggers (``spt_stream.*``) at ``level``; every other library's (kafka-python,
    urllib3, httpx, tiled, ...) at WARNING unless ``level`` is DEBUG.

    On a terminal, records are drawn by rich; otherwise each is one plain, greppable line
    (:data:`PLAIN_FORMAT`). ``log_file``: the engine's records at INFO and above (DEBUG with
    ``level`` DEBUG) are also appended there, as plain lines, whatever ``level`` shows on stderr.

    Raises
    ------
    typer.BadParameter
        ``level`` is not one of :data:`LEVELS` (any case).
    """
    import sys

    name = level.strip().upper()
    if name not in LEVELS:
        raise typer.BadParameter(
            f"{level!r} is not one of {', '.join(LEVELS)}", param_hint="--log-level"
        )
    handler: logging.Handler
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler = RichHandler(console=Console(stderr=True), show_path=False)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    handler.setLevel(name)
    handlers: list[logging.Handler] = [handler]
    engine_level = name
    if log_file is not None:
        to_file = logging.FileHandler(log_file, encoding="utf-8")
        to_file.setFormatter(logging.Formatter(PLAIN_FORMAT))
        handlers.append(to_file)
        engine_level = "DEBUG" if name == "DEBUG" else "INFO"
    debug = name == "DEBUG"
    logging.basicConfig(level="DEBUG" if debug else "WARNING", handlers=handlers, force=True)
    logging.getLogger("spt_stream").setLevel(engine_level)
    for quiet in CONNECTION_LOGGERS:
        logging.getLogger(quiet).setLevel(logging.NOTSET if debug else logging.CRITICAL)


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
        if live and snap["frames"]
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
    dl = pipeline.engine.settings.dead_letter_path
    if ingest.get("rejected", 0) and dl is not None:
        console.print(f"  dead-letter records: {Path(dl).resolve()}", soft_wrap=True)
    for k, v in (extra or {}).items():
        console.print(f"  {k}: {v}", soft_wrap=True)

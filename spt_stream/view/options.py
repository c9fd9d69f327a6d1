"""The ``--view`` options shared by ``run``, ``replay``, ``demo`` and ``view``, and the helper
that starts the view next to an engine and prints its URL."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["ViewHostOpt", "ViewOpt", "ViewPortOpt", "start_view"]

ViewOpt = Annotated[
    bool,
    typer.Option(
        "--view",
        help="Serve the live view (a local web page) of the traces; the URL is printed.",
    ),
]
ViewHostOpt = Annotated[
    str,
    typer.Option(
        "--view-host",
        help="Address the view binds to; beyond 127.0.0.1 it needs SPT_VIEW_TOKEN.",
    ),
]
ViewPortOpt = Annotated[
    int, typer.Option("--view-port", min=0, max=65535, help="View port (0: a free one).")
]


def start_view(
    root: Path | str,
    host: str,
    port: int,
    *,
    snapshot: Callable[[], Mapping[str, Any]] | None = None,
    lag: Callable[[], int | None] | None = None,
    console: Any = None,
) -> Any:
    """Start a :class:`~spt_stream.view.server.ViewProcess` and print its URL; returns it
    (the caller stops it). Raises :class:`~spt_stream.errors.SptError` when it cannot."""
    try:
        from spt_stream.view.server import ViewProcess
    except ImportError as exc:  # the optional extra is missing
        from spt_stream.errors import ConfigError

        raise ConfigError(
            f"--view needs the view extra (pip install 'spt-stream[view]'): {exc}"
        ) from exc
    view = ViewProcess(root, host=host, port=port, snapshot=snapshot, lag=lag).start()
    if console is not None:
        console.print(f"live view: [bold]{view.url}[/bold]")
    return view

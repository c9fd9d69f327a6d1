"""The ``--view`` options shared by ``run``, ``replay``, ``demo`` and ``view``, and the helper
that starts the view next to an engine and prints its URL."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from spt_stream.config import TiledSettings

__all__ = ["ViewHostOpt", "ViewOpt", "ViewPortOpt", "ViewTiledUrlOpt", "start_view"]

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
ViewTiledUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--tiled-url",
        help="Also list the runs the Tiled sink wrote to this Tiled server "
        "(key: SPT_TILED_API_KEY; default: the settings' tiled.url).",
    ),
]


def start_view(
    root: Path | str,
    host: str,
    port: int,
    *,
    snapshot: Callable[[], Mapping[str, Any]] | None = None,
    lag: Callable[[], int | None] | None = None,
    console: Any = None,
    tiled: TiledSettings | None = None,
) -> Any:
    """Start a :class:`~spt_stream.view.server.ViewProcess` and print its URL; returns it
    (the caller stops it). ``tiled``: the engine's Tiled settings; when they have a URL the view
    also lists the runs its Tiled sink writes there (with ``tiled.api_key``, never printed).
    Raises :class:`~spt_stream.errors.SptError` when it cannot."""
    try:
        from spt_stream.view.server import ViewProcess
    except ImportError as exc:  # the optional extra is missing
        from spt_stream.errors import ConfigError

        raise ConfigError(
            f"--view needs the view extra (pip install 'spt-stream[view]'): {exc}"
        ) from exc
    url = tiled.url if tiled is not None else None
    view = ViewProcess(
        root,
        host=host,
        port=port,
        snapshot=snapshot,
        lag=lag,
        tiled_url=url,
        tiled_api_key=tiled.api_key if tiled is not None and url else None,
    ).start()
    if console is not None:
        also = f" (and the Tiled runs at {url})" if url else ""
        console.print(f"live view: [bold]{view.url}[/bold]{also}")
    return view

"""``spt-stream view [TRACE_ROOT]``: the live operando view of a trace root in the browser, and of
the runs the Tiled sink wrote with ``--tiled-url`` (or the settings' ``tiled.url``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spt_stream.view.options import ViewHostOpt, ViewPortOpt, ViewTiledUrlOpt

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command("view")
    def view(
        root: Annotated[
            Path | None,
            typer.Argument(help="Trace root (the Zarr stores of the runs); default: settings."),
        ] = None,
        host: ViewHostOpt = "127.0.0.1",
        port: ViewPortOpt = 8765,
        config: Annotated[
            Path | None,
            typer.Option("--config", help="Engine settings (the trace root, the Tiled server)."),
        ] = None,
        tiled_url: ViewTiledUrlOpt = None,
    ) -> None:
        """Serve a web page of the runs under TRACE_ROOT (and on a Tiled server), live as their
        traces grow."""
        from rich.console import Console

        from spt_stream.errors import SptError

        console = Console(stderr=True)
        try:
            from spt_stream.config import load_settings
            from spt_stream.view.app import create_app
            from spt_stream.view.server import ViewServer, check_bind

            settings = load_settings(config, {"tiled": {"url": tiled_url}})
            if root is None:
                root = Path(settings.zarr.root)
            source = None
            if settings.tiled.url:  # the key: settings.tiled.api_key (SPT_TILED_API_KEY)
                from spt_stream.view.tiled_store import TiledSource

                try:
                    import importlib

                    for needed in ("pyarrow", "tiled.client"):
                        importlib.import_module(needed)
                except ImportError as exc:
                    console.print(
                        "[red]error:[/red] reading Tiled needs the tiled extra "
                        f"(pip install 'spt-stream[tiled]'): {exc}"
                    )
                    raise typer.Exit(2) from exc
                source = TiledSource(settings.tiled.url, settings.tiled.api_key)
            token = check_bind(host, None)
            server = ViewServer(create_app(root, token=token, tiled=source), host, port)
        except ImportError as exc:
            console.print(f"[red]error:[/red] the view needs the view extra: {exc}")
            raise typer.Exit(2) from exc
        except SptError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
        try:
            server.start()
        except SptError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
        also = f" and the Tiled runs at {source.url}" if source is not None else ""
        console.print(
            f"spt-stream view of {Path(root).resolve()}{also}"
            f"{' (token required)' if token else ''}; Ctrl-C stops it"
        )
        typer.echo(f"live view: {server.url}")  # stdout: scripts read the URL here
        try:
            server.wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()

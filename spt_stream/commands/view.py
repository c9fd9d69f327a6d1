"""``spt-stream view [TRACE_ROOT]``: the live operando view of a trace root in the browser."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spt_stream.view.options import ViewHostOpt, ViewPortOpt

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
            Path | None, typer.Option("--config", help="Engine settings (for the trace root).")
        ] = None,
    ) -> None:
        """Serve a web page of the runs under TRACE_ROOT, live as their traces grow."""
        from rich.console import Console

        from spt_stream.errors import SptError

        console = Console(stderr=True)
        try:
            from spt_stream.view.app import create_app
            from spt_stream.view.server import ViewServer, check_bind

            if root is None:
                from spt_stream.config import load_settings

                root = Path(load_settings(config).zarr.root)
            token = check_bind(host, None)
            server = ViewServer(create_app(root, token=token), host, port)
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
        console.print(
            f"spt-stream view of {Path(root).resolve()}{' (token required)' if token else ''}"
            "; Ctrl-C stops it"
        )
        typer.echo(f"live view: {server.url}")  # stdout: scripts read the URL here
        try:
            server.wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()

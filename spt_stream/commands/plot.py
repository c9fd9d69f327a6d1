"""``spt-stream plot TRACE``: the demo's figure for any trace store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command("plot")
    def plot(
        trace: Annotated[Path, typer.Argument(help="A run's trace store (<root>/<run_uid>.zarr).")],
        out: Annotated[
            Path | None, typer.Option("--out", help="PNG path (default: next to the trace).")
        ] = None,
        descriptor: Annotated[str, typer.Option(help="Descriptor to plot.")] = "os",
        reference: Annotated[
            str | None, typer.Option(help="Column with known values to overlay (dashed).")
        ] = None,
    ) -> None:
        """Save a PNG: a descriptor with its uncertainty against time and potential, and the
        normalized spectra as a heat map."""
        from spt_stream.errors import SptError
        from spt_stream.view.plot import plot_trace

        if not trace.exists():
            typer.echo(f"error: no trace store at {trace}", err=True)
            raise typer.Exit(2)
        target = out or trace.resolve().with_suffix(".png")
        try:
            path = plot_trace(trace, target, descriptor=descriptor, reference=reference)
        except SptError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        typer.echo(str(path))

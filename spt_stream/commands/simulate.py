"""``spt-stream simulate`` and ``spt-stream simulate-calibrate``: the XANES training-data engine.

Heavy imports (numpy, scipy, the simulator) happen inside the command bodies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]

_DEFAULT_RECIPE = Path("spt_stream/configs/simulate/default.yaml")


def register(app: typer.Typer) -> None:
    """Add the ``simulate`` and ``simulate-calibrate`` commands to ``app``."""

    @app.command("simulate")
    def simulate(
        out: Annotated[Path, typer.Option(help="Output dataset directory.")],
        recipe: Annotated[Path, typer.Option(help="Recipe YAML.")] = _DEFAULT_RECIPE,
        n: Annotated[int, typer.Option(min=1, help="Number of spectra.")] = 50000,
        seed: Annotated[int, typer.Option(help="Seed; data depend on (recipe, n, seed) only.")] = 0,
        workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 2,
        physics: Annotated[
            Path | None, typer.Option(help="Physics parameters YAML (default: the recipe's).")
        ] = None,
    ) -> None:
        """Generate a labelled simulated XANES data set in the model's dataset format."""
        import time

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        from spt_stream.errors import SptError
        from spt_stream.simulate.calibrate import load_params
        from spt_stream.simulate.generate import generate_dataset
        from spt_stream.simulate.sampler import load_recipe

        try:
            rec = load_recipe(recipe)
            params = load_params(physics) if physics is not None else None
        except SptError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        t0 = time.perf_counter()
        columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn())
        with Progress(*columns, TimeRemainingColumn()) as prog:
            task = prog.add_task("simulating", total=n)
            ds = generate_dataset(
                rec,
                n,
                seed,
                workers,
                out,
                params=params,
                progress=lambda k: prog.advance(task, k),
                recipe_source=str(recipe),
            )
        dt = time.perf_counter() - t0
        typer.echo(f"wrote {len(ds)} spectra to {out} in {dt:.1f} s ({len(ds) / dt:.1f} spectra/s)")

    @app.command("simulate-calibrate")
    def simulate_calibrate(
        out: Annotated[Path, typer.Option(help="Fitted parameters YAML.")] = Path(
            "spt_stream/configs/simulate/calibrated.yaml"
        ),
        report: Annotated[Path | None, typer.Option(help="Residual tables (markdown).")] = Path(
            "docs/simulator-calibration.md"
        ),
        plot: Annotated[Path | None, typer.Option(help="Comparison plot (PNG).")] = Path(
            "docs/img/simulator_vs_real.png"
        ),
        references: Annotated[
            Path | None, typer.Option(help="Reference directory (default: shared data).")
        ] = None,
        max_nfev: Annotated[
            int, typer.Option(min=1, help="Least-squares iterations per fit.")
        ] = 25,
        loeo: Annotated[bool, typer.Option(help="Also run leave-one-element-out.")] = True,
    ) -> None:
        """Fit the simulator's global parameters to the measured reference spectra."""
        from spt_stream.simulate.calibrate import run_calibration

        text = run_calibration(
            out, report=report, plot=plot, references=references, max_nfev=max_nfev, loeo=loeo
        )
        typer.echo(text)

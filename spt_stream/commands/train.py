"""``spt-stream train --config spt_stream/configs/train/<name>.yaml``: train or fine-tune an SPT
model.

Writes the checkpoint (safetensors + JSON metadata) to the config's ``output`` and the full
metrics (training history, test metrics per noise level, calibration, OOD, baselines) next to it
as ``<output>.metrics.json``; prints a summary table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["register"]


def _summary(metrics: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    levels = metrics.get("test", {}).get("levels", {})
    if not levels:
        return
    table = Table(title="test set (F1 macro for discrete, R2 for continuous)")
    table.add_column("noise sigma", justify="right")
    names = [k for k, v in levels["0.0"].items() if isinstance(v, dict)]
    for n in names:
        table.add_column(n, justify="right")
    for lvl, per in levels.items():
        table.add_row(
            lvl, *(f"{per[n].get('f1_macro', per[n].get('r2', float('nan'))):.3f}" for n in names)
        )
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add the ``train`` command to ``app``."""

    @app.command("train")
    def train(
        config: Annotated[Path, typer.Option("--config", help="Training config YAML.")],
        output: Annotated[
            Path | None, typer.Option(help="Checkpoint path (overrides config).")
        ] = None,
        epochs: Annotated[
            int | None, typer.Option(min=1, help="Epochs (overrides config).")
        ] = None,
        progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    ) -> None:
        """Train (or fine-tune with ``init_from``) an SPT model from a config file."""
        from spt_stream.errors import SptError
        from spt_stream.training.train import load_train_config
        from spt_stream.training.train import train as run_training

        try:
            cfg = load_train_config(config)
            updates: dict[str, Any] = {}
            if output is not None:
                updates["output"] = output
            if epochs is not None:
                updates["epochs"] = epochs
            if updates:
                cfg = cfg.model_copy(update=updates)
            result = run_training(cfg, progress=progress)
        except SptError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        _summary(result.metrics)
        typer.echo(f"checkpoint: {result.checkpoint}")
        typer.echo(f"metrics:    {result.extra['metrics_path']}")

"""``spt-stream compile-model``: build the engine's ahead-of-time compiled model now.

The engine compiles its model (``model_backend: auto``/``aot`` on the CPU) the first time it
starts with a given checkpoint, torch version, CPU and thread count (~30-40 s on one core), in the
background while the eager model serves (``model_compile_wait: true``: before it consumes
anything). Run this in a deployment step instead, with the same config the engine will use, so
the first ``spt-stream run`` serves with the compiled model from its first frame. Prints where
the package is and whether it was compiled or already there.
"""

from __future__ import annotations

import typer

from spt_stream.commands._engine_options import ConfigOpt, ModelOpt

__all__ = ["compile_model", "register"]


def compile_model(config: ConfigOpt = None, model: ModelOpt = None) -> None:
    """Compile (or find in the cache) the AOT model the engine will load; needs a C++ compiler."""
    from spt_stream.config import load_settings
    from spt_stream.engine.pipeline import ModelRunner
    from spt_stream.errors import SptError

    try:
        settings = load_settings(config, {"model": model} if model is not None else None)
        where = settings.model_cache_dir or "the default cache"
        typer.echo(f"compiling the model ahead of time (or finding it in {where}) ...")
        runner = ModelRunner(
            settings.model,
            device="cpu",
            threads=settings.compute_threads,
            backend="aot",
            cache_dir=settings.model_cache_dir,
        )
    except SptError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    info = runner.predictor.aot_info or {}
    how = "compiled" if info.get("compiled") else "already cached"
    typer.echo(
        f"{how}: {info.get('path')} ({info.get('seconds', 0):.1f} s; "
        f"{runner.threads} compute thread(s), model {runner.info['name']} "
        f"{runner.info['version']}, sha256 {str(runner.info['sha256'])[:12]})"
    )


def register(app: typer.Typer) -> None:
    """Add the ``compile-model`` command to the root app."""
    app.command("compile-model")(compile_model)

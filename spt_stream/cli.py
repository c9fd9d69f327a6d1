"""The ``spt-stream`` command line (Typer).

This module stays light: it builds the Typer app and registers the commands from
``spt_stream.commands.*``; each command imports its heavy dependencies (torch, kafka, zarr, tiled)
inside its body, so ``spt-stream --help`` answers at once. Installed as ``spt_stream.cli``.
"""

from __future__ import annotations

import importlib

import typer

from spt_stream._version import __version__

app = typer.Typer(
    name="spt-stream",
    help="Streaming XANES analysis: Bluesky documents in, SPT descriptor traces out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help (click's formatter): whole option names and wrapped text at 80 columns, where
    # rich's boxed tables cut names such as --feedback-documents-topic.
    rich_markup_mode=None,
)

#: Command modules, in the order ``--help`` lists them. Each defines ``register(app)``.
COMMAND_MODULES: tuple[str, ...] = (
    "demo",
    "run",
    "replay",
    "predict",
    "compile_model",
    "normalize",
    "train",
    "simulate",
    "plot",
    "broker",
    "view",
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"spt-stream {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_version_callback,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """Streaming XANES analysis for operando X-ray absorption beamlines."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"spt_stream.commands.{_name}").register(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()

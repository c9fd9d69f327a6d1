"""``spt-stream predict FILE...``: spectrum files in, SPT descriptors out.

Each file is read, normalized and put on the model grid exactly as the engine does, and all files
go through the model in one batch (:func:`spt_stream.model.predict_files.predict_files`).

``--format json`` prints a JSON array, one record per input (its keys:
:mod:`spt_stream.model.predict_files`); the table shows the descriptors with their uncertainty. A
file
that cannot be read, has no element, or cannot be normalized is reported on stderr by name; the
others are still predicted and the exit code is 1 at the end.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["register"]


class OutputFormat(enum.StrEnum):
    table = "table"
    json = "json"


def _print_table(records: list[dict[str, Any]], names: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    units: dict[str, str] = records[0].get("units", {}) if records else {}
    meaning: dict[str, str] = records[0].get("descriptions", {}) if records else {}
    caption = "\n".join(
        f"{n}: {meaning[n]}" + (f" ({units[n]})" if n in units else "")
        for n in names
        if n in meaning
    )
    table = Table(title="spt-stream predict", caption=caption or None, caption_justify="left")
    table.add_column("source")
    table.add_column("element")
    table.add_column("e0 (eV)", justify="right")
    for n in names:
        table.add_column(f"{n} ({units[n]})" if n in units else n, justify="right")
    table.add_column("ood", justify="right")
    for r in records:
        cells = [
            Path(r["source"]).name,
            f"{r['element']} {r['edge']}",
            f"{r['e0']:.2f}" if r["e0"] is not None else "?",
        ]
        for n in names:
            v, s = r[n], r[f"{n}_std"]
            cells.append("?" if v is None else f"{v:.3g} ± {s:.2g}")
        cells.append(f"{'YES' if r['ood'] else 'no'} ({r['ood_score']:.2g})")
        table.add_row(*cells)
    Console(**_piped_width()).print(table)


def _piped_width() -> dict[str, Any]:
    """Console arguments: the terminal's width on a terminal; when piped, wide enough that no
    cell is cut (rich would otherwise assume 80 columns and cut cells to ``sou…``)."""
    import sys

    return {} if sys.stdout.isatty() else {"width": 100_000}


def descriptor_help() -> str:
    """The descriptors of ``spt_stream/configs/descriptors.yaml`` with unit and meaning, one per
    line (the ``--help`` epilog; read with plain YAML so that ``--help`` stays quick)."""
    import yaml

    path = Path(__file__).resolve().parent.parent / "configs" / "descriptors.yaml"
    try:
        specs = yaml.safe_load(path.read_text(encoding="utf-8"))["descriptors"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return ""
    lines = ["Descriptors (the model serves a subset; the table and JSON name units):", ""]
    for name, spec in specs.items():
        if name.endswith("_cont"):
            continue
        units = spec.get("units") or (specs.get(f"{name}_cont") or {}).get("units")
        lines.append(f"{name}{f' [{units}]' if units else ''}: {spec.get('description', '')}")
    return "\n\n".join(line for line in lines if line)  # one paragraph each, wrapped by click


def register(app: typer.Typer) -> None:
    """Add the ``predict`` command to ``app``."""

    @app.command("predict", epilog=descriptor_help())
    def predict(
        files: Annotated[
            list[Path], typer.Argument(help="Spectrum files (XDI, SPEC #L, columns).")
        ],
        fmt: Annotated[
            OutputFormat, typer.Option("--format", help="Output format.")
        ] = OutputFormat.table,
        element: Annotated[
            str | None, typer.Option(help="Absorbing element when the file does not say (e.g. Co).")
        ] = None,
        model: Annotated[
            Path | None,
            typer.Option(help="Checkpoint (.safetensors); default: the packaged model."),
        ] = None,
        config: Annotated[
            Path | None, typer.Option(help="Engine config YAML (normalization settings).")
        ] = None,
    ) -> None:
        """Predict local-structure descriptors (oxidation state, coordination, ...) per file."""
        import json
        import sys

        from spt_stream.errors import SptError
        from spt_stream.model.predict_files import predict_files

        try:
            records, errors = predict_files(files, element, model, config)
        except SptError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        if fmt is OutputFormat.json:
            json.dump(records, sys.stdout)
            sys.stdout.write("\n")
        else:
            names = [k for k in records[0] if f"{k}_std" in records[0]] if records else []
            _print_table(records, names)
        for msg in errors:
            typer.echo(f"error: {msg}", err=True)
        if errors:
            raise typer.Exit(1)

"""``spt-stream normalize FILE...``: Athena/Larch-style normalization of spectrum files.

Output formats: ``table`` (a summary per file, via rich), ``json`` (an array with one object per
file: ``source``, ``element``, ``edge``, ``e0``, ``edge_step``, ``flags``, and ``energy``,
``norm``, ``flat`` on the file's own grid), ``csv`` (long format, one row per energy point:
``source,element,edge,e0,edge_step,energy,norm,flat``). A file that cannot be read or
normalized is reported on stderr by name; the others are still processed and the exit code is
1 at the end.
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
    csv = "csv"


class E0ModeOption(enum.StrEnum):
    larch = "larch"
    robust = "robust"


def normalize_files(
    paths: list[Path], params: Any, usage: list[str] | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Read and normalize each file; return (records, error messages). A file whose data do
    not hold the given ``e0`` is reported in ``usage`` (a wrong option, exit code 2) when given,
    else among the errors."""
    from spt_stream.errors import SptError
    from spt_stream.normalize import describe_flags, normalize_batch
    from spt_stream.readers import read_spectrum

    records: list[dict[str, Any]] = []
    errors: list[str] = []
    for path in paths:
        try:
            spec = read_spectrum(path)
            lo, hi = float(spec.energy[0]), float(spec.energy[-1])
            if params.e0 is not None and not lo <= params.e0 <= hi:
                msg = (
                    f"--e0 {params.e0:g} eV is outside the data ({lo:g} to {hi:g} eV) "
                    f"[source={path}]"
                )
                (usage if usage is not None else errors).append(msg)
                continue
            res = normalize_batch(spec.energy, spec.mu[None, :], params)
        except SptError as exc:
            msg = str(exc) if exc.source else f"{exc} [source={path}]"
            errors.append(msg)
            continue
        records.append(
            {
                "source": str(path),
                "element": spec.element,
                "edge": spec.edge,
                "e0": float(res.e0[0]),
                "edge_step": float(res.edge_step[0]),
                "flags": describe_flags(int(res.flags[0]) | spec.flags),
                "energy": spec.energy.tolist(),
                "norm": res.norm[0].tolist(),
                "flat": res.flat[0].tolist(),
            }
        )
    return records, errors


def _print_table(records: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="spt-stream normalize")
    for col in ("source", "element", "edge", "e0 (eV)", "edge step", "points", "flags"):
        table.add_column(
            col, justify="right" if col in ("e0 (eV)", "edge step", "points") else "left"
        )
    for r in records:
        table.add_row(
            Path(r["source"]).name,
            str(r["element"] or "?"),
            str(r["edge"] or "?"),
            f"{r['e0']:.2f}",
            f"{r['edge_step']:.4g}",
            str(len(r["energy"])),
            ", ".join(r["flags"]) or "-",
        )
    Console(**_piped_width()).print(table)


def _print_csv(records: list[dict[str, Any]]) -> None:
    import csv
    import sys

    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["source", "element", "edge", "e0", "edge_step", "energy", "norm", "flat"])
    for r in records:
        head = [
            r["source"],
            r["element"] or "",
            r["edge"] or "",
            repr(r["e0"]),
            repr(r["edge_step"]),
        ]
        for e, n, f in zip(r["energy"], r["norm"], r["flat"], strict=True):
            writer.writerow([*head, repr(e), repr(n), repr(f)])


def _piped_width() -> dict[str, Any]:
    """Console arguments: the terminal's width on a terminal; when piped, wide enough that no
    cell is cut (rich would otherwise assume 80 columns and cut cells to ``sou…``)."""
    import sys

    return {} if sys.stdout.isatty() else {"width": 100_000}


def register(app: typer.Typer) -> None:
    """Add the ``normalize`` command to ``app``."""

    @app.command("normalize")
    def normalize(
        files: Annotated[
            list[Path], typer.Argument(help="Spectrum files (XDI, SPEC #L, columns).")
        ],
        fmt: Annotated[OutputFormat, typer.Option("--format", help="Output format.")] = (
            OutputFormat.table
        ),
        e0: Annotated[float | None, typer.Option(help="Edge energy, eV (default: found).")] = None,
        pre1: Annotated[float | None, typer.Option(help="Pre-edge start, eV rel. e0.")] = None,
        pre2: Annotated[float | None, typer.Option(help="Pre-edge end, eV rel. e0.")] = None,
        norm1: Annotated[float | None, typer.Option(help="Post-edge start, eV rel. e0.")] = None,
        norm2: Annotated[float | None, typer.Option(help="Post-edge end, eV rel. e0.")] = None,
        nnorm: Annotated[
            int | None, typer.Option(min=0, max=2, help="Post-edge polynomial degree.")
        ] = None,
        nvict: Annotated[int, typer.Option(min=0, max=4, help="Pre-edge energy exponent.")] = 0,
        npre: Annotated[int, typer.Option(min=0, max=1, help="Pre-edge: 1 line, 0 constant.")] = 1,
        e0_mode: Annotated[
            E0ModeOption,
            typer.Option("--e0-mode", help="larch: max derivative; robust: main edge."),
        ] = E0ModeOption.robust,
    ) -> None:
        """Normalize XANES spectrum files like Athena/Larch (energies relative to e0)."""
        import json
        import sys

        from spt_stream.errors import ConfigError
        from spt_stream.normalize import NormParams

        try:
            params = NormParams(
                e0=e0,
                pre1=pre1,
                pre2=pre2,
                norm1=norm1,
                norm2=norm2,
                nnorm=nnorm,
                nvict=nvict,
                npre=npre,
                e0_mode=e0_mode.value,
            )
        except ConfigError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        usage: list[str] = []
        records, errors = normalize_files(files, params, usage)
        if fmt is OutputFormat.json:
            json.dump(records, sys.stdout)
            sys.stdout.write("\n")
        elif fmt is OutputFormat.csv:
            _print_csv(records)
        elif records:
            _print_table(records)
        for msg in usage + errors:
            typer.echo(f"error: {msg}", err=True)
        if usage:
            raise typer.Exit(2)
        if errors:
            raise typer.Exit(1)

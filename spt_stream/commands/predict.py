"""``spt-stream predict FILE...``: spectrum files in, SPT descriptors out.

Each file is read (:func:`spt_stream.readers.read_spectrum`), normalized and put on the model grid
exactly as the engine does (:func:`spt_stream.normalize.normalize_frames` with the engine's
normalization settings), and all files go through the model in one batch.

``--format json`` prints a JSON array, one object per input: ``source``, ``element``, ``edge``,
``e0``, then for every descriptor ``<name>`` (class expectation for discrete ones), ``<name>_std``
and, for discrete ones, ``<name>_probs`` (class label -> probability), and ``ood_score`` /
``ood``. A file that cannot be read, has no element, or cannot be normalized is reported on
stderr by name; the others are still predicted and the exit code is 1 at the end.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["predict_files", "register"]


class OutputFormat(enum.StrEnum):
    table = "table"
    json = "json"


def predict_files(
    paths: list[Path], element: str | None, model: Path | None, config: Path | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Read, normalize and predict; returns (records in input order, error messages)."""
    import numpy as np

    from spt_stream.config import load_settings
    from spt_stream.errors import SptError
    from spt_stream.frames import Frame
    from spt_stream.normalize import NormParams, QualityFlag, describe_flags, normalize_frames
    from spt_stream.predictor import Predictor
    from spt_stream.readers import read_spectrum

    settings = load_settings(config)
    predictor = Predictor.from_checkpoint(
        model if model is not None else settings.model, device=settings.device
    )
    params = NormParams.from_settings(settings.normalization)
    errors: list[str] = []
    frames: list[Frame] = []
    for i, path in enumerate(paths):
        try:
            spec = read_spectrum(path, element=element)
        except SptError as exc:
            errors.append(str(exc) if exc.source else f"{exc} [source={path}]")
            continue
        if spec.element is None:
            errors.append(f"no absorbing element known; pass --element [source={path}]")
            continue
        frames.append(
            Frame(
                run_uid="predict", seq_num=i, time=0.0, energy=spec.energy, mu=spec.mu,
                element=spec.element, edge=spec.edge or "K", mode=spec.mode,
                reference=spec.reference, provenance={"source": str(path)},
            )
        )  # fmt: skip
    if not frames:
        return [], errors
    norm = normalize_frames(
        frames, params,
        calibrate_from_reference=settings.normalization.calibrate_from_reference,
        energy_shift=settings.normalization.energy_shift,
    )  # fmt: skip
    unusable = int(QualityFlag.UNUSABLE) | int(QualityFlag.NO_ELEMENT)
    keep = [
        i
        for i in range(len(frames))
        if not (int(norm.flags[i]) & unusable) and np.isfinite(norm.norm[i]).all()
    ]
    for i in sorted(set(range(len(frames))) - set(keep)):
        flags = ", ".join(describe_flags(int(norm.flags[i]))) or "non-finite spectrum"
        errors.append(f"cannot normalize ({flags}) [source={frames[i].provenance['source']}]")
    if not keep:
        return [], errors
    batch = predictor.predict(norm.norm[keep], [str(frames[i].element) for i in keep])
    records = []
    for row, i in enumerate(keep):
        f = frames[i]
        e0 = float(norm.e0[i])
        records.append(
            {
                "source": str(f.provenance["source"]),
                "element": f.element,
                "edge": f.edge,
                "e0": e0 if np.isfinite(e0) else None,
                **batch.record(row),
            }
        )
    return records, errors


def _print_table(records: list[dict[str, Any]], names: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="spt-stream predict")
    table.add_column("source")
    table.add_column("element")
    table.add_column("e0 (eV)", justify="right")
    for n in names:
        table.add_column(n, justify="right")
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
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add the ``predict`` command to ``app``."""

    @app.command("predict")
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

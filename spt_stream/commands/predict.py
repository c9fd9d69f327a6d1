"""``spt-stream predict FILE...``: spectrum files in, SPT descriptors out.

Each file is read (:func:`spt_stream.readers.read_spectrum`), normalized and put on the model grid
exactly as the engine does (:func:`spt_stream.normalize.normalize_frames` with the engine's
normalization settings), and all files go through the model in one batch.

``--format json`` prints a JSON array, one object per input: ``source``, ``element``, ``edge``,
``e0``, then for every descriptor ``<name>`` (class expectation for discrete ones), ``<name>_std``
and, for discrete ones, ``<name>_probs`` (class label -> probability), ``ood_score`` /
``ood``, and the classical descriptors beside the network (spt_stream.classical): ``e_half``,
``wl_energy``, ``wl_height``, ``pre_centroid``, ``pre_area`` (eV relative to the tabulated edge,
edge steps) and the edge-position oxidation state ``os_edge`` / ``os_edge_std``. A file that
cannot be read, has no element, or cannot be normalized is reported on stderr by name; the others
are still predicted and the exit code is 1 at the end.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["check_element", "predict_files", "register"]


class OutputFormat(enum.StrEnum):
    table = "table"
    json = "json"


def predict_files(
    paths: list[Path], element: str | None, model: Path | None, config: Path | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Read, normalize and predict; returns (records in input order, error messages).

    ``element``: the absorbing element of files that do not state one (a file's own
    ``Element.symbol`` wins). Raises :class:`~spt_stream.errors.ConfigError` for a symbol that
    is not an element.
    """
    import dataclasses

    import numpy as np

    from spt_stream.classical.edge_os import load_edge_calibration
    from spt_stream.classical.features import edge_features
    from spt_stream.config import load_settings
    from spt_stream.errors import SptError
    from spt_stream.frames import Frame
    from spt_stream.normalize import NormParams, QualityFlag, describe_flags, normalize_frames
    from spt_stream.predictor import Predictor
    from spt_stream.readers import read_spectrum
    from spt_stream.runtime import column_attrs

    if element is not None:
        element = check_element(element)
    settings = load_settings(config)
    predictor = Predictor.from_checkpoint(
        model if model is not None else settings.model, device=settings.device
    )
    params = NormParams.from_settings(settings.normalization)
    errors: list[str] = []
    frames: list[Frame] = []
    for i, path in enumerate(paths):
        try:
            spec = read_spectrum(path)
        except SptError as exc:
            errors.append(str(exc) if exc.source else f"{exc} [source={path}]")
            continue
        if element is not None and (spec.element is None or spec.element_inferred):
            # the file does not say (nothing, or only a guess from the edge position)
            spec = dataclasses.replace(
                spec,
                element=element,
                edge=spec.edge if not spec.element_inferred and spec.edge else "K",
                element_inferred=False,
            )
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
    feats = edge_features(norm.norm[keep], norm.grid_rel)
    os_edge, os_edge_std = load_edge_calibration().predict(
        feats.e_half, [str(frames[i].element) for i in keep]
    )
    classical = {**feats.columns(), "os_edge": os_edge, "os_edge_std": os_edge_std}
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
                **{k: _finite(v[row]) for k, v in classical.items()},
            }
        )
    attrs = column_attrs(predictor)
    for rec in records:
        rec["units"] = {k: a["units"] for k, a in attrs.items() if "units" in a and k in rec}
        rec["descriptions"] = {
            k: a["long_name"] for k, a in attrs.items() if f"{k}_std" in rec and "long_name" in a
        }
    return records, errors


def _finite(v: Any) -> float | None:
    f = float(v)
    return f if f == f and abs(f) != float("inf") else None


def check_element(symbol: str) -> str:
    """``symbol`` as a capitalised element symbol with a tabulated K edge; ConfigError if not."""
    from spt_stream.errors import ConfigError, SptValueError
    from spt_stream.grid import edge_energy

    norm = symbol.strip().capitalize()
    try:
        edge_energy(norm, "K")
    except SptValueError as exc:
        raise ConfigError(f"--element {symbol!r} is not a chemical element symbol") from exc
    return norm


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
    """The descriptors of ``configs/descriptors.yaml`` with unit and meaning, one per line (the
    ``--help`` epilog; read with plain YAML so that ``--help`` stays quick)."""
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

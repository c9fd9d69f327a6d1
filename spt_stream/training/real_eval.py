"""How the model does on real measured spectra: ``python -m spt_stream.training.real_eval``.

Runs :func:`spt_stream.commands.predict.predict_files` (the same reading, normalization and model
path as ``spt-stream predict``) on every spectrum listed in a reference MANIFEST.tsv (columns
``file``, ``element``, ``nominal_OS``, ``sample``, ``notes``), and prints a markdown table of
predicted vs nominal oxidation state with the uncertainty and the OOD flag, plus the mean
absolute error over all files with a known nominal state and over those not flagged OOD.
Files whose nominal state is unknown are listed but not scored.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from typing import Any

from spt_stream.data import REFERENCE_DIR

__all__ = ["evaluate_references", "main", "markdown_report"]


def _nominal(text: str) -> float | None:
    try:
        return float(text.replace("+", ""))
    except ValueError:
        return None


def evaluate_references(reference_dir: Path, model: Path | None = None) -> list[dict[str, Any]]:
    """One row per manifest entry: file, sample, element, nominal, predicted os/std, ood, error."""
    from spt_stream.commands.predict import predict_files

    manifest = reference_dir / "MANIFEST.tsv"
    with manifest.open(encoding="utf-8") as fh:
        entries = list(csv.DictReader(fh, delimiter="\t"))
    paths = [reference_dir / e["file"] for e in entries]
    records, errors = predict_files(paths, None, model)
    by_source = {Path(r["source"]).name: r for r in records}
    rows: list[dict[str, Any]] = []
    for e in entries:
        rec = by_source.get(e["file"])
        nominal = _nominal(e.get("nominal_OS", ""))
        row: dict[str, Any] = {
            "file": e["file"],
            "sample": e.get("formula") or e.get("sample", ""),
            "element": e.get("element", ""),
            "nominal": nominal,
            "notes": e.get("notes", ""),
        }
        if rec is None:
            row["error"] = next((m for m in errors if e["file"] in m), "no prediction")
        else:
            row.update(
                os=rec.get("os"),
                os_std=rec.get("os_std"),
                ood=bool(rec.get("ood")),
                ood_score=rec.get("ood_score"),
                cn=rec.get("cn"),
            )
            if nominal is not None and rec.get("os") is not None:
                row["abs_error"] = abs(float(rec["os"]) - nominal)
        rows.append(row)
    return rows


def markdown_report(rows: list[dict[str, Any]]) -> str:
    """The table and the summary lines, as markdown."""
    lines = [
        "| file | sample | el. | nominal OS | predicted OS ± std | OOD (score) | abs. error |",
        "|---|---|---|---:|---:|---|---:|",
    ]
    for r in rows:
        nominal = "?" if r["nominal"] is None else f"{r['nominal']:g}"
        if "os" in r and r["os"] is not None:
            pred = f"{r['os']:.2f} ± {r['os_std']:.2f}"
            ood = f"{'yes' if r['ood'] else 'no'} ({r['ood_score']:.2f})"
        else:
            pred, ood = f"— ({r.get('error', '')[:60]})", "—"
        err = f"{r['abs_error']:.2f}" if "abs_error" in r else "—"
        lines.append(
            f"| {r['file']} | {r['sample']} | {r['element']} | {nominal} | {pred} | {ood} | {err} |"
        )
    scored = [r for r in rows if "abs_error" in r]
    in_dist = [r for r in scored if not r.get("ood")]

    def mae(rs: list[dict[str, Any]]) -> str:
        return f"{sum(r['abs_error'] for r in rs) / len(rs):.2f}" if rs else "n/a"

    within = [r for r in scored if r["abs_error"] <= max(2.0 * (r["os_std"] or 0.0), 1e-9)]
    lines += [
        "",
        f"- scored files: {len(scored)}; OS mean absolute error: {mae(scored)}",
        f"- not flagged OOD: {len(in_dist)}; their MAE: {mae(in_dist)}",
        f"- nominal OS within 2 std of the prediction: {len(within)} of {len(scored)}",
        f"- exact class (|error| < 0.5): {sum(r['abs_error'] < 0.5 for r in scored)} of "
        f"{len(scored)}",
    ]
    if any(math.isnan(r["abs_error"]) for r in scored):
        lines.append("- (NaN errors present)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument(
        "--references",
        type=Path,
        default=REFERENCE_DIR,
    )
    ap.add_argument("--model", type=Path, default=None)
    args = ap.parse_args(argv)
    print(markdown_report(evaluate_references(args.references.resolve(), args.model)))


if __name__ == "__main__":
    main()

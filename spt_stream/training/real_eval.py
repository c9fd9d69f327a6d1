"""How the model does on real measured spectra: ``python -m spt_stream.training.real_eval``.

Every spectrum listed in the reference MANIFEST.tsv (columns ``file``, ``element``,
``nominal_OS``...) goes through the same reading, normalization and model path as
``spt-stream predict``; the network's ``os`` (the regression head, with the checkpoint's
sim-to-real std) is reported beside the classical edge-position baseline ``os_edge`` (half-height
energy, linear in OS, fitted on the same references: spt_stream.classical.edge_os), per file,
per element, and overall:

- MAE, exact class (|error| < 0.5), nominal within 2 std, and CONFIDENT errors (|error| >= 0.75
  with the nominal outside 2 std and no OOD flag);
- leave-one-element-out (``--loeo DIR`` with ``spt-loeo-<El>.safetensors`` models trained without
  element El, scored on El's references; os_edge refitted without El);
- real-data mixtures: normalized spectra of two references of one element (same beamline) mixed
  with fraction f = 0..1 in 0.1 steps, which is what a two-phase sample measures: predicted OS
  against the nominal (1 - f) OS_a + f OS_b, Pearson r and slope per pair.

``--calibrate CHECKPOINT``: fit the sim-to-real std (per element with references, and ``*`` for
the others from the leave-one-element-out errors when ``--loeo`` is given) and write it into the
checkpoint's metadata (``extra["real_std"]``; the served ``os_std`` adds it in quadrature).
Files whose nominal state is unknown are listed but not scored.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spt_stream.data import REFERENCE_DIR

__all__ = [
    "MIXTURE_PAIRS",
    "Scores",
    "evaluate_references",
    "fit_real_std",
    "main",
    "markdown_report",
    "mixture_series",
    "score",
]

#: Pairs of measured references of one element from ONE beamline (same energy calibration).
MIXTURE_PAIRS: tuple[tuple[str, str], ...] = (
    ("FeO_rt_01.xdi", "Fe2O3_rt_01.xdi"),  # APS 20-BM: Fe2+ / Fe3+ oxides
    ("Hansel2001_siderite_xanes_001.xdi", "Hansel2001_goethite_xanes_003.xdi"),  # APS 13-ID-C
    ("MnO_rt_01.xdi", "Mn2O3_rt_01.xdi"),  # SSRL 4-3: Mn2+ / Mn3+
    ("Mn2O3_rt_01.xdi", "MnO2_rt_01.xdi"),  # SSRL 4-3: Mn3+ / Mn4+
    ("Mn__MnO.txt", "Mn__Pyrolusite.txt"),  # Athena standards: Mn2+ / Mn4+
    ("Fe_metal_rt_01.xdi", "Fe3O4_rt_01.xdi"),  # APS 13-BM-D: metal / spinel
)
#: A confident error: this far off with the nominal outside 2 std and no OOD flag.
CONFIDENT_ERROR = 0.75
#: Target 2-sigma coverage used to size the sim-to-real std.
TARGET_COVERAGE = 0.95


def _nominal(text: str) -> float | None:
    try:
        return float(text.replace("+", ""))
    except ValueError:
        return None


def _manifest(reference_dir: Path) -> list[dict[str, str]]:
    with (reference_dir / "MANIFEST.tsv").open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def evaluate_references(
    reference_dir: Path = REFERENCE_DIR, model: Path | None = None
) -> list[dict[str, Any]]:
    """One row per manifest entry: file, sample, element, nominal, network os/std/ood,
    os_edge/std, e_half (eV rel. E_tab); errors for the scored ones."""
    from spt_stream.model.predict_files import predict_files

    entries = _manifest(reference_dir)
    records, errors = predict_files([reference_dir / e["file"] for e in entries], None, model)
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
                os_edge=rec.get("os_edge"),
                os_edge_std=rec.get("os_edge_std"),
                e_half=rec.get("e_half"),
            )
        rows.append(row)
    return rows


def _usable(r: dict[str, Any], key: str) -> bool:
    # the Athena Mn3O4 group's energy axis is ~18 eV off (MANIFEST note): no absolute position
    return (
        r.get("nominal") is not None
        and r.get(key) is not None
        and "energy axis" not in r.get("notes", "")
    )


@dataclass(frozen=True)
class Scores:
    """Summary of predictions ``pred +- std`` against nominal states."""

    n: int
    mae: float
    exact: float
    within_2std: float
    confident_errors: int

    def line(self) -> str:
        return (
            f"n={self.n}, MAE {self.mae:.3f}, exact class {100 * self.exact:.0f} %, nominal within "
            f"2 std {100 * self.within_2std:.0f} %, confident errors {self.confident_errors}"
        )


def score(
    pred: Sequence[float], std: Sequence[float], nominal: Sequence[float], ood: Sequence[bool]
) -> Scores:
    p, s, y = (np.asarray(v, dtype=np.float64) for v in (pred, std, nominal))
    o = np.asarray(ood, dtype=bool)
    if len(p) == 0:
        return Scores(0, math.nan, math.nan, math.nan, 0)
    err = np.abs(p - y)
    inside = err <= 2.0 * s
    confident = (err >= CONFIDENT_ERROR) & ~inside & ~o
    return Scores(
        len(p),
        float(err.mean()),
        float(np.mean(err < 0.5)),
        float(inside.mean()),
        int(confident.sum()),
    )


def _scores_of(rows: Sequence[dict[str, Any]], key: str) -> Scores:
    use = [r for r in rows if _usable(r, key)]
    ood = [bool(r.get("ood")) if key == "os" else False for r in use]
    return score(
        [r[key] for r in use], [r[f"{key}_std"] for r in use], [r["nominal"] for r in use], ood
    )


def fit_real_std(rows: Sequence[dict[str, Any]], key: str = "os") -> dict[str, float]:
    """Per element: the smallest extra std s (added in quadrature to each row's own std) with
    which ``TARGET_COVERAGE`` of the element's references lie within 2 std."""
    out: dict[str, float] = {}
    for el in sorted({r["element"] for r in rows if _usable(r, key)}):
        use = [r for r in rows if r["element"] == el and _usable(r, key)]
        err = np.array([abs(r[key] - r["nominal"]) for r in use])
        own = np.array([r[f"{key}_std"] for r in use])
        # with the extra term removed first (rows may already carry it): model std alone
        lo, hi = 0.0, 3.0
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            cover = np.mean(err <= 2.0 * np.sqrt(own**2 + mid**2))
            lo, hi = (lo, mid) if cover >= TARGET_COVERAGE else (mid, hi)
        out[el] = round(hi, 4)
    return out


def mixture_series(
    reference_dir: Path, model: Path | None, pairs: Sequence[tuple[str, str]] = MIXTURE_PAIRS
) -> list[dict[str, Any]]:
    """Real-data mixtures (module doc): per pair, fraction, nominal, predicted os and os_edge."""
    from spt_stream.classical.edge_os import load_edge_calibration
    from spt_stream.classical.features import edge_features
    from spt_stream.model.predictor import Predictor
    from spt_stream.simulate.pipeline import normalize_to_model_grid
    from spt_stream.simulate.references import load_reference

    meta = {e["file"]: e for e in _manifest(reference_dir)}
    predictor = Predictor.from_checkpoint(model)
    cal = load_edge_calibration()
    frac = np.round(np.linspace(0.0, 1.0, 11), 2)
    out: list[dict[str, Any]] = []
    for a, b in pairs:
        el = meta[a]["element"]
        os_a, os_b = _nominal(meta[a]["nominal_OS"]), _nominal(meta[b]["nominal_OS"])
        if os_a is None or os_b is None:
            raise ValueError(f"mixture pair {a} + {b}: nominal state unknown")
        na, nb = (
            normalize_to_model_grid(*load_reference(reference_dir / f), el)[0] for f in (a, b)
        )
        x = (1.0 - frac)[:, None] * na[None, :] + frac[:, None] * nb[None, :]
        pred = predictor.predict(x.astype(np.float32), [el] * len(frac))
        e_half = edge_features(x).e_half
        os_edge, _ = cal.predict(e_half, [el] * len(frac))
        for i, f in enumerate(frac):
            out.append(
                {
                    "pair": f"{a} + {b}",
                    "element": el,
                    "fraction": float(f),
                    "nominal": (1 - f) * os_a + f * os_b,
                    "os": float(pred.values["os"][i]),
                    "os_std": float(pred.std["os"][i]),
                    "os_edge": float(os_edge[i]),
                }
            )
    return out


def mixture_fit(rows: Sequence[dict[str, Any]], key: str) -> dict[str, tuple[float, float]]:
    """Per pair: (Pearson r, slope) of ``key`` against the nominal state."""
    out: dict[str, tuple[float, float]] = {}
    for pair in dict.fromkeys(r["pair"] for r in rows):
        sel = [r for r in rows if r["pair"] == pair]
        y = np.array([r["nominal"] for r in sel])
        p = np.array([r[key] for r in sel])
        out[pair] = (float(np.corrcoef(y, p)[0, 1]), float(np.polyfit(y, p, 1)[0]))
    return out


def _fmt(v: Any, std: Any = None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if std is None else f"{v:.2f} ± {std:.2f}"


def markdown_report(
    rows: list[dict[str, Any]],
    loeo: list[dict[str, Any]] | None = None,
    mixtures: list[dict[str, Any]] | None = None,
) -> str:
    """Per-file table, per-element and overall scores (SPT vs os_edge), LOEO and mixtures."""
    lines = [
        "| file | sample | el. | nominal | SPT os ± std | OOD (score) | os_edge ± std |",
        "|---|---|---|---:|---:|---|---:|",
    ]
    for r in rows:
        nominal = "?" if r["nominal"] is None else f"{r['nominal']:g}"
        if r.get("os") is not None:
            pred = _fmt(r["os"], r["os_std"])
            ood = f"{'yes' if r['ood'] else 'no'} ({r['ood_score']:.2f})"
        else:
            pred, ood = f"- ({r.get('error', '')[:60]})", "-"
        edge = _fmt(r.get("os_edge"), r.get("os_edge_std"))
        lines.append(
            f"| {r['file']} | {r['sample']} | {r['element']} | {nominal} | {pred} | {ood} | "
            f"{edge} |"
        )
    lines += ["", "| set | method | scores |", "|---|---|---|"]
    groups = [("all", rows), *[(el, [r for r in rows if r["element"] == el]) for el in
                               sorted({r["element"] for r in rows})]]  # fmt: skip
    for name, sel in groups:
        for key, label in (("os", "SPT"), ("os_edge", "os_edge")):
            lines.append(f"| {name} | {label} | {_scores_of(sel, key).line()} |")
    compounds = [r for r in rows if (r["nominal"] or 0) > 0]
    for key, label in (("os", "SPT"), ("os_edge", "os_edge")):
        lines.append(f"| compounds only | {label} | {_scores_of(compounds, key).line()} |")
    if loeo:
        lines += ["", "Leave-one-element-out (model / calibration without the element):", ""]
        lines += ["| element | method | scores |", "|---|---|---|"]
        for el in sorted({r["element"] for r in loeo}):
            sel = [r for r in loeo if r["element"] == el]
            for key, label in (("os", "SPT"), ("os_edge", "os_edge")):
                lines.append(f"| {el} | {label} | {_scores_of(sel, key).line()} |")
        for key, label in (("os", "SPT"), ("os_edge", "os_edge")):
            lines.append(f"| all | {label} | {_scores_of(loeo, key).line()} |")
    if mixtures:
        lines += ["", "Real-data mixtures (Pearson r, slope of predicted vs nominal OS):", ""]
        lines += [
            "| pair | SPT r | SPT slope | os_edge r | os_edge slope |",
            "|---|---|---|---|---|",
        ]
        fit_spt, fit_edge = mixture_fit(mixtures, "os"), mixture_fit(mixtures, "os_edge")
        for pair, (r_spt, s_spt) in fit_spt.items():
            r_edge, s_edge = fit_edge[pair]
            lines.append(f"| {pair} | {r_spt:.3f} | {s_spt:.2f} | {r_edge:.3f} | {s_edge:.2f} |")
    return "\n".join(lines)


def loeo_rows(reference_dir: Path, loeo_dir: Path) -> list[dict[str, Any]]:
    """Each element's references scored by the model trained without it (and os_edge refitted
    without it)."""
    from spt_stream.classical.edge_os import fit_edge_calibration, reference_edges

    refs = reference_edges(reference_dir)
    out: list[dict[str, Any]] = []
    for path in sorted(loeo_dir.glob("spt-loeo-*.safetensors")):
        el = path.stem.removeprefix("spt-loeo-")
        rows = [r for r in evaluate_references(reference_dir, path) if r["element"] == el]
        try:
            cal = fit_edge_calibration(refs, exclude=[el])
        except ValueError:
            cal = None
        for r in rows:
            if cal is not None and r.get("e_half") is not None:
                o, s = cal.predict([r["e_half"]], [el])
                r["os_edge"], r["os_edge_std"] = float(o[0]), float(s[0])
            out.append(r)
    return out


def write_real_std(checkpoint: Path, real_std: dict[str, dict[str, float]]) -> None:
    """Store the sim-to-real std in ``checkpoint``'s metadata (weights unchanged)."""
    import dataclasses

    from spt_stream.model.checkpoint import load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(checkpoint, "cpu")
    extra = {**dict(meta.extra), "real_std": real_std}
    save_checkpoint(model, dataclasses.replace(meta, extra=extra), checkpoint)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--references", type=Path, default=REFERENCE_DIR)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--loeo", type=Path, default=None, help="folder of spt-loeo-<El> models")
    ap.add_argument("--calibrate", type=Path, default=None, help="checkpoint to calibrate")
    ap.add_argument("--no-mixtures", action="store_true")
    args = ap.parse_args(argv)
    ref = args.references.resolve()
    model = args.calibrate or args.model
    loeo = loeo_rows(ref, args.loeo) if args.loeo else None
    if args.calibrate is not None:
        write_real_std(args.calibrate, {})  # fit on the model's own std
        per_el = fit_real_std(evaluate_references(ref, model))
        if loeo:
            per_el["*"] = max(fit_real_std([{**r, "element": "*"} for r in loeo]).values())
        else:
            per_el["*"] = 2.0 * max(per_el.values())
        write_real_std(args.calibrate, {"os": per_el})
        print(f"sim-to-real std written to {args.calibrate}: {per_el}")
    rows = evaluate_references(ref, model)
    mixtures = None if args.no_mixtures else mixture_series(ref, model)
    print(markdown_report(rows, loeo, mixtures))


if __name__ == "__main__":
    main()

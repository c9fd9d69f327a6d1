"""Tables for docs/MODEL.md from a training run's metrics JSON, and the std-method comparison.

    .venv/bin/python -m spt_stream.training.report out/spt-toy.metrics.json \
        [--checkpoint out/spt-toy.safetensors --toy-seed 0]

prints (1) the paper-style table SPT vs Random Forest vs Extra Trees per descriptor, clean and
under each noise level (F1 macro for discrete, R2 for continuous), (2) calibration (ECE before
/after temperature scaling, std coverage) and, with ``--checkpoint``, (3) single-pass std vs MC
dropout (cost per spectrum and calibration) on the toy test split.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["calibration_table", "compare_uncertainty", "comparison_table"]


def _score(d: Mapping[str, Any]) -> float:
    return float(d.get("f1_macro", d.get("r2", float("nan"))))


def comparison_table(metrics: Mapping[str, Any]) -> str:
    """Markdown: rows descriptor x model, columns noise levels."""
    spt = metrics["test"]["levels"]
    base = metrics.get("baselines", {})
    levels = list(spt)
    names = [k for k, v in spt[levels[0]].items() if isinstance(v, Mapping)]
    lines = [
        "| descriptor | metric | model | " + " | ".join(f"sigma={lvl}" for lvl in levels) + " |",
        "|---|---|---|" + "---:|" * len(levels),
    ]
    for n in names:
        metric = "F1 macro" if "f1_macro" in spt[levels[0]][n] else "R2"
        rows = [("SPT", spt)] + [(k.replace("_", " ").title(), v) for k, v in base.items()]
        for label, res in rows:
            cells = [
                f"{_score(res[lvl][n]):.3f}" if n in res.get(lvl, {}) else "-" for lvl in levels
            ]
            lines.append(f"| {n} | {metric} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def calibration_table(metrics: Mapping[str, Any]) -> str:
    """Markdown: ECE before/after temperature (discrete), std coverage (continuous)."""
    cal = metrics["test"]["calibration"]
    temps = metrics.get("temperatures", {})
    lines = [
        "| descriptor | T | ECE before | ECE after | 1-sigma cover | 2-sigma cover |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for n, c in cal.items():
        if "ece" in c:
            lines.append(
                f"| {n} | {temps.get(n, 1.0):.2f} | {c['ece_uncalibrated']:.3f} "
                f"| {c['ece']:.3f} | - | - |"
            )
        else:
            lines.append(
                f"| {n} | - | - | - | {c.get('coverage_1sigma', float('nan')):.3f} | "
                f"{c.get('coverage_2sigma', float('nan')):.3f} |"
            )
    return "\n".join(lines)


def compare_uncertainty(checkpoint: Path, toy_seed: int = 0, samples: int = 8) -> str:
    """Single-pass std vs MC dropout on the toy test split: cost and calibration (markdown)."""
    from spt_stream.model.checkpoint import load_checkpoint
    from spt_stream.training.calibration import (
        expected_calibration_error,
        mc_dropout_outputs,
        std_calibration,
    )
    from spt_stream.training.datasets import split_by_group
    from spt_stream.training.evaluate import _class_index
    from spt_stream.training.synthetic import make_toy_dataset

    model, meta = load_checkpoint(checkpoint)
    tc = meta.extra.get("train_config", {})
    toy = tc.get("toy") or {}
    ds = make_toy_dataset(
        toy.get("n_structures", 400), toy.get("per_structure", 4), seed=toy.get("seed", toy_seed)
    )
    test = split_by_group(ds, tc.get("split", (0.8, 0.1, 0.1)), tc.get("seed", 0))[2]
    x = torch.from_numpy(test.spectra)
    el = torch.tensor([model.cfg.element_index(e) for e in test.element])
    rows = []
    for label, fn in (
        ("single pass", lambda: model(x, el)[:3]),
        (f"MC dropout x{samples}", lambda: mc_dropout_outputs(model, x, el, samples)),
    ):
        with torch.no_grad():
            t0 = time.perf_counter()
            values, stds, probs = fn()
            dt = (time.perf_counter() - t0) / len(test)
        cells = [label, f"{dt * 1e3:.3f}"]
        off = 0
        for j, h in enumerate(model.cfg.heads):
            lab = test.labels[h.name]
            if h.discrete:
                p = probs[:, off : off + h.n_classes].numpy()
                off += h.n_classes
                spec = meta.schema.get(h.name)
                cells.append(
                    f"{h.name} ECE {expected_calibration_error(p, _class_index(spec, lab)):.3f}"
                )
            else:
                s = std_calibration(values[:, j].numpy(), stds[:, j].numpy(), lab)
                cells.append(f"{h.name} 1σ {s['coverage_1sigma']:.2f} NLL {s['nll']:.2f}")
        rows.append("| " + " | ".join(cells) + " |")
    head = "| method | ms/spectrum (CPU) | " + " | ".join(h.name for h in model.cfg.heads) + " |"
    sep = "|---|---:|" + "---|" * len(model.cfg.heads)
    return "\n".join([head, sep, *rows])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("metrics", type=Path)
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--toy-seed", type=int, default=0)
    args = ap.parse_args()
    metrics = json.loads(args.metrics.read_text(encoding="utf-8"))
    print(comparison_table(metrics))
    print()
    print(calibration_table(metrics))
    if args.checkpoint is not None:
        print()
        print(compare_uncertainty(args.checkpoint, args.toy_seed))


if __name__ == "__main__":
    main()

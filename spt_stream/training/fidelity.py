"""Does the oxidation-state trace follow real change? ``python -m spt_stream.training.fidelity``.

Two measurements, reported as markdown (docs/MODEL.md):

1. **Operando fidelity** on simulated series: per element and adjacent pair of states, ONE fixed
   sample (sites, ligands, shells, physics jitter, beamline: resolution, calibration offset,
   energy grid) whose state is stepped from the lower to the upper state by 0.05 (the weight of
   the upper site), each frame with fresh noise at the given level (0.1-2 % of the edge step), as
   a charging cathode or a reducing catalyst measures. Reported: slope and R^2 of predicted vs
   nominal state, the fraction of steps that go the right way, and the end-point error; for the
   network's ``os``, the edge-position ``os_edge`` and the run-relative ``os_delta``.
2. **Sensitivity** to the edge position: each measured compound reference shifted on the model
   grid by -0.5..+0.5 eV (an otherwise unchanged spectrum); d(os)/dE times the calibrated eV per
   oxidation-state unit is 1 for a method that reads the edge at its physical slope (target
   0.7-1.3 per element).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from spt_stream.classical.edge_os import load_edge_calibration
from spt_stream.classical.features import edge_features
from spt_stream.core.grid import MODEL_GRID_REL, edge_energy

__all__ = ["main", "operando_series", "sensitivity"]

FloatArray = np.ndarray[Any, np.dtype[np.float64]]


def operando_series(
    element: str,
    pair: tuple[int, str, int, str],
    *,
    seed: int,
    noise: float,
    step: float = 0.05,
) -> tuple[FloatArray, FloatArray]:
    """(nominal states (n,), normalized spectra on the model grid (n, 224)) of one fixed sample
    stepped through ``pair`` (module doc)."""
    from spt_stream.config import CONFIG_DIR
    from spt_stream.simulate.calibrate import load_params
    from spt_stream.simulate.environment import SiteSpec, build_environment
    from spt_stream.simulate.pipeline import (
        acquisition_grid,
        fine_spectrum,
        normalize_to_model_grid,
        raw_spectrum,
        sample_acquisition,
    )
    from spt_stream.simulate.sampler import _compound_site, _shell, load_recipe

    recipe = load_recipe(CONFIG_DIR / "simulate" / "default.yaml")
    params = load_params(CONFIG_DIR / "simulate" / "calibrated.yaml")
    rng = np.random.default_rng(seed)
    lo, g_lo, hi, g_hi = pair
    s1, s2 = rng.uniform(*recipe.sigma2_1), rng.uniform(*recipe.sigma2_2)
    if lo == 0:
        a = SiteSpec(element, 0, g_lo, sigma2_1=s1, sigma2_2=s2)
        b = _compound_site(rng, recipe, element, hi, g_hi, ("O",) * _n(g_hi), s1, s2)
    else:
        n_edge, n_corner = _shell(rng, recipe, _n(g_lo))
        shell = (n_edge, n_corner, float(rng.uniform(*recipe.corner_angle_deg)))
        a = _compound_site(rng, recipe, element, lo, g_lo, ("O",) * _n(g_lo), s1, s2, shell)
        b = _compound_site(rng, recipe, element, hi, g_hi, ("O",) * _n(g_hi), s1, s2, shell)
    envs = [build_environment(a, rng), build_environment(b, rng)]
    acq = replace(sample_acquisition(rng, recipe.augment), noise=noise, glitches=())
    grid = acquisition_grid(rng, recipe.augment)
    w = np.round(np.arange(0.0, 1.0 + 1e-9, step), 6)
    raws = []
    for wi in w:
        fine = fine_spectrum(envs, params, weights=[1.0 - wi, wi], edge_shift=acq.edge_shift)
        raws.append(raw_spectrum(fine, element, grid, acq, rng))
    norm = normalize_to_model_grid(grid + edge_energy(element), np.stack(raws), element)
    return lo + w * (hi - lo), norm


def _n(geometry: str) -> int:
    from spt_stream.simulate.environment import ideal_directions

    return len(ideal_directions(geometry))


def _fit(nominal: FloatArray, pred: FloatArray) -> tuple[float, float, float, float]:
    ok = np.isfinite(pred)
    slope = np.polyfit(nominal[ok], pred[ok], 1)[0]
    r2 = float(np.corrcoef(nominal[ok], pred[ok])[0, 1] ** 2)
    steps = np.diff(pred[ok]) * np.sign(nominal[-1] - nominal[0])
    return float(slope), r2, float(np.mean(steps > 0)), float(pred[ok][-1] - nominal[ok][-1])


def fidelity_rows(
    model: Path | None, noises: tuple[float, ...] = (0.001, 0.005, 0.02), seed: int = 0
) -> list[dict[str, Any]]:
    """One row per (element, pair, noise, method): slope, R^2, monotone fraction, end error."""
    from spt_stream.classical.tracking import ClassicalStage
    from spt_stream.model.predictor import Predictor
    from spt_stream.simulate.sampler import MIXED_VALENCE

    predictor = Predictor.from_checkpoint(model)
    rows: list[dict[str, Any]] = []
    for el, pairs in MIXED_VALENCE.items():
        for k, (lo, g_lo, hi, g_hi, _) in enumerate(pairs):
            for noise in noises:
                nominal, x = operando_series(
                    el, (lo, g_lo, hi, g_hi), seed=seed + 97 * k, noise=noise
                )
                pred = predictor.predict(x.astype(np.float32), [el] * len(x))
                cols = ClassicalStage(reference_frames=3).columns(
                    ["s"] * len(x), list(range(len(x))), [el] * len(x), x, MODEL_GRID_REL
                )
                methods = {
                    "SPT os": pred.values["os"].astype(np.float64),
                    "os_edge": cols["os_edge"],
                    "os(0) + os_delta": nominal[0] + cols["os_delta"],
                }
                for name, p in methods.items():
                    slope, r2, mono, end = _fit(nominal, p)
                    rows.append(
                        {
                            "element": el, "pair": f"{lo}{g_lo[:3]}/{hi}{g_hi[:3]}",
                            "noise": noise, "method": name, "slope": slope, "r2": r2,
                            "monotone": mono, "end_error": end,
                        }
                    )  # fmt: skip
    return rows


def sensitivity(model: Path | None, reference_dir: Path | None = None) -> list[dict[str, Any]]:
    """Per measured compound reference: d(os)/dE x (calibrated eV per unit), network and
    os_edge (module doc)."""
    from spt_stream.model.predictor import Predictor
    from spt_stream.simulate.pipeline import normalize_to_model_grid
    from spt_stream.simulate.references import DEFAULT_REFERENCE_DIR, load_references

    predictor = Predictor.from_checkpoint(model)
    cal = load_edge_calibration()
    shifts = np.array([-0.5, -0.25, 0.0, 0.25, 0.5])
    g = MODEL_GRID_REL
    rows = []
    for r in load_references(reference_dir or DEFAULT_REFERENCE_DIR):
        if r.shape_only or r.oxidation_state <= 0:
            continue
        x = normalize_to_model_grid(r.energy, r.mu[None, :], r.element)[0]
        xs = np.stack([np.interp(g - d, g, x) for d in shifts])
        pred = predictor.predict(xs.astype(np.float32), [r.element] * len(shifts))
        os_edge, _ = cal.predict(edge_features(xs).e_half, [r.element] * len(shifts))
        rows.append(
            {
                "file": r.name,
                "element": r.element,
                "spt": float(np.polyfit(shifts, pred.values["os"], 1)[0]) * cal.slope,
                "os_edge": float(np.polyfit(shifts, os_edge, 1)[0]) * cal.slope,
            }
        )
    return rows


def markdown(fid: list[dict[str, Any]], sens: list[dict[str, Any]]) -> str:
    lines = [
        "| element | pair | noise | method | slope | R^2 | monotone steps | end error |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in fid:
        lines.append(
            f"| {r['element']} | {r['pair']} | {r['noise']:.3f} | {r['method']} | "
            f"{r['slope']:.2f} | {r['r2']:.3f} | {100 * r['monotone']:.0f} % | "
            f"{r['end_error']:+.2f} |"
        )
    lines += ["", "| method | median slope | slope in 0.9-1.1 | R^2 >= 0.98 |", "|---|---|---|---|"]
    for m in dict.fromkeys(r["method"] for r in fid):
        sel = [r for r in fid if r["method"] == m]
        sl = np.array([r["slope"] for r in sel])
        r2 = np.array([r["r2"] for r in sel])
        lines.append(
            f"| {m} | {np.median(sl):.2f} | {np.mean((sl > 0.9) & (sl < 1.1)) * 100:.0f} % | "
            f"{np.mean(r2 >= 0.98) * 100:.0f} % |"
        )
    lines += [
        "",
        "| element | n | SPT response (median, range) | os_edge response |",
        "|---|---|---|---|",
    ]
    for el in sorted({r["element"] for r in sens}):
        s = np.array([r["spt"] for r in sens if r["element"] == el])
        e = np.array([r["os_edge"] for r in sens if r["element"] == el])
        lines.append(
            f"| {el} | {len(s)} | {np.median(s):.2f} ({s.min():.2f}..{s.max():.2f}) | "
            f"{np.median(e):.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(markdown(fidelity_rows(args.model, seed=args.seed), sensitivity(args.model)))


if __name__ == "__main__":
    main()

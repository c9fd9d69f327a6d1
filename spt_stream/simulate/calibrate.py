"""Fit the simulator's GLOBAL physical parameters to measured reference spectra.

Each reference file is compared on the model grid after the engine's normalization: the real
spectrum is normalized as measured; the simulated spectrum of the compound's site model
(:data:`~spt_stream.simulate.references.REFERENCE_SITES`) is sampled on the file's own energy
points and normalized the same way, so range-dependent normalization effects cancel. One set of
parameters serves every file and element (no per-file knobs); files are weighted so each element
counts equally. ``leave_one_element_out`` fits on one element and reports the others.

One module: the calibration is one procedure (parameter vector, per-file residuals, the bounded
fit, its leave-one-element-out variant and the residual table), each step feeding the next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from spt_stream.core.frames import FloatArray
from spt_stream.core.grid import MODEL_GRID_REL, edge_energy
from spt_stream.errors import ConfigError
from spt_stream.simulate.environment import SiteSpec, build_environment
from spt_stream.simulate.physics import PhysicsParams, broaden, core_hole_width
from spt_stream.simulate.pipeline import FINE_REL, FINE_STEP, fine_spectrum, normalize_to_model_grid
from spt_stream.simulate.references import (
    DEFAULT_REFERENCE_DIR,
    MIXTURES,
    REFERENCE_SITES,
    Reference,
    load_references,
)

__all__ = [
    "FIT_BOUNDS",
    "Target",
    "fit_params",
    "leave_one_element_out",
    "load_params",
    "make_targets",
    "residual_table",
    "save_params",
    "simulate_target",
    "trend_features",
]

#: Fitted parameters and their physically plausible bounds.
FIT_BOUNDS: dict[str, tuple[float, float]] = {
    "edge_metal": (0.0, 12.0),
    "edge_metal_d10": (-4.0, 10.0),
    "edge_width_metal": (0.5, 6.0),
    "metal_shoulder": (0.0, 0.7),
    "edge_ox0": (-6.0, 8.0),
    "shift_per_os": (2.5, 5.0),
    "edge_width": (0.5, 12.0),
    "wl0": (0.0, 1.0),
    "wl_os": (-0.1, 0.3),
    "wl_de": (0.0, 10.0),
    "wl_width": (2.0, 14.0),
    "pre_quad": (0.0, 0.25),
    "pre_e0": (-4.0, 3.0),
    "pre_e_os": (0.3, 1.6),
    "s02": (0.3, 1.5),
    "k0_offset": (-8.0, 6.0),
    "chi_turn_on": (0.5, 20.0),
    "ms_scale": (0.0, 1.0),
    "resolution": (0.5, 2.0),
    "shift_per_chi": (0.0, 8.0),
    "wl_per_chi": (0.0, 0.9),
    "edge_per_z": (-3.0, 3.0),
    "edge_d10": (-8.0, 6.0),
    "wl_d10": (0.3, 3.0),
}


@dataclass(frozen=True, slots=True, eq=False)
class Target:
    """One reference prepared for fitting: its normalized spectrum on the model grid."""

    ref: Reference
    sites: tuple[SiteSpec, ...]
    weights: tuple[float, ...]
    real: FloatArray

    @property
    def name(self) -> str:
        return self.ref.name


def make_targets(references: Sequence[Reference] | None = None) -> list[Target]:
    """References with a site model, normalized onto the model grid (shape-only files skipped).

    Metal foils are energy-calibrated first, as the engine does with a reference foil
    (:func:`spt_stream.normalize.calibration_shift`); compounds are used as measured.
    """
    from spt_stream.normalize import calibration_shift

    refs = list(references) if references is not None else load_references(DEFAULT_REFERENCE_DIR)
    out = []
    for r in refs:
        if r.shape_only:
            continue
        sites: tuple[SiteSpec, ...]
        weights: tuple[float, ...]
        if r.formula in MIXTURES:
            td, oh, f = MIXTURES[r.formula]
            sites, weights = (td, oh), (f, 1.0 - f)
        elif r.formula in REFERENCE_SITES:
            sites, weights = (REFERENCE_SITES[r.formula],), (1.0,)
        else:
            continue
        if r.oxidation_state == 0:
            # metal foils are the energy-calibration standard: put their e0 on the tabulated edge
            shift = float(calibration_shift(r.energy, r.mu[None, :], r.element)[0])
            if np.isfinite(shift):
                r = Reference(
                    r.name, r.element, r.formula, r.oxidation_state, r.energy + shift, r.mu,
                    r.shape_only, shift,
                )  # fmt: skip
        real = normalize_to_model_grid(r.energy, r.mu[None, :], r.element)[0]
        out.append(Target(r, sites, weights, real))
    return out


def simulate_target(t: Target, p: PhysicsParams) -> FloatArray:
    """The simulator's spectrum of ``t``'s compound, through the same normalization as ``t``."""
    envs = [build_environment(s, np.random.default_rng(7)) for s in t.sites]
    fine = fine_spectrum(envs, p, weights=list(t.weights))
    mu = broaden(fine, FINE_STEP, core_hole_width(t.ref.element), p.resolution)
    rel = t.ref.energy - edge_energy(t.ref.element)
    sel = (rel >= FINE_REL[0]) & (rel <= FINE_REL[-1])
    sim_raw = np.interp(rel[sel], FINE_REL, mu)
    out: FloatArray = normalize_to_model_grid(t.ref.energy[sel], sim_raw[None, :], t.ref.element)[0]
    return out


def _with(p: PhysicsParams, names: Sequence[str], x: FloatArray) -> PhysicsParams:
    kw: dict[str, Any] = {n: float(v) for n, v in zip(names, x, strict=True)}
    return replace(p, **kw)


def _weights(targets: Sequence[Target]) -> FloatArray:
    els = [t.ref.element for t in targets]
    return np.array([1.0 / np.sqrt(els.count(e)) for e in els])


#: Weight of the half-height edge miss (per eV) in the fit, relative to one point of the
#: normalized-mu residual (224 points per file): 1 eV of edge miss counts like an RMS of ~0.03.
EDGE_WEIGHT = 0.4


def _half_heights(spectra: Sequence[FloatArray]) -> FloatArray:
    from spt_stream.classical.features import edge_features

    out: FloatArray = edge_features(np.stack(spectra)).e_half
    return out


def fit_params(
    targets: Sequence[Target],
    start: PhysicsParams | None = None,
    names: Sequence[str] | None = None,
    max_nfev: int = 60,
) -> tuple[PhysicsParams, dict[str, Any]]:
    """Least-squares fit of ``names`` (default: every parameter of :data:`FIT_BOUNDS` that the
    targets constrain) over all targets at once. Returns the fitted parameters and a summary.
    """
    p0 = start or PhysicsParams()
    has_metal = any(s.oxidation_state == 0 for t in targets for s in t.sites)
    has_compound = any(s.oxidation_state > 0 for t in targets for s in t.sites)
    if names is None:
        metal_only = {"edge_metal", "edge_metal_d10", "edge_width_metal", "metal_shoulder"}
        compound_only = (
            set(FIT_BOUNDS) - metal_only - {"s02", "k0_offset", "resolution", "ms_scale"}
        )
        names = [
            n
            for n in FIT_BOUNDS
            if (n not in metal_only or has_metal) and (n not in compound_only or has_compound)
        ]
    unknown = [n for n in names if n not in FIT_BOUNDS]
    if unknown:
        raise ConfigError(f"cannot fit unknown parameters {unknown}")
    w = _weights(targets)
    lo = np.array([FIT_BOUNDS[n][0] for n in names])
    hi = np.array([FIT_BOUNDS[n][1] for n in names])
    x0 = np.clip(np.array([float(getattr(p0, n)) for n in names]), lo + 1e-9, hi - 1e-9)

    real_edges = _half_heights([t.real for t in targets])

    def resid(x: FloatArray) -> FloatArray:
        p = _with(p0, names, x)
        sims = [simulate_target(t, p) for t in targets]
        # the half-height edge carries the oxidation state: its miss (eV) is weighted on top of
        # the point-wise residual (EDGE_WEIGHT per eV, compounds and metals alike)
        edge_miss = np.nan_to_num(_half_heights(sims) - real_edges) * EDGE_WEIGHT * w
        return np.concatenate(
            [wi * (s - t.real) for s, t, wi in zip(sims, targets, w, strict=True)] + [edge_miss]
        )

    res = least_squares(
        resid, x0, bounds=(lo, hi), x_scale="jac", diff_step=1e-3, max_nfev=max_nfev
    )
    p = _with(p0, names, res.x)
    summary = {
        "fitted": list(names),
        "cost": float(res.cost),
        "nfev": int(res.nfev),
        "files": [t.name for t in targets],
    }
    return p, summary


def trend_features(norm: FloatArray) -> dict[str, float]:
    """Edge position (first crossing of 0.5, eV rel. tabulated), white-line height and position,
    pre-edge height (max below edge-5 eV) and the first post-white-line minimum (eV above edge).
    """
    g = MODEL_GRID_REL
    above = np.flatnonzero(norm >= 0.5)
    if len(above) == 0 or above[0] == 0:
        return {
            "edge": float("nan"),
            "white_line": float("nan"),
            "pre_edge": float("nan"),
            "first_min": float("nan"),
        }
    i = int(above[0])
    e_half = float(g[i - 1] + (0.5 - norm[i - 1]) / (norm[i] - norm[i - 1]) * (g[i] - g[i - 1]))
    win = (g >= e_half) & (g <= e_half + 30)
    i_wl = int(np.flatnonzero(win)[np.argmax(norm[win])])
    pre = g <= e_half - 5
    after = (g > g[i_wl] + 3) & (g <= g[i_wl] + 45)
    i_min = int(np.flatnonzero(after)[np.argmin(norm[after])]) if after.any() else i_wl
    return {
        "edge": e_half,
        "white_line": float(norm[i_wl]),
        "white_line_pos": float(g[i_wl] - e_half),
        "pre_edge": float(norm[pre].max()) if pre.any() else float("nan"),
        "first_min": float(g[i_min] - e_half),
    }


def residual_table(targets: Sequence[Target], p: PhysicsParams) -> list[dict[str, Any]]:
    """Per file: RMS of (sim - real) normalized mu on the model grid and the trend features."""
    rows = []
    for t in targets:
        sim = simulate_target(t, p)
        fr, fs = trend_features(t.real), trend_features(sim)
        rows.append(
            {
                "file": t.name,
                "element": t.ref.element,
                "os": t.ref.oxidation_state,
                "rms": float(np.sqrt(np.mean((sim - t.real) ** 2))),
                **{f"real_{k}": v for k, v in fr.items()},
                **{f"sim_{k}": v for k, v in fs.items()},
            }
        )
    return rows


def leave_one_element_out(
    targets: Sequence[Target], start: PhysicsParams | None = None, max_nfev: int = 40
) -> dict[str, dict[str, float]]:
    """For each element X: fit on every other element's references (from ``start``) and report
    the mean RMS per element, X's being the transfer estimate. Keys ``without_X``."""
    out: dict[str, dict[str, float]] = {}
    for el in sorted({t.ref.element for t in targets}):
        train = [t for t in targets if t.ref.element != el]
        p, _ = fit_params(train, start, max_nfev=max_nfev)
        rows = residual_table(targets, p)
        out[f"without_{el}"] = {
            e: float(np.mean([r["rms"] for r in rows if r["element"] == e]))
            for e in sorted({r["element"] for r in rows})
        }
    return out


def save_params(p: PhysicsParams, path: Path, how: dict[str, Any]) -> Path:
    """Write the fitted parameters with how they were obtained (YAML)."""
    import yaml

    doc = {
        "physics": p.as_dict(),
        "calibration": {"created": datetime.now(UTC).isoformat(timespec="seconds"), **how},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def load_params(path: Path) -> PhysicsParams:
    """Read ``physics:`` from a calibrated-parameters YAML file."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read physics parameters: {exc}", source=str(path)) from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("physics"), dict):
        raise ConfigError("no 'physics' mapping", source=str(path))
    return PhysicsParams.from_dict(doc["physics"])


def _trend_rows(rows: Sequence[dict[str, Any]]) -> list[str]:
    out = ["| element | quantity | real | simulated |", "|---|---|---|---|"]
    for el in sorted({r["element"] for r in rows}):
        comp = [r for r in rows if r["element"] == el and r["os"] > 0]
        if len(comp) >= 2:
            os_ = np.array([r["os"] for r in comp])
            for q, unit in (("edge", "eV/OS"), ("white_line", "/OS"), ("pre_edge", "/OS")):
                real = np.polyfit(os_, [r[f"real_{q}"] for r in comp], 1)[0]
                sim = np.polyfit(os_, [r[f"sim_{q}"] for r in comp], 1)[0]
                out.append(f"| {el} | d({q})/d(OS), {unit} | {real:.3f} | {sim:.3f} |")
            for q in ("white_line", "pre_edge", "first_min"):
                real = np.mean([r[f"real_{q}"] for r in comp])
                sim = np.mean([r[f"sim_{q}"] for r in comp])
                out.append(f"| {el} | mean {q} (compounds) | {real:.3f} | {sim:.3f} |")
        metal = [r for r in rows if r["element"] == el and r["os"] == 0]
        if metal:
            real = np.mean([r["real_edge"] for r in metal])
            sim = np.mean([r["sim_edge"] for r in metal])
            out.append(f"| {el} | metal edge half-height, eV | {real:.2f} | {sim:.2f} |")
    return out


def plot_comparison(
    targets: Sequence[Target], p: PhysicsParams, path: Path, max_panels: int = 12
) -> Path:
    """PNG of real vs simulated normalized spectra on the model grid (one panel per file)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wanted = ("Fe__Fe_foil", "FeO_rt", "Fe3O4", "Fe__Hematite", "Fe__Goerthite", "Mn__Mn_foil",
              "Mn__MnO.txt",
              "Mn__MnCl2", "Mn__Mn2O3x", "Mn__Pyrolusite", "Mn__Li2MnO3",
              "Co_foil_Co_K")  # fmt: skip
    chosen = [t for w in wanted for t in targets if t.name.startswith(w)][:max_panels]
    cols = 4
    rows = (len(chosen) + cols - 1) // cols
    fig, axs = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, t in zip(axs.ravel(), chosen, strict=False):
        sim = simulate_target(t, p)
        rms = float(np.sqrt(np.mean((sim - t.real) ** 2)))
        ax.plot(MODEL_GRID_REL, t.real, "k-", lw=1.5, label="measured")
        ax.plot(MODEL_GRID_REL, sim, "r-", lw=1.2, label="simulated")
        ax.set_title(f"{t.name[:28]} (OS {t.ref.oxidation_state:g}) rms {rms:.3f}", fontsize=8)
        ax.set_xlabel("E - E_tab (eV)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axs.ravel()[len(chosen) :]:
        ax.axis("off")
    axs[0, 0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def run_calibration(
    out: Path,
    *,
    report: Path | None = None,
    plot: Path | None = None,
    references: Path | None = None,
    max_nfev: int = 25,
    loeo: bool = True,
    loeo_nfev: int = 8,
) -> str:
    """Fit on every usable reference, write the YAML (and report/plot); return the report text.

    The fit starts from ``out`` when it exists (a previous calibration), else from the built-in
    physical priors; the leave-one-element-out fits start from the full fit (``loeo_nfev``).
    """
    refs = load_references(references) if references is not None else None
    targets = make_targets(refs)
    start = load_params(out) if out.exists() else PhysicsParams()  # warm start from a previous fit
    p, summary = fit_params(targets, start, max_nfev=max_nfev)
    rows = residual_table(targets, p)
    base = residual_table(targets, PhysicsParams())
    lines = [
        "| file | element | OS | RMS default | RMS calibrated | edge real/sim (eV) "
        "| white line real/sim | pre-edge real/sim |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r, b in zip(rows, base, strict=True):
        lines.append(
            f"| {r['file']} | {r['element']} | {r['os']:g} | {b['rms']:.3f} | {r['rms']:.3f} | "
            f"{r['real_edge']:.1f} / {r['sim_edge']:.1f} | "
            f"{r['real_white_line']:.2f} / {r['sim_white_line']:.2f} | "
            f"{r['real_pre_edge']:.3f} / {r['sim_pre_edge']:.3f} |"
        )
    per_el = {
        e: float(np.mean([r["rms"] for r in rows if r["element"] == e]))
        for e in sorted({r["element"] for r in rows})
    }
    text = [
        "## Per-file residuals (normalized mu on the model grid)",
        "",
        *lines,
        "",
        "## Mean RMS per element",
        "",
    ]
    text += [f"- {e}: {v:.3f}" for e, v in per_el.items()]
    text += ["", "## Trends", "", *_trend_rows(rows)]
    loeo_res: dict[str, dict[str, float]] = {}
    if loeo:
        # warm-started from the full fit (a cold start per element costs ~10x the time here)
        loeo_res = leave_one_element_out(targets, p, max_nfev=loeo_nfev)
        head = "| fitted on | " + " | ".join(per_el) + " |"
        text += ["", "## Leave-one-element-out (mean RMS per element)", "", head]
        text.append("|---|" + "---|" * len(per_el))
        for k, v in loeo_res.items():
            text.append(
                f"| all but {k[8:]} | "
                + " | ".join(f"{v.get(e, float('nan')):.3f}" for e in per_el)
                + " |"
            )
        text.append("| all (calibrated) | " + " | ".join(f"{per_el[e]:.3f}" for e in per_el) + " |")
    how = {
        "method": "scipy.optimize.least_squares (bounded, trust-region) of sim - real "
        "normalized mu on the "
        "model grid, all files at once, each element weighted equally; foils "
        "energy-calibrated first",
        "command": "spt-stream simulate-calibrate",
        "files": summary["files"],
        "fitted": summary["fitted"],
        "bounds": {k: list(v) for k, v in FIT_BOUNDS.items()},
        "mean_rms_per_element": per_el,
        "leave_one_element_out": loeo_res,
    }
    save_params(p, out, how)
    body = "\n".join(text) + "\n"
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(
            "# Simulator calibration residuals (generated)\n\n" + body, encoding="utf-8"
        )
    if plot is not None:
        plot_comparison(targets, p, plot)
    return body

"""The edge-position oxidation state ``os_edge``: a per-element linear calibration of the
half-height edge energy, fitted on the measured references. Pure numpy at serving time.

Model (compounds, OS > 0)::

    e_half - E_tab = a_el + b * OS          (eV; one slope b shared by all elements)

fitted by least squares on every compound reference with a known nominal state (sulfides,
carbonates, phosphates... included: their scatter at fixed state is part of the method's error).
Served as ``os_edge = (e_half - a_el) / b`` with a 1-sigma uncertainty from the fit's residual
scatter (per element where it has at least 3 compounds, else pooled) and, for an element with no
reference compound, the spread of the fitted offsets between elements (``transfer_std_ev``)
around their mean offset. A metal foil is not a compound: its slow-rising edge crosses half height
5-8 eV above E_tab and reads as ~2 here (``os_edge`` assumes a compound; the network covers
metals).

Regenerate the packaged calibration (``edge_calibration.json``) and print the report::

    python -m spt_stream.classical.edge_os
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from spt_stream.classical.features import edge_features

__all__ = [
    "CALIBRATION_PATH",
    "EdgeCalibration",
    "ReferenceEdge",
    "fit_edge_calibration",
    "leave_one_element_out",
    "load_edge_calibration",
    "reference_edges",
]

FloatArray = npt.NDArray[np.float64]

CALIBRATION_PATH = Path(__file__).resolve().parent / "edge_calibration.json"
#: Floor of the per-frame edge-energy scatter used for uncertainties (eV).
MIN_RESID_EV = 0.3


@dataclass(frozen=True)
class ReferenceEdge:
    """One measured reference reduced to what the calibration needs."""

    name: str
    element: str
    formula: str
    oxidation_state: float
    e_half: float


@dataclass(frozen=True)
class EdgeCalibration:
    """Fitted ``e_half - E_tab = offset[el] + slope * OS`` and its uncertainties (eV)."""

    slope: float
    slope_std: float
    offsets: dict[str, float]
    resid_std_ev: dict[str, float]
    pooled_resid_ev: float
    transfer_std_ev: float
    files: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_offset(self) -> float:
        return float(np.mean(list(self.offsets.values())))

    def predict(
        self, e_half: npt.ArrayLike, elements: Sequence[str | None]
    ) -> tuple[FloatArray, FloatArray]:
        """``(os_edge, os_edge_std)`` for half-height energies (eV rel. E_tab) per element."""
        e = np.asarray(e_half, dtype=np.float64)
        offs = np.empty_like(e)
        err = np.empty_like(e)
        keys = np.asarray([(el or "").strip().capitalize() for el in elements])
        for key in set(keys.tolist()):
            rows = keys == key
            if key in self.offsets:
                offs[rows] = self.offsets[key]
                err[rows] = self.resid_std_ev.get(key, self.pooled_resid_ev)
            else:
                offs[rows] = self.mean_offset
                err[rows] = float(np.hypot(self.pooled_resid_ev, self.transfer_std_ev))
        os_ = (e - offs) / self.slope
        std = np.sqrt(err**2 + (np.clip(os_, 0.0, None) * self.slope_std) ** 2) / self.slope
        return os_, std

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["files"] = list(self.files)
        return d

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EdgeCalibration:
        d = dict(data)
        d["files"] = tuple(d.get("files", ()))
        return cls(**d)


def reference_edges(directory: Path | None = None) -> list[ReferenceEdge]:
    """Half-height edge of every usable measured reference, through the engine's normalization
    (as measured: no foil calibration of compounds; shape-only files left out)."""
    from spt_stream.simulate.pipeline import normalize_to_model_grid
    from spt_stream.simulate.references import DEFAULT_REFERENCE_DIR, load_references

    out = []
    for r in load_references(directory or DEFAULT_REFERENCE_DIR):
        if r.shape_only:
            continue
        norm = normalize_to_model_grid(r.energy, r.mu[None, :], r.element)
        e = float(edge_features(norm).e_half[0])
        out.append(ReferenceEdge(r.name, r.element, r.formula, float(r.oxidation_state), e))
    return out


def fit_edge_calibration(
    refs: Iterable[ReferenceEdge], exclude: Iterable[str] = ()
) -> EdgeCalibration:
    """Least-squares fit (module doc) on the compounds of ``refs``, leaving out ``exclude``
    elements."""
    skip = set(exclude)
    comp = [r for r in refs if r.oxidation_state > 0 and np.isfinite(r.e_half)]
    comp = [r for r in comp if r.element not in skip]
    els = sorted({r.element for r in comp})
    if not comp or len({r.oxidation_state for r in comp}) < 2:
        raise ValueError("edge calibration needs compounds of at least two oxidation states")
    a = np.zeros((len(comp), len(els) + 1))
    for i, r in enumerate(comp):
        a[i, els.index(r.element)] = 1.0
        a[i, -1] = r.oxidation_state
    y = np.array([r.e_half for r in comp])
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    resid = y - a @ coef
    dof = max(len(comp) - len(coef), 1)
    s2 = float(resid @ resid / dof)
    cov = s2 * np.linalg.pinv(a.T @ a)
    per_el: dict[str, float] = {}
    for el in els:
        r_el = np.array([resid[i] for i, r in enumerate(comp) if r.element == el])
        if len(r_el) >= 3:
            per_el[el] = max(float(np.sqrt(np.mean(r_el**2))), MIN_RESID_EV)
    offsets = {el: float(coef[i]) for i, el in enumerate(els)}
    spread = float(np.std(list(offsets.values()), ddof=1)) if len(els) > 1 else 2.0
    return EdgeCalibration(
        slope=float(coef[-1]),
        slope_std=float(np.sqrt(cov[-1, -1])),
        offsets=offsets,
        resid_std_ev=per_el,
        pooled_resid_ev=max(float(np.sqrt(s2)), MIN_RESID_EV),
        transfer_std_ev=spread,
        files=tuple(r.name for r in comp),
    )


def leave_one_element_out(refs: Sequence[ReferenceEdge]) -> list[dict[str, Any]]:
    """For each element with compounds: fit without it, predict its references (all of them,
    metals included) as an unseen element. One row per reference."""
    rows: list[dict[str, Any]] = []
    els = sorted({r.element for r in refs if r.oxidation_state > 0})
    for el in els:
        try:
            cal = fit_edge_calibration(refs, exclude=[el])
        except ValueError:
            continue
        mine = [r for r in refs if r.element == el]
        os_, std = cal.predict([r.e_half for r in mine], [r.element for r in mine])
        for r, o, s in zip(mine, os_, std, strict=True):
            rows.append(
                {"file": r.name, "element": el, "nominal": r.oxidation_state, "os": o, "std": s}
            )
    return rows


def load_edge_calibration(path: Path | None = None) -> EdgeCalibration:
    """The packaged calibration (or ``path``)."""
    p = path or CALIBRATION_PATH
    return EdgeCalibration.from_json(json.loads(p.read_text(encoding="utf-8")))


def _summary(rows: Sequence[dict[str, Any]], label: str) -> str:
    err = np.array([abs(r["os"] - r["nominal"]) for r in rows])
    within = np.mean([abs(r["os"] - r["nominal"]) <= 2 * r["std"] for r in rows])
    return (
        f"{label}: n={len(rows)} MAE={err.mean():.3f} exact(|err|<0.5)={np.mean(err < 0.5):.2f} "
        f"within-2std={within:.2f}"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Fit the edge-position OS calibration.")
    ap.add_argument("--out", type=Path, default=CALIBRATION_PATH)
    args = ap.parse_args(argv)
    refs = reference_edges()
    cal = fit_edge_calibration(refs)
    loeo = leave_one_element_out(refs)
    comp_loeo = [r for r in loeo if r["nominal"] > 0]
    cal = EdgeCalibration(
        **{
            **asdict(cal),
            "files": cal.files,
            "extra": {
                "method": "numpy lstsq of e_half - E_tab on per-element offsets + shared slope",
                "command": "python -m spt_stream.classical.edge_os",
                "loeo_compound_mae": float(
                    np.mean([abs(r["os"] - r["nominal"]) for r in comp_loeo])
                ),
            },
        }
    )
    args.out.write_text(json.dumps(cal.to_json(), indent=1) + "\n", encoding="utf-8")
    os_, std = cal.predict([r.e_half for r in refs], [r.element for r in refs])
    rows = [
        {"file": r.name, "element": r.element, "nominal": r.oxidation_state, "os": o, "std": s}
        for r, o, s in zip(refs, os_, std, strict=True)
    ]
    print(f"slope {cal.slope:.3f} +- {cal.slope_std:.3f} eV/OS; offsets {cal.offsets}")
    print(f"residual eV {cal.resid_std_ev} pooled {cal.pooled_resid_ev:.3f}")
    print(f"offset spread between elements {cal.transfer_std_ev:.3f} eV")
    print(_summary([r for r in rows if r["nominal"] > 0], "fitted, compounds"))
    print(_summary(rows, "fitted, all (metals read as compounds)"))
    print(_summary(comp_loeo, "leave-one-element-out, compounds"))
    for r in rows:
        name, el, nom = r["file"][:44], r["element"], r["nominal"]
        print(f"  {name:44s} {el} {nom:.2f} -> {r['os']:.2f} +- {r['std']:.2f}")


if __name__ == "__main__":
    main()

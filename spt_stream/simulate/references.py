"""The measured reference spectra used to calibrate and check the simulator.

Reads the plain-text files of ``spt_stream/data/xas-references`` listed in its ``MANIFEST.tsv``
(XDI with i0/itrans columns, two-column Athena exports, ``energy mu dmude``, keV energies) into
raw ``(energy_eV, mu)`` arrays, together with a structural model of each compound
(:data:`REFERENCE_SITES`: the dominant absorbing site, close to the known crystal structure) for
comparing simulated and measured spectra.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spt_stream.core.frames import FloatArray
from spt_stream.data import REFERENCE_DIR
from spt_stream.errors import ReaderError
from spt_stream.simulate.environment import SiteSpec

__all__ = [
    "DEFAULT_REFERENCE_DIR",
    "REFERENCE_SITES",
    "Reference",
    "load_reference",
    "load_references",
]

DEFAULT_REFERENCE_DIR = REFERENCE_DIR

_O6 = ("O",) * 6
_O4 = ("O",) * 4
#: Site models of the reference compounds (formula -> dominant site). Mixed-valence spinels
#: (Fe3O4, Mn3O4) have no single site: they are compared with a weighted sum (see ``mixture``).
REFERENCE_SITES: dict[str, SiteSpec] = {
    "Fe": SiteSpec("Fe", 0, "bcc"),
    "Co": SiteSpec("Co", 0, "hcp"),
    "Mn": SiteSpec("Mn", 0, "bcc", sigma2_1=0.008, sigma2_2=0.012),
    "FeO": SiteSpec("Fe", 2, "octahedral", _O6, n_edge=12, sigma2_1=0.008),
    "FeCO3": SiteSpec("Fe", 2, "octahedral", _O6, n_corner=6, corner_angle_deg=125, sigma2_1=0.006),
    "Fe2O3": SiteSpec("Fe", 3, "octahedral", _O6, trigonal=0.17, n_edge=3, n_corner=6),
    "FeOOH": SiteSpec("Fe", 3, "octahedral", _O6, bond_jitter=0.08, n_edge=4, n_corner=4),
    "Fe5HO8.4H2O": SiteSpec("Fe", 3, "octahedral", _O6, bond_jitter=0.08, n_edge=3, n_corner=2),
    "MnO": SiteSpec("Mn", 2, "octahedral", _O6, n_edge=12, sigma2_1=0.008),
    "MnCO3": SiteSpec("Mn", 2, "octahedral", _O6, n_corner=6, corner_angle_deg=125, sigma2_1=0.006),
    "MnCl2": SiteSpec("Mn", 2, "octahedral", ("Cl",) * 6, n_edge=6, sigma2_1=0.008),
    "Mn2O3": SiteSpec("Mn", 3, "octahedral", _O6, jahn_teller=0.2, n_edge=6, n_corner=6),
    "MnOOH": SiteSpec("Mn", 3, "octahedral", _O6, jahn_teller=0.3, n_edge=2, n_corner=8),
    "MnO2": SiteSpec("Mn", 4, "octahedral", _O6, bond_jitter=0.01, n_edge=2, n_corner=8),
    "Li2MnO3": SiteSpec("Mn", 4, "octahedral", _O6, bond_jitter=0.02, n_edge=3),
    # pyrite: low-spin Fe2+ in S6 octahedra, 12 Fe at 3.83 A (corner-sharing through S)
    "FeS2": SiteSpec("Fe", 2, "octahedral", ("S",) * 6, n_corner=12, corner_angle_deg=116),
    # vivianite: Fe2+ O6 (phosphate and water oxygens), octahedra paired by one shared edge
    "Fe3(PO4)2 8(H2O)": SiteSpec("Fe", 2, "octahedral", _O6, n_edge=1, sigma2_1=0.008),
    "Zn": SiteSpec("Zn", 0, "hcp"),
    # wurtzite / zinc blende: Zn X4 tetrahedra sharing corners, 12 Zn neighbours
    "ZnO": SiteSpec("Zn", 2, "tetrahedral", _O4, n_corner=12, corner_angle_deg=109.5),
    "ZnS": SiteSpec("Zn", 2, "tetrahedral", ("S",) * 4, n_corner=12, corner_angle_deg=109.5),
    "ZnSe": SiteSpec("Zn", 2, "tetrahedral", ("Se",) * 4, n_corner=12, corner_angle_deg=109.5),
    # sulfate, oxalate: Zn O6 linked through the anions (few Zn neighbours)
    "ZnSO4": SiteSpec("Zn", 2, "octahedral", _O6, n_corner=2, sigma2_1=0.008),
    "ZnC2O4": SiteSpec("Zn", 2, "octahedral", _O6, n_corner=2, sigma2_1=0.008),
    # smithsonite: calcite structure, as siderite
    "ZnCO3": SiteSpec("Zn", 2, "octahedral", _O6, n_corner=6, corner_angle_deg=125, sigma2_1=0.006),
}
#: Spinels: (tetrahedral site, octahedral site, fraction of absorbers on the tetrahedral site).
MIXTURES: dict[str, tuple[SiteSpec, SiteSpec, float]] = {
    "Fe3O4": (
        SiteSpec("Fe", 3, "tetrahedral", _O4, n_corner=12, corner_angle_deg=123),
        SiteSpec("Fe", 3, "octahedral", _O6, n_edge=6, n_corner=6),
        1.0 / 3.0,
    ),
    "Mn3O4": (
        SiteSpec("Mn", 2, "tetrahedral", _O4, n_corner=12, corner_angle_deg=123),
        SiteSpec("Mn", 3, "octahedral", _O6, jahn_teller=0.3, n_edge=4, n_corner=6),
        1.0 / 3.0,
    ),
    # hopeite: two thirds of the Zn in ZnO4 tetrahedra, one third in ZnO2(H2O)4 octahedra
    "Zn3(PO4)2·4H2O": (
        SiteSpec("Zn", 2, "tetrahedral", _O4, n_corner=2, sigma2_1=0.006),
        SiteSpec("Zn", 2, "octahedral", _O6, n_corner=2, sigma2_1=0.008),
        2.0 / 3.0,
    ),
}
#: Files not used: unknown oxidation state, ambiguous columns, or an uncalibrated energy axis.
EXCLUDED: dict[str, str] = {
    "fe_xanes_8ch.xdi": "oxidation state unknown (unspecified Fe sample)",
    "Co-foil_EXAFS_23107.dat": "mu column definition ambiguous in its source",
    "20K_GOE_Fe_K_240.00000.xdi": "column mapping of the P65 continuous scan not documented",
}
#: Used for shape only (the energy axis is ~18 eV off): shifted by its foil-free e0 offset.
SHAPE_ONLY: frozenset[str] = frozenset({"Mn__Mn3O4.txt"})


@dataclass(frozen=True, slots=True, eq=False)
class Reference:
    """One measured spectrum with its manifest metadata."""

    name: str
    element: str
    formula: str
    oxidation_state: float
    energy: FloatArray
    mu: FloatArray
    shape_only: bool
    #: Energy shift already applied (eV), e.g. a foil calibration.
    energy_shift: float = 0.0


def _xdi_columns(lines: list[str]) -> dict[str, int]:
    cols: dict[str, int] = {}
    for ln in lines:
        if ln.startswith("#") and "Column." in ln:
            head, _, rest = ln.partition(":")
            number = head.partition("Column.")[2].strip()
            if not number.isdigit() or not rest.strip():  # e.g. "# Legend.Start: Column.N: ..."
                continue
            idx = int(number) - 1
            cols[rest.strip().split()[0].lower()] = idx
    return cols


def load_reference(path: Path) -> tuple[FloatArray, FloatArray]:
    """Raw ``(energy_eV, mu)`` of one reference file, sorted by energy, duplicates dropped."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise ReaderError(f"cannot read reference: {exc}", source=str(path)) from exc
    rows = []
    for i, ln in enumerate(lines, start=1):
        s = ln.strip()
        if not s or s.startswith("#"):
            continue
        try:
            rows.append([float(x) for x in s.split()])
        except ValueError as exc:
            raise ReaderError(f"non-numeric data line: {exc}", source=str(path), line=i) from exc
    data = np.asarray(rows, dtype=np.float64)
    if data.ndim != 2 or data.shape[0] < 10:
        raise ReaderError("fewer than 10 data rows", source=str(path))
    if path.suffix == ".xdi":
        cols = _xdi_columns(lines)
        if "i0" in cols and "itrans" in cols:
            mu = np.log(data[:, cols["i0"]] / data[:, cols["itrans"]])
        else:
            raise ReaderError(f"no i0/itrans columns in {sorted(cols)}", source=str(path))
    else:
        mu = data[:, 1]
    energy = data[:, 0]
    if energy.max() < 100.0:  # keV
        energy = energy * 1000.0
    order = np.argsort(energy)
    energy, mu = energy[order], mu[order]
    keep = np.concatenate([[True], np.diff(energy) > 1e-6])
    return energy[keep], mu[keep]


def load_references(directory: Path = DEFAULT_REFERENCE_DIR) -> list[Reference]:
    """All usable references of the manifest (see :data:`EXCLUDED` for the ones skipped)."""
    manifest = directory / "MANIFEST.tsv"
    try:
        with manifest.open(encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
    except OSError as exc:
        raise ReaderError(f"cannot read manifest: {exc}", source=str(manifest)) from exc
    out = []
    for row in rows:
        name = row["file"]
        if name in EXCLUDED:
            continue
        try:
            os_ = float(row["nominal_OS"].lstrip("+"))
        except ValueError:
            continue
        if not math.isfinite(os_):
            continue
        energy, mu = load_reference(directory / name)
        out.append(
            Reference(name, row["element"], row["formula"], os_, energy, mu, name in SHAPE_ONLY)
        )
    return out

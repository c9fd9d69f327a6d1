"""Single-scattering amplitudes, phases and mean free paths from FEFF6L, cached as a small table.

The simulator's EXAFS-like sum needs, per absorber/scatterer pair, the effective backscattering
amplitude ``|f(k)|`` (FEFF's ``mag_feff * red_fact``), the total phase ``phi(k)`` (central-atom
``2*delta_c`` plus backscattering phase) and the photo-electron mean free path ``lambda(k)``, in
Angstrom units with ``k`` in 1/Angstrom. They were computed ONCE with FEFF6L (bundled with
xraylarch) for a 6-scatterer octahedral shell around each absorber Ti..Zn, single scattering only,
and saved to ``data/feff6l_tables.npz``. At run time only numpy reads that file: larch is needed
only to rebuild it (``python -m spt_stream.simulate.feff_tables``).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from spt_stream.core.frames import FloatArray
from spt_stream.errors import SptValueError

__all__ = [
    "ABSORBERS",
    "SCATTERERS",
    "TABLE_PATH",
    "ScatteringTable",
    "build_tables",
    "load_tables",
]

#: Absorbers covered (3d transition metals).
ABSORBERS: tuple[str, ...] = ("Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn")
#: Scatterer kinds: light anions, heavier anions, ``"M"`` = a metal atom of the absorber's kind.
SCATTERERS: tuple[str, ...] = ("O", "N", "F", "S", "Cl", "M")
#: Distance (Angstrom) at which each pair's potentials were built.
_PAIR_DISTANCE: dict[str, float] = {"O": 2.0, "N": 2.05, "F": 1.95, "S": 2.35, "Cl": 2.35, "M": 2.6}
_Z: dict[str, int] = {
    "Ti": 22, "V": 23, "Cr": 24, "Mn": 25, "Fe": 26, "Co": 27, "Ni": 28, "Cu": 29, "Zn": 30,
    "O": 8, "N": 7, "F": 9, "S": 16, "Cl": 17,
}  # fmt: skip

TABLE_PATH = Path(__file__).with_name("data") / "feff6l_tables.npz"


@dataclass(frozen=True, slots=True)
class ScatteringTable:
    """Tabulated single-scattering functions for one absorber/scatterer pair (k in 1/Angstrom)."""

    k: FloatArray
    amplitude: FloatArray
    phase: FloatArray
    mean_free_path: FloatArray

    def at(self, k: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Amplitude, phase (rad) and mean free path (Angstrom) interpolated at ``k``."""
        kk = np.clip(k, self.k[0], self.k[-1])
        return (
            np.interp(kk, self.k, self.amplitude),
            np.interp(kk, self.k, self.phase),
            np.interp(kk, self.k, self.mean_free_path),
        )


@lru_cache(maxsize=1)
def load_tables(path: str | None = None) -> dict[tuple[str, str], ScatteringTable]:
    """Read the cached FEFF6L table (numpy only). Keys are ``(absorber, scatterer)``."""
    p = Path(path) if path is not None else TABLE_PATH
    if not p.exists():
        raise SptValueError(
            f"FEFF table missing: {p} (rebuild: python -m spt_stream.simulate.feff_tables)"
        )
    with np.load(p, allow_pickle=False) as z:
        k = np.asarray(z["k"], dtype=np.float64)
        out: dict[tuple[str, str], ScatteringTable] = {}
        for a in ABSORBERS:
            for s in SCATTERERS:
                arr = np.asarray(z[f"{a}_{s}"], dtype=np.float64)
                out[(a, s)] = ScatteringTable(k, arr[0], arr[1], arr[2])
    return out


def _feff_input(absorber: str, scatterer: str) -> str:
    sym = absorber if scatterer == "M" else scatterer
    r = _PAIR_DISTANCE[scatterer]
    lines = [
        f"TITLE {absorber}-{sym} single scattering table for spt-stream",
        "HOLE 1 1.0",
        "CONTROL 1 1 1 1",
        "PRINT 0 0 0 0",
        "NLEG 2",
        f"RMAX {r + 0.5:.2f}",
        "POTENTIALS",
        f"  0 {_Z[absorber]} {absorber}",
        f"  1 {_Z[sym]} {sym}",
        "ATOMS",
        f"  0.0 0.0 0.0 0 {absorber}",
    ]
    for v in ((r, 0, 0), (-r, 0, 0), (0, r, 0), (0, -r, 0), (0, 0, r), (0, 0, -r)):
        lines.append(f"  {v[0]:.4f} {v[1]:.4f} {v[2]:.4f} 1 {sym}")
    lines.append("END")
    return "\n".join(lines) + "\n"


def build_tables(out: Path = TABLE_PATH) -> Path:
    """Run FEFF6L for every absorber/scatterer pair and write the npz table (needs xraylarch)."""
    from larch.xafs import FeffDatFile, feff6l

    arrays: dict[str, np.ndarray] = {}
    k_ref: np.ndarray | None = None
    with tempfile.TemporaryDirectory() as tmp:
        for a in ABSORBERS:
            for s in SCATTERERS:
                folder = os.path.join(tmp, f"{a}_{s}")
                os.makedirs(folder)
                Path(folder, "feff.inp").write_text(_feff_input(a, s))
                feff6l(folder=folder, feffinp="feff.inp", verbose=False)
                f = FeffDatFile(os.path.join(folder, "feff0001.dat"))
                k = np.asarray(f.k, dtype=np.float64)
                if k_ref is None:
                    k_ref = k
                amp = np.interp(k_ref, k, np.asarray(f.amp, dtype=np.float64))
                pha = np.interp(k_ref, k, np.asarray(f.pha, dtype=np.float64))
                lam = np.interp(k_ref, k, np.asarray(f.lam, dtype=np.float64))
                arrays[f"{a}_{s}"] = np.stack([amp, pha, lam]).astype(np.float32)
    assert k_ref is not None
    provenance = {
        "program": "FEFF6L via xraylarch (larch.xafs.feff6l)",
        "cluster": "absorber at origin, 6 scatterers on +-x,+-y,+-z; NLEG 2; HOLE 1",
        "distances_A": _PAIR_DISTANCE,
        "columns": [
            "amplitude = mag_feff*red_fact",
            "phase = 2*real_phc + pha_feff (rad)",
            "lambda (A)",
        ],
        "M": "a metal scatterer of the absorber's own element",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays["k"] = k_ref
    arrays["provenance"] = np.array(json.dumps(provenance))
    np.savez_compressed(out, **arrays)  # type: ignore[arg-type]
    return out


if __name__ == "__main__":  # pragma: no cover - maintenance entry point
    print(build_tables())

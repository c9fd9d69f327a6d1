"""Local-environment description of one absorbing site, and its 3-D geometry.

A :class:`LocalEnvironment` is what the simulator turns into a spectrum and what the descriptors
are computed from: the absorber (Ti..Zn), its oxidation state, the first coordination shell
(ligand species and Cartesian positions, Angstrom, absorber at the origin) and a second shell of
metal neighbours. :func:`build_environment` constructs one from a :class:`SiteSpec` (geometry name,
ligands, distortion amplitudes) with bond lengths from the bond-valence model

    R_i = R0(M, OS, X_i) + Delta + d_i,      sum_i exp((R0_i - R_i) / b) = OS,  b = 0.37 A,

so each site's bond valence sum equals its oxidation state exactly (``d_i`` are the distortion
offsets, ``Delta`` is solved in closed form). Metals (OS 0) use bcc/fcc/hcp-like shells with the
element's 12-coordinate metallic diameter instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np

from spt_stream.core.frames import FloatArray
from spt_stream.errors import SptValueError

__all__ = [
    "ANIONS",
    "ELEMENTS",
    "GEOMETRIES",
    "Geometry",
    "LocalEnvironment",
    "SiteSpec",
    "bond_valence_r0",
    "build_environment",
    "d_electrons",
    "ideal_directions",
]

ELEMENTS: tuple[str, ...] = ("Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn")
ANIONS: tuple[str, ...] = ("O", "N", "S", "Cl", "F", "Se")
Geometry = Literal[
    "linear",
    "tetrahedral",
    "square_planar",
    "square_pyramidal",
    "trigonal_bipyramidal",
    "octahedral",
    "bcc",
    "fcc",
    "hcp",
]
GEOMETRIES: tuple[str, ...] = get_args(Geometry)
METAL_LATTICES: tuple[str, ...] = ("bcc", "fcc", "hcp")

#: Bond-valence softness parameter (Brown & Altermatt), Angstrom.
BV_B = 0.37
_ATOMIC_NUMBER = {
    "Ti": 22,
    "V": 23,
    "Cr": 24,
    "Mn": 25,
    "Fe": 26,
    "Co": 27,
    "Ni": 28,
    "Cu": 29,
    "Zn": 30,
}
#: Bond-valence R0 (Angstrom) for M-O bonds, by (element, oxidation state): Brese & O'Keeffe-like
#: values; missing states fall back to the nearest listed state of the same element.
_R0_OXIDE: dict[tuple[str, int], float] = {
    ("Ti", 2): 1.85, ("Ti", 3): 1.791, ("Ti", 4): 1.815,
    ("V", 2): 1.78, ("V", 3): 1.743, ("V", 4): 1.784, ("V", 5): 1.803,
    ("Cr", 2): 1.73, ("Cr", 3): 1.724, ("Cr", 4): 1.76, ("Cr", 5): 1.77, ("Cr", 6): 1.794,
    ("Mn", 2): 1.790, ("Mn", 3): 1.760, ("Mn", 4): 1.753, ("Mn", 5): 1.77, ("Mn", 6): 1.79,
    ("Mn", 7): 1.79,
    ("Fe", 2): 1.734, ("Fe", 3): 1.759, ("Fe", 4): 1.76,
    ("Co", 2): 1.692, ("Co", 3): 1.70, ("Co", 4): 1.72,
    ("Ni", 2): 1.654, ("Ni", 3): 1.686, ("Ni", 4): 1.70,
    ("Cu", 1): 1.61, ("Cu", 2): 1.679, ("Cu", 3): 1.73,
    ("Zn", 2): 1.704,
}  # fmt: skip
#: R0(M-X) - R0(M-O) for the other anions (Angstrom; average of tabulated differences).
_R0_ANION_OFFSET = {"O": 0.0, "N": 0.10, "F": -0.10, "S": 0.40, "Cl": 0.34, "Se": 0.52}
#: Twice the 12-coordinate metallic radius (Angstrom): nearest-neighbour distance in the metal.
_METAL_DIAMETER = {
    "Ti": 2.89, "V": 2.62, "Cr": 2.50, "Mn": 2.58, "Fe": 2.48, "Co": 2.50, "Ni": 2.49, "Cu": 2.56,
    "Zn": 2.66,
}  # fmt: skip


def d_electrons(element: str, oxidation_state: int) -> int:
    """Number of 3d electrons of the ion (group number minus oxidation state), 0..10."""
    return int(min(10, max(0, _ATOMIC_NUMBER[element] - 18 - oxidation_state)))


def bond_valence_r0(element: str, oxidation_state: int, anion: str) -> float:
    """Bond-valence parameter R0 (Angstrom) of an M-X bond."""
    if anion not in _R0_ANION_OFFSET:
        raise SptValueError(f"unsupported ligand {anion!r}; expected one of {ANIONS}")
    states = [s for (e, s) in _R0_OXIDE if e == element]
    if not states:
        raise SptValueError(f"unsupported absorber {element!r}; expected one of {ELEMENTS}")
    s_near = min(states, key=lambda s: (abs(s - oxidation_state), -s))
    return _R0_OXIDE[(element, s_near)] + _R0_ANION_OFFSET[anion]


def ideal_directions(geometry: str) -> FloatArray:
    """Unit vectors (n, 3) from the absorber to its first-shell neighbours (ideal polyhedron)."""
    s3 = 1.0 / np.sqrt(3.0)
    v: list[tuple[float, ...]]
    if geometry == "linear":
        v = [(0, 0, 1), (0, 0, -1)]
    elif geometry == "tetrahedral":
        v = [(s3, s3, s3), (s3, -s3, -s3), (-s3, s3, -s3), (-s3, -s3, s3)]
    elif geometry == "square_planar":
        v = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0)]
    elif geometry == "square_pyramidal":
        v = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1)]
    elif geometry == "trigonal_bipyramidal":
        c, s = np.cos(2 * np.pi / 3), np.sin(2 * np.pi / 3)
        v = [(0, 0, 1), (0, 0, -1), (1, 0, 0), (c, s, 0), (c, -s, 0)]
    elif geometry == "octahedral":
        v = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
    elif geometry == "bcc":
        v = [(sx * s3, sy * s3, sz * s3) for sx in (1, -1) for sy in (1, -1) for sz in (1, -1)]
    elif geometry in ("fcc", "hcp"):
        # cuboctahedron (fcc); the hcp anticuboctahedron has the same distances to 2nd shell here
        r = 1.0 / np.sqrt(2.0)
        v = []
        for a, b in ((0, 1), (0, 2), (1, 2)):
            for sa in (1, -1):
                for sb in (1, -1):
                    w = [0.0, 0.0, 0.0]
                    w[a], w[b] = sa * r, sb * r
                    v.append(tuple(w))
    else:
        raise SptValueError(f"unknown geometry {geometry!r}; expected one of {GEOMETRIES}")
    return np.asarray(v, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class SiteSpec:
    """What to build: the chemistry and the distortion amplitudes of one site.

    ``ligands`` lists the first-shell species in the order of :func:`ideal_directions` (ignored for
    metal lattices). Distortions, Angstrom: ``jahn_teller`` elongates the +-z bonds by +d and
    shortens the equatorial ones by d/2; ``trigonal`` makes three bonds longer and three shorter
    by +-d/2 (octahedra only); ``bond_jitter`` is the standard deviation of random per-bond offsets;
    ``angle_jitter_deg`` rotates each bond direction by a random small angle.
    """

    element: str
    oxidation_state: int
    geometry: str
    ligands: tuple[str, ...] = ()
    jahn_teller: float = 0.0
    trigonal: float = 0.0
    bond_jitter: float = 0.0
    angle_jitter_deg: float = 0.0
    #: Second shell: numbers of edge-sharing and corner-sharing metal neighbours (compounds).
    n_edge: int = 0
    n_corner: int = 0
    #: M-O-M angle (degrees) of the corner-sharing links.
    corner_angle_deg: float = 130.0
    #: Mean-square relative displacement sigma^2 (A^2) of first and second shells.
    sigma2_1: float = 0.004
    sigma2_2: float = 0.008


@dataclass(frozen=True, slots=True, eq=False)
class LocalEnvironment:
    """One absorbing site: species and Cartesian coordinates (Angstrom, absorber at origin)."""

    element: str
    oxidation_state: int
    geometry: str
    first_species: tuple[str, ...]
    first_coords: FloatArray
    second_species: tuple[str, ...]
    second_coords: FloatArray
    sigma2_1: float = 0.004
    sigma2_2: float = 0.008
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def first_distances(self) -> FloatArray:
        """Absorber-neighbour distances of the first shell (Angstrom)."""
        out: FloatArray = np.linalg.norm(self.first_coords, axis=1)
        return out

    @property
    def second_distances(self) -> FloatArray:
        """Absorber-neighbour distances of the second shell (Angstrom)."""
        out: FloatArray = np.linalg.norm(self.second_coords, axis=1)
        return out

    @property
    def is_metal(self) -> bool:
        """True for metallic (OS 0) sites in a bcc/fcc/hcp-like lattice."""
        return self.geometry in METAL_LATTICES

    @property
    def d_count(self) -> int:
        """3d electron count of the absorber ion."""
        return d_electrons(self.element, self.oxidation_state)


def _rotate_small(v: FloatArray, angle_rad: FloatArray, rng: np.random.Generator) -> FloatArray:
    """Tilt each unit vector by its angle about a random axis perpendicular to it."""
    rnd = rng.normal(size=v.shape)
    perp = rnd - np.sum(rnd * v, axis=1, keepdims=True) * v
    perp /= np.linalg.norm(perp, axis=1, keepdims=True) + 1e-12
    out: FloatArray = v * np.cos(angle_rad)[:, None] + perp * np.sin(angle_rad)[:, None]
    return out


def _second_shell_positions(
    n: int, radius: float, avoid: FloatArray, rng: np.random.Generator
) -> FloatArray:
    """``n`` points at ``radius`` in random directions kept away from the first-shell directions."""
    if n == 0:
        return np.zeros((0, 3))
    pts: list[FloatArray] = []
    tries = 0
    while len(pts) < n and tries < 400:
        tries += 1
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        if avoid.size and np.max(avoid @ d) > 0.93:
            continue
        if pts and np.max(np.asarray(pts) @ d / radius) > 0.8:
            continue
        pts.append(d * radius)
    while len(pts) < n:  # dense shells: accept any direction
        d = rng.normal(size=3)
        pts.append(d / np.linalg.norm(d) * radius)
    return np.asarray(pts)


def build_environment(spec: SiteSpec, rng: np.random.Generator | None = None) -> LocalEnvironment:
    """Build the 3-D site described by ``spec`` (random parts drawn from ``rng``).

    Raises :class:`SptValueError` for an unknown element/geometry/ligand or a ligand list of the
    wrong length.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    if spec.element not in ELEMENTS:
        raise SptValueError(f"unsupported absorber {spec.element!r}; expected one of {ELEMENTS}")
    dirs = ideal_directions(spec.geometry)
    n = len(dirs)
    if spec.angle_jitter_deg > 0:
        dirs = _rotate_small(dirs, np.deg2rad(rng.normal(0.0, spec.angle_jitter_deg, n)), rng)
    offsets = np.zeros(n)
    if spec.geometry in METAL_LATTICES:
        d_nn = _METAL_DIAMETER[spec.element]
        offsets += rng.normal(0.0, spec.bond_jitter, n) if spec.bond_jitter > 0 else 0.0
        first = dirs * (d_nn + offsets)[:, None]
        species = tuple([spec.element] * n)
        r2 = d_nn * (2.0 / np.sqrt(3.0) if spec.geometry == "bcc" else np.sqrt(2.0))
        second = _second_shell_positions(6, r2, dirs, rng)
        return LocalEnvironment(
            spec.element, 0, spec.geometry, species, first, tuple([spec.element] * 6), second,
            spec.sigma2_1, spec.sigma2_2,
        )  # fmt: skip
    if len(spec.ligands) != n:
        raise SptValueError(
            f"{spec.geometry} needs {n} ligands, got {len(spec.ligands)}: {spec.ligands}"
        )
    if spec.oxidation_state <= 0:
        raise SptValueError(
            f"compound site needs a positive oxidation state, got {spec.oxidation_state}"
        )
    if spec.jahn_teller and spec.geometry in ("octahedral", "square_pyramidal"):
        axial = np.abs(dirs[:, 2]) > 0.7
        offsets += np.where(axial, spec.jahn_teller, -0.5 * spec.jahn_teller)
    if spec.trigonal and spec.geometry == "octahedral":
        long_ = np.sum(dirs, axis=1) > 0  # the three bonds pointing to the (+,+,+) octant
        offsets += np.where(long_, 0.5 * spec.trigonal, -0.5 * spec.trigonal)
    if spec.geometry == "trigonal_bipyramidal":
        offsets += np.where(np.abs(dirs[:, 2]) > 0.7, 0.06, -0.04)
    if spec.bond_jitter > 0:
        offsets += rng.normal(0.0, spec.bond_jitter, n)
    r0 = np.array([bond_valence_r0(spec.element, spec.oxidation_state, x) for x in spec.ligands])
    # solve sum exp((R0_i - R_i)/b) = OS with R_i = R0_i + delta + offsets_i
    delta = BV_B * np.log(np.sum(np.exp(-offsets / BV_B)) / spec.oxidation_state)
    lengths = r0 + delta + offsets
    first = dirs * lengths[:, None]
    r_mean = float(np.mean(lengths))
    # edge-sharing polyhedra: M-M ~ sqrt(2) R (Oh) ; corner sharing: 2 R sin(angle/2)
    r_edge = r_mean * (np.sqrt(2.0) if n >= 5 else 1.55)
    r_corner = 2.0 * r_mean * np.sin(np.deg2rad(spec.corner_angle_deg) / 2.0)
    sec_e = _second_shell_positions(spec.n_edge, r_edge, dirs, rng)
    sec_c = _second_shell_positions(spec.n_corner, r_corner, dirs, rng)
    second = np.concatenate([sec_e, sec_c], axis=0)
    return LocalEnvironment(
        spec.element,
        spec.oxidation_state,
        spec.geometry,
        tuple(spec.ligands),
        first,
        tuple([spec.element] * len(second)),
        second,
        spec.sigma2_1,
        spec.sigma2_2,
    )

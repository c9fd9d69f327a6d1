"""The spectrum model: a normalized K-edge mu(E) of one site, from its local environment.

All energies in eV, distances in Angstrom, k in 1/Angstrom with ``k = sqrt(0.2625 (E - E_k0))``.
The model, on a uniform fine grid of absolute energies, before broadening:

    mu(E) = S(E) (1 + chi(E)) + WL(E) + PRE(E)

- ``S``: erf step (compounds; for metals arctan steps at the Fermi level and at the edge) at
  ``E_edge = E_tab + shift``, where for compounds
  ``shift = edge_ox0 + shift_per_os * OS + ligand term + coordination term`` and for metals
  ``shift = edge_metal``; a slow atomic decline above the edge.
- ``chi``: single-scattering EXAFS-like sum over first shell, second shell (and, for metals, two
  further lattice shells) with FEFF6L amplitudes/phases/mean free paths (``feff_tables``), plus
  first-shell triangle multiple-scattering paths absorber->X_i->X_j->absorber, whose length carries
  the X-X distances. A smooth turn-on damps chi within a few eV of ``E_k0``.
- ``WL``: white line (Lorentzian just above the edge) whose height grows with OS and CN and is
  scaled per ligand; small for metals.
- ``PRE``: 1s->3d pre-edge peak(s), intensity = (3d holes / 10) * (quadrupole + dipole * A), with A
  the geometry's acentricity (odd-l bond-orientational order, 0 for centrosymmetric sites, 1 for
  a regular tetrahedron); two crystal-field components for 5-6 coordination, one otherwise.

The whole is then convolved with a Lorentzian of the tabulated core-hole width (xraydb) and the
instrument Gaussian (FFT, exact transfer functions).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from functools import lru_cache
from typing import Any

import numpy as np
from scipy.special import erf

from spt_stream.core.frames import FloatArray
from spt_stream.core.grid import edge_energy
from spt_stream.errors import ConfigError
from spt_stream.simulate.environment import LocalEnvironment
from spt_stream.simulate.feff_tables import load_tables

__all__ = [
    "ATOMIC_NUMBER",
    "ELECTRONEGATIVITY",
    "ETOK",
    "PhysicsParams",
    "acentricity",
    "broaden",
    "core_hole_width",
    "edge_position",
    "ligand_white_line_factor",
    "site_spectrum",
]

#: Pauling electronegativities of the first-shell ligands (covalency terms).
ELECTRONEGATIVITY: dict[str, float] = {
    "O": 3.44, "N": 3.04, "F": 3.98, "S": 2.58, "Cl": 3.16, "Se": 2.55,
}  # fmt: skip
CHI_O = ELECTRONEGATIVITY["O"]
#: Atomic numbers of the absorbers (edge_per_z term).
ATOMIC_NUMBER: dict[str, int] = {
    "Sc": 21, "Ti": 22, "V": 23, "Cr": 24, "Mn": 25, "Fe": 26, "Co": 27, "Ni": 28, "Cu": 29,
    "Zn": 30,
}  # fmt: skip

#: 2 m_e / hbar^2 in 1/(eV Angstrom^2): k^2 = ETOK (E - E0).
ETOK = 0.2624682917


@dataclass(frozen=True, slots=True)
class PhysicsParams:
    """Global (not per-file) physical parameters of the model; fitted by ``calibrate``."""

    #: Edge position of metals (OS 0) relative to the tabulated edge, eV.
    edge_metal: float = 5.0
    #: Edge position of metals with a full 3d band (Cu, Zn), eV: a sharp edge, no shoulder.
    edge_metal_d10: float = 2.0
    #: Edge position of an octahedral oxide at OS = 0 extrapolated, eV (relative to tabulated).
    edge_ox0: float = 0.0
    #: Chemical shift per unit oxidation state, eV.
    shift_per_os: float = 3.8
    #: Edge shift per first-shell coordination number below 6, eV (lower CN -> lower edge).
    shift_per_cn: float = 0.5
    #: Edge shift per unit of ligand electronegativity (Pauling) relative to O, eV: a more
    #: covalent (less electronegative) first shell gives the absorber more charge back and lowers
    #: the edge (sulfides, selenides, chlorides below oxides at the same formal state).
    shift_per_chi: float = 3.0
    #: Extra edge shift by ligand (relative to O), eV, on top of the electronegativity term.
    shift_ligand: dict[str, float] = field(
        default_factory=lambda: {"O": 0.0, "N": 0.0, "F": 0.0, "S": 0.0, "Cl": 0.0, "Se": 0.0}
    )
    #: Edge shift per unit of atomic number from Fe (Z = 26), eV: the chemical shift relative
    #: to the metal's tabulated edge changes along the 3d series.
    edge_per_z: float = 0.0
    #: Edge shift of closed-shell d10 ions (Zn2+, Cu+), eV: no 3d holes to screen the core hole.
    edge_d10: float = 0.0
    #: Gaussian width (FWHM, eV) of the compounds' edge step (before core-hole broadening).
    edge_width: float = 3.0
    #: Width of the metal edge step (FWHM, eV).
    edge_width_metal: float = 2.0
    #: Metals: fraction of the step that rises already at the Fermi level (the tabulated edge,
    #: 4p-3d hybridized states), the rest at ``edge_metal``.
    metal_shoulder: float = 0.3
    #: White-line Lorentzian area parameters: height = wl0 + wl_os*OS + wl_cn*(CN-4), times ligand.
    wl0: float = 0.25
    wl_os: float = 0.06
    wl_cn: float = 0.06
    wl_metal: float = 0.0
    wl_ligand: dict[str, float] = field(
        default_factory=lambda: {"O": 1.0, "N": 1.0, "F": 1.0, "S": 1.0, "Cl": 1.0, "Se": 1.0}
    )
    #: White-line loss per unit of ligand electronegativity below O (fraction; covalent ligands
    #: delocalize the 4p final states and flatten the white line): factor 1 - wl_per_chi * dchi.
    wl_per_chi: float = 0.4
    #: White-line factor of d10 ions (a full 3d shell leaves the 4p states sharper).
    wl_d10: float = 1.0
    #: White-line position above the edge (eV) and FWHM (eV).
    wl_de: float = 4.0
    wl_width: float = 6.0
    #: Pre-edge: height per unit of 3d holes/10 (quadrupole and dipole parts).
    pre_quad: float = 0.10
    pre_dip: float = 0.75
    #: Pre-edge position relative to tabulated edge: pre_e0 + pre_e_os * OS, eV.
    pre_e0: float = -1.0
    pre_e_os: float = 0.9
    pre_width: float = 1.6
    #: Crystal-field splitting of the two pre-edge components in 5-6 coordination, eV.
    pre_split: float = 1.6
    #: EXAFS: amplitude reduction S0^2, E_k0 offset from the edge (eV), turn-on width (eV).
    s02: float = 0.8
    k0_offset: float = -2.0
    chi_turn_on: float = 6.0
    #: Multiple-scattering (triangle path) amplitude scale.
    ms_scale: float = 0.3
    #: Atomic decline of the edge step: S(E) ~ (E / E_edge)^-post_decline above the edge.
    post_decline: float = 2.5
    #: Instrument Gaussian resolution (FWHM, eV) used when an acquisition gives none.
    resolution: float = 1.2

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (for YAML)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PhysicsParams:
        """Build from a mapping; unknown keys are a :class:`ConfigError`."""
        names = {f.name for f in fields(cls)}
        bad = set(data) - names
        if bad:
            raise ConfigError(f"unknown physics parameters: {sorted(bad)}")
        return replace(cls(), **data)


@lru_cache(maxsize=64)
def core_hole_width(element: str, edge: str = "K") -> float:
    """Tabulated core-hole width (FWHM, eV; xraydb)."""
    import xraydb

    return float(xraydb.core_width(element, edge))


def _legendre(order: int, x: FloatArray) -> FloatArray:
    if order == 1:
        return x
    return 0.5 * (5 * x**3 - 3 * x)


def _odd_order(coords: FloatArray) -> float:
    r = np.linalg.norm(coords, axis=1)
    u = coords / r[:, None]
    w = (np.mean(r) / r) ** 3
    c = np.clip(u @ u.T, -1.0, 1.0)
    ww = np.outer(w, w)
    p1 = 3.0 * float(np.sum(ww * _legendre(1, c)))
    p3 = 7.0 * float(np.sum(ww * _legendre(3, c)))
    return (p1 + p3) / (len(r) ** 2)


_TD = np.array([(1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1)], dtype=np.float64)
_TD_ORDER = _odd_order(_TD)


def acentricity(env: LocalEnvironment) -> float:
    """Odd-parity bond-orientational order of the first shell, 0 (centrosymmetric) .. ~1 (Td).

    ``(P1 + P3) / N^2`` with ``P_l = (2l+1) sum_ij w_i w_j P_l(cos theta_ij)`` (Legendre
    addition theorem, rotation invariant; ``w_i = (R_mean/R_i)^3`` so unequal trans bonds break
    the centre of symmetry too), normalized by the value of a regular tetrahedron.
    """
    if len(env.first_coords) == 0:
        return 0.0
    return max(0.0, _odd_order(env.first_coords) / _TD_ORDER)


def edge_position(env: LocalEnvironment, p: PhysicsParams) -> float:
    """Edge energy (eV, absolute) of a site, before any per-sample spread."""
    e_tab = edge_energy(env.element)
    if env.is_metal:
        return e_tab + (p.edge_metal_d10 if full_d_band_metal(env.element) else p.edge_metal)
    cn = len(env.first_species)
    lig = float(
        np.mean(
            [
                p.shift_ligand.get(s, 0.0) + p.shift_per_chi * (ELECTRONEGATIVITY[s] - CHI_O)
                for s in env.first_species
            ]
        )
    )
    z = ATOMIC_NUMBER[env.element] - 26
    d10 = p.edge_d10 if env.d_count >= 10 else 0.0
    return (
        e_tab
        + p.edge_ox0
        + p.edge_per_z * z
        + d10
        + p.shift_per_os * env.oxidation_state
        - p.shift_per_cn * (6 - cn)
        + lig
    )


def full_d_band_metal(element: str) -> bool:
    """Cu and Zn metals: 3d10 (no 3d holes at the Fermi level)."""
    return ATOMIC_NUMBER[element] >= 29


def ligand_white_line_factor(species: str, p: PhysicsParams) -> float:
    """White-line factor of one first-shell ligand: the per-ligand factor times the covalency
    loss ``1 - wl_per_chi * max(0, chi_O - chi_X)`` (at least 0.05)."""
    loss = p.wl_per_chi * max(0.0, CHI_O - ELECTRONEGATIVITY[species])
    return p.wl_ligand.get(species, 1.0) * max(0.05, 1.0 - loss)


def _lorentz(x: FloatArray, fwhm: float) -> FloatArray:
    g = 0.5 * fwhm
    out: FloatArray = g * g / (x * x + g * g)
    return out


def _metal_extra_shells(env: LocalEnvironment) -> list[tuple[int, float]]:
    d = float(np.mean(env.first_distances))
    if env.geometry == "bcc":
        return [(12, d * 1.633), (24, d * 1.915)]
    return [(24, d * 1.732), (12, d * 2.0)]


#: k grid (1/Angstrom) on which chi is evaluated before interpolation onto energies.
K_GRID: FloatArray = np.arange(0.0, 17.0, 0.02)
K_GRID.setflags(write=False)


@lru_cache(maxsize=128)
def _tabulated(element: str, scatterer: str) -> tuple[FloatArray, FloatArray, FloatArray]:
    kk = np.maximum(K_GRID, 0.05)
    return load_tables()[(element, scatterer)].at(kk)


def _scatterer_key(species: str) -> str:
    """FEFF6L table of a scatterer: its own for O, N, F, S, Cl; the absorber's metal table for
    metal neighbours and for Se (Z = 34, the nearest heavy scatterer tabulated: Ti..Zn)."""
    return species if species in ("O", "N", "F", "S", "Cl") else "M"


def _paths(env: LocalEnvironment) -> list[tuple[str, float, float, float, bool]]:
    """Scattering paths grouped by (scatterer, length): (key, N, R, sigma2, is_triangle)."""
    groups: dict[tuple[str, float, float, bool], float] = {}

    def put(species: str, n: float, r: float, s2: float, tri: bool = False) -> None:
        key = (_scatterer_key(species), round(r, 2), s2, tri)
        groups[key] = groups.get(key, 0.0) + n

    for s, r in zip(env.first_species, env.first_distances, strict=True):
        put(s, 1.0, float(r), env.sigma2_1)
    for s, r in zip(env.second_species, env.second_distances, strict=True):
        put(s, 1.0, float(r), env.sigma2_2)
    if env.is_metal:
        for n, r in _metal_extra_shells(env):
            put(env.element, float(n), r, env.sigma2_2 * 1.3)
    if len(env.first_species) >= 2:
        xyz = env.first_coords
        rr = env.first_distances
        i, j = np.triu_indices(len(rr), k=1)
        dij = np.linalg.norm(xyz[i] - xyz[j], axis=1)
        half = (rr[i] + rr[j] + dij) / 2.0
        for a, h in zip(i, half, strict=True):
            put(env.first_species[int(a)], 2.0, float(h), 1.5 * env.sigma2_1, True)
    return [(k[0], n, k[1], k[2], k[3]) for k, n in groups.items()]


def chi_k(env: LocalEnvironment, p: PhysicsParams) -> FloatArray:
    """EXAFS-like chi on :data:`K_GRID`: single scattering + first-shell triangle paths.

    ``chi(k) = sum_j N_j |f_j|/(k R_j^2) sin(2 k R_j + phi_j) exp(-2 s2_j k^2 - 2 R_j/lambda)``
    with FEFF6L ``|f|``, ``phi`` and ``lambda``; triangle paths (half length
    ``(R_i + R_j + d_ij)/2``) use ``ms_scale |f|^2 / 2`` and ``1.5 phi``.
    """
    kk = np.maximum(K_GRID, 0.05)
    chi = np.zeros_like(kk)
    for key, n, r, s2, tri in _paths(env):
        if tri and p.ms_scale <= 0:
            continue
        amp, pha, lam = _tabulated(env.element, key)
        if tri:
            a = p.ms_scale * 0.5 * amp * amp
            ph = 1.5 * pha
        else:
            a, ph = amp, pha
        chi += (
            n * a / (kk * r * r) * np.sin(2 * kk * r + ph) * np.exp(-2 * s2 * kk * kk - 2 * r / lam)
        )
    out: FloatArray = chi
    return out


def broaden(
    mu: FloatArray, step: float, lorentz_fwhm: float, gauss_fwhm: FloatArray | float
) -> FloatArray:
    """Convolve rows of ``mu`` (b, n) on a uniform grid with a Lorentzian x Gaussian (FFT).

    The linear trend between the first and last point is removed before and restored after, so
    the circular convolution does not wrap the edge jump around.
    """
    mu2 = np.atleast_2d(mu)
    n = mu2.shape[1]
    x = np.linspace(0.0, 1.0, n)
    trend = mu2[:, :1] + (mu2[:, -1:] - mu2[:, :1]) * x[None, :]
    pad = n // 4
    work = np.pad(mu2 - trend, ((0, 0), (pad, pad)))
    f = np.fft.rfftfreq(work.shape[1], d=step)
    sig = np.atleast_1d(np.asarray(gauss_fwhm, dtype=np.float64)) / 2.3548200450309493
    transfer = np.exp(-np.pi * lorentz_fwhm * np.abs(f))[None, :] * np.exp(
        -2.0 * (np.pi * sig[:, None] * f[None, :]) ** 2
    )
    out = np.fft.irfft(np.fft.rfft(work, axis=1) * transfer, n=work.shape[1], axis=1)
    res: FloatArray = out[:, pad : pad + n] + trend
    return res if mu.ndim == 2 else res[0]


def site_spectrum(
    env: LocalEnvironment,
    energy: FloatArray,
    p: PhysicsParams,
    *,
    edge_shift: float = 0.0,
) -> FloatArray:
    """Unbroadened normalized mu on the uniform absolute ``energy`` grid (eV).

    ``edge_shift`` is an extra per-sample shift (eV) of the whole spectrum (chemical-shift spread).
    """
    e_edge = edge_position(env, p) + edge_shift
    x = energy - e_edge
    if env.is_metal:
        w = p.edge_width_metal
        x_f = energy - edge_energy(env.element) - edge_shift
        # a full 3d band (Cu, Zn) leaves no empty 3d-4p hybrid states at the Fermi level
        shoulder = 0.0 if full_d_band_metal(env.element) else p.metal_shoulder
        step = shoulder * (0.5 + np.arctan(x_f / (0.5 * w)) / np.pi) + (1.0 - shoulder) * (
            0.5 + np.arctan(x / (0.5 * w)) / np.pi
        )
    else:
        # many unresolved 1s->4p transitions: a Gaussian (erf) envelope of FWHM edge_width; the
        # core-hole Lorentzian is applied later by ``broaden``
        step = 0.5 * (1.0 + erf(x / (p.edge_width / 2.3548200450309493 * np.sqrt(2.0))))
    decline = np.where(x > 0, (np.maximum(energy, e_edge) / e_edge) ** (-p.post_decline), 1.0)
    step = step * decline
    e_k0 = e_edge + p.k0_offset
    above = energy > e_k0
    k = np.sqrt(ETOK * np.maximum(energy - e_k0, 0.0))
    chi = np.where(above, np.interp(k, K_GRID, chi_k(env, p)), 0.0) * p.s02
    turn = 1.0 - np.exp(-np.maximum(energy - e_k0, 0.0) / max(p.chi_turn_on, 1e-3))
    mu = step * (1.0 + chi * turn)
    cn = len(env.first_species)
    if env.is_metal:
        wl_h = p.wl_metal
    else:
        lig = float(np.mean([ligand_white_line_factor(s, p) for s in env.first_species]))
        d10 = p.wl_d10 if env.d_count >= 10 else 1.0
        wl_h = max(0.0, (p.wl0 + p.wl_os * env.oxidation_state + p.wl_cn * (cn - 4)) * lig * d10)
    if wl_h > 0:
        mu = mu + wl_h * _lorentz(x - p.wl_de, p.wl_width)
    holes = (10 - env.d_count) / 10.0
    if holes > 0 and not env.is_metal:
        e_pre = edge_energy(env.element) + p.pre_e0 + p.pre_e_os * env.oxidation_state + edge_shift
        h = holes * (p.pre_quad + p.pre_dip * acentricity(env))
        if cn >= 5:
            # t2g / eg-like components: weights follow the hole counts in each set (roughly)
            mu = mu + 0.5 * h * _lorentz(energy - e_pre, p.pre_width)
            mu = mu + 0.5 * h * _lorentz(energy - e_pre - p.pre_split, p.pre_width)
        else:
            mu = mu + h * _lorentz(energy - e_pre - 0.3 * p.pre_split, p.pre_width)
    out: FloatArray = mu
    return out

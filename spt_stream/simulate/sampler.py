"""A sampler over physically plausible absorbing sites, and the recipe that weights it.

:data:`SITE_CATALOGUE` lists which oxidation-state / coordination combinations exist for each 3d
element (e.g. Co2+ Td/Oh, Co3+ Oh, Mn7+ Td, Cr6+ Td, Cu+ linear, Zn2+ Td), with relative weights;
metals (OS 0) use the element's own lattice (bcc Fe/Cr/V/Mn-like, fcc Ni/Cu, hcp Ti/Co/Zn). A
:class:`Recipe` (from ``spt_stream/configs/simulate/*.yaml``) weights elements and ligands and
sets the distortion, second-shell and augmentation ranges.

Mixed-valence samples (``Recipe.mixture_prob``): with that probability a sample is two sites of
the SAME element in ADJACENT oxidation states of the catalogue, from :data:`MIXED_VALENCE` (every
adjacent pair, metal/lowest compound included: Li(1-x)CoO2 Co3+/Co4+ Oh, Ni3+/Ni4+, Fe3O4-like
Td/Oh pairs, Fe0/Fe2+ ...), mixed with weight ``w ~ U(0, 1)`` on the higher-valent site. Glass
sites (``Recipe.glass_prob``): oxygen shells of coordination 4-6 with strong disorder, alone or
as mixed-valence pairs (Fe2+/Fe3+ glasses). Both sites
share the compound's ligand kind and thermal disorder (and, for equal geometries, the ligand list
and second shell); distortions are drawn per site. :func:`sample_sites` returns the sites and
their weights; a single-site sample is ``((site,), (1.0,))``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from spt_stream.errors import ConfigError
from spt_stream.simulate.environment import ANIONS, ELEMENTS, SiteSpec, ideal_directions
from spt_stream.simulate.pipeline import AugmentRanges

__all__ = [
    "METAL_LATTICE",
    "MIXED_VALENCE",
    "SITE_CATALOGUE",
    "Recipe",
    "load_recipe",
    "sample_compound",
    "sample_site",
    "sample_sites",
]

#: (oxidation state, geometry, weight) per element: every state common in solids, including the
#: ones reached electrochemically (Ni4+, Co4+, Fe4+, Mn4+/Mn5+, Cu3+, V2+..V5+, Cr2+..Cr6+).
SITE_CATALOGUE: dict[str, tuple[tuple[int, str, float], ...]] = {
    "Ti": ((0, "hcp", 1), (2, "octahedral", 0.5), (3, "octahedral", 2), (4, "octahedral", 5),
           (4, "tetrahedral", 1), (4, "square_pyramidal", 1)),
    "V": ((0, "bcc", 1), (2, "octahedral", 1), (3, "octahedral", 3), (4, "octahedral", 2),
          (4, "square_pyramidal", 2), (5, "tetrahedral", 2), (5, "square_pyramidal", 2),
          (5, "octahedral", 1)),
    "Cr": ((0, "bcc", 1), (2, "octahedral", 1), (2, "square_planar", 0.5), (3, "octahedral", 5),
           (4, "octahedral", 1), (4, "tetrahedral", 0.5), (5, "tetrahedral", 0.7),
           (6, "tetrahedral", 2)),
    "Mn": ((0, "bcc", 1), (2, "octahedral", 4), (2, "tetrahedral", 1), (3, "octahedral", 3),
           (3, "square_pyramidal", 1), (4, "octahedral", 3), (5, "tetrahedral", 0.5),
           (6, "tetrahedral", 0.5), (7, "tetrahedral", 1)),
    "Fe": ((0, "bcc", 1), (2, "octahedral", 4), (2, "tetrahedral", 1), (2, "square_planar", 0.3),
           (3, "octahedral", 4), (3, "tetrahedral", 1.5), (3, "trigonal_bipyramidal", 0.5),
           (4, "octahedral", 0.6)),
    "Co": ((0, "hcp", 1), (2, "octahedral", 3), (2, "tetrahedral", 2), (3, "octahedral", 3),
           (4, "octahedral", 1.5)),
    "Ni": ((0, "fcc", 1), (2, "octahedral", 4), (2, "square_planar", 1.5), (2, "tetrahedral", 1),
           (3, "octahedral", 2), (4, "octahedral", 1.5)),
    "Cu": ((0, "fcc", 1), (1, "linear", 1), (1, "tetrahedral", 1), (2, "octahedral", 2),
           (2, "square_planar", 2), (2, "square_pyramidal", 1.5), (3, "square_planar", 0.7)),
    "Zn": ((0, "hcp", 1), (2, "tetrahedral", 3), (2, "octahedral", 2),
           (2, "trigonal_bipyramidal", 0.5)),
}  # fmt: skip
METAL_LATTICE = {e: next(g for os_, g, _ in SITE_CATALOGUE[e] if os_ == 0) for e in ELEMENTS}

#: Geometries of glass sites: low, broadly distributed coordination (4-6), with weights.
GLASS_GEOMETRIES: tuple[tuple[str, float], ...] = (
    ("tetrahedral", 3.0), ("trigonal_bipyramidal", 2.0), ("square_pyramidal", 2.0),
    ("octahedral", 1.5),
)  # fmt: skip


def _adjacent_pairs(el: str) -> tuple[tuple[int, str, int, str, float], ...]:
    """Every pair of ADJACENT oxidation states the catalogue holds for ``el`` (metal and lowest
    compound state included), each in its most common geometry, or in a geometry both states
    share (one structure type, e.g. Li(1-x)CoO2 Oh/Oh), plus spinel-like Td/Oh pairs."""
    by_state: dict[int, list[tuple[str, float]]] = {}
    for os_, geom, w in SITE_CATALOGUE[el]:
        by_state.setdefault(os_, []).append((geom, w))
    states = sorted(by_state)
    out: list[tuple[int, str, int, str, float]] = []
    for lo, hi in itertools.pairwise(states):
        g_lo = {g: w for g, w in by_state[lo]}
        g_hi = {g: w for g, w in by_state[hi]}
        shared = [g for g in g_lo if g in g_hi]
        for g in shared:
            out.append((lo, g, hi, g, min(g_lo[g], g_hi[g])))
        best_lo = max(g_lo, key=lambda g: g_lo[g])
        best_hi = max(g_hi, key=lambda g: g_hi[g])
        if not shared or best_lo != best_hi:
            out.append((lo, best_lo, hi, best_hi, 1.0))
    return tuple(out)


#: Mixed-valence pairs per element: (lower OS, its geometry, next OS up, its geometry, weight):
#: EVERY adjacent pair of states in :data:`SITE_CATALOGUE` (metal/oxide included), so fractional
#: states are dense over each element's whole range; Zn (one compound state) pairs Zn0/Zn2+.
MIXED_VALENCE: dict[str, tuple[tuple[int, str, int, str, float], ...]] = {
    el: _adjacent_pairs(el) for el in ELEMENTS
}


@dataclass(frozen=True, slots=True)
class Recipe:
    """What to generate: element and ligand weights, structural ranges and augmentation ranges."""

    elements: dict[str, float] = field(default_factory=lambda: {e: 1.0 for e in ELEMENTS})
    #: Multiply catalogue weights: ``{"Mn": {"7/tetrahedral": 0.5}}``; 0 removes a combination.
    site_weights: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Scale of the metals' (OS 0) weight, all elements.
    metal_weight: float = 1.0
    ligands: dict[str, float] = field(
        default_factory=lambda: {"O": 0.72, "N": 0.1, "S": 0.06, "Cl": 0.06, "F": 0.06}
    )
    #: Probability that a compound site mixes in a second ligand kind (changes OCN).
    mixed_ligand_prob: float = 0.3
    #: Probability that a sample is a mixed-valence pair (:data:`MIXED_VALENCE`; module doc).
    #: 0 draws no extra random number, so recipes without it reproduce older data sets.
    mixture_prob: float = 0.0
    #: Probability that a compound sample is a glass site (:func:`_glass_site`; 0 draws no
    #: extra random number, so older recipes reproduce their data).
    glass_prob: float = 0.0
    glass_bond_jitter: tuple[float, float] = (0.04, 0.12)
    glass_angle_jitter_deg: tuple[float, float] = (8.0, 20.0)
    glass_sigma2_1: tuple[float, float] = (0.006, 0.02)
    #: Oxidation state above which only oxygen is used (oxo-anions).
    oxo_only_above: int = 4
    jahn_teller: tuple[float, float] = (0.0, 0.35)
    jahn_teller_prob: float = 0.3
    trigonal: tuple[float, float] = (0.0, 0.2)
    trigonal_prob: float = 0.2
    bond_jitter: tuple[float, float] = (0.0, 0.06)
    angle_jitter_deg: tuple[float, float] = (0.0, 6.0)
    second_shell: tuple[int, int] = (2, 12)
    corner_angle_deg: tuple[float, float] = (115.0, 165.0)
    sigma2_1: tuple[float, float] = (0.002, 0.010)
    sigma2_2: tuple[float, float] = (0.004, 0.016)
    augment: AugmentRanges = field(default_factory=AugmentRanges)
    use_flat: bool = True
    chunk_size: int = 256
    physics: str | None = "calibrated.yaml"

    def __post_init__(self) -> None:
        bad = set(self.elements) - set(ELEMENTS)
        if bad:
            raise ConfigError(f"recipe elements {sorted(bad)} not in {ELEMENTS}")
        if not self.elements or sum(self.elements.values()) <= 0:
            raise ConfigError("recipe needs at least one element with positive weight")
        badl = set(self.ligands) - set(ANIONS)
        if badl:
            raise ConfigError(f"recipe ligands {sorted(badl)} not in {ANIONS}")
        if "O" not in self.ligands:
            raise ConfigError("recipe ligands must include O (oxo-anion sites use it)")
        if not 0.0 <= self.mixture_prob <= 1.0:
            raise ConfigError(f"recipe mixture_prob must lie in [0, 1], got {self.mixture_prob}")


def _tuple_fields(data: dict[str, Any], cls: type[Any]) -> dict[str, Any]:
    names = {f.name: f for f in fields(cls)}
    bad = set(data) - set(names)
    if bad:
        raise ConfigError(f"unknown {cls.__name__} keys: {sorted(bad)}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}


def load_recipe(path: Path) -> Recipe:
    """Read a recipe YAML (keys of :class:`Recipe`; ``augment:`` keys of ``AugmentRanges``)."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read recipe: {exc}", source=str(path)) from exc
    if not isinstance(doc, dict):
        raise ConfigError("recipe must be a mapping", source=str(path))
    try:
        aug = AugmentRanges(**_tuple_fields(dict(doc.pop("augment", {}) or {}), AugmentRanges))
        return Recipe(augment=aug, **_tuple_fields(doc, Recipe))
    except (TypeError, ConfigError) as exc:
        raise ConfigError(f"invalid recipe: {exc}", source=str(path)) from exc


def _choice(rng: np.random.Generator, items: list[Any], weights: list[float]) -> Any:
    w = np.asarray(weights, dtype=np.float64)
    return items[int(rng.choice(len(items), p=w / w.sum()))]


def _combo_weight(recipe: Recipe, el: str, os_: int, geom: str, w: float) -> float:
    w = w * recipe.site_weights.get(el, {}).get(f"{os_}/{geom}", 1.0)
    return w * (recipe.metal_weight if os_ == 0 else 1.0)


def sample_site(rng: np.random.Generator, recipe: Recipe) -> SiteSpec:
    """Draw one plausible site: element, OS/geometry, ligands, distortions, second shell."""
    elements = [e for e, w in recipe.elements.items() if w > 0]
    el = _choice(rng, elements, [recipe.elements[e] for e in elements])
    combos = []
    weights = []
    for os_, geom, w in SITE_CATALOGUE[el]:
        w = _combo_weight(recipe, el, os_, geom, w)
        if w > 0:
            combos.append((os_, geom))
            weights.append(w)
    if not combos:
        raise ConfigError(f"recipe leaves no site combination for {el}")
    os_, geom = _choice(rng, combos, weights)
    if os_ > 0 and recipe.glass_prob > 0 and rng.random() < recipe.glass_prob:
        return _glass_site(rng, recipe, el, int(os_))
    s1 = rng.uniform(*recipe.sigma2_1)
    s2 = rng.uniform(*recipe.sigma2_2)
    if os_ == 0:
        return SiteSpec(el, 0, geom, bond_jitter=rng.uniform(0.0, 0.02), sigma2_1=s1, sigma2_2=s2)
    n = len(ideal_directions(geom))
    ligs = ["O"] * n if os_ > recipe.oxo_only_above else _ligands(rng, recipe, n)
    return _compound_site(rng, recipe, el, int(os_), geom, tuple(ligs), s1, s2)


def sample_compound(
    rng: np.random.Generator, recipe: Recipe, el: str, os_: int, geom: str
) -> SiteSpec:
    """A compound site of given element, state and geometry, with drawn ligands and shells."""
    n = len(ideal_directions(geom))
    ligs = ["O"] * n if os_ > recipe.oxo_only_above else _ligands(rng, recipe, n)
    s1 = rng.uniform(*recipe.sigma2_1)
    s2 = rng.uniform(*recipe.sigma2_2)
    return _compound_site(rng, recipe, el, os_, geom, tuple(ligs), s1, s2)


def _glass_site(rng: np.random.Generator, recipe: Recipe, el: str, os_: int) -> SiteSpec:
    """A site in a glass: oxygen shell of low, broadly distributed coordination (4-6), strong
    bond-length and angular disorder, large sigma^2, few metal second neighbours (the network
    formers Si/B/P around it are light and disordered: no coherent metal shell)."""
    geoms = [g for g, _ in GLASS_GEOMETRIES]
    geom = _choice(rng, geoms, [w for _, w in GLASS_GEOMETRIES])
    n = len(ideal_directions(geom))
    return SiteSpec(
        el,
        os_,
        geom,
        ("O",) * n,
        bond_jitter=rng.uniform(*recipe.glass_bond_jitter),
        angle_jitter_deg=rng.uniform(*recipe.glass_angle_jitter_deg),
        n_edge=0,
        n_corner=int(rng.integers(0, 3)),
        corner_angle_deg=float(rng.uniform(120.0, 160.0)),
        sigma2_1=rng.uniform(*recipe.glass_sigma2_1),
        sigma2_2=rng.uniform(0.015, 0.03),
    )


def _ligands(
    rng: np.random.Generator, recipe: Recipe, n: int, main: str | None = None
) -> list[str]:
    """``n`` first-shell ligands: one main kind, sometimes partly replaced by a second kind."""
    names = list(recipe.ligands)
    if main is None:
        main = _choice(rng, names, [recipe.ligands[x] for x in names])
    ligs = [main] * n
    if rng.random() < recipe.mixed_ligand_prob:
        other = _choice(rng, names, [recipe.ligands[x] if x != main else 0.0 for x in names])
        k = int(rng.integers(1, n)) if n > 1 else 0
        for i in rng.choice(n, size=k, replace=False):
            ligs[int(i)] = other
    return ligs


def _shell(rng: np.random.Generator, recipe: Recipe, n: int) -> tuple[int, int]:
    """Second shell (edge-sharing, corner-sharing) metal neighbour counts of a compound site."""
    lo, hi = recipe.second_shell
    total = int(rng.integers(lo, hi + 1))
    edge_frac = rng.uniform(0.0, 0.8 if n >= 5 else 0.3)
    n_edge = round(total * edge_frac)
    return n_edge, total - n_edge


def _compound_site(
    rng: np.random.Generator,
    recipe: Recipe,
    el: str,
    os_: int,
    geom: str,
    ligs: tuple[str, ...],
    s1: float,
    s2: float,
    shell: tuple[int, int, float] | None = None,
) -> SiteSpec:
    """A compound site with drawn distortions; ``shell`` = (n_edge, n_corner, corner angle) or
    drawn here."""
    jt = rng.uniform(*recipe.jahn_teller) if rng.random() < recipe.jahn_teller_prob else 0.0
    tri = rng.uniform(*recipe.trigonal) if rng.random() < recipe.trigonal_prob else 0.0
    # (the order of the draws is the original sampler's: older data sets stay reproducible)
    if shell is None:
        n_edge, n_corner = _shell(rng, recipe, len(ligs))
        bond = rng.uniform(*recipe.bond_jitter)
        angle = rng.uniform(*recipe.angle_jitter_deg)
        corner = float(rng.uniform(*recipe.corner_angle_deg))
    else:
        n_edge, n_corner, corner = shell
        bond = rng.uniform(*recipe.bond_jitter)
        angle = rng.uniform(*recipe.angle_jitter_deg)
    return SiteSpec(
        el,
        os_,
        geom,
        ligs,
        jahn_teller=jt,
        trigonal=tri,
        bond_jitter=bond,
        angle_jitter_deg=angle,
        n_edge=n_edge,
        n_corner=n_corner,
        corner_angle_deg=corner,
        sigma2_1=s1,
        sigma2_2=s2,
    )


def _mixture_options(
    recipe: Recipe,
) -> tuple[list[str], list[float], dict[str, tuple[list[tuple[int, str, int, str]], list[float]]]]:
    """Elements that have an enabled pair (both ends keep a positive recipe weight), and pairs."""
    pairs: dict[str, tuple[list[tuple[int, str, int, str]], list[float]]] = {}
    for el, w_el in recipe.elements.items():
        if w_el <= 0:
            continue
        cat = {(o, g): w for o, g, w in SITE_CATALOGUE[el]}
        ok = [
            ((lo, g_lo, hi, g_hi), w)
            for lo, g_lo, hi, g_hi, w in MIXED_VALENCE.get(el, ())
            if _combo_weight(recipe, el, lo, g_lo, cat[(lo, g_lo)]) > 0
            and _combo_weight(recipe, el, hi, g_hi, cat[(hi, g_hi)]) > 0
        ]
        if ok:
            pairs[el] = ([p for p, _ in ok], [w for _, w in ok])
    els = list(pairs)
    return els, [recipe.elements[e] for e in els], pairs


def sample_sites(
    rng: np.random.Generator, recipe: Recipe
) -> tuple[tuple[SiteSpec, ...], tuple[float, ...]]:
    """One sample: ``((site,), (1.0,))``, or with ``recipe.mixture_prob`` a mixed-valence pair
    ``((lower, higher), (1 - w, w))`` with ``w ~ U(0, 1)`` (module doc).

    The element of a pair follows the recipe's element weights among the elements that have an
    enabled pair; a recipe with none (e.g. Zn only) always gives single sites.
    """
    if recipe.mixture_prob <= 0 or rng.random() >= recipe.mixture_prob:
        return (sample_site(rng, recipe),), (1.0,)
    els, el_w, pairs = _mixture_options(recipe)
    if not els:
        return (sample_site(rng, recipe),), (1.0,)
    el = _choice(rng, els, el_w)
    lo, g_lo, hi, g_hi = _choice(rng, *pairs[el])
    w = float(rng.uniform(0.0, 1.0))
    s1 = rng.uniform(*recipe.sigma2_1)
    s2 = rng.uniform(*recipe.sigma2_2)
    if lo == 0:  # a metal and its lowest compound state (partly oxidized metal, reduced catalyst)
        metal = SiteSpec(el, 0, g_lo, bond_jitter=rng.uniform(0.0, 0.02), sigma2_1=s1, sigma2_2=s2)
        return (metal, sample_compound(rng, recipe, el, hi, g_hi)), (1.0 - w, w)
    if recipe.glass_prob > 0 and rng.random() < recipe.glass_prob:  # Fe2+/Fe3+ in a glass...
        return (_glass_site(rng, recipe, el, lo), _glass_site(rng, recipe, el, hi)), (1.0 - w, w)
    n_lo, n_hi = len(ideal_directions(g_lo)), len(ideal_directions(g_hi))
    names = list(recipe.ligands)
    oxo = hi > recipe.oxo_only_above
    main = "O" if oxo else _choice(rng, names, [recipe.ligands[x] for x in names])
    if g_lo == g_hi:  # one structure type: same ligand list and second shell, own distortions
        ligs = ("O",) * n_lo if oxo else tuple(_ligands(rng, recipe, n_lo, main))
        n_edge, n_corner = _shell(rng, recipe, n_lo)
        shell = (n_edge, n_corner, float(rng.uniform(*recipe.corner_angle_deg)))
        a = _compound_site(rng, recipe, el, lo, g_lo, ligs, s1, s2, shell)
        b = _compound_site(rng, recipe, el, hi, g_hi, ligs, s1, s2, shell)
    else:  # two sublattices (spinel-like Td/Oh): same ligand kind, own shells
        a = _compound_site(rng, recipe, el, lo, g_lo, (main,) * n_lo, s1, s2)
        b = _compound_site(rng, recipe, el, hi, g_hi, (main,) * n_hi, s1, s2)
    return (a, b), (1.0 - w, w)

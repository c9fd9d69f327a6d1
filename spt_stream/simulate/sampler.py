"""A sampler over physically plausible absorbing sites, and the recipe that weights it.

:data:`SITE_CATALOGUE` lists which oxidation-state / coordination combinations exist for each 3d
element (e.g. Co2+ Td/Oh, Co3+ Oh, Mn7+ Td, Cr6+ Td, Cu+ linear, Zn2+ Td), with relative weights;
metals (OS 0) use the element's own lattice (bcc Fe/Cr/V/Mn-like, fcc Ni/Cu, hcp Ti/Co/Zn). A
:class:`Recipe` (from ``configs/simulate/*.yaml``) weights elements and ligands and sets the
distortion, second-shell and augmentation ranges.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from spt_stream.errors import ConfigError
from spt_stream.simulate.environment import ANIONS, ELEMENTS, SiteSpec, ideal_directions
from spt_stream.simulate.pipeline import AugmentRanges

__all__ = ["METAL_LATTICE", "SITE_CATALOGUE", "Recipe", "load_recipe", "sample_site"]

#: (oxidation state, geometry, weight) per element.
SITE_CATALOGUE: dict[str, tuple[tuple[int, str, float], ...]] = {
    "Ti": ((0, "hcp", 1), (3, "octahedral", 2), (4, "octahedral", 5), (4, "tetrahedral", 1),
           (4, "square_pyramidal", 1)),
    "V": ((0, "bcc", 1), (3, "octahedral", 3), (4, "octahedral", 2), (4, "square_pyramidal", 2),
          (5, "tetrahedral", 2), (5, "square_pyramidal", 2), (5, "octahedral", 1)),
    "Cr": ((0, "bcc", 1), (2, "octahedral", 1), (3, "octahedral", 5), (4, "octahedral", 1),
           (6, "tetrahedral", 2)),
    "Mn": ((0, "bcc", 1), (2, "octahedral", 4), (2, "tetrahedral", 1), (3, "octahedral", 3),
           (3, "square_pyramidal", 1), (4, "octahedral", 3), (6, "tetrahedral", 0.5),
           (7, "tetrahedral", 1)),
    "Fe": ((0, "bcc", 1), (2, "octahedral", 4), (2, "tetrahedral", 1), (2, "square_planar", 0.3),
           (3, "octahedral", 4), (3, "tetrahedral", 1.5), (3, "trigonal_bipyramidal", 0.5),
           (4, "octahedral", 0.3)),
    "Co": ((0, "hcp", 1), (2, "octahedral", 3), (2, "tetrahedral", 2), (3, "octahedral", 3),
           (4, "octahedral", 1)),
    "Ni": ((0, "fcc", 1), (2, "octahedral", 4), (2, "square_planar", 1.5), (2, "tetrahedral", 1),
           (3, "octahedral", 1.5)),
    "Cu": ((0, "fcc", 1), (1, "linear", 1), (1, "tetrahedral", 1), (2, "octahedral", 2),
           (2, "square_planar", 2), (2, "square_pyramidal", 1.5)),
    "Zn": ((0, "hcp", 1), (2, "tetrahedral", 3), (2, "octahedral", 2),
           (2, "trigonal_bipyramidal", 0.5)),
}  # fmt: skip
METAL_LATTICE = {e: next(g for os_, g, _ in SITE_CATALOGUE[e] if os_ == 0) for e in ELEMENTS}


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


def sample_site(rng: np.random.Generator, recipe: Recipe) -> SiteSpec:
    """Draw one plausible site: element, OS/geometry, ligands, distortions, second shell."""
    elements = [e for e, w in recipe.elements.items() if w > 0]
    el = _choice(rng, elements, [recipe.elements[e] for e in elements])
    combos = []
    weights = []
    for os_, geom, w in SITE_CATALOGUE[el]:
        w = w * recipe.site_weights.get(el, {}).get(f"{os_}/{geom}", 1.0)
        w = w * (recipe.metal_weight if os_ == 0 else 1.0)
        if w > 0:
            combos.append((os_, geom))
            weights.append(w)
    if not combos:
        raise ConfigError(f"recipe leaves no site combination for {el}")
    os_, geom = _choice(rng, combos, weights)
    s1 = rng.uniform(*recipe.sigma2_1)
    s2 = rng.uniform(*recipe.sigma2_2)
    if os_ == 0:
        return SiteSpec(el, 0, geom, bond_jitter=rng.uniform(0.0, 0.02), sigma2_1=s1, sigma2_2=s2)
    n = len(ideal_directions(geom))
    if os_ > recipe.oxo_only_above:
        ligs = ["O"] * n
    else:
        names = list(recipe.ligands)
        main = _choice(rng, names, [recipe.ligands[x] for x in names])
        ligs = [main] * n
        if rng.random() < recipe.mixed_ligand_prob:
            other = _choice(rng, names, [recipe.ligands[x] if x != main else 0.0 for x in names])
            k = int(rng.integers(1, n)) if n > 1 else 0
            for i in rng.choice(n, size=k, replace=False):
                ligs[int(i)] = other
    jt = rng.uniform(*recipe.jahn_teller) if rng.random() < recipe.jahn_teller_prob else 0.0
    tri = rng.uniform(*recipe.trigonal) if rng.random() < recipe.trigonal_prob else 0.0
    lo, hi = recipe.second_shell
    total = int(rng.integers(lo, hi + 1))
    edge_frac = rng.uniform(0.0, 0.8 if n >= 5 else 0.3)
    n_edge = round(total * edge_frac)
    return SiteSpec(
        el,
        int(os_),
        geom,
        tuple(ligs),
        jahn_teller=jt,
        trigonal=tri,
        bond_jitter=rng.uniform(*recipe.bond_jitter),
        angle_jitter_deg=rng.uniform(*recipe.angle_jitter_deg),
        n_edge=n_edge,
        n_corner=total - n_edge,
        corner_angle_deg=rng.uniform(*recipe.corner_angle_deg),
        sigma2_1=s1,
        sigma2_2=s2,
    )

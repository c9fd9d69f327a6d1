"""Physics-informed XANES simulator: labelled training data that transfers to real spectra.

- :mod:`.environment`: local-environment description and 3-D geometry (bond-valence bond lengths);
- :mod:`.descriptors`: OS, CN, CN2, OCN, NNRS, MOOD, mean NN distance from the geometry;
- :mod:`.physics`: the spectrum model (edge, white line, pre-edge, FEFF6L-based EXAFS-like sum);
- :mod:`.pipeline`: raw-like acquisition and the engine's normalization onto the model grid;
- :mod:`.sampler`: plausible sites per element, mixed-valence pairs, and the recipe
  (``spt_stream/configs/simulate/*.yaml``);
- :mod:`.generate`: deterministic parallel generation of a
  :class:`~spt_stream.training.datasets.SpectraDataset`;
- :mod:`.calibrate`: fitting global parameters to measured references (``references``).

Pure numpy/scipy at run time (larch only rebuilds the cached FEFF table, :mod:`.feff_tables`).
"""

from spt_stream.simulate.environment import LocalEnvironment, SiteSpec, build_environment
from spt_stream.simulate.generate import SampleDraw, draw_sample, generate_arrays, generate_dataset
from spt_stream.simulate.physics import PhysicsParams, site_spectrum
from spt_stream.simulate.pipeline import Acquisition, AugmentRanges, normalize_to_model_grid
from spt_stream.simulate.sampler import (
    MIXED_VALENCE,
    Recipe,
    load_recipe,
    sample_site,
    sample_sites,
)
from spt_stream.simulate.site_descriptors import LABEL_NAMES, describe, describe_mixture

__all__ = [
    "LABEL_NAMES",
    "MIXED_VALENCE",
    "Acquisition",
    "AugmentRanges",
    "LocalEnvironment",
    "PhysicsParams",
    "Recipe",
    "SampleDraw",
    "SiteSpec",
    "build_environment",
    "describe",
    "describe_mixture",
    "draw_sample",
    "generate_arrays",
    "generate_dataset",
    "load_recipe",
    "normalize_to_model_grid",
    "sample_site",
    "sample_sites",
    "site_spectrum",
]

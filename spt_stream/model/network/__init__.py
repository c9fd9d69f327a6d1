"""SPT network (pure torch), importable as ``spt_stream.model.network``."""

from spt_stream.model.network.inference import SPTInference
from spt_stream.model.network.spt import DEFAULT_ELEMENTS, SPT, HeadSpec, SPTConfig

__all__ = ["DEFAULT_ELEMENTS", "SPT", "HeadSpec", "SPTConfig", "SPTInference"]

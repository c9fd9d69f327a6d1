"""SPT network (pure torch), importable as ``spt_stream.models``."""

from spt_stream.models.inference import SPTInference
from spt_stream.models.spt import DEFAULT_ELEMENTS, SPT, HeadSpec, SPTConfig

__all__ = ["DEFAULT_ELEMENTS", "SPT", "HeadSpec", "SPTConfig", "SPTInference"]

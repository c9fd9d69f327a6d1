"""Frame assembly: Bluesky documents -> XANES frames (see :mod:`spt_stream.assembly.router`)."""

from spt_stream.assembly.handlers import DEFAULT_HANDLERS, NpyHandler, NpySeqHandler
from spt_stream.assembly.profile import BeamlineProfile, RunHints, load_profile, parse_hints
from spt_stream.assembly.resolve import DescriptorPlan, StartContext, resolve_descriptor
from spt_stream.assembly.router import CallbackError, FrameAssembler, ProblemCallback

__all__ = [
    "DEFAULT_HANDLERS",
    "BeamlineProfile",
    "CallbackError",
    "DescriptorPlan",
    "FrameAssembler",
    "NpyHandler",
    "NpySeqHandler",
    "ProblemCallback",
    "RunHints",
    "StartContext",
    "load_profile",
    "parse_hints",
    "resolve_descriptor",
]

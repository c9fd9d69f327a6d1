"""spt-stream: streaming XANES analysis for operando X-ray absorption beamlines."""

from spt_stream._version import __version__

__all__ = ["__version__"]

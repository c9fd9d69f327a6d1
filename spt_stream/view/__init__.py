"""The live operando view: a local web page of a trace root's runs (descriptor traces with their
uncertainty bands, process variables, spectra and their heat map), pushed as the Zarr sink
commits rows. ``spt-stream view`` serves it; ``--view`` on ``run``, ``replay`` and ``demo``
serves it next to the engine. Needs the ``view`` extra (starlette, uvicorn, websockets)."""

from __future__ import annotations

__all__ = ["TOKEN_ENV", "ViewProcess", "ViewServer", "create_app"]

from spt_stream.view.app import create_app
from spt_stream.view.server import TOKEN_ENV, ViewProcess, ViewServer

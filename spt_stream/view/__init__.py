"""The live operando view: a local web page of a trace root's runs (descriptor traces with their
uncertainty bands, process variables, spectra and their heat map), pushed as the Zarr sink
commits rows, and of the runs the Tiled sink wrote on a Tiled server (``--tiled-url``:
:mod:`spt_stream.view.tiled_store`). ``spt-stream view`` serves it; ``--view`` on ``run``,
``replay`` and ``demo`` serves it next to the engine. Needs the ``view`` extra (starlette,
uvicorn, websockets; Tiled runs also the ``tiled`` extra)."""

from __future__ import annotations

__all__ = ["TOKEN_ENV", "ViewProcess", "ViewServer", "create_app"]

from spt_stream.view.app import create_app
from spt_stream.view.server import TOKEN_ENV, ViewProcess, ViewServer

"""Tiled fixture: a real, writable Tiled server
(:class:`spt_stream.devtools.tiled_server.TiledServer`)
in a subprocess for the whole session.

``tiled_server`` yields the server: unpack it as ``url, api_key = tiled_server``, or call
``stop()`` / ``start()`` (same port, same catalog and data) or ``pause()`` / ``resume()`` to
simulate outages.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from spt_stream.devtools.tiled_server import TiledServer

__all__ = ["TiledServer", "tiled_server"]


@pytest.fixture(scope="session")
def tiled_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TiledServer]:
    """A writable Tiled server for the session (``url, api_key = tiled_server``)."""
    server = TiledServer(workdir=tmp_path_factory.mktemp("tiled"))
    server.start()
    try:
        yield server
    finally:
        server.stop()

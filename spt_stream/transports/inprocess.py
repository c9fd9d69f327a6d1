"""In-process consumer: subscribe the engine to a live RunEngine.

``RE.subscribe(InProcessConsumer(ingest))`` feeds every document the RunEngine emits to a
:class:`~spt_stream.protocols.DocumentHandler`, with a :class:`~spt_stream.protocols.Position`
whose ``offset`` counts documents (0-based; it prints as ``in-process``). The consumer never
lets an exception reach the RunEngine (which would abort the scan): failures are logged with a
traceback and counted in ``errors``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from spt_stream.protocols import DocumentHandler, Position

__all__ = ["InProcessConsumer"]

log = logging.getLogger(__name__)


class InProcessConsumer:
    """A RunEngine callback ``(name, doc)`` adapting documents into a DocumentHandler."""

    def __init__(self, handler: DocumentHandler) -> None:
        self.handler = handler
        self.documents = 0
        self.errors = 0
        self._lock = threading.Lock()

    def __call__(self, name: str, doc: Mapping[str, Any]) -> None:
        with self._lock:
            position = Position(offset=self.documents)
            self.documents += 1
            try:
                self.handler(name, doc, position)
            except Exception:
                self.errors += 1
                log.exception("spt-stream failed on %s document #%d", name, position.offset)

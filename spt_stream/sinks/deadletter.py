"""Dead-letter records: nothing rejected vanishes silently.

Every message or document the engine rejects becomes one JSON object (the error's context, the
position, the document name, and the payload: base64 for raw bytes, a JSON-safe rendering for a
document, truncated beyond ``max_payload_bytes``) appended to a JSON-lines file and/or published
to a Kafka topic. A failing dead-letter sink is logged and counted, never raised into the engine.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np

from spt_stream.errors import SptError
from spt_stream.protocols import Position

__all__ = [
    "DeadLetterFile",
    "DeadLetterSink",
    "MemoryDeadLetter",
    "dead_letter_record",
    "json_safe",
]

log = logging.getLogger(__name__)


class DeadLetterSink(Protocol):
    def write(self, record: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


def json_safe(obj: Any, *, max_items: int = 64, depth: int = 0) -> Any:
    """A bounded, JSON-serializable rendering of arbitrary decoded data (for the record only)."""
    if depth > 8:
        return "<nested too deep>"
    if obj is None or isinstance(obj, bool | int | str):
        return obj if not isinstance(obj, str) or len(obj) <= 4096 else obj[:4096] + "..."
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else repr(obj)
    if isinstance(obj, bytes | bytearray | memoryview):
        raw = bytes(obj)
        return {"base64": base64.b64encode(raw[:4096]).decode("ascii"), "nbytes": len(raw)}
    if isinstance(obj, np.ndarray):
        return {
            "ndarray": {"dtype": str(obj.dtype), "shape": list(obj.shape)},
            "head": json_safe(obj.ravel()[:8].tolist(), depth=depth + 1),
        }
    if isinstance(obj, np.generic):
        return json_safe(obj.item(), depth=depth + 1)
    if isinstance(obj, Mapping):
        items = list(obj.items())
        out = {str(k): json_safe(v, depth=depth + 1) for k, v in items[:max_items]}
        if len(items) > max_items:
            out["..."] = f"{len(items) - max_items} more keys"
        return out
    if isinstance(obj, list | tuple):
        seq = [json_safe(v, depth=depth + 1) for v in obj[:max_items]]
        if len(obj) > max_items:
            seq.append(f"... {len(obj) - max_items} more items")
        return seq
    return repr(obj)[:512]


def dead_letter_record(
    error: SptError,
    *,
    name: str | None = None,
    doc: Any = None,
    payload: bytes | None = None,
    position: Position | None = None,
) -> dict[str, Any]:
    """Build the JSON-able record for one rejected input."""
    rec: dict[str, Any] = {"time": time.time(), **error.context()}
    if position is not None:
        rec["position"] = str(position)
    if name is not None:
        rec["name"] = json_safe(name)
    if doc is not None:
        rec["doc"] = json_safe(doc)
    if payload is not None:
        rec["payload"] = json_safe(payload)
    return rec


class DeadLetterFile:
    """Append records to a JSON-lines file (thread-safe, flushed per record).

    The file (and its folder) is created at the first record: a run that rejects nothing leaves
    no file behind.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._fh: TextIO | None = None
        self.failures = 0
        self.records = 0

    def write(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(record, default=repr)
        with self._lock:
            try:
                if self._fh is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self._fh = self.path.open("a", encoding="utf-8")
                self._fh.write(line + "\n")
                self._fh.flush()
                self.records += 1
            except OSError as exc:  # never raise into the engine
                self.failures += 1
                log.error("dead-letter file %s not writable: %s", self.path, exc)

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


class MemoryDeadLetter:
    """Keep records in memory (tests, and replay summaries)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, record: Mapping[str, Any]) -> None:
        self.records.append(dict(record))

    def close(self) -> None:
        pass

"""What every replay source shares: counters, a progress bar, and restoring arrays lost to JSON.

A replay source (a JSON-lines file, a Tiled run, a set of spectrum files) is only a transport: it
turns stored data back into ``(name, doc)`` pairs and hands them to the same
:class:`~spt_stream.protocols.DocumentHandler` a live consumer feeds, so a replayed run goes
through exactly the live pipeline.

JSON has no array type: an event's 1-D detector reading written by bluesky (``JSONLinesWriter``
after :func:`event_model.sanitize_doc`, or Tiled's json-seq export) comes back as a ``list``.
:class:`ArrayRestorer` turns those lists back into :class:`numpy.ndarray` for exactly the data
keys whose descriptor declares ``dtype: "array"`` (event data, event-page data and descriptor
configuration values), so the documents a replay hands on are the ones the RunEngine emitted
live (equal arrays, same keys) and both paths build identical frames.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard

import numpy as np

from spt_stream.errors import SptError
from spt_stream.protocols import DocumentHandler, Position

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "ArrayRestorer",
    "CountingHandler",
    "ReplayStats",
    "replay_progress",
]


@dataclass
class ReplayStats:
    """What one replay delivered.

    Attributes
    ----------
    documents:
        Documents handed to the handler (every name, including ``start`` and ``stop``).
    runs:
        ``start`` documents among them.
    rejected:
        Inputs that never became a document (malformed lines, undecodable records) and went to
        ``handler.reject``.
    sources:
        The files, URLs or run uids read, in the order they were replayed.
    """

    documents: int = 0
    runs: int = 0
    rejected: int = 0
    sources: list[str] = field(default_factory=list)

    def __iadd__(self, other: ReplayStats) -> ReplayStats:
        self.documents += other.documents
        self.runs += other.runs
        self.rejected += other.rejected
        self.sources.extend(other.sources)
        return self


class CountingHandler:
    """A :class:`DocumentHandler` that counts what passes through it into a :class:`ReplayStats`.

    Exceptions raised by the wrapped handler propagate unchanged: deciding whether one bad
    document stops the engine is the engine's business, not the transport's.
    """

    def __init__(self, handler: DocumentHandler, stats: ReplayStats | None = None) -> None:
        self.handler = handler
        self.stats = stats if stats is not None else ReplayStats()

    def __call__(self, name: str, doc: Mapping[str, Any], position: Position | None = None) -> None:
        self.stats.documents += 1
        if name == "start":
            self.stats.runs += 1
        self.handler(name, doc, position)

    def reject(
        self, error: SptError, payload: bytes | None = None, position: Position | None = None
    ) -> None:
        self.stats.rejected += 1
        self.handler.reject(error, payload, position)


def _is_array_key(data_key: Any) -> TypeGuard[Mapping[str, Any]]:
    return isinstance(data_key, Mapping) and data_key.get("dtype") == "array"


def _numpy_dtype(data_key: Mapping[str, Any]) -> np.dtype[Any] | None:
    """The declared numpy dtype (event-model's optional ``dtype_numpy``), when it is usable."""
    descr = data_key.get("dtype_numpy")
    if not isinstance(descr, str) or not descr:
        return None
    try:
        dt = np.dtype(descr)
    except (TypeError, ValueError, SyntaxError):
        return None
    return dt if dt.kind in "biufc" and dt.fields is None else None


def _as_array(value: Any, dtype: np.dtype[Any] | None) -> Any:
    """A JSON list back to an ndarray; anything else (already an array, None, str) untouched."""
    if not isinstance(value, list):
        return value
    try:
        arr = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        return value  # ragged or mixed content: leave it for the assembler to judge
    return value if arr.dtype.kind == "O" else arr


class ArrayRestorer:
    """Turns JSON lists back into numpy arrays for data keys a descriptor declares as arrays.

    Feed it every document of a stream in order (:meth:`__call__` returns the document to hand
    on). It remembers, per descriptor uid, which event data keys are arrays; events referring
    to an unknown descriptor pass through untouched (the engine reports the orphan). Documents
    are shallow-copied where they change; the input is never modified.
    """

    def __init__(self) -> None:
        self._array_keys: dict[str, dict[str, np.dtype[Any] | None]] = {}
        self._run_of: dict[str, Any] = {}

    def __call__(self, name: str, doc: Mapping[str, Any]) -> Mapping[str, Any]:
        if name == "descriptor":
            return self._descriptor(doc)
        if name == "event":
            return self._event(doc, page=False)
        if name == "event_page":
            return self._event(doc, page=True)
        if name == "stop":  # forget the run's descriptors: long files hold many runs
            run = doc.get("run_start")
            for uid in [u for u, r in self._run_of.items() if r == run]:
                del self._run_of[uid]
                self._array_keys.pop(uid, None)
        return doc

    def _descriptor(self, doc: Mapping[str, Any]) -> Mapping[str, Any]:
        data_keys = doc.get("data_keys")
        uid = doc.get("uid")
        if isinstance(uid, str) and isinstance(data_keys, Mapping):
            self._array_keys[uid] = {
                key: _numpy_dtype(dk) for key, dk in data_keys.items() if _is_array_key(dk)
            }
            self._run_of[uid] = doc.get("run_start")
        configuration = doc.get("configuration")
        if not isinstance(configuration, Mapping):
            return doc
        new_conf: dict[str, Any] = {}
        changed = False
        for obj_name, obj in configuration.items():
            if not (isinstance(obj, Mapping) and isinstance(obj.get("data"), Mapping)):
                new_conf[obj_name] = obj
                continue
            conf_keys = obj.get("data_keys")
            conf_keys = conf_keys if isinstance(conf_keys, Mapping) else {}
            data = dict(obj["data"])
            for key, value in data.items():
                dk = conf_keys.get(key)
                if _is_array_key(dk) and isinstance(value, list):
                    data[key] = _as_array(value, _numpy_dtype(dk))
                    changed = True
            new_conf[obj_name] = {**obj, "data": data}
        return {**doc, "configuration": new_conf} if changed else doc

    def _event(self, doc: Mapping[str, Any], *, page: bool) -> Mapping[str, Any]:
        descriptor = doc.get("descriptor")
        keys = self._array_keys.get(descriptor) if isinstance(descriptor, str) else None
        data = doc.get("data")
        if not keys or not isinstance(data, Mapping):
            return doc
        new_data = dict(data)
        changed = False
        for key, dtype in keys.items():
            value = new_data.get(key)
            if not isinstance(value, list):
                continue
            if page:  # one value per event in the page
                new_data[key] = [_as_array(v, dtype) for v in value]
            else:
                new_data[key] = _as_array(value, dtype)
            changed = True
        return {**doc, "data": new_data} if changed else doc


@contextmanager
def replay_progress(
    description: str,
    total: float | None,
    *,
    enabled: bool = True,
    unit: str = "docs",
    console: Console | None = None,
) -> Iterator[Callable[[float], None]]:
    """A rich progress bar for a replay; yields ``advance(amount)``.

    ``total`` is what a complete replay advances by (bytes of a JSONL file, number of spectrum
    files, number of runs), or None when unknown (the bar then only counts). ``unit="bytes"``
    shows a transfer speed instead of ``done/total``. With ``enabled=False`` (tests, piped
    output) nothing is drawn and ``advance`` is a no-op. ``console``: rich's default otherwise.
    """
    if not enabled:
        yield lambda amount: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    count_column = TransferSpeedColumn() if unit == "bytes" else MofNCompleteColumn()
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        count_column,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(description, total=total)

        def advance(amount: float) -> None:
            progress.advance(task, amount)

        yield advance

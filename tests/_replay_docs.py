"""Helpers for the replay tests: a real recorded run, a recording handler, document comparison."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from bluesky.plans import count

from spt_stream.assembly.ingest import DocumentIngest
from spt_stream.core.frames import Frame
from spt_stream.errors import SptError
from spt_stream.protocols import Position
from tests.plugins.sim_xas import QuickXasDetector, make_run_engine

Docs = list[tuple[str, dict[str, Any]]]
Callback = Callable[[str, dict[str, Any]], Any]


def spt_md(det: QuickXasDetector) -> dict[str, Any]:
    """``md["spt"]`` naming the quick-XAS detector's keys."""
    return {
        "element": "Fe",
        "edge": "K",
        "spectrum": det.mu.name,
        "energy": det.energy.name,
        "mode": "mu",
    }


def record_run(
    callbacks: Sequence[Callback], *, num: int = 5, npts: int = 120, **md: Any
) -> tuple[str, Docs]:
    """Run ``count`` of a quick-XAS detector on a real RunEngine; returns (uid, emitted docs).

    ``callbacks`` are subscribed to the RunEngine (writers under test); the returned documents
    are deep copies of what the RunEngine emitted, in order.
    """
    RE, docs = make_run_engine()
    for cb in callbacks:
        RE.subscribe(cb)  # type: ignore[no-untyped-call]
    det = QuickXasDetector(name="qxas", npts=npts)
    RE(count([det], num=num), spt=spt_md(det), **md)
    return str(docs[0][1]["uid"]), copy.deepcopy(docs)


@dataclass
class Recorder:
    """A real :class:`~spt_stream.protocols.DocumentHandler` that keeps what it is given."""

    docs: list[tuple[str, dict[str, Any], Position | None]] = field(default_factory=list)
    rejected: list[tuple[SptError, bytes | None, Position | None]] = field(default_factory=list)

    def __call__(self, name: str, doc: Mapping[str, Any], position: Position | None = None) -> None:
        self.docs.append((name, dict(doc), position))

    def reject(
        self, error: SptError, payload: bytes | None = None, position: Position | None = None
    ) -> None:
        self.rejected.append((error, payload, position))

    @property
    def pairs(self) -> Docs:
        return [(n, d) for n, d, _ in self.docs]


def difference(
    original: Any, replayed: Any, path: str = "doc", *, added: frozenset[str] = frozenset()
) -> str | None:
    """Where ``replayed`` differs from ``original`` (None when equal).

    Arrays must come back as arrays with equal values and dtype; tuples and lists compare as
    sequences (JSON has no tuple); numbers compare by value. Mapping keys in ``added`` may
    appear in ``replayed`` only (fields a store adds, e.g. TiledWriter's ``dtype_numpy``).
    """
    if isinstance(original, np.ndarray):
        if not isinstance(replayed, np.ndarray):
            return f"{path}: expected an ndarray, got {type(replayed).__name__}"
        if original.dtype != replayed.dtype or not np.array_equal(original, replayed):
            return f"{path}: arrays differ ({original.dtype} vs {replayed.dtype})"
        return None
    if isinstance(original, Mapping):
        if not isinstance(replayed, Mapping):
            return f"{path}: expected a mapping, got {type(replayed).__name__}"
        if set(original) != set(replayed) - (added - set(original)):
            return f"{path}: keys differ: {sorted(set(original) ^ set(replayed))}"
        for key in original:
            diff = difference(original[key], replayed[key], f"{path}.{key}", added=added)
            if diff:
                return diff
        return None
    if isinstance(original, list | tuple):
        if not isinstance(replayed, list | tuple) or len(original) != len(replayed):
            return f"{path}: sequences differ: {original!r:.80} vs {replayed!r:.80}"
        for i, (a, b) in enumerate(zip(original, replayed, strict=True)):
            diff = difference(a, b, f"{path}[{i}]", added=added)
            if diff:
                return diff
        return None
    if original != replayed:
        return f"{path}: {original!r:.80} != {replayed!r:.80}"
    return None


def assert_same_documents(original: Docs, replayed: Docs) -> None:
    """The replayed ``(name, doc)`` sequence equals the original one, document by document."""
    assert [n for n, _ in replayed] == [n for n, _ in original]
    for i, ((name, a), (_, b)) in enumerate(zip(original, replayed, strict=True)):
        diff = difference(a, b, f"{name}#{i}")
        assert diff is None, diff


def frames_of(pairs: Docs) -> list[Frame]:
    """Frames the engine's real ingest (DocumentIngest) assembles from ``pairs``."""
    frames: list[Frame] = []
    ingest = DocumentIngest(frames.append)
    for name, doc in pairs:
        ingest(name, doc)
    assert ingest.counts.rejected == 0, ingest.counts.as_dict()
    return frames


def assert_same_frames(live: Sequence[Frame], replayed: Sequence[Frame]) -> None:
    """Replayed frames equal the live ones bit for bit (identity, time, arrays, scalars)."""
    assert len(replayed) == len(live) > 0
    for a, b in zip(live, replayed, strict=True):
        assert a.same_data(b), (a.run_uid, a.seq_num)
        assert (a.element, a.edge, a.mode) == (b.element, b.edge, b.mode)

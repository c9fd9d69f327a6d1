"""Hypothesis fuzzing of DocumentIngest with mutated real documents.

Random sequences drawn from the documents of two real RunEngine runs (quick-XAS and a step scan),
reordered, repeated and mutated: dropped keys, wrong types, NaN arrays, huge shapes, unknown names,
events for unknown descriptors. Nothing may escape ``__call__`` and every input is accounted for.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import bluesky.plans as bp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ophyd.sim import SynAxis

from spt_stream.assembly.ingest import DocumentIngest
from spt_stream.config import AssemblySettings
from spt_stream.sinks.deadletter import MemoryDeadLetter
from tests.plugins.sim_xas import Docs, QuickXasDetector, make_run_engine, scaler_channels

MAX_POINTS = 256


def _make_docs() -> Docs:
    RE, docs = make_run_engine()
    RE(bp.count([QuickXasDetector(name="qxas", npts=64)], 3))
    motor = SynAxis(name="energy")
    RE(bp.list_scan(scaler_channels(motor), motor, list(np.linspace(7100.0, 7150.0, 10)) * 2))
    return docs


BASE = _make_docs()

WRONG = st.sampled_from(
    [None, 0, -1, 1.5, float("nan"), "x", "", [], [1, "a"], {}, {"a": 1}, b"\x00", True]
)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[Any, Any]:
    """One (name, doc): a real document, maybe mutated."""
    name, doc = BASE[draw(st.integers(0, len(BASE) - 1))]
    kind = draw(
        st.sampled_from(
            ["same", "same", "drop", "wrong", "nan", "huge", "name", "orphan", "data", "notmap"]
        )
    )
    if kind == "same":
        return name, doc
    doc = copy.deepcopy(doc)
    keys = sorted(doc)
    if kind == "drop" and keys:
        doc.pop(draw(st.sampled_from(keys)))
    elif kind == "wrong" and keys:
        doc[draw(st.sampled_from(keys))] = draw(WRONG)
    elif kind == "nan" and isinstance(doc.get("data"), dict):
        for k, v in doc["data"].items():
            if isinstance(v, np.ndarray):
                doc["data"][k] = np.full_like(v, np.nan, dtype=float)
            elif isinstance(v, float):
                doc["data"][k] = float("nan")
    elif kind == "huge":
        if name == "descriptor":
            for dk in doc["data_keys"].values():
                dk["shape"] = [10**9]
        elif isinstance(doc.get("data"), dict):
            for k in doc["data"]:
                doc["data"][k] = np.zeros(MAX_POINTS + draw(st.integers(1, 50)))
    elif kind == "name":
        name = draw(st.sampled_from(["bogus", "", "Event", "bulk_events", "stream_datum"]))
    elif kind == "orphan" and "descriptor" in doc:
        doc["descriptor"] = draw(st.sampled_from(["nope", "", 5]))
    elif kind == "data" and isinstance(doc.get("data"), dict) and doc["data"]:
        doc["data"][draw(st.sampled_from(sorted(doc["data"])))] = draw(WRONG)
    elif kind == "notmap":
        return name, draw(WRONG)
    return name, doc


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(prefix=st.integers(0, len(BASE)), extra=st.lists(mutated(), max_size=40))
def test_fuzzed_sequences_are_accounted_for(prefix: int, extra: list[tuple[Any, Any]]) -> None:
    """No exception escapes; documents_seen == accepted + rejected; one record per problem."""
    frames: list[Any] = []
    dead = MemoryDeadLetter()
    ingest = DocumentIngest(
        frames.append, dead_letter=dead, settings=AssemblySettings(max_points=MAX_POINTS)
    )
    sequence = list(BASE[:prefix]) + extra + list(BASE[prefix:])
    for name, doc in sequence:
        ingest(name, doc)
    counts = ingest.counts
    assert counts.documents_seen == len(sequence)
    assert counts.documents_seen == counts.accepted + counts.rejected
    assert sum(counts.rejected_by_reason.values()) == len(dead.records)
    assert counts.rejected <= len(dead.records)
    assert counts.frames == len(frames)
    for frame in frames:
        assert frame.energy.shape == frame.mu.shape
        assert np.isfinite(frame.mu).all()
        assert np.all(np.diff(frame.energy) > 0)


def test_unmutated_documents_give_all_frames() -> None:
    """The fuzz base itself is clean: 3 array frames + 2 sweeps, nothing rejected."""
    frames: list[Any] = []
    ingest = DocumentIngest(frames.append, settings=AssemblySettings(max_points=MAX_POINTS))
    for name, doc in BASE:
        ingest(name, doc)
    assert len(frames) == 5
    assert ingest.counts.rejected == 0

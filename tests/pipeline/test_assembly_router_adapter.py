"""The RunRouter fast path (event-model internals) gives exactly the frames of its public path.

``SptRunRouter`` reads event-model's private maps to pass plain events straight to a run's
callbacks. With an event-model release it was not checked against (or lacking an attribute it
reads) it falls back to RunRouter's public handling. Both paths run here on the same RunEngine
documents (array detector, step sweeps, event pages, a registry-backed detector filled from
files) and must assemble the same frames bit for bit, and reject the same documents.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bluesky.plans as bp
import numpy as np
import pytest
from ophyd.sim import SynAxis

from spt_stream.assembly import run as run_mod
from tests.plugins.sim_xas import (
    Docs,
    QuickXasDetector,
    as_pages,
    feed,
    make_run_engine,
    registry_fe_detector,
    scaler_channels,
)


def _docs(tmp_path: Path) -> Docs:
    RE, docs = make_run_engine()
    RE(bp.count([QuickXasDetector(name="qxas")], 4, md={"element": "Fe", "edge": "K"}))
    motor = SynAxis(name="energy")
    grid = list(np.linspace(7090.0, 7170.0, 25))
    RE(bp.list_scan(scaler_channels(motor), motor, grid * 2, md={"element": "Fe"}))
    det, egrid = registry_fe_detector(str(tmp_path), "reg_mu", 200)
    energy = QuickXasDetector(name="mono", npts=200).energy
    energy.put(egrid)
    RE(bp.count([det, energy], 3, md={"spt": {"spectrum": "reg_mu", "energy": "mono_energy"}}))
    first = list(docs)
    RE(bp.count([QuickXasDetector(name="qxas")], 5, md={"element": "Fe", "edge": "K"}))
    return first + as_pages(docs[len(first) :], 2)


def _frames(docs: Docs) -> tuple[list[Any], Any, Any]:
    frames, ingest, dead = feed(docs)
    return frames, ingest, dead


def test_fast_and_public_paths_assemble_the_same_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = _docs(tmp_path)
    fast, ingest_fast, dead_fast = _frames(docs)
    assert ingest_fast.assembler._router.fast, "the installed event-model is a tested release"
    monkeypatch.setattr(run_mod, "_event_model_tested", lambda: False)
    public, ingest_public, dead_public = _frames(docs)
    assert not ingest_public.assembler._router.fast
    assert len(fast) == len(public) == 4 + 2 + 3 + 5
    for a, b in zip(fast, public, strict=True):
        assert a.same_data(b), (a.run_uid, a.seq_num)
        assert (a.element, a.edge, a.mode) == (b.element, b.edge, b.mode)
    assert ingest_fast.counts.as_dict() == ingest_public.counts.as_dict()
    assert dead_fast.records == dead_public.records == []


def test_a_missing_internal_selects_the_public_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A release that renamed one of the maps the fast path reads is not used through it."""
    monkeypatch.setattr(run_mod, "_ROUTER_INTERNALS", (*run_mod._ROUTER_INTERNALS, "_gone"))
    router = run_mod.SptRunRouter([], {})
    assert router.fast is False
    assert run_mod.SptRunRouter([], {}, fast=False).fast is False

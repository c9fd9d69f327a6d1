"""A real RunEngine run of the simulated operando experiment, fed to an engine in process."""

from __future__ import annotations

from bluesky import RunEngine

from spt_stream.devtools.demo.experiment import (
    DelithiationCell,
    QuickXASDetector,
    delithiation_plan,
)
from spt_stream.engine import Engine
from spt_stream.transports.inprocess import InProcessConsumer


def run_delithiation(engine: Engine, frames: int, rate_hz: float, seed: int = 1) -> str:
    """Run ``frames`` quick-XAS frames of a delithiating Co cell through ``engine``; the uid."""
    cell = DelithiationCell(name="cell", duration_s=0.2)
    det = QuickXASDetector(name="qxas", cell=cell, seed=seed)
    RE = RunEngine({}, call_returns_result=True)
    RE.subscribe(InProcessConsumer(engine))
    uid: str = RE(delithiation_plan(det, cell, frames=frames, rate_hz=rate_hz)).run_start_uids[0]
    return uid

"""Simulated XAS hardware for tests: ophyd devices driven by a real measured spectrum.

Nothing here is a mock: these are ophyd devices run by a real bluesky RunEngine, producing the
documents a beamline would. The absorption model is a real Fe-foil quick-XAS spectrum from
``spt_stream/data/xas-references`` (public XAS data, see its MANIFEST.tsv).

* :class:`QuickXasDetector`: an array detector; ``<name>_mu`` is a 1-D array signal (one spectrum
  per trigger, the edge shifting slowly), ``<name>_energy`` is the grid as a ``kind="config"``
  signal, ``<name>_potential``/``<name>_current`` are scalar readings.
* :func:`scaler_channels`: I0/It/Iref (and If) ion-chamber counts from ``ophyd.sim.SynSignal``
  computing Beer-Lambert transmission of the model at an ``ophyd.sim.SynAxis`` energy motor.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
from bluesky import RunEngine
from event_model import pack_event_page
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.sim import SynAxis, SynSignal, SynSignalWithRegistry
from ophyd.status import StatusBase

from spt_stream.data import REFERENCE_DIR

REFERENCE_FILE = REFERENCE_DIR / "FeFoil_QXAFS_Compare__Fe_foil_250msec_qxafs.001.txt"

Docs = list[tuple[str, dict[str, Any]]]


def fe_foil() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """(energy eV, mu) of the real Fe foil quick-XAS spectrum, strictly increasing energy."""
    data = np.loadtxt(REFERENCE_FILE.resolve(), comments="#")
    energy, mu = data[:, 0], data[:, 1]
    keep = np.concatenate([[True], np.diff(energy) > 0])
    return energy[keep], mu[keep]


def make_run_engine() -> tuple[RunEngine, Docs]:
    """A fresh RunEngine (no context managers, no event loop leaks) and its document list."""
    RE = RunEngine({}, call_returns_result=False)
    docs: Docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    return RE, docs


class QuickXasDetector(Device):
    """A quick-XAS array detector: one spectrum mu(E) per trigger on a fixed grid."""

    mu = Cpt(Signal, value=np.zeros(2), kind="hinted")
    energy = Cpt(Signal, value=np.zeros(2), kind="config")
    potential = Cpt(Signal, value=3.0, kind="normal")
    current = Cpt(Signal, value=0.0, kind="normal")

    def __init__(self, *args: Any, npts: int = 400, shift_ev: float = 0.05, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        e_ref, mu_ref = fe_foil()
        grid = np.linspace(e_ref[5], e_ref[-5], npts)
        self._e_ref, self._mu_ref = e_ref, mu_ref
        self._shift = shift_ev
        self._count = 0
        self.energy.put(grid)

    def trigger(self) -> StatusBase:
        self._count += 1
        grid = self.energy.get()
        # A new array every trigger, as a detector IOC would publish.
        self.mu.put(np.interp(grid - self._shift * self._count, self._e_ref, self._mu_ref))
        self.potential.put(3.0 + 0.01 * self._count)
        self.current.put(1e-3 * (-1) ** self._count)
        status = StatusBase()
        status.set_finished()
        return status


def edge_model() -> Callable[[float], float]:
    """mu(E) of the Fe foil (interpolated), for step-scan scalers."""
    e_ref, mu_ref = fe_foil()
    return lambda e: float(np.interp(e, e_ref, mu_ref))


def scaler_channels(
    motor: SynAxis, *, fluorescence: bool = False, reference: bool = True
) -> list[SynSignal]:
    """I0, It (+ Iref, + If) SynSignals computing counts from the motor position."""
    mu = edge_model()
    i0_counts = 1.0e5

    def i0() -> float:
        return i0_counts * (1.0 + 1e-4 * (motor.position - 7100.0))

    def it() -> float:
        return i0() * np.exp(-0.5 * mu(motor.position))

    dets = [SynSignal(func=i0, name="i0"), SynSignal(func=it, name="it")]
    if reference:
        dets.append(SynSignal(func=lambda: it() * np.exp(-0.3 * mu(motor.position)), name="iref"))
    if fluorescence:
        dets.append(SynSignal(func=lambda: 0.02 * i0() * mu(motor.position), name="If"))
    return dets


def feed(docs: Docs, **kwargs: Any) -> tuple[list[Any], Any, Any]:
    """Feed documents to a fresh DocumentIngest; returns (frames, ingest, memory dead letter)."""
    from spt_stream.assembly.ingest import DocumentIngest
    from spt_stream.sinks.deadletter import MemoryDeadLetter

    frames: list[Any] = []
    dead = MemoryDeadLetter()
    ingest = DocumentIngest(frames.append, dead_letter=dead, **kwargs)
    for name, doc in docs:
        ingest(name, doc)
    return frames, ingest, dead


def run_uids(docs: Docs) -> list[str]:
    """Uids of the start documents in ``docs``, in order."""
    return [doc["uid"] for name, doc in docs if name == "start"]


def as_pages(docs: Docs, size: int) -> Docs:
    """The same documents with their events packed into event pages of up to ``size`` events
    (a page ends at any other document), as a RunEngine with event paging emits them."""
    out: Docs = []
    pending: list[dict[str, Any]] = []
    for name, doc in docs:
        if name == "event":
            pending.append(doc)
            if len(pending) == size:
                out.append(("event_page", dict(pack_event_page(*pending))))
                pending = []
            continue
        if pending:
            out.append(("event_page", dict(pack_event_page(*pending))))
            pending = []
        out.append((name, doc))
    return out


def registry_fe_detector(
    save_path: str, name: str, npts: int
) -> tuple[SynSignalWithRegistry, np.ndarray[Any, Any]]:
    """ophyd.sim's registry-backed detector (resource/datum, NPY_SEQ files) reading the measured
    Fe foil on ``npts`` energies, shifted 0.1 eV further at every read; returns it and the grid."""
    e_ref, mu_ref = fe_foil()
    grid = np.linspace(e_ref[5], e_ref[-5], npts)
    calls = itertools.count()
    det = SynSignalWithRegistry(
        func=lambda: np.interp(grid - 0.1 * next(calls), e_ref, mu_ref),
        name=name,
        save_path=save_path,
    )
    return det, grid

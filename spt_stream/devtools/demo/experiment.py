"""A simulated operando beamline: LiCoO2 delithiation watched by quick-XAS at the Co K-edge.

Devices are real ophyd devices read by a real bluesky RunEngine:

* :class:`DelithiationCell` - a potentiostat charging a Li(x)CoO2 cathode galvanostatically from
  x = 1 to x = x_end over the experiment. Its readings are the cell potential (V, from an
  empirical LiCoO2 charge curve: a short rise to the ~3.93 V plateau, then the climb to ~4.2 V),
  the current (mA) and the lithium content x (the ground truth: Co oxidation state = 4 - x).
* :class:`QuickXASDetector` - one Co K-edge spectrum (mu, 400 points) per trigger. Its spectra
  come from the project's calibrated simulator (:mod:`spt_stream.simulate`): an octahedral CoO6
  site in an edge-sharing layer, Co3+ (Co-O from bond valence, ~1.92 A) and Co4+ (~1.87 A),
  mixed linearly with the Co4+ fraction 1 - x, plus a pre-edge background, a slowly drifting edge
  step and Poisson-like noise. The energy grid is a ``kind="config"`` signal.

The start document says what the run contains (``md["spt"]``, docs/CONTRACTS.md).
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.status import StatusBase

from spt_stream.core.frames import FloatArray
from spt_stream.core.grid import edge_energy

__all__ = [
    "DelithiationCell",
    "QuickXASDetector",
    "delithiation_plan",
    "endmember_spectra",
]

#: Energy grid of the simulated quick-XAS scan relative to the Co K edge (eV): 400 points.
SCAN_REL = np.linspace(-60.0, 140.0, 400)


def endmember_spectra(energy_rel: FloatArray = SCAN_REL) -> tuple[FloatArray, FloatArray]:
    """Normalized Co3+ and Co4+ (octahedral, layered) spectra on ``energy_rel`` + E(Co K).

    Broadened with the Co K core-hole width and a 1.2 eV instrument resolution.
    """
    from spt_stream.config import CONFIG_DIR
    from spt_stream.simulate import SiteSpec, build_environment
    from spt_stream.simulate.calibrate import load_params
    from spt_stream.simulate.physics import broaden, core_hole_width
    from spt_stream.simulate.pipeline import FINE_REL, FINE_STEP, fine_spectrum

    params = load_params(CONFIG_DIR / "simulate" / "calibrated.yaml")
    rng = np.random.default_rng(7)
    out = []
    for os_ in (3, 4):
        spec = SiteSpec(
            element="Co",
            oxidation_state=os_,
            geometry="octahedral",
            ligands=("O",) * 6,
            n_edge=6,
            sigma2_1=0.003,
            sigma2_2=0.005,
        )
        env = build_environment(spec, rng)
        fine = fine_spectrum(env, params)
        mu = broaden(fine, FINE_STEP, core_hole_width("Co"), 1.2)
        out.append(np.interp(energy_rel, FINE_REL, mu))
    return out[0], out[1]


def charge_curve(x: float) -> float:
    """Empirical LiCoO2 potential (V vs Li) at lithium content ``x`` (1 = discharged)."""
    d = 1.0 - x
    return float(3.75 + 0.18 * (1.0 - np.exp(-d / 0.02)) + 0.27 * (d / 0.5) ** 3)


@dataclass
class _CellState:
    t0: float = 0.0
    duration_s: float = 60.0
    x_end: float = 0.5

    def x(self) -> float:
        frac = min(max((time.time() - self.t0) / self.duration_s, 0.0), 1.0)
        return 1.0 - (1.0 - self.x_end) * frac


class _ComputedSignal(Signal):  # type: ignore[misc]
    """A read-only signal whose value is computed at read time."""

    def __init__(self, *args: Any, compute: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._compute = compute

    def get(self, **kwargs: Any) -> Any:
        if self._compute is not None:
            self._readback = self._compute()
        return super().get(**kwargs)


class DelithiationCell(Device):  # type: ignore[misc]
    """Potentiostat + cell (see module docstring)."""

    potential = Cpt(Signal, kind="hinted", value=3.75)
    current = Cpt(Signal, kind="normal", value=0.0)
    li_content = Cpt(Signal, kind="normal", value=1.0)
    #: The Co oxidation state the lithium content implies (4 - x): ground truth for the demo.
    nominal_os = Cpt(Signal, kind="normal", value=3.0)

    def __init__(self, *args: Any, duration_s: float = 60.0, x_end: float = 0.5, **kw: Any):
        super().__init__(*args, **kw)
        self.state = _CellState(duration_s=duration_s, x_end=x_end)
        # a C/2-like galvanostatic current for a 5 mAh cell
        self.current.put(2.5)

    def start_charge(self) -> None:
        self.state.t0 = time.time()

    def trigger(self) -> StatusBase:
        x = self.state.x()
        self.li_content.put(round(x, 6))
        self.nominal_os.put(round(4.0 - x, 6))
        self.potential.put(float(charge_curve(x)))
        st = StatusBase()
        st.set_finished()
        return st


class QuickXASDetector(Device):  # type: ignore[misc]
    """Quick-XAS Co K-edge detector returning simulated spectra (see module docstring)."""

    spectrum = Cpt(Signal, kind="hinted", value=np.zeros(len(SCAN_REL)))
    energy = Cpt(Signal, kind="config", value=SCAN_REL + 7709.0)
    exposure = Cpt(Signal, kind="config", value=0.05)

    def __init__(
        self,
        *args: Any,
        cell: DelithiationCell,
        noise: float = 0.004,
        seed: int = 0,
        **kw: Any,
    ) -> None:
        super().__init__(*args, **kw)
        self.cell = cell
        self.noise = noise
        self._rng = np.random.default_rng(seed)
        self._e0 = edge_energy("Co")
        self.energy.put(SCAN_REL + self._e0)
        self._co3, self._co4 = endmember_spectra()
        self._n = 0

    def trigger(self) -> StatusBase:
        f = 1.0 - self.cell.state.x()  # Co4+ fraction
        shape = (1.0 - f) * self._co3 + f * self._co4
        rel = SCAN_REL / 100.0
        step = 0.85 * (1.0 + 0.02 * np.sin(self._n / 40.0))  # slow drift of the edge jump
        background = 0.35 - 0.06 * rel
        mu = step * (shape + background / 0.85)
        mu = mu + self._rng.normal(size=mu.shape) * self.noise * (1.0 + 0.5 * shape)
        self.spectrum.put(mu)
        self._n += 1
        st = StatusBase()
        st.set_finished()
        return st


def delithiation_plan(
    detector: QuickXASDetector,
    cell: DelithiationCell,
    *,
    frames: int,
    rate_hz: float,
    md: dict[str, Any] | None = None,
) -> Generator[Any, Any, Any]:
    """Count ``frames`` spectra at ``rate_hz`` while the cell charges; md["spt"] says the keys."""
    import bluesky.plans as bp

    meta = {
        "plan_name": "operando_delithiation",
        "sample": "LiCoO2 cathode (simulated)",
        "element": "Co",
        "edge": "K",
        "spt": {
            "element": "Co",
            "edge": "K",
            "spectrum": detector.spectrum.name,
            "energy": detector.energy.name,
            "mode": "mu",
        },
        "protocol": f"galvanostatic charge, x 1.0 -> {cell.state.x_end}",
        **(md or {}),
    }

    cell.start_charge()  # runs when the RunEngine starts the plan (generator body)
    return (yield from bp.count([cell, detector], num=frames, delay=1.0 / rate_hz, md=meta))

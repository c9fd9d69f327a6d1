"""A run of simulated Co K-edge frames as event-model documents (for engine and CLI tests).

Spectra are mixtures of the demo's simulated Co3+ and Co4+ end members (400 points, absolute
energies), with potential/current scalars, and ``md["spt"]`` naming the keys.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np
from event_model import compose_run

from spt_stream.core.grid import edge_energy
from spt_stream.devtools.demo.experiment import SCAN_REL, endmember_spectra

Docs = list[tuple[str, dict[str, Any]]]

#: The end-member spectra (about a second to simulate): computed once per session.
_endmembers = functools.cache(endmember_spectra)


def compose_docs(n_frames: int, seed: int) -> tuple[str, Docs]:
    """One run of ``n_frames`` simulated Co K-edge spectra (Co3+ -> Co4+ over the run) with
    potential and current scalars, as event-model documents; returns (run uid, documents)."""
    co3, co4 = _endmembers()
    energy = SCAN_REL + edge_energy("Co")
    rng = np.random.default_rng(seed)
    bundle = compose_run(
        metadata={
            "plan_name": "spectra_test",
            "spt": {
                "element": "Co",
                "edge": "K",
                "spectrum": "qxas_spectrum",
                "energy": "qxas_energy",
                "mode": "mu",
            },
        }
    )
    desc = bundle.compose_descriptor(
        name="primary",
        data_keys={
            "qxas_spectrum": {"source": "sim", "dtype": "array", "shape": [len(energy)]},
            "qxas_energy": {"source": "sim", "dtype": "array", "shape": [len(energy)]},
            "cell_potential": {"source": "sim", "dtype": "number", "shape": [], "units": "V"},
            "cell_current": {"source": "sim", "dtype": "number", "shape": [], "units": "mA"},
        },
    )
    docs: Docs = [("start", dict(bundle.start_doc)), ("descriptor", dict(desc.descriptor_doc))]
    t0 = time.time()
    for i in range(n_frames):
        frac = i / max(n_frames - 1, 1)
        mu = 0.85 * ((1.0 - frac) * co3 + frac * co4) + 0.3 + rng.normal(size=co3.shape) * 0.004
        t = t0 + 0.05 * i
        data = {
            "qxas_spectrum": mu,
            "qxas_energy": energy,
            "cell_potential": 3.9 + 0.3 * frac,
            "cell_current": 2.5,
        }
        event = desc.compose_event(data=data, timestamps=dict.fromkeys(data, t), time=t)
        docs.append(("event", dict(event)))
    docs.append(("stop", dict(bundle.compose_stop(exit_status="success"))))
    return str(bundle.start_doc["uid"]), docs

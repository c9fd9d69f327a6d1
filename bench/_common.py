"""Shared pieces of the live benchmarks (bench_live.py, naive_pipeline.py).

The documents (a quick-XAS count run composed with ``event_model`` and described by
``md["spt"]``, events carrying 400-point Co K-edge spectra from the demo's simulated detector),
the producer that sends them to Kafka (paced or as a backlog), a line reader for child processes
and small formatting helpers. Both benchmarks import these so the engine and the naive pipeline
see byte-identical documents at identical rates.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
NPTS = 400
POOL = 256  # distinct spectra cycled through


# ----------------------------------------------------------------------------------- documents


@dataclass
class Run:
    """One pre-built run: documents other than events, and how to make event ``i``."""

    uid: str
    start: dict[str, Any]
    descriptor: dict[str, Any]
    template: dict[str, Any]
    stop: dict[str, Any]
    n: int

    def event(
        self, i: int, spectra: np.ndarray[Any, Any], potentials: np.ndarray[Any, Any]
    ) -> dict[str, Any]:
        """Event ``i`` (0-based; ``seq_num`` i+1), ``time`` stamped now."""
        k = i % len(spectra)
        t = time.time()
        return {
            **self.template,
            "uid": str(uuid.uuid4()),
            "seq_num": i + 1,
            "time": t,
            "data": {"qxas_spectrum": spectra[k], "cell_potential": float(potentials[k])},
            "timestamps": {"qxas_spectrum": t, "cell_potential": t},
        }


def simulated_spectra(
    n: int = POOL,
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """(energy grid eV, spectra (n, 400), potentials V) from the demo's quick-XAS devices,
    sampled along a full charge (Co3+ -> Co3.5+)."""
    from spt_stream.devtools.demo.experiment import DelithiationCell, QuickXASDetector

    cell = DelithiationCell(name="cell", duration_s=100.0, x_end=0.5)
    det = QuickXASDetector(name="qxas", cell=cell, seed=1)
    spectra = np.empty((n, NPTS))
    pots = np.empty(n)
    for k in range(n):
        cell.state.t0 = time.time() - cell.state.duration_s * k / max(1, n - 1)
        cell.trigger()
        det.trigger()
        spectra[k] = np.asarray(det.spectrum.get(), dtype=np.float64)
        pots[k] = float(cell.potential.get())
    return np.asarray(det.energy.get(), dtype=np.float64), spectra, pots


def make_run(n: int, grid: np.ndarray[Any, Any], label: str) -> Run:
    """A quick-XAS count run of ``n`` events, described by ``md["spt"]`` (as the demo does)."""
    from event_model import compose_run

    md = {
        "plan_name": "bench_live",
        "bench": label,
        "sample": "LiCoO2 (simulated)",
        "element": "Co",
        "edge": "K",
        "spt": {
            "element": "Co",
            "edge": "K",
            "spectrum": "qxas_spectrum",
            "energy": "qxas_energy",
            "mode": "mu",
        },
    }
    bundle = compose_run(metadata=md)
    desc = bundle.compose_descriptor(
        name="primary",
        data_keys={
            "qxas_spectrum": {"source": "sim:qxas", "dtype": "array", "shape": [NPTS]},
            "cell_potential": {"source": "sim:cell", "dtype": "number", "shape": [], "units": "V"},
        },
        configuration={
            "qxas": {
                "data": {"qxas_energy": grid, "qxas_exposure": 0.05},
                "timestamps": {"qxas_energy": time.time(), "qxas_exposure": time.time()},
                "data_keys": {
                    "qxas_energy": {"source": "sim:qxas", "dtype": "array", "shape": [NPTS]},
                    "qxas_exposure": {"source": "sim:qxas", "dtype": "number", "shape": []},
                },
            }
        },
        object_keys={"qxas": ["qxas_spectrum"], "cell": ["cell_potential"]},
    )
    template = dict(
        desc.compose_event(
            data={"qxas_spectrum": grid * 0.0, "cell_potential": 3.9},
            timestamps={"qxas_spectrum": 0.0, "cell_potential": 0.0},
            seq_num=1,
        )
    )
    stop = {**bundle.compose_stop(exit_status="success"), "num_events": {"primary": n}}
    return Run(
        uid=bundle.start_doc["uid"],
        start=dict(bundle.start_doc),
        descriptor=dict(desc.descriptor_doc),
        template=template,
        stop=stop,
        n=n,
    )


class Producer:
    """The beamline side: :class:`KafkaDocumentPublisher` plus the pacing loop."""

    def __init__(
        self, bootstrap: str, topic: str, spectra: np.ndarray[Any, Any], pots: np.ndarray[Any, Any]
    ) -> None:
        from spt_stream.transports.publish import KafkaDocumentPublisher

        self.pub = KafkaDocumentPublisher(bootstrap, topic)
        self.spectra = spectra
        self.pots = pots

    def paced(self, run: Run, rate: float) -> dict[str, float]:
        """Send ``run`` at ``rate`` events/s; returns pacing statistics."""
        self.pub("start", run.start)
        self.pub("descriptor", run.descriptor)
        self.pub.flush()
        period = 1.0 / rate
        lags = np.empty(run.n)
        t0 = time.perf_counter() + 0.05
        first = last = 0.0
        for i in range(run.n):
            target = t0 + i * period
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            ev = run.event(i, self.spectra, self.pots)
            lags[i] = time.perf_counter() - target
            self.pub("event", ev)
            if i == 0:
                first = ev["time"]
            last = ev["time"]
        self.pub("stop", run.stop)  # flushes
        return {
            "first": first,
            "last": last,
            "achieved_rate": (run.n - 1) / (last - first) if run.n > 1 else float("nan"),
            "send_lag_p99_ms": float(np.quantile(lags, 0.99) * 1e3),
        }

    def backlog(self, runs: Sequence[Run]) -> float:
        """Send every document of ``runs`` as fast as possible; returns seconds taken."""
        t0 = time.perf_counter()
        for run in runs:
            self.pub("start", run.start)
            self.pub("descriptor", run.descriptor)
            for i in range(run.n):
                self.pub("event", run.event(i, self.spectra, self.pots))
            self.pub("stop", run.stop)
        self.pub.flush(timeout=120)
        return time.perf_counter() - t0

    def close(self) -> None:
        self.pub.close()


class Lines:
    """Lines of a child's stdout, readable with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.q: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        stream = proc.stdout

        def pump() -> None:
            for line in stream:
                self.q.put(line.strip())

        threading.Thread(target=pump, daemon=True).start()

    def expect(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.q.get(timeout=left)
            except queue.Empty:
                break
            if line.startswith(prefix):
                return line
        raise TimeoutError(f"child did not say {prefix!r} within {timeout} s")


# ----------------------------------------------------------------------------------- helpers


def q(
    values: Sequence[float] | np.ndarray[Any, Any], qs: Sequence[float] = (0.5, 0.95, 0.99)
) -> list[float]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return [float("nan")] * len(qs)
    return [float(v) for v in np.quantile(arr, qs)]


def fmt(values: Sequence[float], scale: float = 1e3) -> str:
    return " / ".join(f"{v * scale:.1f}" for v in values)


def spin(stop: threading.Event, count: list[int]) -> None:
    """A pure-Python busy loop (another thread of the engine's process), counting its turns."""
    while not stop.is_set():
        count[0] += 1


def spin_rate(seconds: float) -> float:
    """Turns per second of :func:`spin` with nothing beside it."""
    stop, count = threading.Event(), [0]
    th = threading.Thread(target=spin, args=(stop, count), daemon=True)
    th.start()
    time.sleep(seconds)
    stop.set()
    th.join()
    return count[0] / seconds


def feedback_consumer(cfg: Any) -> Any:
    """A kafka-python consumer of ``cfg["topic"]`` partition 0 at its end (no group, no commits;
    ``cfg["bootstrap"]``, ``cfg["fetch_max_wait_ms"]``), after printing ``READY``: the agent side
    of the live benchmarks. Poll it with a 20 ms timeout, as the engine does (kafka-python 3.0
    sometimes returns a fetched record only at the poll's timeout: 100 ms put ~1 % of messages
    ~105 ms late)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=cfg["bootstrap"],
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="latest",
        fetch_max_wait_ms=int(cfg["fetch_max_wait_ms"]),
    )
    tp = TopicPartition(cfg["topic"], 0)
    consumer.assign([tp])
    consumer.seek_to_end(tp)
    consumer.position(tp)
    print("READY", flush=True)
    return consumer


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def wait_child(proc: subprocess.Popen[str], timeout: float, what: str) -> None:
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{what} did not finish within {timeout} s") from None
    if rc != 0:
        raise RuntimeError(f"{what} exited with status {rc}")


def trace_rows(zarr_root: Path, run_uid: str) -> int:
    from spt_stream.sinks.zarr_trace import committed_seq_nums, trace_path

    return len(committed_seq_nums(trace_path(zarr_root, run_uid)))

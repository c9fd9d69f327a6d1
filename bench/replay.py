"""Replay throughput of the stored-scan consumers (JSONL files, spectrum files) on one core.

* ``jsonl -> handler``: :func:`replay_jsonl` of one quick-XAS run (N events of a P-point float64
  spectrum plus two scalars, written as bluesky's JSONLinesWriter writes it after
  ``event_model.sanitize_doc``) into a handler that only counts: JSON decoding and array
  restoration, the consumer's own cost;
* ``jsonl -> DocumentIngest``: the same into the engine's real ingest (frames assembled);
* ``spectrum files -> DocumentIngest``: :func:`replay_files` of F copies of the real Mn oxide XDI
  series (217 points each; read, ordered, composed into one run, assembled).

Run: ``.venv/bin/python bench/replay.py [--events 5000] [--points 400] [--files 200]``.
Prints a markdown table (best of ``--repeat``). Times are this process's CPU seconds
(``time.process_time``; the replay is single-threaded), so a busy shared machine does not
inflate them; on an idle machine wall time is the same.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from event_model import compose_run, sanitize_doc

from spt_stream.assembly.ingest import DocumentIngest
from spt_stream.data import REFERENCE_DIR
from spt_stream.errors import SptError
from spt_stream.protocols import Position
from spt_stream.transports.files import replay_files
from spt_stream.transports.jsonl import replay_jsonl

REFERENCES = REFERENCE_DIR
MN_SERIES = ["MnO_rt_01.xdi", "MnO2_rt_01.xdi", "Mn2O3_rt_01.xdi", "Mn3O4_rt_01.xdi"]


class _Count:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, name: str, doc: Mapping[str, Any], position: Position | None = None) -> None:
        self.n += 1

    def reject(
        self, error: SptError, payload: bytes | None = None, position: Position | None = None
    ) -> None:
        self.n += 1


def write_jsonl(path: Path, events: int, points: int) -> int:
    """One composed quick-XAS run as JSON lines; returns the number of documents."""
    rng = np.random.default_rng(0)
    energy = np.linspace(7600.0, 7800.0, points)
    bundle = compose_run(metadata={"spt": {"element": "Co", "edge": "K", "spectrum": "mu"}})
    desc = bundle.compose_descriptor(
        name="primary",
        data_keys={
            "mu": {"dtype": "array", "shape": [points], "source": "sim"},
            "energy": {"dtype": "array", "shape": [points], "source": "sim", "units": "eV"},
            "potential": {"dtype": "number", "shape": [], "source": "sim"},
            "current": {"dtype": "number", "shape": [], "source": "sim"},
        },
    )
    edge = 1.0 / (1.0 + np.exp(-(energy - 7710.0) / 2.0))
    with path.open("w") as fh:

        def put(name: str, doc: Mapping[str, Any]) -> None:
            fh.write(json.dumps({"name": name, "doc": sanitize_doc(dict(doc))}) + "\n")

        put("start", bundle.start_doc)
        put("descriptor", desc.descriptor_doc)
        for i in range(events):
            mu = edge + 0.01 * rng.standard_normal(points)
            data = {"mu": mu, "energy": energy, "potential": 3.0 + 1e-4 * i, "current": 1e-3}
            put("event", desc.compose_event(data=data, timestamps=dict.fromkeys(data, 0.0)))
        put("stop", bundle.compose_stop())
    return events + 3


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--points", type=int, default=400)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    rows: list[tuple[str, int, str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.jsonl"
        ndocs = write_jsonl(path, args.events, args.points)
        size_mb = path.stat().st_size / 1e6

        t = best(lambda: replay_jsonl(path, _Count()), args.repeat)
        rows.append((f"jsonl -> handler ({args.points} pts, {size_mb:.0f} MB)", ndocs, "docs", t))

        def to_ingest() -> None:
            replay_jsonl(path, DocumentIngest(lambda frame: None))

        t = best(to_ingest, args.repeat)
        rows.append((f"jsonl -> DocumentIngest ({args.points} pts)", ndocs, "docs", t))

        spectra_dir = Path(tmp) / "spectra"
        spectra_dir.mkdir()
        paths = []
        for i in range(args.files):
            src = REFERENCES / MN_SERIES[i % len(MN_SERIES)]
            dst = spectra_dir / f"scan_{i:05d}_{src.name}"
            shutil.copy(src, dst)
            paths.append(str(dst))

        def files() -> None:
            replay_files(paths, DocumentIngest(lambda frame: None))

        t = best(files, args.repeat)
        rows.append(("spectrum files -> DocumentIngest (Mn XDI, 217 pts)", args.files, "files", t))

    print("| replay | items | CPU time (s) | rate |")
    print("|---|---:|---:|---:|")
    for label, n, unit, seconds in rows:
        print(f"| {label} | {n} {unit} | {seconds:.2f} | {n / seconds:,.0f} {unit}/s |")


if __name__ == "__main__":
    main()

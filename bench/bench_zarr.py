"""Zarr trace-writer throughput: ZarrTraceWriter batches vs naive per-row appends.

Run: ``.venv/bin/python bench/bench_zarr.py [--quick]``. Prints a markdown table.

The trace has 22 arrays per frame, like a real SPT trace: ``time``, ``seq_num``, 16 float scalars
(descriptors, their std, e0, event scalars), an int ``flags``, a bool ``ood``, ``os_probs``
(7 classes, float32) and ``norm`` (224-point spectrum, float32). "naive append" is what a beamline
script writes today: ``zarr.Array.append`` on every array for every frame (not crash-safe:
after a SIGKILL the arrays can have unequal lengths, docs/CONTRACTS.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from spt_stream.sinks.rows import Column2D, TraceRows
from spt_stream.sinks.zarr_trace import ZarrTraceWriter

SCALARS = [
    "os", "os_std", "cn", "cn_std", "cn2", "cn2_std", "nnrs", "nnrs_std",
    "e0", "edge_step", "ood_score", "potential", "current", "temperature", "i0", "chi2",
]  # fmt: skip
GRID = np.linspace(-20.0, 91.5, 224)


def make_rows(start: int, k: int, rng: np.random.Generator) -> TraceRows:
    seq = np.arange(start, start + k, dtype=np.int64)
    cols: dict[str, np.ndarray] = {name: rng.normal(size=k) for name in SCALARS}
    cols["flags"] = seq % 4
    cols["ood"] = rng.random(k) > 0.95
    probs = rng.dirichlet(np.ones(7), size=k).astype(np.float32)
    norm = (np.tanh(GRID / 5.0)[None, :] + rng.normal(0, 0.01, (k, 224))).astype(np.float32)
    return TraceRows(
        seq_num=seq,
        time=np.asarray(1.79e9 + seq * 0.01, dtype=np.float64),
        columns=cols,
        arrays={
            "os_probs": Column2D(probs, "os_class", np.arange(7)),
            "norm": Column2D(norm, "energy_rel", GRID),
        },
    )


def bench_writer(
    root: Path, batch: int, n_batches: int, *, flush: bool
) -> tuple[float, float, float]:
    """rows/s, median wall ms per batch and CPU ms per batch (all threads) for
    ZarrTraceWriter (with ``flush``: flush()+fsync after each batch)."""
    rng = np.random.default_rng(0)
    batches = [make_rows(i * batch, batch, rng) for i in range(n_batches)]
    w = ZarrTraceWriter(root, block_rows=256, fsync=flush)
    w.open_run("bench", {"element": "Co", "edge": "K"})
    w.write("bench", make_rows(10**9, 1, rng))  # warm-up: creates every array
    times = []
    c0 = time.process_time()
    t0 = time.perf_counter()
    for rows in batches:
        t = time.perf_counter()
        w.write("bench", rows)
        if flush:
            w.flush()
        times.append(time.perf_counter() - t)
    total = time.perf_counter() - t0
    cpu = time.process_time() - c0
    w.close()
    return batch * n_batches / total, 1e3 * float(np.median(times)), 1e3 * cpu / n_batches


def bench_naive(root: Path, batch: int, n_batches: int) -> tuple[float, float, float]:
    """As :func:`bench_writer`, for ``Array.append`` on each array, per batch."""
    rng = np.random.default_rng(0)
    batches = [make_rows(i * batch, batch, rng) for i in range(n_batches)]
    g = zarr.open_group(str(root / "naive.zarr"), mode="w", zarr_format=3)
    first = batches[0]
    arrays: dict[str, zarr.Array[Any]] = {}
    for name, v in {"time": first.time, "seq_num": first.seq_num, **first.columns}.items():
        arrays[name] = g.create_array(name, shape=(0,), chunks=(256,), dtype=v.dtype)
    for name, c in first.arrays.items():
        arrays[name] = g.create_array(
            name, shape=(0, c.width), chunks=(256, c.width), dtype=c.values.dtype
        )
    times = []
    c0 = time.process_time()
    t0 = time.perf_counter()
    for rows in batches:
        t = time.perf_counter()
        data = {"time": rows.time, "seq_num": rows.seq_num, **rows.columns}
        data.update({n: c.values for n, c in rows.arrays.items()})
        for name, arr in arrays.items():
            arr.append(data[name], axis=0)
        times.append(time.perf_counter() - t)
    total = time.perf_counter() - t0
    cpu = time.process_time() - c0
    return batch * n_batches / total, 1e3 * float(np.median(times)), 1e3 * cpu / n_batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer batches (smoke run)")
    args = parser.parse_args()
    scale = 0.25 if args.quick else 1.0
    plan = {1: 120, 16: 64, 64: 40, 256: 16}  # batches per batch size
    tmp = Path(tempfile.mkdtemp(prefix="bench-zarr-"))
    lines = [
        "| writer | batch rows | rows/s | wall ms/batch (median) | CPU ms/batch |",
        "|---|---:|---:|---:|---:|",
    ]
    try:
        for batch, n in plan.items():
            nb = max(4, int(n * scale))
            for flush in (False, True):
                d = tmp / f"w{batch}-{flush}"
                rate, ms, cpu = bench_writer(d, batch, nb, flush=flush)
                label = "ZarrTraceWriter + flush(fsync)" if flush else "ZarrTraceWriter"
                lines.append(f"| {label} | {batch} | {rate:,.0f} | {ms:.1f} | {cpu:.1f} |")
                shutil.rmtree(d)
        for batch, n in ((1, 40), (64, 20)):
            d = tmp / f"naive{batch}"
            d.mkdir()
            rate, ms, cpu = bench_naive(d, batch, max(4, int(n * scale)))
            label = "naive Array.append per array (not crash-safe)"
            lines.append(f"| {label} | {batch} | {rate:,.0f} | {ms:.1f} | {cpu:.1f} |")
            shutil.rmtree(d)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load = os.getloadavg()[0]
    print(f"22 arrays per frame (16 float scalars, int, bool, 7-class probs, 224-pt spectrum); "
          f"{os.cpu_count()} CPUs, load average {load:.1f}; zarr {zarr.__version__}\n")  # fmt: skip
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""A deterministic synthetic trace for the sink tests (also imported by their subprocesses).

Every value is a function of ``seq_num``, so a re-delivered or re-batched frame carries exactly
the data of its first delivery and a store can be checked row by row.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from spt_stream.sinks.rows import Column2D, TraceRows
from spt_stream.sinks.zarr_trace import ZarrTraceWriter

GRID = np.linspace(-20.0, 91.5, 224)
CLASSES = np.arange(7)
T0 = 1.79e9


def make_rows(seq: Iterable[int], new_col_from: int | None = None) -> TraceRows:
    """Rows for ``seq``: os, os_std, flags (int), ood (bool), os_probs (7), norm (224 float32);
    plus ``potential`` when every seq_num is >= ``new_col_from`` (a column appearing mid-run)."""
    s = np.fromiter(seq, dtype=np.int64)
    cols: dict[str, np.ndarray] = {
        "os": expected_os(s),
        "os_std": np.full(s.shape, 0.1),
        "flags": s % 4,
        "ood": s % 5 == 0,
    }
    if new_col_from is not None and s.size and s.min() >= new_col_from:
        cols["potential"] = expected_potential(s)
    probs = np.tile(np.linspace(0.0, 1.0, 7), (s.size, 1)) + s[:, None] * 1e-3
    return TraceRows(
        seq_num=s,
        time=np.asarray(T0 + s * 0.05, dtype=np.float64),
        columns=cols,
        arrays={
            "os_probs": Column2D(probs, "os_class", CLASSES),
            "norm": Column2D(expected_norm(s), "energy_rel", GRID),
        },
        attrs={"energy_rel": {"units": "eV"}, "os": {"long_name": "oxidation state"}},
    )


def expected_os(s: np.ndarray) -> np.ndarray:
    return 2.0 + s * 1e-3


def expected_potential(s: np.ndarray) -> np.ndarray:
    return 3.0 + s * 1e-4


def expected_norm(s: np.ndarray) -> np.ndarray:
    return np.sin(GRID[None, :] / 10.0 + s[:, None] * 1e-2).astype(np.float32)


def write_sequence(
    root: str, attempt: int, total: int, new_col_from: int, ready: Any, ready_at: int = 0
) -> None:
    """Deliver seq_nums ``0..total-1`` to a writer and finalize (the crash test's child).

    Each ``attempt`` cuts the sequence into different random batches (1-12 rows), as a
    re-delivery after a crash would; ``ready`` (an Event) is set once the store holds
    ``ready_at`` rows, so the parent's kill lands among fresh writes near that row.
    """
    rng = random.Random(attempt)
    w = ZarrTraceWriter(Path(root), block_rows=16)
    w.open_run("crash", {"element": "Co", "edge": "K"})
    start = 0
    while start < total:
        k = rng.randint(1, 12)
        if start < new_col_from < start + k:
            k = new_col_from - start  # the new column starts on a batch boundary
        result = w.write("crash", make_rows(range(start, min(start + k, total)), new_col_from))
        w.flush()
        start += k
        if result.n_rows >= ready_at:
            ready.set()
    ready.set()
    w.finalize("crash", "success")

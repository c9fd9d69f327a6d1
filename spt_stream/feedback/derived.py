"""From trace rows to feedback: per-frame messages and the derived run's documents (pure).

This module imports no Kafka client; :mod:`spt_stream.feedback.publisher` sends what it builds.

Column conventions in a :class:`~spt_stream.sinks.rows.TraceRows` batch (as the engine writes
them, see docs/CONTRACTS.md):

* a descriptor ``X`` is a 1-D column ``X`` with its standard deviation ``X_std`` and, for a
  discrete descriptor, a 2-D column ``X_probs`` whose coordinate holds the class values;
  when the descriptor names are not given, every ``X`` with an ``X_std`` column is one;
* ``e0`` (eV), ``ood_score``, ``ood`` (bool; when absent ``ood_score > ood_threshold``) and
  ``flags`` (the :class:`~spt_stream.normalize.flags.QualityFlag` bitmask) are reserved;
* every other 1-D column is an event scalar (potential, current, temperature...).

Non-finite values cannot travel in JSON: a descriptor whose value or std is NaN is left out of
that frame's message (its ``flags`` say why), NaN scalars are left out, and a NaN ``ood_score``
is published as the largest float with ``ood`` true.

The derived run's uid is deterministic, ``uuid5(raw run uid, model)`` (:func:`derived_run_uid`),
so re-analysing a run (a replay, a resume after a crash) reproduces the same uids.
"""

from __future__ import annotations

import math
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from spt_stream.feedback.message import DescriptorEstimate, FrameFeedback
from spt_stream.sinks.rows import TraceRows

__all__ = [
    "RESERVED_COLUMNS",
    "FrameColumns",
    "class_label",
    "data_keys_for",
    "derived_run_uid",
    "event_page_data",
    "frame_messages",
]

#: Columns with a fixed meaning (not descriptors, not scalars).
RESERVED_COLUMNS = frozenset({"e0", "ood_score", "ood", "flags"})
#: The classical per-frame features (spt_stream.classical.features): the message's ``classical``.
CLASSICAL_COLUMNS = ("e_half", "wl_energy", "wl_height", "pre_centroid", "pre_area")

_NAMESPACE = uuid.UUID("0b5c1a8e-5a61-4c43-9d0e-7f1c2b3a4d5e")


def derived_run_uid(raw_run_uid: str, model: str) -> str:
    """The uid of the analysis run of ``raw_run_uid`` by ``model`` (name, version and hash)."""
    return str(uuid.uuid5(_NAMESPACE, f"{raw_run_uid}\x1f{model}"))


def class_label(value: float) -> str:
    """Class label used as a key of ``probs``: ``3.0 -> "3"``, ``2.5 -> "2.5"``."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass(frozen=True)
class FrameColumns:
    """Which columns of a run's rows are descriptors and which are scalars (fixed per run)."""

    descriptors: tuple[str, ...]
    scalars: tuple[str, ...]

    @classmethod
    def from_rows(cls, rows: TraceRows, descriptors: Sequence[str] | None = None) -> FrameColumns:
        """Classify the columns of a first batch (see the module docstring)."""
        names = list(rows.columns)
        if descriptors is None:
            descs = tuple(n for n in names if f"{n}_std" in rows.columns)
        else:
            descs = tuple(n for n in descriptors if n in rows.columns)
        taken = set(descs) | {f"{d}_std" for d in descs} | RESERVED_COLUMNS
        taken |= set(CLASSICAL_COLUMNS)
        return cls(descriptors=descs, scalars=tuple(n for n in names if n not in taken))


def frame_messages(
    run_uid: str,
    rows: TraceRows,
    cols: FrameColumns,
    *,
    model: str,
    analysis_time: float,
    element: str | None = None,
    edge: str | None = None,
    units: Mapping[str, str] | None = None,
    ood_threshold: float | None = None,
) -> list[FrameFeedback]:
    """One :class:`FrameFeedback` per row of ``rows`` (see the module docstring for NaN rules)."""
    units = units or {}
    k = len(rows)
    # Python lists once per batch: indexing numpy scalars per element is ~10x slower
    c = {name: values.tolist() for name, values in rows.columns.items()}
    nan = [math.nan] * k
    seq = rows.seq_num.tolist()
    times = rows.time.tolist()
    ood_score = c.get("ood_score", nan)
    ood_col = c.get("ood")
    flags = c.get("flags")
    e0 = c.get("e0")
    probs: dict[str, tuple[list[str], list[list[float]]]] = {}
    for d in cols.descriptors:
        pc = rows.arrays.get(f"{d}_probs")
        if pc is not None:
            probs[d] = ([class_label(v) for v in pc.coord.tolist()], pc.values.tolist())
    stds = {d: c.get(f"{d}_std", nan) for d in cols.descriptors}
    classical = [n for n in CLASSICAL_COLUMNS if n in c]
    out: list[FrameFeedback] = []
    for i in range(k):
        descs: dict[str, DescriptorEstimate] = {}
        for d in cols.descriptors:
            value, std = c[d][i], stds[d][i]
            if not (math.isfinite(value) and math.isfinite(std)):
                continue
            p = probs.get(d)
            descs[d] = DescriptorEstimate(
                value=value,
                std=abs(std),
                probs=dict(zip(p[0], p[1][i], strict=True)) if p is not None else None,
                units=units.get(d),
            )
        score = float(ood_score[i])
        if ood_col is not None:
            ood = bool(ood_col[i])
        else:
            ood = ood_threshold is not None and score > ood_threshold
        if not math.isfinite(score):
            score, ood = sys.float_info.max, True
        flag = flags[i] if flags is not None else 0
        e0_i = e0[i] if e0 is not None else None
        out.append(
            FrameFeedback(
                run_uid=run_uid,
                seq_num=seq[i],
                event_time=times[i],
                analysis_time=analysis_time,
                element=element,
                edge=edge,
                e0=e0_i if e0_i is not None and math.isfinite(e0_i) else None,
                descriptors=descs,
                ood_score=score,
                ood=ood,
                quality_flags=int(flag) if math.isfinite(flag) else 0,
                model=model,
                scalars={n: float(c[n][i]) for n in cols.scalars if math.isfinite(c[n][i])},
                classical={n: float(c[n][i]) for n in classical if math.isfinite(c[n][i])},
            )
        )
    return out


def data_keys_for(
    rows: TraceRows,
    cols: FrameColumns,
    *,
    units: Mapping[str, str] | None = None,
    max_array_width: int = 32,
) -> tuple[dict[str, dict[str, Any]], dict[str, list[float]]]:
    """The derived run's ``data_keys`` and the coordinates of its array keys (class values).

    Keys: every descriptor and its ``_std``, ``<d>_probs`` (arrays up to ``max_array_width``),
    ``e0``, ``ood_score``, ``ood``, ``quality_flags``, ``raw_seq_num``, ``raw_time`` and the
    scalars. Wider 2-D columns (spectra) are not published.
    """
    units = units or {}
    src = "spt-stream"

    def num(dtype: str = "number", unit: str | None = None) -> dict[str, Any]:
        dk: dict[str, Any] = {"dtype": dtype, "shape": [], "source": src}
        if unit:
            dk["units"] = unit
        return dk

    keys: dict[str, dict[str, Any]] = {}
    coords: dict[str, list[float]] = {}
    for d in cols.descriptors:
        keys[d] = num(unit=units.get(d))
        keys[f"{d}_std"] = num(unit=units.get(d))
        probs = rows.arrays.get(f"{d}_probs")
        if probs is not None and probs.width <= max_array_width:
            keys[f"{d}_probs"] = {
                "dtype": "array",
                "shape": [probs.width],
                "source": src,
                "dims": [probs.dim],
            }
            coords[f"{d}_probs"] = probs.coord.tolist()
    keys["e0"] = num(unit="eV")
    keys["ood_score"] = num()
    keys["ood"] = num("boolean")
    keys["quality_flags"] = num("integer")
    keys["raw_seq_num"] = num("integer")
    keys["raw_time"] = num(unit="s")
    for s in cols.scalars:
        keys[s] = num()
    return keys, coords


def event_page_data(
    messages: Sequence[FrameFeedback], rows: TraceRows, data_keys: Mapping[str, Any]
) -> dict[str, list[Any]]:
    """Column-wise event-page ``data`` for ``data_keys``: the same values as the frames'
    messages (``ood_score``, ``ood``, ``quality_flags`` taken from them), NaN where a value is
    absent (a NaN descriptor, a scalar missing from the batch)."""
    k = len(messages)
    data: dict[str, list[Any]] = {}
    for key in data_keys:
        if key == "raw_seq_num":
            data[key] = [m.seq_num for m in messages]
        elif key == "raw_time":
            data[key] = [m.event_time for m in messages]
        elif key == "ood":
            data[key] = [m.ood for m in messages]
        elif key == "ood_score":
            data[key] = [m.ood_score for m in messages]
        elif key == "quality_flags":
            data[key] = [m.quality_flags for m in messages]
        elif key in rows.arrays:
            data[key] = rows.arrays[key].values.tolist()
        elif key in rows.columns:
            values = rows.columns[key]
            data[key] = (np.abs(values) if key.endswith("_std") else values).tolist()
        else:
            data[key] = [math.nan] * k
    return data

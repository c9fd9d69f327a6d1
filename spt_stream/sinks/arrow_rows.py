"""TraceRows -> flat pyarrow tables for Tiled appendable tables (pure: no Tiled, no network).

Tiled's appendable tables hold flat scalar columns (list columns read back as strings), so a
:class:`~spt_stream.sinks.rows.TraceRows` batch is flattened by one rule, fixed per run by the
first batch (:class:`TableLayout`):

* ``seq_num`` (int64) and ``time`` (float64, UNIX seconds) come first;
* every 1-D column keeps its name and dtype (float32/float64, int64, bool);
* a 2-D column of width ``m <= max_flat_width`` (class probabilities such as ``os_probs`` over
  ``os_class``) becomes ``m`` columns ``<name>_0 .. <name>_<m-1>``; the coordinate values (the
  class labels) are kept in the layout's :meth:`TableLayout.describe` for the run's metadata;
* a wider 2-D column (a normalized spectrum) is **skipped**: spectra live in the Zarr trace.
  Writing them to Tiled would add one more HTTP request (~35-55 ms) per batch on the single
  writer thread that is already Tiled's bottleneck.

A later batch is conformed to the layout: a column it lacks is filled with nulls, a column the
layout does not know is dropped (and reported once, so the caller can log it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt
import pyarrow as pa

from spt_stream.sinks.rows import TraceRows

__all__ = ["TableLayout", "merge_ranges", "seq_ranges"]

_ARROW_TYPES: dict[str, pa.DataType] = {
    "float32": pa.float32(),
    "float64": pa.float64(),
    "int64": pa.int64(),
    "bool": pa.bool_(),
}


def _arrow_type(values: npt.NDArray[Any]) -> pa.DataType:
    return _ARROW_TYPES.get(values.dtype.name, pa.float64())


@dataclass
class TableLayout:
    """The flat column layout of one run's table, decided by its first batch.

    Attributes
    ----------
    schema:
        The pyarrow schema of the table (``seq_num``, ``time``, then data columns).
    flattened:
        2-D column name -> ``{"dim", "coord", "columns"}`` for each flattened 2-D column.
    skipped:
        Names of 2-D columns left out because they are wider than ``max_flat_width``.
    """

    schema: pa.Schema
    flattened: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    max_flat_width: int = 32
    _ignored: set[str] = field(default_factory=set)

    @classmethod
    def from_rows(cls, rows: TraceRows, *, max_flat_width: int = 32) -> TableLayout:
        """Derive the layout from a first batch."""
        fields = [pa.field("seq_num", pa.int64()), pa.field("time", pa.float64())]
        names = {"seq_num", "time"}
        for name, values in rows.columns.items():
            fields.append(pa.field(name, _arrow_type(values)))
            names.add(name)
        flattened: dict[str, dict[str, Any]] = {}
        skipped: list[str] = []
        for name, col in rows.arrays.items():
            if col.width > max_flat_width:
                skipped.append(name)
                continue
            cols = [f"{name}_{j}" for j in range(col.width)]
            if names.intersection(cols):
                skipped.append(name)  # a flattened name would shadow a real column
                continue
            names.update(cols)
            fields.extend(pa.field(c, _arrow_type(col.values)) for c in cols)
            flattened[name] = {"dim": col.dim, "coord": col.coord.tolist(), "columns": cols}
        return cls(
            schema=pa.schema(fields),
            flattened=flattened,
            skipped=skipped,
            max_flat_width=max_flat_width,
        )

    @classmethod
    def from_schema(
        cls, schema: pa.Schema, described: Mapping[str, Any] | None = None
    ) -> TableLayout:
        """Rebuild a layout from an existing table's schema and the :meth:`describe` output
        stored in the run's metadata (resuming a run after a restart)."""
        described = described or {}
        flattened = {
            str(k): dict(v)
            for k, v in dict(described.get("flattened") or {}).items()
            if all(c in schema.names for c in v.get("columns", ()))
        }
        return cls(schema=schema, flattened=flattened, skipped=list(described.get("skipped") or []))

    def describe(self) -> dict[str, Any]:
        """JSON-able description for the run's metadata (columns, flattening, skipped)."""
        return {
            "columns": list(self.schema.names),
            "flattened": self.flattened,
            "skipped": list(self.skipped),
        }

    def to_table(self, rows: TraceRows) -> tuple[pa.Table, list[str]]:
        """Conform ``rows`` to the layout; returns the table and newly ignored column names."""
        k = len(rows)
        flat: dict[str, npt.NDArray[Any]] = {"seq_num": rows.seq_num, "time": rows.time}
        flat.update(rows.columns)
        extra = [n for n in flat if n not in self.schema.names]
        for name, col in rows.arrays.items():
            if name in self.flattened:
                for j, cname in enumerate(self.flattened[name]["columns"]):
                    if j < col.width:
                        flat[cname] = col.values[:, j]
            elif name not in self.skipped:
                extra.append(name)
        arrays: list[pa.Array] = []
        for fld in self.schema:
            values = flat.get(fld.name)
            if values is None:
                arrays.append(pa.nulls(k, type=fld.type))
                continue
            arr = pa.array(values)
            if arr.type != fld.type:
                try:
                    arr = arr.cast(fld.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    arr = pa.nulls(k, type=fld.type)
            arrays.append(arr)
        new_ignored = sorted(n for n in extra if n not in self._ignored)
        self._ignored.update(new_ignored)
        return pa.Table.from_arrays(arrays, schema=self.schema), new_ignored


def seq_ranges(seq: Iterable[int]) -> list[list[int]]:
    """Compress sequence numbers into sorted inclusive ``[first, last]`` ranges."""
    out: list[list[int]] = []
    for s in sorted(set(int(x) for x in seq)):
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return out


def merge_ranges(
    ranges: list[list[int]], new: list[list[int]], limit: int = 1000
) -> list[list[int]]:
    """Union of two lists of inclusive ranges, merged and sorted; at most ``limit`` entries
    (beyond that the last range is widened to cover the rest, so no gap is ever hidden)."""
    merged: list[list[int]] = []
    for lo, hi in sorted([*ranges, *new]):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    if len(merged) > limit:
        tail_hi = max(r[1] for r in merged[limit - 1 :])
        merged = [*merged[: limit - 1], [merged[limit - 1][0], tail_hi]]
    return merged

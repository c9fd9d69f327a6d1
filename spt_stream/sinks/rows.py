"""What trace sinks receive: a batch of k per-frame rows of one run (pure numpy, no I/O).

A :class:`TraceRows` holds, for k frames of ONE run:

* ``seq_num`` (int64, shape ``(k,)``): the frame identity within the run; sinks are idempotent
  on ``(run_uid, seq_num)``;
* ``time`` (float64, shape ``(k,)``): event time, UNIX seconds;
* ``columns``: named per-frame values, each a 1-D array of shape ``(k,)`` with a float, integer
  or bool dtype (``os``, ``os_std``, ``cn``, ``e0``, ``ood_score``, ``flags``, ``potential``...);
* ``arrays``: named per-frame vectors, each a :class:`Column2D` of shape ``(k, m)`` with the
  name and values of its second dimension (``os_probs`` over ``os_class`` = ``[0..6]``,
  ``norm`` over ``energy_rel`` = the model grid);
* ``attrs``: optional per-variable attributes (``{"e0": {"units": "eV"}}``), applied when a sink
  first creates that variable (or coordinate).

Missing values: a float column uses NaN. Rows of one batch that lack a scalar the others carry
are built with :meth:`TraceRows.from_records`, which fills NaN. Everything is validated once,
at construction, and normalised to contiguous arrays (floats keep float32/float64, integers become
int64, bools stay bool).
"""

from __future__ import annotations

import math
import re
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from spt_stream.errors import SptValueError

__all__ = ["RESERVED_NAMES", "Column2D", "TraceRows", "check_name"]

#: Names a column may not take: the row identity and the row dimension.
RESERVED_NAMES = frozenset({"time", "seq_num"})

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:+\-]*$")

AnyArray = npt.NDArray[Any]


def check_name(name: str, what: str = "column") -> str:
    """Return ``name`` if it is usable as a variable/dimension name in every sink, else raise.

    Allowed: letters, digits, ``_ . : + -``, not starting with a punctuation character (Zarr forbids
    ``/`` and a leading ``__``; Tiled tables want plain identifiers or dotted keys).
    """
    if not isinstance(name, str) or not _NAME_RE.match(name) or name.startswith("__"):
        raise SptValueError(f"invalid {what} name {name!r}: use letters, digits and _ . : + -")
    return name


def _normalise_1d(name: str, values: Any, k: int) -> AnyArray:
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.shape[0] != k:
        raise SptValueError(f"column {name!r} has shape {arr.shape}, expected ({k},)")
    return _normalise_dtype(name, arr)


def _normalise_dtype(name: str, arr: AnyArray) -> AnyArray:
    kind = arr.dtype.kind
    if kind == "f":
        if arr.dtype not in (np.float32, np.float64):
            arr = arr.astype(np.float64)
    elif kind in "iu":
        if arr.dtype != np.int64:
            if kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
                raise SptValueError(f"column {name!r} holds unsigned values beyond int64")
            arr = arr.astype(np.int64)
    elif kind != "b":
        raise SptValueError(f"column {name!r} has dtype {arr.dtype}; expected float, int or bool")
    return np.ascontiguousarray(arr)


@dataclass(frozen=True, slots=True, eq=False)
class Column2D:
    """A per-frame vector column: ``values`` (k, m) over a named second dimension.

    Attributes
    ----------
    values:
        Shape ``(k, m)``; float, int or bool (normalised like 1-D columns).
    dim:
        Name of the second dimension, e.g. ``"os_class"`` or ``"energy_rel"``.
    coord:
        The ``m`` coordinate values of ``dim`` (1-D, numeric), e.g. the class labels or the
        model energy grid in eV relative to the edge. Columns sharing a ``dim`` must share
        its values.
    """

    values: AnyArray
    dim: str
    coord: AnyArray

    def __post_init__(self) -> None:
        check_name(self.dim, "dimension")
        if self.dim in RESERVED_NAMES:
            raise SptValueError(f"dimension name {self.dim!r} is reserved")
        values = np.asarray(self.values)
        coord = np.asarray(self.coord)
        if values.ndim != 2:
            raise SptValueError(f"2-D column over {self.dim!r} has shape {values.shape}")
        if coord.ndim != 1 or coord.shape[0] != values.shape[1]:
            raise SptValueError(
                f"coordinate {self.dim!r} has shape {coord.shape}, expected ({values.shape[1]},)"
            )
        if coord.dtype.kind not in "iuf":
            raise SptValueError(f"coordinate {self.dim!r} must be numeric, got {coord.dtype}")
        object.__setattr__(self, "values", _normalise_dtype(self.dim, values))
        object.__setattr__(self, "coord", _normalise_dtype(self.dim, coord))

    @property
    def width(self) -> int:
        """``m``, the length of the second dimension."""
        return int(self.values.shape[1])


@dataclass(frozen=True, slots=True, eq=False)
class TraceRows:
    """k rows of one run's trace (see the module docstring for the conventions).

    Raises :class:`~spt_stream.errors.SptValueError` at construction when shapes, dtypes or names
    are wrong, when ``time`` holds non-finite values, or when a name is used twice.
    """

    seq_num: npt.NDArray[np.int64]
    time: npt.NDArray[np.float64]
    columns: Mapping[str, AnyArray] = field(default_factory=dict)
    arrays: Mapping[str, Column2D] = field(default_factory=dict)
    attrs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        seq = np.asarray(self.seq_num)
        if seq.ndim != 1 or seq.dtype.kind not in "iu":
            raise SptValueError(f"seq_num must be a 1-D integer array, got {seq.dtype} {seq.shape}")
        k = int(seq.shape[0])
        t = np.asarray(self.time, dtype=np.float64)
        if t.shape != (k,):
            raise SptValueError(f"time has shape {t.shape}, expected ({k},)")
        if not np.isfinite(t).all():
            bad = int(seq[~np.isfinite(t)][0])
            raise SptValueError("time holds a non-finite value", seq_num=bad)
        columns: dict[str, AnyArray] = {}
        for name, values in self.columns.items():
            check_name(name)
            if name in RESERVED_NAMES:
                raise SptValueError(f"column name {name!r} is reserved")
            columns[name] = _normalise_1d(name, values, k)
        arrays: dict[str, Column2D] = {}
        dims: set[str] = set()
        for name, col in self.arrays.items():
            check_name(name)
            if name in RESERVED_NAMES or name in columns:
                raise SptValueError(f"2-D column name {name!r} is reserved or used twice")
            if not isinstance(col, Column2D):
                raise SptValueError(f"2-D column {name!r} must be a Column2D")
            if col.values.shape[0] != k:
                raise SptValueError(f"2-D column {name!r} has {col.values.shape[0]} rows, not {k}")
            arrays[name] = col
            dims.add(col.dim)
        clash = dims & (set(columns) | set(arrays))
        if clash:
            raise SptValueError(f"names used both as a dimension and a column: {sorted(clash)}")
        object.__setattr__(self, "seq_num", np.ascontiguousarray(seq, dtype=np.int64))
        object.__setattr__(self, "time", np.ascontiguousarray(t))
        object.__setattr__(self, "columns", columns)
        object.__setattr__(self, "arrays", arrays)
        object.__setattr__(self, "attrs", {str(k_): dict(v) for k_, v in self.attrs.items()})

    def __len__(self) -> int:
        return int(self.seq_num.shape[0])

    @property
    def names(self) -> tuple[str, ...]:
        """Every variable name this batch carries (1-D then 2-D), without ``time``/``seq_num``."""
        return (*self.columns, *self.arrays)

    def unseen(self, seen: Container[int]) -> npt.NDArray[np.bool_]:
        """Mask of the rows a sink still has to write: the first row of each ``seq_num`` that
        is not in ``seen`` (re-delivered frames and repeats within the batch are dropped). One
        set look-up per row, whatever the size of ``seen`` (a run's written seq_nums)."""
        keep = np.zeros(len(self), dtype=bool)
        local: set[int] = set()
        for i, s in enumerate(self.seq_num.tolist()):
            if s not in seen and s not in local:
                keep[i] = True
                local.add(s)
        return keep

    def take(self, index: npt.ArrayLike) -> TraceRows:
        """A new batch holding the rows at ``index`` (integer positions or a boolean mask)."""
        idx = np.asarray(index)
        return TraceRows(
            seq_num=self.seq_num[idx],
            time=self.time[idx],
            columns={n: v[idx] for n, v in self.columns.items()},
            arrays={
                n: Column2D(values=c.values[idx], dim=c.dim, coord=c.coord)
                for n, c in self.arrays.items()
            },
            attrs=self.attrs,
        )

    @classmethod
    def concat(cls, parts: Sequence[TraceRows]) -> TraceRows:
        """Join batches row-wise; a column missing from some parts is NaN-filled there.

        Integer/bool columns missing from some part are promoted to float64 (NaN for missing).
        2-D columns must agree on dimension, coordinate and width wherever present.
        """
        if not parts:
            raise SptValueError("concat needs at least one TraceRows")
        sizes = [len(p) for p in parts]
        columns: dict[str, AnyArray] = {}
        for name in dict.fromkeys(n for p in parts for n in p.columns):
            pieces = [p.columns.get(name) for p in parts]
            if all(x is not None for x in pieces):
                columns[name] = np.concatenate([x for x in pieces if x is not None])
            else:
                columns[name] = np.concatenate(
                    [
                        np.full(n, np.nan) if x is None else x.astype(np.float64)
                        for x, n in zip(pieces, sizes, strict=True)
                    ]
                )
        arrays: dict[str, Column2D] = {}
        for name in dict.fromkeys(n for p in parts for n in p.arrays):
            ref = next(p.arrays[name] for p in parts if name in p.arrays)
            blocks = []
            for p, n in zip(parts, sizes, strict=True):
                c = p.arrays.get(name)
                if c is None:
                    blocks.append(np.full((n, ref.width), np.nan))
                elif c.dim != ref.dim or not np.array_equal(c.coord, ref.coord):
                    raise SptValueError(f"2-D column {name!r} changes its coordinate between parts")
                else:
                    blocks.append(c.values)
            arrays[name] = Column2D(values=np.concatenate(blocks), dim=ref.dim, coord=ref.coord)
        attrs: dict[str, Mapping[str, Any]] = {}
        for p in parts:
            attrs.update(p.attrs)
        return cls(
            seq_num=np.concatenate([p.seq_num for p in parts]),
            time=np.concatenate([p.time for p in parts]),
            columns=columns,
            arrays=arrays,
            attrs=attrs,
        )

    @classmethod
    def from_records(
        cls,
        seq_num: Iterable[int],
        time: Iterable[float],
        records: Sequence[Mapping[str, float | int | bool | None]],
        arrays: Mapping[str, Column2D] | None = None,
        attrs: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> TraceRows:
        """Build a batch from per-row scalar mappings (e.g. each frame's event scalars).

        A key absent from some rows (or ``None`` there) becomes NaN in those rows, and the column is
        float64; a key present in every row keeps the common dtype of its values.
        """
        seq = np.fromiter(seq_num, dtype=np.int64)
        t = np.fromiter(time, dtype=np.float64)
        if len(records) != seq.shape[0]:
            raise SptValueError(f"{len(records)} records for {seq.shape[0]} seq_nums")
        columns: dict[str, AnyArray] = {}
        for name in dict.fromkeys(key for rec in records for key in rec):
            vals = [rec.get(name) for rec in records]
            if any(v is None for v in vals):
                columns[name] = np.array(
                    [math.nan if v is None else float(v) for v in vals], dtype=np.float64
                )
            else:
                columns[name] = np.asarray(vals)
        return cls(seq_num=seq, time=t, columns=columns, arrays=arrays or {}, attrs=attrs or {})

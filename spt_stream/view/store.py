"""Read-only access to a root of trace stores for the view: run list, variables, row slices.

The view reads exactly what the Zarr sink committed (see :mod:`spt_stream.sinks.zarr_trace`):
the group's ``n_rows`` attribute is the commit marker, rows below it are final, rows past it are
ignored. Polling costs one ``stat`` of the group's ``zarr.json`` (and one small JSON read when it
changed); new rows are read as slices of the arrays, never the whole trace. Nothing here writes.

Variables are discovered from the store, not from a fixed list:

* ``descriptor``: the model's descriptors (``attrs["model"]["descriptors"]``) and every column
  ``X`` that has an ``X_std`` partner (``os``, ``cn``, ``os_edge``, ``os_delta``...);
* ``quality``: the normalization's and the model's per-frame checks (``e0``, ``edge_step``,
  ``energy_shift``, ``flags``, ``ood``, ``ood_score``, ``valid``);
* ``process``: every other numeric 1-D column, i.e. the scalars the events carried
  (``cell_potential``, ``cell_current``, temperature...);
* ``spectrum``: 2-D columns over an energy dimension (``norm`` over ``energy_rel``).

A column attribute ``role`` (one of the above) overrides the guess.

:class:`RunReader` is what the app reads a run through: :class:`TraceReader` here (Zarr), and
:class:`spt_stream.view.tiled_store.TiledTraceReader` for the traces the Tiled sink writes.

One module: the view's reading of local Zarr traces (run list, incremental rows, caching) is one
cache with one lock.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import threading
import time
from collections.abc import Container
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt
import zarr
from zarr.core.sync import sync

from spt_stream.sinks.zarr_trace import INT_FILL

__all__ = [
    "QUALITY_NAMES",
    "RUN_ID_RE",
    "RowBlock",
    "RunNotFoundError",
    "RunReader",
    "RunSummary",
    "SourceUnavailableError",
    "TraceReader",
    "TraceRoot",
    "VarInfo",
    "guess_role",
]

#: What a run id may look like (a run uid; no separators, no leading dot or dash).
RUN_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
#: Per-frame checks of the normalization and the model (role ``quality``).
QUALITY_NAMES: Final = frozenset(
    {"e0", "edge_step", "energy_shift", "flags", "ood", "ood_score", "valid"}
)
_ROLES: Final = frozenset({"descriptor", "quality", "process", "spectrum", "std", "other"})
#: A run whose store is ``open`` and was updated this recently counts as live.
LIVE_WINDOW_S: Final = 120.0
#: Decimals kept for spectra sent to the browser (normalized mu: 1e-5 is far below the noise).
SPECTRUM_DECIMALS: Final = 5


class RunNotFoundError(LookupError):
    """No readable trace store for this run id under the trace root (HTTP 404)."""


class SourceUnavailableError(RuntimeError):
    """The store behind a run cannot be reached now (a Tiled server down: HTTP 503)."""


@dataclass(frozen=True, slots=True)
class VarInfo:
    """One per-frame variable of a trace."""

    name: str
    role: str
    dtype: str
    #: Second dimension of a 2-D variable (``energy_rel``), else None.
    dim: str | None = None
    units: str | None = None
    long_name: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "dtype": self.dtype,
            "dim": self.dim,
            "units": self.units,
            "long_name": self.long_name,
        }


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One line of the run list."""

    run_uid: str
    element: str | None
    edge: str | None
    status: str
    n_rows: int
    start_time: float | None
    updated: str | None
    live: bool
    #: Where the trace is: ``"zarr"`` (the trace root) or ``"tiled"`` (a Tiled server).
    source: str = "zarr"
    #: The id in the view's URLs (``/api/runs/{id}``): the store's name for a Zarr run,
    #: ``tiled:<uid>`` for a Tiled one; the run uid when not given.
    id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id or self.run_uid,
            "source": self.source,
            "run_uid": self.run_uid,
            "element": self.element,
            "edge": self.edge,
            "status": self.status,
            "n_rows": self.n_rows,
            "start_time": self.start_time,
            "updated": self.updated,
            "live": self.live,
        }


@dataclass(slots=True)
class RowBlock:
    """Committed rows ``[first_row, first_row + len)`` of a trace, ready for JSON."""

    first_row: int
    seq_num: list[int]
    time: list[float | None]
    columns: dict[str, list[Any]]
    #: Spectra of the rows ``[spectra_first_row, first_row + len)`` (may be empty).
    spectra: dict[str, list[list[float | None]]] = field(default_factory=dict)
    spectra_first_row: int = 0

    def __len__(self) -> int:
        return len(self.seq_num)

    def as_message(self) -> dict[str, Any]:
        return {
            "type": "rows",
            "first_row": self.first_row,
            "seq_num": self.seq_num,
            "time": self.time,
            "columns": self.columns,
            "spectra": self.spectra,
            "spectra_first_row": self.spectra_first_row,
        }


def _to_json_list(values: npt.NDArray[Any], *, decimals: int | None = None) -> list[Any]:
    """``values`` as a JSON-able list: NaN/inf and the integer fill value become None."""
    kind = values.dtype.kind
    if kind == "b":
        out_b: list[Any] = values.tolist()
        return out_b
    if kind in "iu":
        obj = values.astype(object)
        obj[values == INT_FILL] = None
        out_i: list[Any] = obj.tolist()
        return out_i
    floats = values.astype(np.float64)
    if decimals is not None:
        floats = np.round(floats, decimals)
    bad = ~np.isfinite(floats)
    if not bad.any():
        out_f: list[Any] = floats.tolist()
        return out_f
    obj = floats.astype(object)
    obj[bad] = None
    out: list[Any] = obj.tolist()
    return out


def guess_role(
    name: str,
    dim: str | None,
    per_frame: Container[str],
    declared: Container[str],
    given: Any = None,
) -> str:
    """The role of a per-frame variable (see the module docstring): ``given`` when it is one,
    else guessed from the name, its second dimension, the trace's other variables
    (``per_frame``) and the model's declared descriptors."""
    if isinstance(given, str) and given in _ROLES:
        return given
    if dim is not None:
        return "spectrum" if dim.startswith("energy") else "other"
    if name.endswith("_std") and name[: -len("_std")] in per_frame:
        return "std"
    if name in declared or f"{name}_std" in per_frame:
        return "descriptor"
    if name in QUALITY_NAMES:
        return "quality"
    return "process"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except (OSError, ValueError):  # missing, or caught mid-replace: the caller keeps what it had
        return None
    return data if isinstance(data, dict) else None


def _as_float(value: Any) -> float | None:
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _as_int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and math.isfinite(value) else 0


class RunReader(Protocol):
    """Read-only access to one run's trace, whatever stores it (the app's only view of a run)."""

    @property
    def run_id(self) -> str:
        """The id in the view's URLs."""
        ...

    @property
    def source(self) -> str:
        """``"zarr"`` or ``"tiled"``."""
        ...

    def attrs(self) -> dict[str, Any]:
        """The run's attributes (``run_uid``, ``element``, ``edge``, ``status``, ``n_rows``,
        ``start_time``, ``created``, ``model``...)."""
        ...

    def n_rows(self) -> int:
        """Rows committed so far."""
        ...

    def schema(self) -> tuple[dict[str, VarInfo], dict[str, list[float | None]]]:
        """The per-frame variables and the coordinates of their second dimensions."""
        ...

    def read(self, start: int, stop: int, *, spectra_from: int) -> RowBlock:
        """Committed rows ``[start, stop)``; spectra only for rows ``>= spectra_from``."""
        ...

    def row_after_seq(self, seq_num: int) -> int | None:
        """Row index just past the last committed row with ``seq_num``; None if none."""
        ...

    def python_snippet(self) -> str:
        """How to read the same trace in a notebook."""
        ...


class TraceReader:
    """Cheap, read-only, thread-safe polling of one trace store."""

    source = "zarr"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stat: tuple[int, int] | None = None
        self._attrs: dict[str, Any] = {}
        self._names: tuple[str, ...] | None = None
        self._vars: dict[str, VarInfo] = {}
        self._coords: dict[str, list[float | None]] = {}
        self._arrays: dict[str, zarr.Array[Any]] = {}
        self._seq: npt.NDArray[np.int64] = np.empty(0, np.int64)

    @property
    def run_id(self) -> str:
        return self.path.name.removesuffix(".zarr")

    def python_snippet(self) -> str:
        return (
            "from spt_stream.sinks.zarr_trace import open_trace; "
            f"ds = open_trace({str(self.path)!r})"
        )

    # ------------------------------------------------------------------ metadata
    def attrs(self) -> dict[str, Any]:
        """The group attributes as last committed (re-read only when ``zarr.json`` changed)."""
        with self._lock:
            return dict(self._refresh_attrs())

    def _refresh_attrs(self) -> dict[str, Any]:
        meta = self.path / "zarr.json"
        try:
            st = meta.stat()
        except OSError:
            return self._attrs
        key = (st.st_mtime_ns, st.st_size)
        if key != self._stat:
            doc = _read_json(meta)
            if doc is not None and isinstance(doc.get("attributes"), dict):
                self._attrs = doc["attributes"]
                self._stat = key
        return self._attrs

    def n_rows(self) -> int:
        """Committed rows (the ``n_rows`` attribute)."""
        return _as_int(self.attrs().get("n_rows", 0))

    def schema(self) -> tuple[dict[str, VarInfo], dict[str, list[float | None]]]:
        """The trace's per-frame variables and the coordinates of their second dimensions;
        re-read when arrays were added."""
        with self._lock:
            try:
                names = tuple(sorted(e.name for e in os.scandir(self.path) if e.is_dir()))
            except OSError:
                names = ()
            if names != self._names:
                self._vars, self._coords = self._discover(names)
                self._names = names
            return dict(self._vars), dict(self._coords)

    def _discover(
        self, names: tuple[str, ...]
    ) -> tuple[dict[str, VarInfo], dict[str, list[float | None]]]:
        metas: dict[str, dict[str, Any]] = {}
        for name in names:
            doc = _read_json(self.path / name / "zarr.json")
            if doc is not None and doc.get("node_type") == "array":
                metas[name] = doc
        model = self._refresh_attrs().get("model")
        declared = set(model.get("descriptors", ())) if isinstance(model, dict) else set()
        per_frame = {
            n: m
            for n, m in metas.items()
            if (m.get("dimension_names") or [None])[0] == "time" and n not in ("time", "seq_num")
        }
        vars_: dict[str, VarInfo] = {}
        coords: dict[str, list[float | None]] = {}
        for name, m in per_frame.items():
            dims = list(m.get("dimension_names") or [])
            attrs = m.get("attributes") or {}
            dtype = str(m.get("data_type", "?"))
            if dtype not in ("bool",) and not re.match(r"^(u?int|float)\d+$", dtype):
                continue  # strings and other types: nothing to plot
            dim = dims[1] if len(dims) == 2 else None
            if len(dims) > 2:
                continue
            role = guess_role(name, dim, per_frame, declared, attrs.get("role"))
            units = attrs.get("units")
            long_name = attrs.get("long_name")
            vars_[name] = VarInfo(
                name,
                str(role),
                dtype,
                dim,
                units if isinstance(units, str) else None,
                long_name if isinstance(long_name, str) else None,
            )
            if role == "spectrum" and dim is not None and dim in metas:
                coord = self._array(dim)
                coords[dim] = _to_json_list(np.asarray(coord[:]))
        return vars_, coords

    # ------------------------------------------------------------------ rows
    def _array(self, name: str, min_len: int = 0) -> zarr.Array[Any]:
        arr = self._arrays.get(name)
        if arr is None or arr.shape[0] < min_len:
            arr = zarr.open_array(str(self.path / name), mode="r")
            self._arrays[name] = arr
        return arr

    def _read_many(self, names: list[str], start: int, stop: int) -> dict[str, npt.NDArray[Any]]:
        """Rows ``[start, stop)`` of several arrays, read concurrently on Zarr's event loop."""
        arrays = {n: self._array(n, stop) for n in names}

        async def _all() -> list[Any]:
            return list(
                await asyncio.gather(
                    *(a.async_array.getitem(slice(start, stop)) for a in arrays.values())
                )
            )

        values = sync(_all()) if arrays else []
        return {n: np.asarray(v) for n, v in zip(arrays, values, strict=True)}

    def read(self, start: int, stop: int, *, spectra_from: int) -> RowBlock:
        """Committed rows ``[start, stop)``; spectra only for rows ``>= spectra_from``."""
        vars_, _ = self.schema()
        stop = min(stop, self.n_rows())
        start = max(0, min(start, stop))
        scalars = [n for n, v in vars_.items() if v.dim is None]
        spectra = [n for n, v in vars_.items() if v.role == "spectrum"]
        with self._lock:
            data = self._read_many(["seq_num", "time", *scalars], start, stop)
            s0 = max(start, spectra_from)
            spec = self._read_many(spectra, s0, stop) if s0 < stop else {}
        return RowBlock(
            first_row=start,
            seq_num=[int(s) for s in data["seq_num"].tolist()],
            time=_to_json_list(data["time"]),
            columns={n: _to_json_list(data[n]) for n in scalars},
            spectra={
                n: [_to_json_list(r, decimals=SPECTRUM_DECIMALS) for r in v]
                for n, v in spec.items()
            },
            spectra_first_row=s0 if s0 < stop else stop,
        )

    def row_after_seq(self, seq_num: int) -> int | None:
        """Row index just past the last committed row with ``seq_num``; None if there is none
        (the page then reloads the history)."""
        n = self.n_rows()
        with self._lock:
            have = len(self._seq)
            if have > n:  # store rewritten with fewer rows
                self._seq, have = np.empty(0, np.int64), 0
            if have < n:
                new = self._read_many(["seq_num"], have, n)["seq_num"].astype(np.int64)
                self._seq = np.concatenate([self._seq, new])
            hits = np.flatnonzero(self._seq[:n] == seq_num)
        return int(hits[-1]) + 1 if hits.size else None


class TraceRoot:
    """The run stores under one trace root; every path handed out lies inside it."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self._readers: dict[Path, TraceReader] = {}
        self._lock = threading.Lock()

    def resolve(self, run_id: str) -> Path:
        """The store of ``run_id`` (``<uid>`` or ``<uid>.zarr``); :class:`RunNotFoundError`
        unless it is a store directly under the root (no separators, no links out)."""
        rid = run_id.removesuffix(".zarr")
        if not RUN_ID_RE.match(rid) or ".." in rid:
            raise RunNotFoundError(f"no run {run_id[:80]!r}: not a run id")
        try:
            path = (self.root / f"{rid}.zarr").resolve(strict=True)
        except (OSError, RuntimeError):
            raise RunNotFoundError(f"no run {rid!r} under the trace root") from None
        if path.parent != self.root or not (path / "zarr.json").is_file():
            raise RunNotFoundError(f"no run {rid!r} under the trace root")
        return path

    def reader(self, run_id: str) -> TraceReader:
        path = self.resolve(run_id)
        with self._lock:
            reader = self._readers.get(path)
            if reader is None:
                reader = self._readers[path] = TraceReader(path)
            return reader

    def runs(self, live_uids: frozenset[str] = frozenset()) -> list[RunSummary]:
        """Every run store under the root: live ones first, then the newest first."""
        out: list[RunSummary] = []
        try:
            entries = [e for e in os.scandir(self.root) if e.name.endswith(".zarr") and e.is_dir()]
        except OSError:
            return out
        now = time.time()
        for entry in entries:
            try:
                reader = self.reader(entry.name)
            except RunNotFoundError:
                continue
            attrs = reader.attrs()
            uid = str(attrs.get("run_uid") or entry.name.removesuffix(".zarr"))
            status = str(attrs.get("status") or "?")
            try:
                age = now - (reader.path / "zarr.json").stat().st_mtime
            except OSError:
                age = math.inf
            live = uid in live_uids or (status == "open" and age < LIVE_WINDOW_S)
            element, edge = attrs.get("element"), attrs.get("edge")
            out.append(
                RunSummary(
                    run_uid=uid,
                    element=element if isinstance(element, str) else None,
                    edge=edge if isinstance(edge, str) else None,
                    status=status if status != "open" or live else "stalled",
                    n_rows=_as_int(attrs.get("n_rows", 0)),
                    start_time=_as_float(attrs.get("start_time")),
                    updated=str(attrs.get("updated")) if attrs.get("updated") else None,
                    live=live,
                    id=reader.run_id,
                )
            )
        out.sort(key=lambda r: (not r.live, -(r.start_time or 0.0), r.run_uid))
        return out

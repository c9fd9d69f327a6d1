"""The embedded trace store: one Zarr v3 group per run, crash-safe, idempotent, readable live.

Layout of ``<root>/<run_uid>.zarr`` (the contract: docs/CONTRACTS.md, "the trace store")
----------------------------------------------------------------------------------------
* ``time`` (float64, dims ``[time]``, CF ``units = "seconds since 1970-01-01T00:00:00Z"``): event
  time; xarray decodes it to ``datetime64``.
* ``seq_num`` (int64, dims ``[time]``): frame identity; fill value ``-1``.
* one array per 1-D column (dims ``[time]``): floats are NaN where a row lacks the value; integers
  use ``INT_FILL`` (int64 min) declared as the ``_FillValue`` attribute, so xarray shows NaN there;
  bools are ``False`` where missing.
* one array per 2-D column (dims ``[time, <dim>]``) and one coordinate array per ``<dim>``
  (e.g. ``os_probs`` over ``os_class``, ``norm`` over ``energy_rel``).
* group attributes: ``run_uid``, ``status`` (``open`` while live, then ``success``/``abort``/
  ``fail``/``incomplete``), ``n_rows`` (committed rows), ``created``/``updated``/``finalized``
  (ISO 8601 UTC), ``spt_stream_version``, ``block_rows``, and the caller's attributes (element,
  edge, model, config, start metadata).

Commit protocol (survives SIGKILL; per-row appends do not: docs/CONTRACTS.md)
-----------------------------------------------------------------------------
Every per-frame array has the same first-axis length, the *capacity*, a multiple of
``block_rows`` (= the chunk length), grown by half its size (at most 64 blocks) when a write needs
more. A :meth:`ZarrTraceWriter.write` call (1) grows every array to the new capacity if needed,
(2) writes the whole chunks its rows fall in, for every array (the writer keeps the current
partial chunk in memory, so no chunk is ever read back to be rewritten), (3) rewrites the group
attributes with the new ``n_rows`` LAST. Every file is written to a temporary file and renamed
over its key, so a kill leaves each file either old or new; rows past ``n_rows`` are uncommitted
and are overwritten by the next write. Chunks of arrays laid out as this writer creates them
(bytes + zstd codecs, regular chunks) are encoded by the writer itself into exactly the bytes Zarr
would write (:mod:`~spt_stream.sinks.zarr_adapter`), which costs a fraction of Zarr's write
path; arrays of any other layout go through Zarr. Reopening a store after a crash reads
``n_rows`` and the committed ``seq_num`` values, evens the array lengths out and continues.

Reading
-------
While live, arrays are longer than ``n_rows`` (rows past it hold fill values: ``seq_num == -1``,
``time`` NaT). Use :func:`open_trace`, which opens the store with
``xarray.open_zarr(path, consolidated=False)`` and slices ``time`` to ``n_rows``. Once the run is
finalized the arrays are trimmed to ``n_rows`` and the metadata consolidated, so a plain
``xarray.open_zarr(path)`` shows exactly the committed rows.

One module: the writer's commit protocol (capacity, partial chunks, the commit marker, reopen after
a kill) is one invariant; Zarr internals are in sinks/zarr_adapter.py, reading in open_trace below.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import time
import warnings
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

import numpy as np
import numpy.typing as npt
import zarr

from spt_stream._version import __version__
from spt_stream.errors import SinkError, SptError
from spt_stream.sinks import zarr_adapter
from spt_stream.sinks.rows import AnyArray, TraceRows

if TYPE_CHECKING:
    import xarray as xr

__all__ = [
    "FINAL_STATUSES",
    "INT_FILL",
    "TIME_UNITS",
    "RunStats",
    "WriteResult",
    "ZarrTraceWriter",
    "committed_seq_nums",
    "open_trace",
    "trace_path",
]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

TIME_UNITS: Final = "seconds since 1970-01-01T00:00:00Z"
#: Stored where an integer column has no value (declared as ``_FillValue``).
INT_FILL: Final = int(np.iinfo(np.int64).min)
SEQ_FILL: Final = -1
FINAL_STATUSES: Final = frozenset({"success", "abort", "fail", "incomplete"})
Status = Literal["success", "abort", "fail", "incomplete"]

#: Group attributes the writer owns; callers' attributes may not use these keys.
_RESERVED_ATTRS: Final = frozenset(
    {
        "run_uid",
        "status",
        "n_rows",
        "created",
        "updated",
        "finalized",
        "spt_stream_version",
        "block_rows",
    }
)
_RUN_UID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
#: Largest capacity growth, in blocks (bounds the fill rows a live reader sees past n_rows).
_MAX_GROWTH_BLOCKS: Final = 64


def trace_path(root: Path, run_uid: str) -> Path:
    """Where the store of ``run_uid`` lives: ``<root>/<run_uid>.zarr``."""
    if not _RUN_UID_RE.match(run_uid):
        raise SinkError(f"run uid {run_uid!r} is not usable as a store name", run_uid=run_uid)
    return Path(root) / f"{run_uid}.zarr"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fill_for(dtype: np.dtype[Any]) -> Any:
    if dtype.kind == "f":
        return math.nan
    if dtype.kind == "b":
        return False
    return INT_FILL


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one :meth:`ZarrTraceWriter.write` did."""

    written: int
    #: Rows dropped because their seq_num was already committed or repeated within the call.
    duplicates: int
    #: Committed rows in the store after the call.
    n_rows: int


@dataclass(frozen=True, slots=True)
class RunStats:
    """Counters of one open run, since this writer opened it."""

    n_rows: int
    written: int
    duplicates: int
    capacity: int


@dataclass(slots=True, eq=False)
class _Var:
    """One stored array of a run: either written by the writer itself from its ``zarr.json``
    document (``doc``, the fast path of :mod:`spt_stream.sinks.zarr_adapter`) or, for a layout the
    writer does not write itself, through Zarr's public API (``array``)."""

    name: str
    dtype: np.dtype[Any]
    fill: Any
    shape: tuple[int, ...]
    dim: str | None = None  # second dimension of a 2-D column
    array: zarr.Array[Any] | None = None
    doc: dict[str, Any] | None = None
    #: Committed rows of the current partial chunk: rows [n_rows - n_rows % B, n_rows).
    tail: AnyArray = field(default_factory=lambda: np.empty(0))
    #: Encoder of one whole chunk to the bytes of its file and the chunk's rows, when the array
    #: is laid out as this writer creates arrays (``zarr_adapter.array_chunk_encoder``); None:
    #: written through Zarr's indexing.
    encode: Callable[[AnyArray], bytes] | None = field(init=False, default=None)
    chunk_rows: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.doc is not None:
            self.encode = zarr_adapter.chunk_encoder(self.doc)
            self.chunk_rows = int(self.doc["chunk_grid"]["configuration"]["chunk_shape"][0])
        elif self.array is not None:
            found = zarr_adapter.array_chunk_encoder(self.array)
            if found is not None:
                self.encode, self.chunk_rows = found

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    def chunk_key(self, indices: tuple[int, ...]) -> str:
        if self.array is not None:
            key: str = self.array.metadata.encode_chunk_key(indices)
            return key
        return zarr_adapter.chunk_key(indices)


@dataclass(slots=True, eq=False)
class _Run:
    run_uid: str
    path: Path
    store: zarr_adapter.SyncingLocalStore
    #: None on the fast path (the writer writes the group's documents itself).
    group: zarr.Group | None
    attrs: dict[str, Any]
    n_rows: int
    capacity: int
    committed: set[int]
    vars: dict[str, _Var]
    coords: dict[str, AnyArray]
    #: Rows per chunk / growth step of this store (fixed when it was created).
    block: int = 256
    #: Documents of the coordinate arrays (fast path; needed to consolidate).
    coord_docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    written: int = 0
    duplicates: int = 0
    #: The store was finalized before and has taken new rows since reopening.
    reopened_final: bool = False


class ZarrTraceWriter:
    """Write per-run descriptor traces into ``<root>/<run_uid>.zarr`` (see module docstring).

    Parameters
    ----------
    root:
        Directory holding one store per run (created if missing).
    block_rows:
        Rows per chunk and capacity growth step (``ZarrSettings.block_rows``) of stores this
        writer creates; a reopened store keeps the block size it was created with. Larger blocks
        mean fewer growth steps but more data rewritten per small batch.
    fsync:
        When True, :meth:`flush` fsyncs every file written since the previous flush (durable
        against power loss). Written data survives a crash of this process either way.
    fast_metadata:
        Write the stores' Zarr metadata documents directly (:mod:`~spt_stream.sinks.zarr_adapter`,
        byte for byte Zarr's) instead of through Zarr's node API. None (default): when the
        installed Zarr is a release those documents were checked against; False: always Zarr's
        public API (the reference path).

    Not thread-safe: call it from one thread (the engine's sink stage).
    """

    def __init__(
        self,
        root: Path,
        *,
        block_rows: int = 256,
        fsync: bool = True,
        fast_metadata: bool | None = None,
    ) -> None:
        if block_rows < 1:
            raise SinkError(f"block_rows must be >= 1, got {block_rows}")
        self.root = Path(root)
        self.block_rows = int(block_rows)
        self.fsync = fsync
        self.fast_metadata = (
            zarr_adapter.fast_path_available() if fast_metadata is None else bool(fast_metadata)
        )
        self._runs: dict[str, _Run] = {}
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SinkError(f"cannot create trace root: {exc}", source=str(self.root)) from exc

    # ------------------------------------------------------------------ public API

    def open_run(self, run_uid: str, attrs: Mapping[str, Any] | None = None) -> int:
        """Create the run's store, or reopen it after a restart; return its committed row count.

        ``attrs`` (JSON-able: element, edge, model name/version/hash, config snapshot, start
        metadata) are merged into the group attributes. Idempotent: calling it again for an open
        run only merges ``attrs``.
        """
        user = self._check_attrs(run_uid, attrs or {})
        run = self._runs.get(run_uid)
        if run is None:
            path = trace_path(self.root, run_uid)
            run = self._guard(run_uid, lambda: self._load_or_create(run_uid, path, user))
            self._runs[run_uid] = run
        elif user:
            self._guard(run_uid, lambda: self._commit_attrs(run, user))
        return run.n_rows

    def write(self, run_uid: str, rows: TraceRows) -> WriteResult:
        """Append the rows of ``rows`` whose ``seq_num`` is not committed yet; commit them.

        A run not opened by this writer is reopened from disk if its store exists. Rows whose
        ``seq_num`` is already committed, or repeats an earlier row of the same call, are dropped
        (the first delivery wins). Raises :class:`SinkError` when the store cannot be written or a
        column contradicts the stored one (dtype kind, width, coordinate values).
        """
        run = self._runs.get(run_uid)
        if run is None:
            if not trace_path(self.root, run_uid).exists():
                raise SinkError("write to a run that was never opened", run_uid=run_uid)
            self.open_run(run_uid)
            run = self._runs[run_uid]
        fresh = self._dedupe(run, rows)
        skipped = len(rows) - len(fresh)
        run.duplicates += skipped
        if len(fresh) == 0:
            return WriteResult(written=0, duplicates=skipped, n_rows=run.n_rows)
        try:
            self._append(run, fresh)
        except SptError:
            self._forget(run_uid)
            raise
        except Exception as exc:
            self._forget(run_uid)  # reload from disk on the next call: nothing was committed
            raise SinkError(f"zarr write failed: {exc!r}", run_uid=run_uid) from exc
        run.written += len(fresh)
        return WriteResult(written=len(fresh), duplicates=skipped, n_rows=run.n_rows)

    def finalize(self, run_uid: str, status: Status | str) -> int:
        """Close a run: trim arrays to ``n_rows``, record ``status``, consolidate metadata.

        ``status`` is the stop document's exit status (``success``, ``abort``, ``fail``) or
        ``incomplete`` when the engine stops without one. Returns the committed row count.
        """
        if status not in FINAL_STATUSES:
            raise SinkError(
                f"status must be one of {sorted(FINAL_STATUSES)}, got {status!r}", run_uid=run_uid
            )
        if run_uid not in self._runs:
            if not trace_path(self.root, run_uid).exists():
                raise SinkError("finalize of a run that was never opened", run_uid=run_uid)
            self.open_run(run_uid)
        run = self._runs[run_uid]

        def _finish() -> None:
            n = run.n_rows
            self._resize(run, run.vars.values(), n)
            run.capacity = n
            now = _now_iso()
            run.attrs.update(status=status, n_rows=n, updated=now, finalized=now)
            self._write_group(run, consolidate=True)
            if self.fsync:
                run.store.fsync_dirty()

        try:
            self._guard(run_uid, _finish)
        finally:
            self._forget(run_uid)
        return run.n_rows

    def warm_up(self, rows: TraceRows | None = None) -> None:
        """Pay Zarr's first-use costs now (codec pipelines, its event loop, array creation):
        ``rows`` are written to a scratch store in a temporary folder (never under the root),
        which is removed again. Called once at start-up, so the first run's store is created and
        written at the usual cost."""
        import tempfile

        if rows is None or len(rows) == 0:
            return
        with tempfile.TemporaryDirectory(prefix="spt-zarr-warm-up-") as tmp:
            scratch = ZarrTraceWriter(
                Path(tmp), block_rows=self.block_rows, fsync=False, fast_metadata=self.fast_metadata
            )
            scratch.open_run("warm-up", {})
            scratch.write("warm-up", rows)
            scratch.finalize("warm-up", "success")

    def flush(self) -> None:
        """Make everything written so far durable (the engine commits Kafka offsets after this).

        Every :meth:`write` has already committed its rows when it returns (a crash of this
        process loses nothing); with ``fsync=True`` this also forces them to the disk.
        """
        if not self.fsync:
            return
        for run in self._runs.values():
            self._guard(run.run_uid, run.store.fsync_dirty)

    def close(self) -> None:
        """Flush and forget every open run (without finalizing: their status stays ``open``)."""
        try:
            self.flush()
        finally:
            self._runs.clear()

    def __enter__(self) -> ZarrTraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def open_runs(self) -> tuple[str, ...]:
        """Run uids currently open in this writer."""
        return tuple(self._runs)

    def stats(self, run_uid: str) -> RunStats:
        """Counters of an open run (raises :class:`SinkError` when it is not open)."""
        run = self._runs.get(run_uid)
        if run is None:
            raise SinkError("run is not open", run_uid=run_uid)
        return RunStats(run.n_rows, run.written, run.duplicates, run.capacity)

    # ------------------------------------------------------------------ internals

    def _guard(self, run_uid: str, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except SptError:
            raise
        except Exception as exc:
            raise SinkError(f"zarr trace store failed: {exc!r}", run_uid=run_uid) from exc

    def _forget(self, run_uid: str) -> None:
        self._runs.pop(run_uid, None)

    def _check_attrs(self, run_uid: str, attrs: Mapping[str, Any]) -> dict[str, Any]:
        clash = _RESERVED_ATTRS & set(attrs)
        if clash:
            raise SinkError(f"run attributes may not set {sorted(clash)}", run_uid=run_uid)
        out = dict(attrs)
        try:
            json.dumps(out, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise SinkError(f"run attributes are not JSON-able: {exc}", run_uid=run_uid) from exc
        return out

    @staticmethod
    def _ceil(n: int, block: int) -> int:
        return -(-n // block) * block

    def _load_or_create(self, run_uid: str, path: Path, user: dict[str, Any]) -> _Run:
        store = zarr_adapter.SyncingLocalStore(path)
        if (path / "zarr.json").exists():
            run = self._load(run_uid, path, store)
            if user:
                self._commit_attrs(run, user)
            return run
        now = _now_iso()
        attrs: dict[str, Any] = {
            **user,
            "run_uid": run_uid,
            "status": "open",
            "n_rows": 0,
            "created": now,
            "updated": now,
            "finalized": None,
            "spt_stream_version": __version__,
            "block_rows": self.block_rows,
        }
        group: zarr.Group | None = None
        if self.fast_metadata:
            if path.exists():  # what a kill during creation left (no group document yet)
                shutil.rmtree(path)
            doc = zarr_adapter.group_document(attrs)
            store.write_files([("zarr.json", zarr_adapter.dumps(doc))])
        else:
            group = zarr.open_group(store=store, mode="w", zarr_format=3, attributes=attrs)
        run = _Run(run_uid, path, store, group, attrs, 0, 0, set(), {}, {}, self.block_rows)
        self._create_core(run)
        return run

    def _create_core(self, run: _Run) -> None:
        """Create the ``time`` and ``seq_num`` arrays (at the run's current capacity)."""
        b = run.block
        if "time" not in run.vars:
            run.vars["time"] = self._new_array(
                run,
                "time",
                shape=(run.capacity,),
                chunks=(b,),
                dtype=np.dtype(np.float64),
                fill=math.nan,
                dims=("time",),
                attrs={"units": TIME_UNITS, "calendar": "standard", "long_name": "event time"},
                tail=np.empty(0),
            )
        if "seq_num" not in run.vars:
            run.vars["seq_num"] = self._new_array(
                run,
                "seq_num",
                shape=(run.capacity,),
                chunks=(b,),
                dtype=np.dtype(np.int64),
                fill=SEQ_FILL,
                dims=("time",),
                attrs={"long_name": "event sequence number within the run"},
                tail=np.empty(0, np.int64),
            )

    def _load(self, run_uid: str, path: Path, store: zarr_adapter.SyncingLocalStore) -> _Run:
        """Reopen a store after a restart: committed rows, seq_nums, columns, partial chunk."""
        for junk in path.rglob("*.partial"):  # temp files of writes a kill interrupted
            junk.unlink(missing_ok=True)
        group = zarr.open_group(store=store, mode="r+", zarr_format=3, use_consolidated=False)
        attrs = dict(group.attrs)
        if attrs.get("run_uid") != run_uid:
            raise SinkError(
                f"store holds run {attrs.get('run_uid')!r}", run_uid=run_uid, source=str(path)
            )
        n = _as_int(attrs.get("n_rows", 0))
        vars_: dict[str, _Var] = {}
        coords: dict[str, AnyArray] = {}
        members = 0
        for name, arr in group.members():
            members += 1
            if not isinstance(arr, zarr.Array):
                continue
            dims = tuple(getattr(arr.metadata, "dimension_names", None) or ())
            if dims and dims[0] == "time":
                dtype = np.dtype(arr.dtype)
                fill = SEQ_FILL if name == "seq_num" else _fill_for(dtype)
                dim = dims[1] if len(dims) > 1 else None
                vars_[name] = _Var(name, dtype, fill, tuple(arr.shape), dim=dim, array=arr)
            elif len(dims) == 1:
                coords[dims[0]] = np.asarray(arr[:])
        if n > 0 and ("time" not in vars_ or "seq_num" not in vars_):
            raise SinkError("store lacks time/seq_num arrays", run_uid=run_uid, source=str(path))
        short = [k for k, v in vars_.items() if v.shape[0] < n]
        if short:
            raise SinkError(
                f"arrays shorter than the committed n_rows={n}: {short}",
                run_uid=run_uid,
                source=str(path),
            )
        block = _as_int(attrs.get("block_rows", self.block_rows))
        cap = self._ceil(n, block)
        seqs: list[int] = []
        tail0 = n - n % block
        for name, v in vars_.items():
            assert v.array is not None  # loaded through Zarr
            if name == "seq_num" and n:
                seqs = np.asarray(v.array[:n], dtype=np.int64).tolist()
            v.tail = np.asarray(v.array[tail0:n])
        run = _Run(run_uid, path, store, group, attrs, n, cap, set(seqs), vars_, coords, block)
        if self.fast_metadata and len(vars_) + len(coords) == members:
            self._to_fast(run)
        self._resize(run, vars_.values(), cap)
        self._create_core(run)  # a kill during creation may have left them out (n == 0)
        run.reopened_final = attrs.get("status") != "open"
        log.info("reopened trace store %s with %d committed rows", path, n)
        return run

    def _commit_attrs(self, run: _Run, user: Mapping[str, Any]) -> None:
        if all(k in run.attrs and run.attrs[k] == v for k, v in user.items()):
            return  # e.g. a re-delivered start document: keep the store (and its consolidation)
        run.attrs.update(user)
        run.attrs["updated"] = _now_iso()
        self._write_group(run)

    def _dedupe(self, run: _Run, rows: TraceRows) -> TraceRows:
        keep = rows.unseen(run.committed)
        return rows if keep.all() else rows.take(keep)

    def _ensure_vars(self, run: _Run, rows: TraceRows) -> None:
        """Check batch columns against stored ones; create new arrays (fill for earlier rows)."""
        b = run.block
        for name, values in rows.columns.items():
            var = run.vars.get(name)
            if var is None:
                dtype = values.dtype
                fill = _fill_for(dtype)
                attrs: dict[str, Any] = dict(rows.attrs.get(name, {}))
                if dtype.kind in "iu":
                    attrs["_FillValue"] = INT_FILL
                run.vars[name] = self._new_array(
                    run,
                    name,
                    shape=(run.capacity,),
                    chunks=(b,),
                    dtype=dtype,
                    fill=fill,
                    dims=("time",),
                    attrs=attrs,
                    tail=np.full(run.n_rows % b, fill, dtype),
                )
            elif var.dim is not None or not np.can_cast(values.dtype, var.dtype, "same_kind"):
                raise SinkError(
                    f"column {name!r} ({values.dtype}, 1-D) does not fit the stored "
                    f"{var.dtype} {'2-D' if var.dim else '1-D'} array",
                    run_uid=run.run_uid,
                )
        for name, col in rows.arrays.items():
            self._ensure_coord(run, col.dim, col.coord, rows)
            var = run.vars.get(name)
            if var is None:
                dtype = col.values.dtype
                fill = _fill_for(dtype)
                attrs = dict(rows.attrs.get(name, {}))
                if dtype.kind in "iu":
                    attrs["_FillValue"] = INT_FILL
                run.vars[name] = self._new_array(
                    run,
                    name,
                    shape=(run.capacity, col.width),
                    chunks=(b, col.width),
                    dtype=dtype,
                    fill=fill,
                    dims=("time", col.dim),
                    attrs=attrs,
                    tail=np.full((run.n_rows % b, col.width), fill, dtype),
                )
            elif (
                var.dim != col.dim
                or var.row_shape != (col.width,)
                or not np.can_cast(col.values.dtype, var.dtype, "same_kind")
            ):
                raise SinkError(
                    f"2-D column {name!r} ({col.dim}, width {col.width}, {col.values.dtype})"
                    f" does not fit the stored array (dim {var.dim}, row shape {var.row_shape},"
                    f" {var.dtype})",
                    run_uid=run.run_uid,
                )

    def _ensure_coord(self, run: _Run, dim: str, coord: AnyArray, rows: TraceRows) -> None:
        stored = run.coords.get(dim)
        if stored is not None:
            if stored.shape != coord.shape or not np.array_equal(stored, coord):
                raise SinkError(
                    f"coordinate {dim!r} differs from the stored one", run_uid=run.run_uid
                )
            return
        if dim in run.vars:
            raise SinkError(f"{dim!r} is a per-frame column, not a dimension", run_uid=run.run_uid)
        attrs = dict(rows.attrs.get(dim, {}))
        doc = None
        if run.group is None:
            doc = zarr_adapter.array_document(
                shape=coord.shape,
                chunks=coord.shape,
                dtype=coord.dtype,
                fill_value=False if coord.dtype.kind == "b" else 0,
                dimension_names=(dim,),
                attributes=attrs,
            )
            if doc is None:  # a dtype outside the writer's layout: Zarr's API from here on
                self._to_public(run)
        if doc is not None:
            encode = zarr_adapter.chunk_encoder(doc)
            run.store.write_files(
                [
                    (f"{dim}/zarr.json", zarr_adapter.dumps(doc)),
                    (f"{dim}/{zarr_adapter.chunk_key((0,))}", encode(coord)),
                ]
            )
            run.coord_docs[dim] = doc
        else:
            assert run.group is not None
            arr = run.group.create_array(
                dim,
                shape=coord.shape,
                chunks=coord.shape,
                dtype=coord.dtype,
                dimension_names=[dim],
                attributes=attrs,
            )
            arr[:] = coord
        run.coords[dim] = coord.copy()

    # ------------------------------------------------------------------ node operations
    # Each has the fast path (the run's group is None: documents written by the writer,
    # spt_stream.sinks.zarr_adapter) and Zarr's public API (any other case).

    def _new_array(
        self,
        run: _Run,
        name: str,
        *,
        shape: tuple[int, ...],
        chunks: tuple[int, ...],
        dtype: np.dtype[Any],
        fill: Any,
        dims: tuple[str, ...],
        attrs: dict[str, Any],
        tail: AnyArray,
    ) -> _Var:
        dim = dims[1] if len(dims) > 1 else None
        if run.group is None:
            doc = zarr_adapter.array_document(
                shape=shape,
                chunks=chunks,
                dtype=dtype,
                fill_value=fill,
                dimension_names=dims,
                attributes=attrs,
            )
            if doc is not None:
                run.store.write_files([(f"{name}/zarr.json", zarr_adapter.dumps(doc))])
                return _Var(name, np.dtype(dtype), fill, shape, dim=dim, doc=doc, tail=tail)
            self._to_public(run)  # a dtype outside the writer's layout: Zarr's API from here on
        assert run.group is not None
        arr = run.group.create_array(
            name,
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            fill_value=fill,
            dimension_names=list(dims),
            attributes=attrs,
        )
        return _Var(name, np.dtype(dtype), fill, shape, dim=dim, array=arr, tail=tail)

    def _resize(self, run: _Run, vars_: Iterable[_Var], rows: int) -> None:
        """Set the first-axis length of ``vars_`` (those not at it already) to ``rows``."""
        files: list[tuple[str, bytes]] = []
        slow: list[Coroutine[Any, Any, Any]] = []
        for v in vars_:
            if v.shape[0] == rows:
                continue
            v.shape = (rows, *v.row_shape)
            if v.doc is not None:
                v.doc["shape"] = list(v.shape)
                files.append((f"{v.name}/zarr.json", zarr_adapter.dumps(v.doc)))
            else:
                assert v.array is not None
                slow.append(v.array.async_array.resize(v.shape))
        run.store.write_files(files)
        zarr_adapter.gather(*slow)

    def _write_group(self, run: _Run, *, consolidate: bool = False) -> None:
        """Rewrite the group's attributes (the commit marker); ``consolidate``: with the
        consolidated metadata of every array, as ``zarr.consolidate_metadata`` writes it."""
        if run.group is None:
            if consolidate:
                docs: dict[str, dict[str, Any]] = dict(run.coord_docs)
                for name, v in run.vars.items():
                    assert v.doc is not None  # fast runs hold only documents
                    docs[name] = v.doc
                doc = zarr_adapter.consolidated_group_document(run.attrs, docs)
            else:
                doc = zarr_adapter.group_document(run.attrs)
            run.store.write_files([("zarr.json", zarr_adapter.dumps(doc))])
            return
        run.group.update_attributes(run.attrs)
        if consolidate:
            with warnings.catch_warnings():  # "not part of the v3 spec": known, intended
                warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
                zarr.consolidate_metadata(run.store)

    def _to_fast(self, run: _Run) -> None:
        """Move a reopened run to the fast path when every member of its store has the writer's
        layout (a store this writer created); otherwise it stays on Zarr's API."""
        docs: dict[str, dict[str, Any]] = {}
        for name in [*run.vars, *run.coords]:
            try:
                doc = json.loads((run.path / name / "zarr.json").read_bytes())
            except (OSError, ValueError):
                return
            if not isinstance(doc, dict) or not zarr_adapter.is_writer_layout(doc):
                return
            docs[name] = doc
        for name, v in list(run.vars.items()):
            fresh = _Var(name, v.dtype, v.fill, v.shape, dim=v.dim, doc=docs[name], tail=v.tail)
            run.vars[name] = fresh
        run.coord_docs = {name: docs[name] for name in run.coords}
        run.group = None

    def _to_public(self, run: _Run) -> None:
        """Continue a fast run through Zarr's API (an array the documents do not cover)."""
        group = zarr.open_group(store=run.store, mode="r+", zarr_format=3, use_consolidated=False)
        for name, v in run.vars.items():
            arr = group[name]
            assert isinstance(arr, zarr.Array)
            v.array, v.doc = arr, None
        run.coord_docs = {}
        run.group = group

    def _append(self, run: _Run, rows: TraceRows) -> None:
        self._ensure_vars(run, rows)
        b = run.block
        n0, k = run.n_rows, len(rows)
        n1 = n0 + k
        end = self._ceil(n1, b)  # past the last chunk touched
        if end > run.capacity:
            # Grow by half the capacity (at most _MAX_GROWTH_BLOCKS blocks) rather than to the
            # next block: each growth rewrites every array's metadata.
            step = min(max(run.capacity // 2, b), _MAX_GROWTH_BLOCKS * b)
            cap = self._ceil(max(end, run.capacity + step), b)
            self._resize(run, run.vars.values(), cap)
            run.capacity = cap
        start = n0 - n0 % b  # first row of the first chunk touched
        values: dict[str, AnyArray | None] = {"time": rows.time, "seq_num": rows.seq_num}
        values.update(rows.columns)
        values.update({n: c.values for n, c in rows.arrays.items()})
        buffers: dict[str, AnyArray] = {}
        for name, var in run.vars.items():
            buf = np.full((end - start, *var.row_shape), var.fill, dtype=var.dtype)
            buf[: n0 - start] = var.tail
            new = values.get(name)
            if new is not None:
                buf[n0 - start : n1 - start] = new
            buffers[name] = buf
        slow: list[Coroutine[Any, Any, Any]] = []
        files: list[tuple[str, bytes]] = []
        for name, buf in buffers.items():
            var = run.vars[name]
            if var.encode is None or var.chunk_rows != b:
                assert var.array is not None  # only arrays of another layout lack an encoder
                slow.append(var.array.async_array.setitem(slice(start, end), buf))
                continue
            for c0 in range(0, end - start, b):
                key = var.chunk_key(((start + c0) // b, *(0 for _ in var.row_shape)))
                files.append((f"{name}/{key}", var.encode(buf[c0 : c0 + b])))
        run.store.write_files(files)
        zarr_adapter.gather(*slow)
        # Commit marker, last: one atomic rewrite of the group's zarr.json.
        now = _now_iso()
        run.attrs.update(n_rows=n1, updated=now)
        if run.reopened_final:
            run.attrs.update(status="open", finalized=None)
        self._write_group(run)
        run.reopened_final = False
        run.n_rows = n1
        run.committed.update(rows.seq_num.tolist())
        tail0 = n1 - n1 % b
        for name, buf in buffers.items():
            run.vars[name].tail = buf[tail0 - start : n1 - start].copy()


def _as_int(value: Any) -> int:
    if not isinstance(value, int | float | str):
        raise SinkError(f"n_rows attribute is not a number: {value!r}")
    return int(value)


def open_trace(path: Path | str, *, retries: int = 3, **open_kwargs: Any) -> xr.Dataset:
    """Open a trace store (live, finalized or crashed) as an :class:`xarray.Dataset` of its
    committed rows.

    Opens lazily with ``xarray.open_zarr(path, consolidated=False, **open_kwargs)`` and keeps the
    first ``n_rows`` (group attribute) rows along ``time``. Arrays of unequal lengths (a reader
    racing a capacity growth, or a writer killed mid-growth and not restarted yet) make xarray
    refuse the store: the open is retried ``retries`` times 10 ms apart, then the committed rows
    are read eagerly, array by array, and CF-decoded. Raises :class:`SinkError` when the store
    cannot be read.
    """
    import xarray as xr  # readers only: the writer does not need it

    open_kwargs.setdefault("consolidated", False)
    for attempt in range(retries + 1):
        try:
            ds = xr.open_zarr(path, **open_kwargs)
        except ValueError:  # "conflicting sizes for dimension 'time'"
            if attempt < retries:
                time.sleep(0.01)
            continue
        except Exception as exc:
            raise SinkError(f"cannot open trace store: {exc!r}", source=str(path)) from exc
        n = min(_as_int(ds.attrs.get("n_rows", 0)), int(ds.sizes.get("time", 0)))
        out: xr.Dataset = ds.isel(time=slice(0, n))
        return out
    return _read_committed_eagerly(path)


def _read_committed_eagerly(path: Path | str) -> xr.Dataset:
    import xarray as xr

    try:
        group = zarr.open_group(str(path), mode="r", use_consolidated=False)
        attrs = dict(group.attrs)
        n = _as_int(attrs.get("n_rows", 0))
        variables: dict[str, Any] = {}
        for name, arr in group.arrays():
            dims = tuple(getattr(arr.metadata, "dimension_names", None) or ())
            data = arr[:n] if dims and dims[0] == "time" else arr[:]
            variables[name] = xr.Variable(dims, np.asarray(data), dict(arr.attrs))
        ds = xr.decode_cf(xr.Dataset(variables, attrs=attrs))
    except SptError:
        raise
    except Exception as exc:
        raise SinkError(f"cannot read trace store: {exc!r}", source=str(path)) from exc
    return ds


def committed_seq_nums(path: Path | str) -> npt.NDArray[np.int64]:
    """The committed ``seq_num`` values of a store, in row order (cheap: no xarray)."""
    try:
        group = zarr.open_group(str(path), mode="r", use_consolidated=False)
        n = _as_int(group.attrs.get("n_rows", 0))
        arr = group["seq_num"]
        assert isinstance(arr, zarr.Array)
        return np.asarray(arr[:n], dtype=np.int64)
    except Exception as exc:
        raise SinkError(f"cannot read trace store: {exc!r}", source=str(path)) from exc

"""Read-only access, for the view, to the traces the Tiled sink writes: the run list and each
run's rows, through the tiled client (the ``tiled`` extra).

What is read (written by :class:`spt_stream.sinks.tiled_trace.TiledTraceWriter`): under the
server's root, one container per run (key: the raw run uid) whose metadata holds
``raw_run_uid``, ``status`` (``running`` until the run is finalized), ``started``/``finished``
(UNIX s), ``rows_written``, the engine's run attributes (``element``, ``edge``, ``start_time``,
``model``...) and ``trace`` (the column layout); in it an appendable table ``trace``: ``seq_num``,
``time`` and flat scalar columns, a 2-D column of up to 32 values flattened into ``<name>_<j>``.
Spectra are not written to Tiled (:mod:`spt_stream.sinks.arrow_rows`), so a Tiled run shows its
descriptors and process variables, not its spectra (the Zarr trace of the same run has them).
Containers without ``raw_run_uid`` are not runs of this engine and are neither listed nor read.

Cost, bounded whatever the number of pages: a :class:`TiledTraceReader` syncs at most once per
``poll_s`` (1 s) and only while something asks (an open page): one request for the run's metadata
and one for the ``seq_num`` values past the rows it has. When there are new rows: while the run is
small (``full_read_values``) the whole table in one request (the first read of a run too), beyond
that the new rows only, one request per column (tiled 0.2's table API reads no row range, and
its DuckDB storage fails concurrent reads, so they go one at a time). Rows are append-only, so what
was read is kept and pages are served from it. The run list is one search request (newest first,
at most ``max_runs``), plus one row count per run still ``running``, cached ``list_ttl_s``.

Failures: the tiled client retries a failing connection for up to ~45 s
(``TILED_RETRY_TIMEOUT``), so each sync and listing first probes the server with one plain
request (short timeout, no retry); an unreachable server is a :class:`SourceUnavailableError` with
a one-line reason (the app shows it in the run list, or answers 503), never a hang. One sync per run
and one listing are in flight at a time: other callers get what was read last. The API key comes
from the settings (``SPT_TILED_API_KEY``, see :mod:`spt_stream.config`) and is never logged, shown
or put in a URL.

One module: the view's reading of Tiled runs mirrors view/store.py for a remote server (timeouts,
404/503 handling, caching under one lock).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import nullcontext
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

import numpy as np
import numpy.typing as npt
from pydantic import SecretStr

from spt_stream.errors import SptValueError
from spt_stream.sinks.zarr_trace import INT_FILL
from spt_stream.view.store import (
    LIVE_WINDOW_S,
    RUN_ID_RE,
    RowBlock,
    RunNotFoundError,
    RunSummary,
    SourceUnavailableError,
    VarInfo,
    _as_float,
    _as_int,
    _to_json_list,
    guess_role,
)

__all__ = ["TILED_PREFIX", "TiledSource", "TiledTraceReader"]

log = logging.getLogger(__name__)

#: Prefix of a Tiled run's id in the view's URLs (``/api/runs/tiled:<uid>``); a Zarr run id
#: cannot contain ``:``, so the two never collide.
TILED_PREFIX: Final = "tiled:"
#: Metadata key every run container of the Tiled sink has.
RUN_KEY: Final = "raw_run_uid"
#: Row counts asked for per listing (runs still ``running``); others use ``rows_written``.
_MAX_COUNTS: Final = 16
_ARROW_FILE: Final = "application/vnd.apache.arrow.file"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def _iso(t: Any) -> str | None:
    value = _as_float(t)
    return datetime.fromtimestamp(value, UTC).isoformat() if value is not None else None


def _status(md: dict[str, Any]) -> str:
    """The sink's ``running`` is the Zarr store's ``open``: one vocabulary for the page."""
    status = str(md.get("status") or "?")
    return "open" if status == "running" else status


class _Column:
    """A growable 1-D array (amortized appends) of one column's committed values."""

    def __init__(self, dtype: npt.DTypeLike) -> None:
        self._buf: npt.NDArray[Any] = np.empty(64, dtype=dtype)
        self.n = 0

    def extend(self, values: npt.NDArray[Any]) -> None:
        need = self.n + len(values)
        if need > len(self._buf):
            grown = np.empty(max(need, 2 * len(self._buf)), dtype=self._buf.dtype)
            grown[: self.n] = self._buf[: self.n]
            self._buf = grown
        self._buf[self.n : need] = values
        self.n = need

    def view(self, start: int, stop: int) -> npt.NDArray[Any]:
        return self._buf[start : min(stop, self.n)]


def _kind(arrow_type: Any) -> str | None:
    """``"i"``, ``"b"`` or ``"f"`` for the column types the view plots; None for the rest."""
    import pyarrow as pa

    if pa.types.is_boolean(arrow_type):
        return "b"
    if pa.types.is_integer(arrow_type):
        return "i"
    if pa.types.is_floating(arrow_type):
        return "f"
    return None


_DTYPES: Final = {"i": np.int64, "b": np.bool_, "f": np.float64}


def _from_arrow(column: Any, kind: str) -> npt.NDArray[Any]:
    """An Arrow column as numpy: nulls become NaN, ``INT_FILL`` or False (as in the Zarr trace)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if kind == "i":
        return np.asarray(pc.fill_null(column.cast(pa.int64()), INT_FILL), dtype=np.int64)
    if kind == "b":
        return np.asarray(pc.fill_null(column, False), dtype=np.bool_)
    return np.asarray(
        pc.fill_null(column.cast(pa.float64()), math.nan).to_numpy(), dtype=np.float64
    )


def _number(v: Any) -> float:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):  # Tiled serves a column holding nulls of some types as strings
        try:
            return float(v)
        except ValueError:
            return {"true": 1.0, "false": 0.0}.get(v.strip().lower(), math.nan)
    return math.nan


def _from_json(values: Sequence[Any], kind: str) -> npt.NDArray[Any]:
    """A JSON column slice (Tiled's ``application/json``) as numpy, nulls filled as above."""
    floats = np.fromiter((_number(v) for v in values), dtype=np.float64, count=len(values))
    if kind == "f":
        return floats
    bad = ~np.isfinite(floats)
    if kind == "b":
        out_b: npt.NDArray[Any] = np.where(bad, 0.0, floats) != 0
        return out_b
    out = np.where(bad, 0, floats).astype(np.int64)
    out[bad] = INT_FILL
    return out


class TiledSource:
    """The runs of the Tiled sink on one server (see the module docstring).

    Parameters
    ----------
    url:
        Tiled server URL (``http://host:8000``), as given to the engine's Tiled sink.
    api_key:
        Tiled API key (``settings.tiled.api_key``); None: anonymous. Never logged or shown.
    table_key:
        Key of the trace table in each run container (the sink's ``table_key``).
    poll_s:
        Least seconds between two syncs of a run with the server.
    list_ttl_s:
        Seconds a run list is reused.
    max_runs:
        Runs listed, newest first.
    timeout_s:
        HTTP timeout of one request (the reachability probe: at most 2 s).
    max_readers:
        Runs whose rows are kept in memory (least recently opened dropped first).
    full_read_values:
        New rows of a run up to this many values (rows x columns) in all are read as the whole
        table in one request; beyond, the new rows of each column (one request per column).
    """

    def __init__(
        self,
        url: str,
        api_key: SecretStr | str | None = None,
        *,
        table_key: str = "trace",
        poll_s: float = 1.0,
        list_ttl_s: float = 2.0,
        max_runs: int = 200,
        timeout_s: float = 5.0,
        max_readers: int = 16,
        full_read_values: int = 500_000,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise SptValueError(f"Tiled URL must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self._api_key = SecretStr(api_key) if isinstance(api_key, str) else api_key
        self.table_key = table_key
        self.poll_s = poll_s
        self.list_ttl_s = list_ttl_s
        self.max_runs = max_runs
        self.timeout_s = timeout_s
        self.max_readers = max_readers
        self.full_read_values = full_read_values
        self._lock = threading.Lock()
        self._reads = threading.Lock()
        self._client: Any = None
        self._probed_at = -math.inf
        self._probe_error: str | None = None
        self._list_lock = threading.Lock()
        self._listed: list[RunSummary] = []
        self._listed_at = -math.inf
        self._list_error: str | None = None
        #: uid -> (rows, when they last grew, when first listed) (monotonic): live or stalled
        self._growth: dict[str, tuple[int, float, float]] = {}
        self._readers: OrderedDict[str, TiledTraceReader] = OrderedDict()

    def __repr__(self) -> str:  # never shows the API key
        return f"TiledSource(url={self.url!r})"

    # ---------------------------------------------------------------- connection
    def check(self) -> None:
        """Raise :class:`SourceUnavailableError` unless the server answers a plain request now
        (no retries; the answer is reused for a second)."""
        import httpx

        with self._lock:
            if time.monotonic() - self._probed_at < 1.0:
                if self._probe_error is not None:
                    raise SourceUnavailableError(self._probe_error)
                return
        error: str | None = None
        try:
            r = httpx.get(f"{self.url}/api/v1/", timeout=min(2.0, self.timeout_s))
            if r.status_code >= 500:
                error = f"Tiled at {self.url} answered HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            error = f"Tiled at {self.url} unreachable ({_describe(exc)})"
        with self._lock:
            self._probed_at, self._probe_error = time.monotonic(), error
            if error is not None:
                self._client = None  # reconnect (and log in again) once it is back
        if error is not None:
            raise SourceUnavailableError(error)

    def client(self) -> Any:
        """The tiled client of the server's root (connects once; probes first)."""
        self.check()
        with self._lock:
            if self._client is None:
                from tiled.client import from_uri

                key = self._api_key.get_secret_value() if self._api_key is not None else None
                try:
                    self._client = from_uri(
                        self.url, api_key=key, remember_me=False, timeout=self.timeout_s
                    )
                except Exception as exc:  # a refused key, not a Tiled server...
                    raise SourceUnavailableError(
                        f"Tiled at {self.url}: cannot connect ({_describe(exc)})"
                    ) from None
            return self._client

    def get(self, path: Sequence[str], what: str, *, reads: bool = False, **params: Any) -> Any:
        """GET ``/api/v1/<what>/<path>`` with the client's session (its key); the response.
        ``reads``: the request reads table rows on the server; such requests go one at a time
        (tiled 0.2's DuckDB storage fails concurrent reads)."""
        client = self.client()
        url = f"{client.context.api_uri}{what}/" + "/".join(quote(p, safe="") for p in path)
        headers = {"Accept": params.pop("accept", "application/json")}
        with self._reads if reads else nullcontext():
            r = client.context.http_client.get(url, params=params, headers=headers)
        r.raise_for_status()
        return r

    # ---------------------------------------------------------------- run list
    def runs(self, live_uids: frozenset[str] = frozenset()) -> list[RunSummary]:
        """The Tiled sink's runs, newest first; :class:`SourceUnavailableError` (one line) when
        the server cannot be listed now."""
        if not self._list_lock.acquire(blocking=False):  # a listing is in flight: the last one
            return self._last_listing()
        try:
            if time.monotonic() - self._listed_at >= self.list_ttl_s:
                try:
                    self._listed, self._list_error = self._list(live_uids), None
                except SourceUnavailableError as exc:
                    self._list_error = str(exc)
                except Exception as exc:  # an HTTP error, an unexpected answer
                    self._list_error = f"Tiled at {self.url}: {_describe(exc)}"
                self._listed_at = time.monotonic()
            return self._last_listing()
        finally:
            self._list_lock.release()

    def _last_listing(self) -> list[RunSummary]:
        if self._list_error is not None:
            raise SourceUnavailableError(self._list_error)
        return list(self._listed)

    def _list(self, live_uids: frozenset[str]) -> list[RunSummary]:
        from tiled.queries import KeyPresent

        root = self.client()
        found = root.search(KeyPresent(RUN_KEY)).sort(("started", -1))
        out: list[RunSummary] = []
        counted = 0
        now = time.monotonic()
        for key, node in found.items()[: self.max_runs]:
            uid = str(key)
            if not RUN_ID_RE.match(uid) or str(getattr(node, "structure_family", "")) not in (
                "container",
                "StructureFamily.container",
            ):
                continue
            md = dict(node.metadata)
            status = _status(md)
            with self._lock:
                reader = self._readers.get(uid)
            if reader is not None and reader.synced:
                n = reader.cached_rows()
            elif status == "open" and counted < _MAX_COUNTS:
                n = self._count(uid)
                counted += 1
            else:
                n = _as_int(md.get("rows_written"))
            run_uid = str(md.get(RUN_KEY) or uid)
            live = run_uid in live_uids
            if status == "open":  # live while its rows grow; stalled once they have not for long
                rows, grew_at, seen = self._growth.get(uid, (n, -math.inf, now))
                if n > rows:
                    grew_at = now
                self._growth[uid] = (n, grew_at, seen)
                live = live or now - grew_at < LIVE_WINDOW_S
                if not live and now - seen >= LIVE_WINDOW_S:
                    status = "stalled"
            element, edge = md.get("element"), md.get("edge")
            out.append(
                RunSummary(
                    run_uid=run_uid,
                    element=element if isinstance(element, str) else None,
                    edge=edge if isinstance(edge, str) else None,
                    status=status,
                    n_rows=n,
                    start_time=_as_float(md.get("start_time")) or _as_float(md.get("started")),
                    updated=_iso(md.get("finished")),
                    live=live,
                    source="tiled",
                    id=TILED_PREFIX + uid,
                )
            )
        return out

    def _count(self, uid: str) -> int:
        """Rows in a run's table now (the ``seq_num`` column's length; 0 before any row)."""
        import httpx

        try:
            r = self.get([uid, self.table_key, "seq_num"], "metadata", reads=True)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 404:
                return 0
            raise
        shape = r.json()["data"]["attributes"]["structure"]["shape"]
        return int(shape[0])

    # ---------------------------------------------------------------- runs
    def reader(self, run_id: str) -> TiledTraceReader:
        """The reader of ``tiled:<uid>``: :class:`RunNotFoundError` unless the server holds a
        run container of the Tiled sink under that key; :class:`SourceUnavailableError` when
        the server cannot tell now."""
        uid = run_id.removeprefix(TILED_PREFIX)
        if not RUN_ID_RE.match(uid) or ".." in uid:
            raise RunNotFoundError(f"no run {run_id[:80]!r}: not a run id")
        with self._lock:
            reader = self._readers.get(uid)
            if reader is not None:
                self._readers.move_to_end(uid)
                return reader
        md = self.metadata(uid)
        with self._lock:
            reader = self._readers.get(uid)
            if reader is None:
                reader = self._readers[uid] = TiledTraceReader(self, uid, md)
                while len(self._readers) > self.max_readers:
                    self._readers.popitem(last=False)
            return reader

    def metadata(self, uid: str) -> dict[str, Any]:
        """A run container's metadata; :class:`RunNotFoundError` if it is not one."""
        import httpx

        try:
            r = self.get([uid], "metadata")
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 404:
                raise RunNotFoundError(f"no run {uid!r} on the Tiled server") from None
            raise SourceUnavailableError(f"Tiled at {self.url}: {_describe(exc)}") from None
        except httpx.HTTPError as exc:
            raise SourceUnavailableError(f"Tiled at {self.url}: {_describe(exc)}") from None
        attributes = r.json()["data"]["attributes"]
        md = attributes.get("metadata") or {}
        if attributes.get("structure_family") != "container" or RUN_KEY not in md:
            raise RunNotFoundError(f"no run {uid!r} on the Tiled server (not a spt-stream trace)")
        return dict(md)


class TiledTraceReader:
    """One Tiled run, read like :class:`spt_stream.view.store.TraceReader` (a
    :class:`~spt_stream.view.store.RunReader`): synced at most once per ``poll_s``, new rows
    only, everything read kept in memory."""

    source = "tiled"

    def __init__(self, owner: TiledSource, uid: str, metadata: dict[str, Any]) -> None:
        self._owner = owner
        self.uid = uid
        self._md = metadata
        self._sync_lock = threading.Lock()
        self._lock = threading.Lock()
        self._next_sync = 0.0
        self._kinds: dict[str, str] = {}  # column -> "i" | "b" | "f", once the table exists
        self._vars: dict[str, VarInfo] = {}
        self._cols: dict[str, _Column] = {}
        self._n = 0
        self.synced = False
        #: The last sync's failure (one line), None after a successful one.
        self.error: str | None = None

    @property
    def run_id(self) -> str:
        return TILED_PREFIX + self.uid

    def python_snippet(self) -> str:
        return (
            "import os; from tiled.client import from_uri; "
            f"df = from_uri({self._owner.url!r}, api_key=os.environ.get('SPT_TILED_API_KEY'))"
            f"[{self.uid!r}][{self._owner.table_key!r}].read()"
        )

    # ---------------------------------------------------------------- sync
    def _sync(self) -> None:
        """Bring the cache up to date when ``poll_s`` has passed; :class:`SourceUnavailableError`
        only when nothing was ever read (otherwise the last rows are served)."""
        if time.monotonic() >= self._next_sync and self._sync_lock.acquire(
            blocking=not self.synced, timeout=-1 if self.synced else 4 * self._owner.timeout_s
        ):
            try:
                if time.monotonic() >= self._next_sync:
                    try:
                        self._fetch()
                        self.error, self.synced = None, True
                    except SourceUnavailableError as exc:
                        self.error = str(exc)
                    except Exception as exc:  # an HTTP error, an unexpected answer
                        self.error = f"Tiled at {self._owner.url}: {_describe(exc)}"
                        log.warning("view: reading Tiled run %s failed: %s", self.uid, self.error)
                    self._next_sync = time.monotonic() + self._owner.poll_s
            finally:
                self._sync_lock.release()
        if not self.synced:
            raise SourceUnavailableError(self.error or f"Tiled at {self._owner.url}: no answer")

    def _fetch(self) -> None:
        import httpx

        owner = self._owner
        md = owner.metadata(self.uid)
        with self._lock:
            self._md = md
        if not self._kinds:
            try:
                r = owner.get([self.uid, owner.table_key], "metadata")
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code == 404:  # no row written yet
                    return
                raise
            self._describe_table(r.json()["data"]["attributes"], md)
            if not self._kinds:
                return
        names = list(self._kinds)
        have, stop = self._n, 0
        if have:  # anything new? (the seq_num values past the rows read)
            path = [self.uid, owner.table_key, "seq_num"]
            seq = owner.get(path, "array/full", reads=True, slice=f"{have}:").json()
            if not seq:
                return
            stop = have + len(seq)
        if have == 0 or stop * len(names) <= owner.full_read_values:  # one request
            import pyarrow as pa

            path = [self.uid, owner.table_key]
            r = owner.get(path, "table/full", reads=True, accept=_ARROW_FILE)
            table = pa.ipc.open_file(pa.BufferReader(r.content)).read_all()
            if have and table.num_rows >= have:
                last = table.column("seq_num")[have - 1].as_py()
                if last != int(self._cols["seq_num"].view(have - 1, have)[0]):
                    have = 0  # not the rows read before (the table was replaced): all again
            table = table.slice(have)
            new = {n: _from_arrow(table.column(n), self._kinds[n]) for n in names}
        else:  # a long run: the new rows only, one column at a time (see the module docstring)
            new = {"seq_num": _from_json(seq, "i")}
            for name in names:
                if name == "seq_num":
                    continue
                path = [self.uid, owner.table_key, name]
                values = owner.get(path, "array/full", reads=True, slice=f"{have}:{stop}").json()
                new[name] = _from_json(values, self._kinds[name])
        k = len(new["seq_num"])
        if any(len(v) != k for v in new.values()):
            raise SourceUnavailableError(f"Tiled at {owner.url}: columns of unequal length")
        with self._lock:
            if have == 0:
                self._cols = {}
            for name, values in new.items():
                self._cols.setdefault(name, _Column(_DTYPES[self._kinds[name]])).extend(values)
            self._n = have + k

    def _describe_table(self, attributes: dict[str, Any], md: dict[str, Any]) -> None:
        """Variables and column types from the table's Arrow schema and the run's layout."""
        import base64

        import pyarrow as pa

        structure = attributes.get("structure") or {}
        raw = structure.get("arrow_schema")
        if not isinstance(raw, str):
            return
        if raw.startswith("data:"):
            raw = raw.split(",", 1)[1]
        schema = pa.ipc.read_schema(pa.BufferReader(base64.b64decode(raw)))
        trace = md.get("trace")
        layout: dict[str, Any] = trace if isinstance(trace, dict) else {}
        flattened: dict[str, Any] = dict(layout.get("flattened") or {})
        flat_cols = {c for v in flattened.values() for c in (v.get("columns") or ())}
        kinds = {f.name: k for f in schema if (k := _kind(f.type)) is not None}
        if "seq_num" not in kinds or "time" not in kinds:
            return
        model = md.get("model")
        declared = set(model.get("descriptors", ())) if isinstance(model, dict) else set()
        scalars = [n for n in kinds if n not in ("seq_num", "time") and n not in flat_cols]
        vars_: dict[str, VarInfo] = {}
        for name in scalars:
            dtype = str(schema.field(name).type)
            dtype = {"double": "float64", "float": "float32"}.get(dtype, dtype)
            vars_[name] = VarInfo(name, guess_role(name, None, scalars, declared), dtype)
        for name, spec in flattened.items():  # e.g. os_probs over os_class, as in Zarr
            dim = spec.get("dim") if isinstance(spec.get("dim"), str) else None
            vars_[name] = VarInfo(name, "other", "float64", dim)
        with self._lock:
            self._kinds = {n: kinds[n] for n in ("seq_num", "time", *scalars)}
            self._vars = vars_

    # ---------------------------------------------------------------- RunReader
    def cached_rows(self) -> int:
        """Rows read so far (no request)."""
        return self._n

    def attrs(self) -> dict[str, Any]:
        self._sync()
        with self._lock:
            md = dict(self._md)
            n = self._n
        return md | {
            "run_uid": str(md.get(RUN_KEY) or self.uid),
            "status": _status(md),
            "n_rows": n,
            "start_time": _as_float(md.get("start_time")) or _as_float(md.get("started")),
            "created": _iso(md.get("started")),
        }

    def n_rows(self) -> int:
        self._sync()
        return self._n

    def schema(self) -> tuple[dict[str, VarInfo], dict[str, list[float | None]]]:
        self._sync()
        with self._lock:
            return dict(self._vars), {}

    def read(self, start: int, stop: int, *, spectra_from: int) -> RowBlock:
        self._sync()
        with self._lock:
            n = self._n
            stop = min(stop, n)
            start = max(0, min(start, stop))
            cols = {name: c.view(start, stop) for name, c in self._cols.items()}
            scalars = [v.name for v in self._vars.values() if v.dim is None]
        empty: npt.NDArray[Any] = np.empty(0)
        s0 = max(start, spectra_from)
        return RowBlock(
            first_row=start,
            seq_num=[int(s) for s in cols.get("seq_num", empty).tolist()],
            time=_to_json_list(cols.get("time", empty)),
            columns={n: _to_json_list(cols[n]) for n in scalars if n in cols},
            spectra={},
            spectra_first_row=s0 if s0 < stop else stop,
        )

    def row_after_seq(self, seq_num: int) -> int | None:
        self._sync()
        with self._lock:
            col = self._cols.get("seq_num")
            seq = col.view(0, self._n) if col is not None else np.empty(0, np.int64)
            hits = np.flatnonzero(seq == seq_num)
        return int(hits[-1]) + 1 if hits.size else None

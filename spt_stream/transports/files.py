"""Replay of a time-ordered set of spectrum files as one synthetic Bluesky run.

An operando series measured without Bluesky (one XDI or column file per spectrum) becomes the
run a quick-XAS detector would have produced: one ``start``, one ``primary`` descriptor, one
``event`` per file, one ``stop``, composed with :func:`event_model.compose_run` and handed to the
same :class:`~spt_stream.protocols.DocumentHandler` as a live run.

The run
-------
* **order**: by the header timestamp (:attr:`Spectrum.timestamp`, e.g. XDI ``Scan.start_time``)
  when every file has one, ties broken by name; otherwise by natural sort of the file name
  (``scan_2`` before ``scan_10``) for all files.
* **start**: ``md["spt"] = {element, edge, spectrum: "mu", energy: "energy", mode: "mu"}`` (mu
  as the reader computed it), ``source_files`` in replay order, ``element``/``edge``.
* **descriptor**: ``mu`` and ``energy`` (eV) as per-event 1-D ``array`` keys (shape ``[n]``, or
  ``[None]`` when the files' grids differ in length: each event carries its own grid),
  ``reference`` when every file has a reference channel, ``source_file`` (string), and every
  numeric header value found in any file as a ``number`` key. Header names are made into data
  keys by lower-casing and replacing anything but letters, digits and ``_`` with ``_``
  (``Sample.temperature`` -> ``sample_temperature``); names the run already uses (``time``,
  ``seq_num``, ``energy``, ...) get a ``header_`` prefix. A file lacking a header value gets NaN.
* **event times**: the header timestamps when every file has one, else the files' modification
  times (UNIX seconds).
* **uids** are derived from the files' names and contents (UUID 5), so replaying the same files
  again gives the same run uid and the same documents: sinks keyed on ``(run_uid, seq_num)``
  overwrite rather than duplicate.

A file that cannot be read goes to ``handler.reject`` (:class:`~spt_stream.errors.ReaderError`
naming it) and the run is built from the rest. Files of different elements cannot be one run:
that raises :class:`~spt_stream.errors.AssemblyError` naming the first offending file, before any
document is handed on.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import event_model
import numpy as np

from spt_stream.errors import AssemblyError, ReaderError, Reason, SptError
from spt_stream.protocols import DocumentHandler, Position
from spt_stream.readers import read_spectrum
from spt_stream.readers.spectrum import Spectrum
from spt_stream.transports.replay import CountingHandler, ReplayStats, replay_progress

__all__ = ["compose_spectra_run", "order_spectra", "replay_files"]

#: Data keys of the synthetic run itself; header values with these names get a ``header_`` prefix.
_RESERVED = frozenset(
    {"time", "seq_num", "uid", "energy", "mu", "reference", "source_file", "descriptor"}
)
#: At most this many header scalars become data keys (a runaway header must not explode a run).
MAX_HEADER_KEYS = 256
_NAMESPACE = uuid.UUID("6f1d2a8e-3c5b-5e0f-9a7d-1b2c3d4e5f60")
_DIGITS = re.compile(r"(\d+)")
_NOT_KEY = re.compile(r"[^0-9a-z_]+")


@dataclass(frozen=True, slots=True)
class _Item:
    path: str
    spectrum: Spectrum
    mtime: float


def _natural_key(path: str) -> tuple[Any, ...]:
    name = Path(path).name
    parts = _DIGITS.split(name)
    words = tuple((0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in parts if p)
    return (*words, (2, 0, path))


def order_spectra(items: Sequence[tuple[str, Spectrum]]) -> list[tuple[str, Spectrum]]:
    """Replay order: by header timestamp when every spectrum has one, else natural name order."""
    if items and all(s.timestamp is not None for _, s in items):
        return sorted(items, key=lambda it: (it[1].timestamp, _natural_key(it[0])))
    return sorted(items, key=lambda it: _natural_key(it[0]))


def _header_key(name: str) -> str:
    key = _NOT_KEY.sub("_", name.strip().lower()).strip("_") or "header"
    if key[0].isdigit() or key in _RESERVED:
        key = f"header_{key}"
    return key


def _header_scalars(metadata: Mapping[str, Any]) -> dict[str, float]:
    return {
        str(k): float(v)
        for k, v in metadata.items()
        if isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
    }


def _norm_element(element: str | None) -> str | None:
    return element.strip().capitalize() if element and element.strip() else None


def _run_uid(items: Sequence[_Item]) -> str:
    digest = hashlib.sha256()
    for it in items:
        digest.update(Path(it.path).name.encode())
        digest.update(np.ascontiguousarray(it.spectrum.energy, dtype=np.float64).tobytes())
        digest.update(np.ascontiguousarray(it.spectrum.mu, dtype=np.float64).tobytes())
    return str(uuid.uuid5(_NAMESPACE, digest.hexdigest()))


def _check_elements(items: Sequence[_Item], element: str | None) -> str | None:
    """The run's element; AssemblyError naming the first file that disagrees."""
    run_element = _norm_element(element)
    given = run_element is not None
    for it in items:
        file_element = _norm_element(it.spectrum.element)
        if file_element is None or (given and it.spectrum.element_inferred):
            continue  # nothing said, or only guessed where the caller said explicitly
        if run_element is None:
            run_element = file_element
        elif file_element != run_element:
            raise AssemblyError(
                f"spectrum files mix elements: {it.path} is {file_element}, the run is "
                f"{run_element} ({'as given' if given else 'from the first file'}); "
                "replay each element separately",
                source=it.path,
                reason=Reason.MIXED_ELEMENTS,
            )
    return run_element


def compose_spectra_run(
    items: Sequence[tuple[str, Spectrum]],
    *,
    element: str | None = None,
    edge: str | None = None,
    mtimes: Mapping[str, float] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """The documents of the synthetic run for ``items`` (already in replay order). Pure.

    Parameters
    ----------
    items:
        ``(path, spectrum)`` pairs, in the order they become events (see :func:`order_spectra`).
    element, edge:
        Override what the files say (``element``: files that state another one are an error).
    mtimes:
        Modification time per path, used as event time when not every file has a timestamp
        (missing: 0.0).

    Raises
    ------
    AssemblyError
        No items, or files of different elements.
    """
    if not items:
        raise AssemblyError("no spectrum files to replay", reason=Reason.EMPTY)
    mt = mtimes or {}
    rows = [_Item(p, s, float(mt.get(p, 0.0))) for p, s in items]
    run_element = _check_elements(rows, element)
    run_edge = edge or next((r.spectrum.edge for r in rows if r.spectrum.edge), None)

    use_stamps = all(r.spectrum.timestamp is not None for r in rows)
    times = [
        float(r.spectrum.timestamp) if use_stamps and r.spectrum.timestamp is not None else r.mtime
        for r in rows
    ]

    headers = [_header_scalars(r.spectrum.metadata) for r in rows]
    key_of: dict[str, str] = {}
    for h in headers:
        for name in h:
            if name in key_of or len(key_of) >= MAX_HEADER_KEYS:
                continue
            key, n = _header_key(name), 2
            while key in key_of.values():
                key, n = f"{_header_key(name)}_{n}", n + 1
            key_of[name] = key

    lengths = {r.spectrum.npts for r in rows}
    shape: list[int | None] = [lengths.pop()] if len(lengths) == 1 else [None]
    with_reference = all(r.spectrum.reference is not None for r in rows)
    data_keys: dict[str, dict[str, Any]] = {
        "energy": {
            "dtype": "array",
            "dtype_numpy": "<f8",
            "shape": shape,
            "source": "file:energy",
            "units": "eV",
        },
        "mu": {"dtype": "array", "dtype_numpy": "<f8", "shape": shape, "source": "file:mu"},
        "source_file": {"dtype": "string", "shape": [], "source": "file:path"},
    }
    if with_reference:
        data_keys["reference"] = {
            "dtype": "array",
            "dtype_numpy": "<f8",
            "shape": shape,
            "source": "file:reference",
        }
    for name, key in key_of.items():
        data_keys[key] = {"dtype": "number", "shape": [], "source": f"file-header:{name}"}

    spt: dict[str, Any] = {"spectrum": "mu", "energy": "energy", "mode": "mu"}
    if run_element:
        spt["element"] = run_element
    if run_edge:
        spt["edge"] = run_edge
    md: dict[str, Any] = {
        "plan_name": "spectrum_files",
        "spt": spt,
        "source_files": [r.path for r in rows],
        "measurement_modes": sorted({r.spectrum.mode for r in rows}),
        "num_points": len(rows),
    }
    if run_element:
        md["element"] = run_element
    if run_edge:
        md["edge"] = run_edge

    run_uid = _run_uid(rows)
    t0 = min(times)
    bundle = event_model.compose_run(uid=run_uid, time=t0, metadata=md)
    docs: list[tuple[str, dict[str, Any]]] = [("start", dict(bundle.start_doc))]
    desc = bundle.compose_descriptor(
        name="primary",
        data_keys=data_keys,
        hints={"spectrum": {"fields": ["mu"]}},
        object_keys={"spectrum": list(data_keys)},
        time=t0,
        uid=str(uuid.uuid5(uuid.UUID(run_uid), "descriptor:primary")),
    )
    docs.append(("descriptor", dict(desc.descriptor_doc)))
    for seq_num, (row, t, h) in enumerate(zip(rows, times, headers, strict=True), start=1):
        data: dict[str, Any] = {
            "energy": np.asarray(row.spectrum.energy, dtype=np.float64),
            "mu": np.asarray(row.spectrum.mu, dtype=np.float64),
            "source_file": row.path,
        }
        if with_reference and row.spectrum.reference is not None:
            data["reference"] = np.asarray(row.spectrum.reference, dtype=np.float64)
        for name, key in key_of.items():
            data[key] = h.get(name, math.nan)
        event = desc.compose_event(
            data=data,
            timestamps=dict.fromkeys(data, t),
            seq_num=seq_num,
            time=t,
            uid=str(uuid.uuid5(uuid.UUID(run_uid), f"event:{seq_num}")),
        )
        docs.append(("event", dict(event)))
    stop = bundle.compose_stop(
        exit_status="success", time=max(times), uid=str(uuid.uuid5(uuid.UUID(run_uid), "stop"))
    )
    docs.append(("stop", dict(stop)))
    return docs


def replay_files(
    paths: Sequence[str | os.PathLike[str]],
    handler: DocumentHandler,
    *,
    element: str | None = None,
    edge: str | None = None,
    progress: bool = False,
) -> ReplayStats:
    """Read spectrum files, compose them into one run and hand its documents to ``handler``.

    Unreadable files go to ``handler.reject`` with a :class:`ReaderError` and
    ``Position(file=path)``; the others make the run (nothing is handed on when none is
    readable). ``element``/``edge`` override what the files say.

    Raises
    ------
    AssemblyError
        Files of different elements (before any document is handed on).
    """
    counting = CountingHandler(handler)
    items: list[tuple[str, Spectrum]] = []
    mtimes: dict[str, float] = {}
    with replay_progress("read spectra", len(paths), enabled=progress, unit="files") as advance:
        for raw in paths:
            path = os.fspath(raw)
            try:
                spectrum = read_spectrum(path)
                mtimes[path] = os.stat(path).st_mtime
            except SptError as exc:
                err = (
                    exc
                    if isinstance(exc, ReaderError) and exc.source is not None
                    else ReaderError(exc.message, source=path, line=exc.line, detail=exc.detail)
                )
                counting.reject(err, None, Position(file=path))
            except OSError as exc:
                counting.reject(
                    ReaderError(f"cannot read spectrum file: {exc}", source=path),
                    None,
                    Position(file=path),
                )
            else:
                items.append((path, spectrum))
            advance(1)
    if not items:
        return counting.stats
    ordered = order_spectra(items)
    docs = compose_spectra_run(ordered, element=element, edge=edge, mtimes=mtimes)
    counting.stats.sources.extend(p for p, _ in ordered)
    with replay_progress("replay spectra", len(docs), enabled=progress, unit="docs") as advance:
        event_paths = iter(p for p, _ in ordered)
        for name, doc in docs:
            position = Position(file=next(event_paths)) if name == "event" else None
            counting(name, doc, position)
            advance(1)
    return counting.stats

"""Everything of the trace store that goes past Zarr's public API, in one adapter.

* :class:`SyncingLocalStore`: Zarr's ``LocalStore`` that remembers the keys it wrote (to fsync
  them) and writes whole files itself (atomic rename, in the calling thread);
* :func:`array_chunk_encoder` / :func:`chunk_encoder`: whole chunks encoded to the bytes Zarr's
  own codecs write (``bytes`` + ``zstd``), without Zarr's write path;
* the metadata documents (``zarr.json`` of arrays and groups, consolidated metadata) built as
  plain JSON, below;
* :func:`gather`: Zarr coroutines run on Zarr's event loop.

Each is checked against Zarr's public path byte for byte (tests/unit/test_zarr_adapter.py,
tests/unit/test_zarr_trace.py), used only with a Zarr release in :data:`TESTED_ZARR` (pinned in
pyproject.toml); the writer falls back to Zarr's public API otherwise.

The metadata documents in detail:

Why: Zarr's node API (``Group.create_array``, ``AsyncArray.resize``, ``update_attributes``,
``consolidate_metadata``) costs 1-4 ms of Python and an event-loop round trip per array. A trace
store creates ~35 arrays per run, grows them once and trims and consolidates them at the end:
~220 ms of the writer's CPU per short run (docs/BENCHMARKS.md, "Zarr writer"), which on two
cores delayed the frames of the runs behind it. For the one layout the trace writer creates
(regular chunks, ``bytes`` + ``zstd`` codecs, default ``/`` chunk keys, float32/float64/int64/
bool), the documents are small JSON objects that this module builds directly and the writer
writes as files.

The contract: every document here is byte for byte what Zarr's public API writes for the same
array or group (``tests/unit/test_zarr_adapter.py`` builds each case both ways and compares the
files).
The fast path is used only with a Zarr release in :data:`TESTED_ZARR` (the range pinned in
pyproject.toml); with any other release, or a store holding anything else, the writer goes
through Zarr's public API (:func:`fast_path_available`).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import unicodedata
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import zarr
from numcodecs.zstd import Zstd
from zarr.codecs import BytesCodec, ZstdCodec
from zarr.codecs.bytes import Endian
from zarr.core.chunk_grids import RegularChunkGrid
from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding
from zarr.core.metadata.v3 import ArrayV3Metadata
from zarr.core.sync import sync
from zarr.storage import LocalStore

AnyArray = np.ndarray[Any, Any]

__all__ = [
    "TESTED_ZARR",
    "SyncingLocalStore",
    "array_chunk_encoder",
    "array_document",
    "chunk_encoder",
    "chunk_key",
    "consolidated_group_document",
    "dumps",
    "fast_path_available",
    "gather",
    "group_document",
    "is_writer_layout",
]

#: Zarr releases (major, minor) whose documents this module reproduces (tested byte for byte).
TESTED_ZARR: Final = ((3, 1),)
#: The compressor Zarr v3 picks by default (``compressors="auto"``) and the writer relies on.
ZSTD_LEVEL: Final = 0
ZSTD_CHECKSUM: Final = False
_DTYPES: Final = frozenset({"float32", "float64", "int64", "bool"})


def fast_path_available() -> bool:
    """Whether the installed Zarr is a release whose documents this module reproduces."""
    try:
        major, minor = (int(p) for p in zarr.__version__.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) in TESTED_ZARR


def dumps(doc: Mapping[str, Any]) -> bytes:
    """Serialize a document as Zarr does (``json_indent`` from Zarr's config, NaN allowed)."""
    indent = zarr.config.get("json_indent")
    return json.dumps(doc, indent=indent, allow_nan=True).encode()


def _fill_json(dtype: np.dtype[Any], fill: Any) -> Any:
    if dtype.kind == "f":
        value = float(fill)
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if dtype.kind == "b":
        return bool(fill)
    return int(fill)


def array_document(
    *,
    shape: Sequence[int],
    chunks: Sequence[int],
    dtype: np.dtype[Any],
    fill_value: Any,
    dimension_names: Sequence[str],
    attributes: Mapping[str, Any],
) -> dict[str, Any] | None:
    """The ``zarr.json`` of an array as ``Group.create_array`` writes it with these arguments
    (default codecs and chunk keys), or None for a dtype outside the writer's layout."""
    dtype = np.dtype(dtype)
    name = dtype.name
    if name not in _DTYPES or dtype.byteorder == ">":
        return None
    serializer: dict[str, Any] = {"name": "bytes"}
    if dtype.itemsize > 1:
        serializer["configuration"] = {"endian": "little"}
    return {
        "shape": [int(s) for s in shape],
        "data_type": name,
        "chunk_grid": {
            "name": "regular",
            "configuration": {"chunk_shape": [int(c) for c in chunks]},
        },
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": _fill_json(dtype, fill_value),
        "codecs": [
            serializer,
            {"name": "zstd", "configuration": {"level": ZSTD_LEVEL, "checksum": ZSTD_CHECKSUM}},
        ],
        "attributes": dict(attributes),
        "dimension_names": list(dimension_names),
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }


def is_writer_layout(doc: Mapping[str, Any]) -> bool:
    """Whether a stored array document has the layout :func:`array_document` builds (so the
    writer may keep rewriting it itself): every key and value the same but shape, fill value,
    attributes and dimension names."""
    try:
        dtype = np.dtype(str(doc["data_type"]))
        shape = doc["shape"]
        dims = doc["dimension_names"]
        ref = array_document(
            shape=shape,
            chunks=doc["chunk_grid"]["configuration"]["chunk_shape"],
            dtype=dtype,
            fill_value=0,
            dimension_names=dims,
            attributes=doc["attributes"],
        )
    except (KeyError, TypeError, ValueError):
        return False
    if ref is None or list(doc) != list(ref) or len(dims) != len(shape):
        return False
    return all(doc[k] == ref[k] for k in ref if k != "fill_value")


def chunk_key(indices: Sequence[int]) -> str:
    """The key of a chunk under default ``/`` chunk-key encoding (``c/3/0``)."""
    return "c/" + "/".join(str(int(i)) for i in indices)


def chunk_encoder(doc: Mapping[str, Any]) -> Callable[[Any], bytes]:
    """Encode a whole chunk of an array of the writer's layout to the bytes of its file
    (little-endian values compressed by numcodecs' Zstd, as Zarr's codecs do)."""
    little = np.dtype(str(doc["data_type"])).newbyteorder("<")
    config = doc["codecs"][1]["configuration"]
    zstd = Zstd(level=int(config["level"]), checksum=bool(config["checksum"]))

    def encode(chunk: Any) -> bytes:
        out: bytes = zstd.encode(np.ascontiguousarray(chunk, dtype=little))
        return out

    return encode


def group_document(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The ``zarr.json`` of a group (no consolidated metadata)."""
    return {"attributes": dict(attributes), "zarr_format": 3, "node_type": "group"}


def consolidated_group_document(
    attributes: Mapping[str, Any], arrays: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """The group's ``zarr.json`` as ``zarr.consolidate_metadata`` writes it for a group whose
    only members are ``arrays`` (name -> array document), in Zarr's member order."""
    members = sorted(
        arrays.items(),
        key=lambda item: (item[0].count("/"), unicodedata.normalize("NFKC", item[0]).casefold()),
    )
    return {
        "attributes": dict(attributes),
        "zarr_format": 3,
        "consolidated_metadata": {
            "kind": "inline",
            "must_understand": False,
            "metadata": {name: dict(doc) for name, doc in members},
        },
        "node_type": "group",
    }


# -- store I/O and chunks --------------------------------------------------------------------


class SyncingLocalStore(LocalStore):
    """A :class:`LocalStore` that remembers which keys it wrote, so they can be fsync'ed."""

    def __init__(self, root: Path | str, *, read_only: bool = False) -> None:
        super().__init__(root, read_only=read_only)
        self.dirty: set[str] = set()
        self._dirs: set[Path] = set()  # directories known to exist

    async def set(self, key: str, value: Any) -> None:
        await super().set(key, value)
        self.dirty.add(key)

    async def set_if_not_exists(self, key: str, value: Any) -> None:
        await super().set_if_not_exists(key, value)
        self.dirty.add(key)

    def write_files(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Write whole files under the store, each atomically as Zarr's own store does (a
        ``.partial`` temporary file renamed over the key), in the calling thread: the cost is
        the system calls, not an event-loop and thread-pool round trip per file."""
        for key, data in items:
            path = self.root / key
            if path.parent not in self._dirs:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._dirs.add(path.parent)
            tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            self.dirty.add(key)

    def fsync_dirty(self) -> None:
        """fsync every file written since the last call and the directories holding them.

        The fsyncs run concurrently (threads): on ext4 the journal then commits them together,
        ~10 ms for a batch's files instead of ~100 ms one after another (measured here).
        """
        if not self.dirty:
            return
        paths: set[Path] = {self.root.parent}  # the store's own directory entry
        for key in self.dirty:
            path = self.root / key
            paths.add(path)
            parent = path.parent
            while parent not in paths and parent != self.root.parent:
                paths.add(parent)
                parent = parent.parent
        gather(*(asyncio.to_thread(_fsync_path, p) for p in paths))
        self.dirty.clear()


def array_chunk_encoder(arr: zarr.Array[Any]) -> tuple[Callable[[AnyArray], bytes], int] | None:
    """How to encode a whole chunk of ``arr`` without Zarr's write path, if it is laid out as
    this writer creates arrays: Zarr v3, regular chunks spanning every axis but the first,
    default chunk keys, codecs ``bytes`` (little-endian) then ``zstd``. Returns the encoder and
    the chunk's rows, or None (another layout: the array is written through Zarr's indexing).

    The bytes are those Zarr's own codecs produce (the array's dtype little-endian, compressed
    by numcodecs' Zstd with the array's level and checksum flag); Zarr's write path costs ~1 ms
    of Python per array and write, which made the writer the largest CPU user under a backlog.
    """
    md = arr.metadata
    if not isinstance(md, ArrayV3Metadata) or md.storage_transformers:
        return None
    grid, keys, codecs = md.chunk_grid, md.chunk_key_encoding, md.codecs
    if not isinstance(grid, RegularChunkGrid) or tuple(grid.chunk_shape[1:]) != arr.shape[1:]:
        return None
    if not isinstance(keys, DefaultChunkKeyEncoding) or keys.separator != "/":
        return None
    if len(codecs) != 2 or not isinstance(codecs[0], BytesCodec):
        return None
    if codecs[0].endian not in (None, Endian.little) or not isinstance(codecs[1], ZstdCodec):
        return None
    dtype = np.dtype(arr.dtype)
    if dtype.kind not in "biuf":
        return None
    little = dtype.newbyteorder("<")
    zstd = Zstd(level=codecs[1].level, checksum=codecs[1].checksum)

    def encode(chunk: AnyArray) -> bytes:
        out: bytes = zstd.encode(np.ascontiguousarray(chunk, dtype=little))
        return out

    return encode, int(grid.chunk_shape[0])


def _fsync_path(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # deleted since (a trim removed the chunk)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def gather(*coros: Coroutine[Any, Any, Any]) -> None:
    """Run Zarr coroutines concurrently on Zarr's event loop and wait for all of them."""
    if not coros:
        return

    async def _all() -> None:
        await asyncio.gather(*coros)

    sync(_all())

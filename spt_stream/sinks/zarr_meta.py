"""Zarr v3 metadata documents of the trace store, built as plain JSON (an adapter over Zarr).

Why: Zarr's node API (``Group.create_array``, ``AsyncArray.resize``, ``update_attributes``,
``consolidate_metadata``) costs 1-4 ms of Python and an event-loop round trip per array. A trace
store creates ~35 arrays per run, grows them once and trims and consolidates them at the end:
~220 ms of the writer's CPU per short run (docs/BENCHMARKS.md, "Zarr writer"), which on two
cores delayed the frames of the runs behind it. For the one layout the trace writer creates
(regular chunks, ``bytes`` + ``zstd`` codecs, default ``/`` chunk keys, float32/float64/int64/
bool), the documents are small JSON objects that this module builds directly and the writer
writes as files.

The contract: every document here is byte for byte what Zarr's public API writes for the same
array or group (``tests/test_zarr_meta.py`` builds each case both ways and compares the files).
The fast path is used only with a Zarr release in :data:`TESTED_ZARR` (the range pinned in
pyproject.toml); with any other release, or a store holding anything else, the writer goes
through Zarr's public API (:func:`fast_path_available`).
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import numpy as np
import zarr
from numcodecs.zstd import Zstd

__all__ = [
    "TESTED_ZARR",
    "array_document",
    "chunk_encoder",
    "chunk_key",
    "consolidated_group_document",
    "dumps",
    "fast_path_available",
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

"""The bluesky-kafka wire format: one Kafka message per document, value = msgpack ``[name, doc]``.

This is the format :class:`bluesky_kafka.Publisher` writes (msgpack with msgpack-numpy's
extension layout for numpy values), implemented here without monkey-patching :mod:`msgpack`
(``msgpack_numpy.patch()`` changes the module for the whole process) and without pickle:

* an ``ndarray`` is the map ``{b"nd": True, b"type": dtype.str, b"kind": b"",
  b"shape": [...], b"data": <raw bytes, C order>}``;
* a numpy scalar is ``{b"nd": False, b"type": dtype.str, b"data": <raw bytes>}``;
* a Python ``complex`` is ``{b"complex": True, b"data": repr(value)}``.

Decoding is safe on hostile input. msgpack-numpy stores object arrays (``kind == b"O"``) as a
pickle and un-pickles them on decode, which executes code chosen by whoever wrote the message:
:func:`decode_document` refuses object and structured (``kind == b"V"``) dtypes outright, refuses
msgpack extension types, and checks that an array's ``shape`` and ``dtype`` account for exactly
the bytes it carries. Every problem is reported as :class:`~spt_stream.errors.DecodeError`.

Decoded arrays are **read-only** views of the message bytes (no copy): call ``arr.copy()`` before
working on one in place.

This module is pure: it imports no Kafka client. The producers
(:mod:`spt_stream.transports.publish`, the feedback publisher) encode with it and the Kafka
source decodes with it; neither side imports the other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import numpy as np

# Bind msgpack's implementation directly: ``msgpack_numpy.patch()`` (run by ``import
# bluesky_kafka``) replaces ``msgpack.packb``/``unpackb`` with versions that un-pickle object
# arrays before any hook of ours sees them. The submodules are left untouched by the patch.
try:
    from msgpack._cmsgpack import Packer as _Packer  # type: ignore[import-untyped]
    from msgpack._cmsgpack import unpackb as _unpackb
except ImportError:  # pure-Python build of msgpack
    from msgpack.fallback import Packer as _Packer  # type: ignore[import-untyped]
    from msgpack.fallback import unpackb as _unpackb

from spt_stream.errors import DecodeError, SptValueError

__all__ = [
    "DOCUMENT_NAMES",
    "decode_document",
    "encode_document",
]

#: The document names event-model defines. :func:`decode_document` does not enforce them (an
#: unknown name is the handler's call to reject); they are here for callers that want to check.
DOCUMENT_NAMES: Final[frozenset[str]] = frozenset(
    {
        "start",
        "descriptor",
        "event",
        "event_page",
        "resource",
        "datum",
        "datum_page",
        "stop",
        "stream_resource",
        "stream_datum",
    }
)

#: numpy dtype kinds that can be rebuilt from raw bytes without running code.
_SAFE_KINDS: Final[frozenset[str]] = frozenset("biufcmMSU")
_MAX_DIMS: Final = 32
_MAX_DTYPE_LEN: Final = 32


class _WireFormatError(Exception):
    """Raised inside msgpack hooks; turned into :class:`DecodeError` at the boundary."""


# --------------------------------------------------------------------------------------------
# encoding


def _encode_default(obj: Any) -> Any:
    """msgpack ``default`` hook: numpy values in msgpack-numpy's layout (byte-compatible)."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _SAFE_KINDS or obj.dtype.fields is not None:
            raise TypeError(
                f"cannot encode an array of dtype {obj.dtype}: object and structured dtypes "
                "are not allowed on the wire"
            )
        # Zero-copy like msgpack-numpy; datetimes cannot export a buffer, so they are copied.
        plain = obj.flags["C_CONTIGUOUS"] and obj.dtype.kind not in "mM"
        data = obj.data if plain else obj.tobytes()
        return {
            b"nd": True,
            b"type": obj.dtype.str,
            b"kind": b"",
            b"shape": obj.shape,
            b"data": data,
        }
    if isinstance(obj, np.bool_ | np.number):
        return {b"nd": False, b"type": obj.dtype.str, b"data": obj.data}
    if isinstance(obj, complex):
        return {b"complex": True, b"data": repr(obj)}
    raise TypeError(f"cannot encode an object of type {type(obj).__name__}")


def encode_document(name: str, doc: Mapping[str, Any]) -> bytes:
    """Serialize one Bluesky document exactly as :class:`bluesky_kafka.Publisher` does.

    Returns the msgpack bytes of ``[name, doc]``; numpy arrays and scalars use msgpack-numpy's
    layout, so any bluesky-kafka consumer reads the result.

    Raises
    ------
    SptValueError
        If ``doc`` holds something the wire format cannot carry (an object-dtype array, a set,
        an arbitrary Python object).
    """
    try:
        packer = _Packer(default=_encode_default, use_bin_type=True)
        return packer.pack([name, doc])  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise SptValueError(f"cannot encode {name!r} document: {exc}") from exc


# --------------------------------------------------------------------------------------------
# decoding


def _dtype(descr: Any) -> np.dtype[Any]:
    if not isinstance(descr, str) or not descr or len(descr) > _MAX_DTYPE_LEN:
        raise _WireFormatError(f"numpy 'type' must be a short dtype string, got {descr!r:.60}")
    try:
        dt = np.dtype(descr)
    except (TypeError, ValueError, SyntaxError) as exc:
        raise _WireFormatError(f"numpy 'type' {descr!r} is not a dtype: {exc}") from None
    if dt.kind not in _SAFE_KINDS or dt.fields is not None or dt.subdtype is not None:
        raise _WireFormatError(f"numpy dtype {descr!r} (kind {dt.kind!r}) is not allowed")
    if dt.itemsize == 0:
        raise _WireFormatError(f"numpy dtype {descr!r} has zero item size")
    return dt


def _decode_array(obj: dict[Any, Any]) -> np.ndarray[Any, Any]:
    kind = obj.get(b"kind", b"")
    if kind != b"":
        if kind == b"O":
            raise _WireFormatError("object-dtype array refused (msgpack-numpy pickles them)")
        raise _WireFormatError(f"numpy array kind {kind!r:.20} refused (only plain dtypes)")
    dt = _dtype(obj.get(b"type"))
    shape = obj.get(b"shape")
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_DIMS
        or not all(type(n) is int and n >= 0 for n in shape)
    ):
        raise _WireFormatError(f"numpy 'shape' must be a list of non-negative ints: {shape!r:.80}")
    data = obj.get(b"data")
    if not isinstance(data, bytes):
        raise _WireFormatError(f"numpy 'data' must be bytes, got {type(data).__name__}")
    expected = math.prod(shape) * dt.itemsize
    if expected != len(data):
        raise _WireFormatError(
            f"numpy array of shape {tuple(shape)} and dtype {dt.str} needs {expected} bytes, "
            f"message carries {len(data)}"
        )
    try:
        return np.frombuffer(data, dtype=dt).reshape(shape)
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. a zero-size array, huge dims
        raise _WireFormatError(f"cannot build array of shape {shape!r:.80}: {exc}") from None


def _decode_scalar(obj: dict[Any, Any]) -> Any:
    dt = _dtype(obj.get(b"type"))
    data = obj.get(b"data")
    if not isinstance(data, bytes) or len(data) != dt.itemsize:
        raise _WireFormatError(f"numpy scalar of dtype {dt.str} needs {dt.itemsize} data bytes")
    return np.frombuffer(data, dtype=dt)[0]


def _decode_complex(obj: dict[Any, Any]) -> complex:
    data = obj.get(b"data")
    if isinstance(data, bytes):
        data = data.decode("ascii", "replace")
    if not isinstance(data, str) or len(data) > 100:
        raise _WireFormatError("complex value must carry its repr as a short string")
    try:
        return complex(data)
    except ValueError:
        raise _WireFormatError(f"invalid complex literal {data!r}") from None


def _object_hook(obj: dict[Any, Any]) -> Any:
    """msgpack ``object_hook``: rebuild numpy values; ordinary maps pass through untouched."""
    if b"nd" in obj:
        nd = obj[b"nd"]
        if nd is True:
            return _decode_array(obj)
        if nd is False:
            return _decode_scalar(obj)
        raise _WireFormatError(f"numpy marker b'nd' must be true or false, got {nd!r:.40}")
    if b"complex" in obj:
        return _decode_complex(obj)
    return obj


def _refuse_ext(code: int, data: bytes) -> Any:
    raise _WireFormatError(f"msgpack extension type {code} is not part of the wire format")


def decode_document(value: bytes) -> tuple[str, dict[str, Any]]:
    """Decode one Kafka message value into ``(name, doc)``.

    Checks framing and types only: the value must be msgpack of a 2-element list whose first
    item is a string (the document name, not checked against :data:`DOCUMENT_NAMES`) and whose
    second is a map with string keys. Numpy arrays come back as **read-only** arrays sharing the
    message buffer; copy before modifying.

    Raises
    ------
    DecodeError
        With the reason, for anything else: not msgpack, truncated or trailing bytes, invalid
        UTF-8, a pickled (object-dtype) or malformed numpy array, an extension type, wrong shape.
        The caller adds the Kafka position (``source=``) when it has one.
    """
    if not isinstance(value, bytes | bytearray | memoryview):
        raise DecodeError(f"message value must be bytes, got {type(value).__name__}")
    if len(value) == 0:
        raise DecodeError("empty message value (tombstone?)")
    try:
        obj = _unpackb(value, raw=False, object_hook=_object_hook, ext_hook=_refuse_ext)
    except _WireFormatError as exc:
        raise DecodeError(f"invalid numpy payload: {exc}") from None
    except Exception as exc:  # msgpack raises many types (ValueError, ExtraData, StackError...)
        raise DecodeError(f"not valid msgpack: {type(exc).__name__}: {exc}"[:300]) from None
    if not isinstance(obj, list) or len(obj) != 2:
        got = f"list of {len(obj)}" if isinstance(obj, list) else type(obj).__name__
        raise DecodeError(f"expected a 2-element [name, doc] list, got {got}")
    name, doc = obj
    if not isinstance(name, str):
        raise DecodeError(f"document name must be a string, got {type(name).__name__}")
    if not isinstance(doc, dict):
        raise DecodeError(f"{name!r:.40} document must be a map, got {type(doc).__name__}")
    for key in doc:
        if type(key) is not str:
            raise DecodeError(f"{name!r:.40} document has a non-string key {key!r:.40}")
    return name, doc

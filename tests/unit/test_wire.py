"""The bluesky-kafka wire format (spt_stream.transports.wire): compatibility and hostile input."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from event_model import compose_run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spt_stream.errors import DecodeError, SptValueError
from spt_stream.transports.wire import DOCUMENT_NAMES, decode_document, encode_document


def _run_documents() -> list[tuple[str, dict[str, Any]]]:
    """A small real run composed with event-model, carrying a 400-point spectrum per event."""
    energy = np.linspace(7600.0, 8000.0, 400)
    bundle = compose_run(metadata={"plan_name": "xanes", "spt": {"element": "Co"}})
    desc = bundle.compose_descriptor(
        name="primary",
        data_keys={
            "mu": {"dtype": "array", "shape": [400], "source": "sim:mu"},
            "I0": {"dtype": "number", "shape": [], "source": "sim:I0"},
        },
    )
    docs: list[tuple[str, dict[str, Any]]] = [("start", dict(bundle.start_doc))]
    docs.append(("descriptor", dict(desc.descriptor_doc)))
    rng = np.random.default_rng(1)
    for i in range(3):
        mu = np.tanh((energy - 7709.0) / 5.0) + rng.normal(0, 1e-3, 400)
        ev = desc.compose_event(
            data={"mu": mu, "I0": float(i)},
            timestamps={"mu": 1.0 + i, "I0": 1.0 + i},
        )
        docs.append(("event", dict(ev)))
    docs.append(("stop", dict(bundle.compose_stop())))
    return docs


def _assert_same(a: Any, b: Any) -> None:
    """Deep equality where arrays must match dtype, shape and every bit."""
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray)
        assert a.dtype == b.dtype
        assert a.shape == b.shape
        assert np.ascontiguousarray(a).tobytes() == b.tobytes()
    elif isinstance(a, dict):
        assert isinstance(b, dict)
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert isinstance(b, list)
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b
        assert type(a) is type(b) or isinstance(a, np.generic | float | int)


class TestRoundTrip:
    def test_run_documents_round_trip(self) -> None:
        """Every document of a composed run decodes to what was encoded, arrays bit for bit."""
        for name, doc in _run_documents():
            got_name, got = decode_document(encode_document(name, doc))
            assert got_name == name
            _assert_same(doc, got)

    @pytest.mark.parametrize(
        "arr",
        [
            np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 5e-324, 1.7976931348623157e308]),
            np.arange(12, dtype=">i4").reshape(3, 4),
            np.arange(24, dtype=np.float32).reshape(2, 3, 4)[:, ::2, 1:],  # non-contiguous
            np.array([1 + 2j, np.nan - 1j], dtype=np.complex128),
            np.array([True, False]),
            np.array([], dtype=np.float64),
            np.array(["Co", "LiCoO2"]),
            np.array([b"ab", b"c"]),
            np.array(["2026-11-01T00:00"], dtype="datetime64[s]"),
            np.uint64(2**64 - 1),
            np.float16(1.5),
        ],
        ids=lambda a: f"{a.dtype}-{np.shape(a)}",
    )
    def test_numpy_values_bit_for_bit(self, arr: Any) -> None:
        """Arrays and scalars of every plain dtype (incl. NaN payloads, -0.0) survive exactly."""
        _, doc = decode_document(encode_document("event", {"data": {"x": arr}}))
        _assert_same(np.asarray(arr), np.asarray(doc["data"]["x"]))

    def test_decoded_arrays_are_read_only(self) -> None:
        """Decoded arrays share the message buffer and say so by being read-only."""
        _, doc = decode_document(encode_document("event", {"x": np.ones(4)}))
        assert not doc["x"].flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            doc["x"][0] = 2.0

    def test_document_names_are_event_model_names(self) -> None:
        """The known-name list matches event-model's DocumentNames."""
        from event_model import DocumentNames

        assert {d.name for d in DocumentNames if not d.name.startswith("bulk")} <= DOCUMENT_NAMES

    def test_encode_refuses_object_arrays(self) -> None:
        """The encoder never writes a pickle (object dtype) onto the wire."""
        with pytest.raises(SptValueError, match="object"):
            encode_document("event", {"x": np.array([{}, None], dtype=object)})


class TestBlueskyKafkaCompatibility:
    def test_bytes_identical_to_bluesky_kafka_serializer(self) -> None:
        """encode_document produces exactly the bytes bluesky_kafka.Publisher would send."""
        import bluesky_kafka  # patches msgpack like a Publisher process does

        serializer = bluesky_kafka.Publisher.__init__.__defaults__[-1]  # msgpack.dumps at import
        for name, doc in _run_documents():
            assert encode_document(name, doc) == serializer((name, doc))

    def test_decodes_bluesky_kafka_messages(self) -> None:
        """Bytes from bluesky-kafka's serializer decode to the same documents."""
        import msgpack_numpy

        for name, doc in _run_documents():
            got_name, got = decode_document(msgpack_numpy.packb((name, doc)))
            assert got_name == name
            _assert_same(doc, got)


class TestHostile:
    def test_object_dtype_pickle_is_never_unpickled(self, tmp_path: Path) -> None:
        """A pickle payload (msgpack-numpy object array) is refused without being executed,
        even after bluesky_kafka has monkey-patched msgpack in this process."""
        import bluesky_kafka  # noqa: F401 - the patch must not weaken decode_document

        marker = tmp_path / "pwned"

        class Bomb:
            def __reduce__(self) -> tuple[Any, ...]:
                return (Path.touch, (marker,))

        payload = msgpack.packb(
            [
                "event",
                {
                    "data": {
                        "x": {
                            b"nd": True,
                            b"type": [["", "|O"]],
                            b"kind": b"O",
                            b"shape": [1],
                            b"data": pickle.dumps(Bomb()),
                        }
                    }
                },
            ],
            use_bin_type=True,
        )
        with pytest.raises(DecodeError, match="object-dtype"):
            decode_document(payload)
        assert not marker.exists()

    @pytest.mark.parametrize(
        ("array", "reason"),
        [
            ({b"nd": True, b"type": "<f8", b"kind": b"", b"shape": [10], b"data": b"\0" * 8}, "80"),
            ({b"nd": True, b"type": "<f8", b"kind": b"", b"shape": [1], b"data": b"\0" * 16}, "16"),
            ({b"nd": True, b"type": "|O", b"kind": b"", b"shape": [1], b"data": b"\0" * 8}, "'O'"),
            ({b"nd": True, b"type": "V8", b"kind": b"", b"shape": [1], b"data": b"\0" * 8}, "'V'"),
            ({b"nd": True, b"type": "<f8", b"kind": b"V", b"shape": [1], b"data": b"\0" * 8}, "V"),
            ({b"nd": True, b"type": "nope", b"kind": b"", b"shape": [1], b"data": b""}, "dtype"),
            ({b"nd": True, b"type": "<f8", b"kind": b"", b"shape": [-1], b"data": b""}, "shape"),
            ({b"nd": True, b"type": "<f8", b"kind": b"", b"shape": 3, b"data": b""}, "shape"),
            ({b"nd": True, b"type": "<f8", b"kind": b"", b"shape": [1], b"data": "x"}, "bytes"),
            ({b"nd": True, b"type": "S0", b"kind": b"", b"shape": [10**12], b"data": b""}, "zero"),
            ({b"nd": True, b"type": "(2,)f8", b"kind": b"", b"shape": [1], b"data": b""}, "allow"),
            ({b"nd": False, b"type": "<f8", b"data": b"\0"}, "8 data bytes"),
            ({b"nd": 1, b"type": "<f8", b"data": b"\0"}, "true or false"),
            ({b"complex": True, b"data": "__import__('os')"}, "complex"),
        ],
    )
    def test_malformed_numpy_payloads(self, array: dict[bytes, Any], reason: str) -> None:
        """Each malformed array/scalar is a DecodeError whose message says what was wrong."""
        payload = msgpack.packb(["event", {"x": array}], use_bin_type=True)
        with pytest.raises(DecodeError, match=reason):
            decode_document(payload)

    @pytest.mark.parametrize(
        ("value", "reason"),
        [
            (b"", "empty"),
            (b"\xc1", "not valid msgpack"),
            (msgpack.packb(["start", {}]) + b"\xc0", "not valid msgpack"),  # trailing bytes
            (msgpack.packb(["start", {"a": 1}])[:-1], "not valid msgpack"),  # truncated
            (msgpack.packb({"start": {}}), "2-element"),
            (msgpack.packb(["start", {}, {}]), "2-element"),
            (msgpack.packb([1, {}]), "name must be a string"),
            (msgpack.packb(["start", [1, 2]]), "must be a map"),
            (msgpack.packb(["start", {b"uid": 1}], use_bin_type=True), "non-string key"),
            (msgpack.packb(["start", {"t": msgpack.ExtType(5, b"x")}]), "extension type 5"),
            (b"\x92\xa5start\x81\xa1x\xa2\xff\xfe", "not valid msgpack"),  # invalid UTF-8
        ],
    )
    def test_bad_framing(self, value: bytes, reason: str) -> None:
        """Framing problems are DecodeErrors naming the problem."""
        with pytest.raises(DecodeError, match=reason):
            decode_document(value)

    def test_deep_nesting_is_a_decode_error(self) -> None:
        """A pathologically nested message fails cleanly, not with RecursionError."""
        value = b"\x92\xa5start" + b"\x81\xa1a" * 5000 + b"\xc0"
        with pytest.raises(DecodeError):
            decode_document(value)


_msgpack_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=16)
)
_nd_map = st.fixed_dictionaries(
    {b"nd": st.sampled_from([True, False, 0, None])},
    optional={
        b"type": st.sampled_from(["<f8", "|O", "V4", "<i4", "S0", "U2", "bad", "<M8[s]"])
        | st.text(max_size=4),
        b"kind": st.sampled_from([b"", b"O", b"V", b"x"]),
        b"shape": st.lists(st.integers(-2, 2**40), max_size=4) | st.integers(-(2**63), 2**63 - 1),
        b"data": st.binary(max_size=64),
    },
)
_msgpack_tree = st.recursive(
    _msgpack_leaf | _nd_map,
    lambda kids: (
        st.lists(kids, max_size=4)
        | st.dictionaries(st.text(max_size=4) | st.binary(max_size=4), kids, max_size=4)
    ),
    max_leaves=12,
)


class TestFuzz:
    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=200))
    def test_arbitrary_bytes_only_raise_decode_error(self, value: bytes) -> None:
        """Random bytes either decode to (str, dict) or raise DecodeError, nothing else."""
        try:
            name, doc = decode_document(value)
        except DecodeError:
            return
        assert isinstance(name, str)
        assert isinstance(doc, dict)

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from(sorted(DOCUMENT_NAMES)) | _msgpack_leaf, _msgpack_tree)
    def test_arbitrary_msgpack_structures_only_raise_decode_error(
        self, name: Any, doc: Any
    ) -> None:
        """Well-formed msgpack of any shape (incl. fake numpy maps) -> result or DecodeError."""
        value = msgpack.packb([name, doc], use_bin_type=True)
        try:
            got_name, got = decode_document(value)
        except DecodeError:
            return
        assert got_name == name
        assert isinstance(got, dict)

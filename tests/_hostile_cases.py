"""Seeded generator of hostile Kafka messages for tests/pipeline/test_hostile_input.py.

Every case is the *value of one Kafka message* (bytes, as the broker hands it to the source), so
every case goes through the real wire decoder. Cases come in two phases, each inside a run that
a valid start and descriptor (category ``valid``) open and a valid stop closes; hostile events
refer to the open run's descriptor. Events of categories that may become frames carry a fresh
``seq_num`` (never used before in the run), so a frame's row can be found by its ``seq_num``.
"""

from __future__ import annotations

import copy
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from spt_stream.core.grid import edge_energy
from spt_stream.transports.wire import encode_document
from tests._spectra_docs import _endmembers

__all__ = ["CATEGORIES", "Case", "generate_cases"]

#: Cases per category (sum: 10,000). ``valid`` also holds the starts, descriptors and stops.
CATEGORIES: dict[str, int] = {
    "valid": 800,
    "random_bytes": 1300,
    "random_msgpack": 1200,
    "truncated": 1200,
    "bitflip": 1000,
    "hostile_numpy": 500,
    "missing_field": 700,
    "wrong_type": 800,
    "unknown_descriptor": 400,
    "huge_array": 300,
    "nan_spectrum": 600,
    "wrong_shape": 400,
    "bad_seq_num": 400,
    "bad_name": 400,
}

N_POINTS = 400
MAX_POINTS = 1024  # settings.assembly.max_points in the test
WRONG_VALUES: list[Any] = [None, -1, 1.5, "x", "", [], [1, "a"], {}, {"a": 1}, b"\x00", True]
VOCABULARY = [
    "uid",
    "time",
    "run_start",
    "descriptor",
    "seq_num",
    "data",
    "timestamps",
    "data_keys",
    "name",
    "exit_status",
    "filled",
    "spt",
    "resource",
    "datum_id",
]
NAMES = [
    "start",
    "descriptor",
    "event",
    "event_page",
    "stop",
    "resource",
    "datum",
    "bulk_events",
    "Event",
    "",
    "EVENT",
    "stream_datum",
    "x" * 300,
    "start\x00",
    "\u00e9v\u00e9nement",
]


@dataclass(frozen=True, slots=True)
class Case:
    """One message: its category, value bytes, and the fresh seq_num of its event (if any)."""

    category: str
    value: bytes
    seq_num: int | None = None


class _Run:
    """A run's documents, built by hand (validation of 10,000 documents by event-model would
    cost more than the test): start, one descriptor, events with a given seq_num, stop."""

    def __init__(self, rng: np.random.Generator, t0: float) -> None:
        self.rng, self.t = rng, t0
        self.uid = str(uuid.uuid4())
        self.desc_uid = str(uuid.uuid4())
        self.next_seq = 1
        self.energy = np.asarray(_energy(), dtype=np.float64)
        spt = {
            "element": "Co",
            "edge": "K",
            "spectrum": "qxas_spectrum",
            "energy": "qxas_energy",
            "mode": "mu",
        }
        self.start = {"uid": self.uid, "time": t0, "plan_name": "hostile", "spt": spt}
        keys = {
            "qxas_spectrum": {"source": "sim", "dtype": "array", "shape": [N_POINTS]},
            "qxas_energy": {"source": "sim", "dtype": "array", "shape": [N_POINTS]},
            "cell_potential": {"source": "sim", "dtype": "number", "shape": [], "units": "V"},
        }
        self.descriptor = {
            "uid": self.desc_uid,
            "run_start": self.uid,
            "time": t0,
            "name": "primary",
            "data_keys": keys,
            "configuration": {},
            "object_keys": {},
            "hints": {},
        }

    def fresh_seq(self) -> int:
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        return seq

    def event(self, seq: int) -> dict[str, Any]:
        co3, co4 = _endmembers()
        frac = float(self.rng.uniform())
        mu = 0.85 * ((1 - frac) * co3 + frac * co4) + 0.3 + self.rng.normal(size=co3.shape) * 0.004
        self.t += 0.05
        data = {"qxas_spectrum": mu, "qxas_energy": self.energy, "cell_potential": 3.9 + frac}
        return {
            "uid": str(uuid.uuid4()),
            "descriptor": self.desc_uid,
            "seq_num": seq,
            "time": self.t,
            "data": data,
            "timestamps": dict.fromkeys(data, self.t),
            "filled": {},
        }

    def stop(self) -> dict[str, Any]:
        return {
            "uid": str(uuid.uuid4()),
            "run_start": self.uid,
            "time": self.t + 1,
            "exit_status": "success",
            "num_events": {"primary": self.next_seq - 1},
        }


def _energy() -> np.ndarray[Any, Any]:
    from spt_stream.devtools.demo.experiment import SCAN_REL

    return np.asarray(SCAN_REL + edge_energy("Co"), dtype=np.float64)


def _random_obj(r: random.Random, depth: int = 0) -> Any:
    """A random msgpack-able value: scalars, strings, bytes, lists, maps keyed by the
    vocabulary of document fields (so required fields do appear)."""
    kind = r.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return r.choice([None, True, False])
    if kind == 1:
        return r.choice([0, -1, 1, 2**31, -(2**63), 2**64 - 1, r.randint(-1000, 1000)])
    if kind == 2:
        return r.choice([0.0, -0.0, float("nan"), float("inf"), -float("inf"), r.random()])
    if kind == 3:
        return "".join(chr(r.randrange(32, 0x2FF)) for _ in range(r.randrange(12)))
    if kind == 4:
        return r.randbytes(r.randrange(16))
    if kind == 5:
        return r.choice(VOCABULARY)
    if kind == 6:
        return [_random_obj(r, depth + 1) for _ in range(r.randrange(5))]
    return {r.choice(VOCABULARY): _random_obj(r, depth + 1) for _ in range(r.randrange(6))}


def _packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def _numpy_map(r: random.Random) -> dict[bytes, Any]:
    """A msgpack-numpy array map that lies: pickled/structured dtype, short data, bad shape."""
    variants: list[dict[bytes, Any]] = [
        {b"nd": True, b"type": "|O", b"kind": b"O", b"shape": [3], b"data": b"\x80\x04N."},
        {b"nd": True, b"type": "|V8", b"kind": b"V", b"shape": [1], b"data": b"\x00" * 8},
        {b"nd": True, b"type": "<f8", b"kind": b"", b"shape": [10**9], b"data": b"\x00" * 8},
        {b"nd": True, b"type": "<f8", b"kind": b"", b"shape": [400], b"data": b"\x00" * 7},
        {b"nd": True, b"type": "<f8", b"kind": b"", b"shape": [-1], b"data": b""},
        {b"nd": True, b"type": "<f8", b"kind": b"", b"shape": "400", b"data": b""},
        {b"nd": True, b"type": "not a dtype", b"kind": b"", b"shape": [1], b"data": b"\x00"},
        {b"nd": True, b"type": "<f8", b"kind": b"", b"shape": [1] * 40, b"data": b"\x00" * 8},
        {b"nd": False, b"type": "<f8", b"data": b"\x00\x00"},
        {b"nd": 7, b"type": "<f8", b"data": b""},
        {b"complex": True, b"data": "1+" * 80},
        {b"nd": True, b"type": "<f8", b"kind": b"", b"shape": [2], b"data": "sixteen chars!!!"},
    ]
    return r.choice(variants)


def generate_cases(seed: int) -> list[Case]:
    """The 10,000 cases of :data:`CATEGORIES`, in delivery order (see the module docstring)."""
    r = random.Random(seed)
    rng = np.random.default_rng(seed)
    per_phase = {k: [v // 2, v - v // 2] for k, v in CATEGORIES.items()}
    cases: list[Case] = []
    for phase in range(2):
        run = _Run(rng, 1.7e9 + phase * 1e4)
        head = [
            Case("valid", encode_document("start", run.start)),
            Case("valid", encode_document("descriptor", run.descriptor)),
        ]
        body: list[Callable[[], Case]] = []
        for category, counts in per_phase.items():
            n = counts[phase] - (3 if category == "valid" else 0)
            make = _MAKERS[category]
            body.extend((lambda make=make, run=run: make(r, run)) for _ in range(n))
        r.shuffle(body)
        cases.extend(head)
        cases.extend(make() for make in body)  # built in order: seq_nums follow delivery
        cases.append(Case("valid", encode_document("stop", run.stop())))
    assert len(cases) == sum(CATEGORIES.values())
    return cases


# -- one maker per category --------------------------------------------------------------------


def _valid(r: random.Random, run: _Run) -> Case:
    seq = run.fresh_seq()
    return Case("valid", encode_document("event", run.event(seq)), seq)


def _random_bytes(r: random.Random, run: _Run) -> Case:
    return Case("random_bytes", r.randbytes(r.randrange(0, 200)))


def _random_msgpack(r: random.Random, run: _Run) -> Case:
    shape = r.randrange(4)
    if shape == 0:  # anything at all
        obj: Any = _random_obj(r)
    elif shape == 1:  # [name, map] with random fields
        obj = [
            r.choice(NAMES),
            _random_obj(r, 2)
            if r.random() < 0.2
            else {r.choice(VOCABULARY): _random_obj(r, 1) for _ in range(r.randrange(8))},
        ]
    elif shape == 2:  # a list of the wrong length, or a non-string name
        obj = [_random_obj(r, 2) for _ in range(r.choice([0, 1, 3, 4]))]
    else:
        obj = [r.choice([5, None, b"event", 1.5]), {"uid": "x"}]
    return Case("random_msgpack", _packb(obj))


def _truncated(r: random.Random, run: _Run) -> Case:
    doc = r.choice(
        [
            ("event", run.event(run.fresh_seq())),
            ("start", run.start),
            ("descriptor", run.descriptor),
        ]
    )
    value = encode_document(*doc)
    return Case("truncated", value[: r.randrange(1, len(value))])


def _bitflip(r: random.Random, run: _Run) -> Case:
    seq = run.fresh_seq()
    value = bytearray(encode_document("event", run.event(seq)))
    for _ in range(r.randint(1, 3)):
        i = r.randrange(len(value))
        value[i] ^= 1 << r.randrange(8)
    return Case("bitflip", bytes(value), seq)


def _hostile_numpy(r: random.Random, run: _Run) -> Case:
    event = run.event(run.fresh_seq())
    energy = _numpy_map(r) if r.random() < 0.3 else event["data"]["qxas_energy"].tolist()
    data = {"qxas_spectrum": _numpy_map(r), "qxas_energy": energy, "cell_potential": 4.0}
    event = {**event, "data": data, "timestamps": dict.fromkeys(data, event["time"])}
    return Case("hostile_numpy", _packb(["event", event]))


def _missing_field(r: random.Random, run: _Run) -> Case:
    from spt_stream.assembly.ingest import REQUIRED_FIELDS

    name = r.choice(["event", "event", "descriptor", "stop", "start"])
    seq = run.fresh_seq()
    doc = {
        "event": lambda: run.event(seq),
        "descriptor": lambda: copy.deepcopy(run.descriptor),
        "stop": run.stop,
        "start": lambda: dict(run.start),
    }[name]()
    doc.pop(r.choice(REQUIRED_FIELDS[name]))
    return Case("missing_field", encode_document(name, doc), seq)


def _wrong_type(r: random.Random, run: _Run) -> Case:
    seq = run.fresh_seq()
    event = run.event(seq)
    where = r.choice(
        [
            "descriptor",
            "time",
            "data",
            "timestamps",
            "uid",
            "qxas_spectrum",
            "qxas_energy",
            "cell_potential",
        ]
    )
    value = r.choice(WRONG_VALUES)
    if where in event:
        event[where] = value
    else:
        event["data"][where] = value
    return Case("wrong_type", encode_document("event", event), seq)


def _unknown_descriptor(r: random.Random, run: _Run) -> Case:
    seq = run.fresh_seq()
    event = run.event(seq)
    event["descriptor"] = r.choice([str(uuid.uuid4()), "", run.uid, "x" * 1000])
    return Case("unknown_descriptor", encode_document("event", event), seq)


def _huge_array(r: random.Random, run: _Run) -> Case:
    seq = run.fresh_seq()
    event = run.event(seq)
    n = r.randint(MAX_POINTS + 1, 8 * MAX_POINTS)
    key = r.choice(["qxas_spectrum", "qxas_energy", "both"])
    big = np.linspace(7600.0, 7900.0, n)
    if key in ("qxas_spectrum", "both"):
        event["data"]["qxas_spectrum"] = np.ones(n)
    if key in ("qxas_energy", "both"):
        event["data"]["qxas_energy"] = big
    return Case("huge_array", encode_document("event", event), seq)


def _nan_spectrum(r: random.Random, run: _Run) -> Case:
    seq = run.fresh_seq()
    event = run.event(seq)
    key = r.choice(["qxas_spectrum", "qxas_spectrum", "qxas_energy"])
    arr = np.array(event["data"][key], dtype=np.float64)
    bad = r.choice([np.nan, np.inf, -np.inf])
    k = r.choice([1, 2, r.randrange(1, N_POINTS + 1)])
    arr[rng_idx(r, k)] = bad
    event["data"][key] = arr
    return Case("nan_spectrum", encode_document("event", event), seq)


def rng_idx(r: random.Random, k: int) -> list[int]:
    return r.sample(range(N_POINTS), k)


def _wrong_shape(r: random.Random, run: _Run) -> Case:
    seq = run.fresh_seq()
    event = run.event(seq)
    mu = np.asarray(event["data"]["qxas_spectrum"])
    event["data"]["qxas_spectrum"] = r.choice(
        [
            mu.reshape(20, 20),
            mu[: r.randrange(0, N_POINTS)],
            np.zeros(0),
            mu[:3],
            np.concatenate([mu, mu[:5]]),
            float(mu[0]),
            mu.astype(np.complex128),
            mu.astype("U8"),
            np.stack([mu, mu]),
        ]
    )
    return Case("wrong_shape", encode_document("event", event), seq)


def _bad_seq_num(r: random.Random, run: _Run) -> Case:
    event = run.event(0)
    # 2**64 - 1 is left out: it crashes the engine (tests/pipeline/test_hostile_input.py, the xfail)
    event["seq_num"] = r.choice([0, -1, -(2**40), 2**62, 2**63 - 1, True, 1.5, "7", None, [1]])
    return Case("bad_seq_num", encode_document("event", event))


def _bad_name(r: random.Random, run: _Run) -> Case:
    event = run.event(run.fresh_seq())
    name = r.choice([*NAMES[5:], "bogus", "start ", "Stop"])
    if r.random() < 0.2:  # a name that is not a string at all
        return Case("bad_name", _packb([r.choice([7, None, b"event", [1]]), {"uid": "x"}]))
    return Case("bad_name", encode_document(name, event))


_MAKERS: dict[str, Callable[[random.Random, _Run], Case]] = {
    "valid": _valid,
    "random_bytes": _random_bytes,
    "random_msgpack": _random_msgpack,
    "truncated": _truncated,
    "bitflip": _bitflip,
    "hostile_numpy": _hostile_numpy,
    "missing_field": _missing_field,
    "wrong_type": _wrong_type,
    "unknown_descriptor": _unknown_descriptor,
    "huge_array": _huge_array,
    "nan_spectrum": _nan_spectrum,
    "wrong_shape": _wrong_shape,
    "bad_seq_num": _bad_seq_num,
    "bad_name": _bad_name,
}

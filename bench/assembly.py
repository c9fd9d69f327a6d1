"""Frame assembly throughput: documents -> frames on one core.

Builds one quick-XAS run with event-model's ``compose_run`` (N events of a P-point float64
spectrum, the energy grid as a configuration value, two scalar readings), encodes every document
in the bluesky-kafka wire format (msgpack + msgpack-numpy ``[name, doc]``), then measures:

* ``assembly``: ``DocumentIngest`` fed already-decoded documents (read-only decoded arrays, as
  the Kafka consumer hands them over);
* ``decode + assembly``: msgpack decode of each message, then ``DocumentIngest``;
* ``assembly, writable arrays``: in-process style documents whose arrays are writable (copied).

Run: ``.venv/bin/python bench/assembly.py [--events 20000] [--points 400] [--repeat 3]``.
Prints a markdown table (best of ``--repeat``).
"""

from __future__ import annotations

import argparse
import gc
import time
from typing import Any

import msgpack
import msgpack_numpy
import numpy as np
from event_model import compose_run

from spt_stream.assembly.ingest import DocumentIngest


def make_documents(n_events: int, npts: int) -> list[tuple[str, dict[str, Any]]]:
    grid = np.linspace(7600.0, 7800.0, npts)
    run = compose_run(metadata={"element": "Co", "edge": "K"})
    docs: list[tuple[str, dict[str, Any]]] = [("start", dict(run.start_doc))]
    desc = run.compose_descriptor(
        name="primary",
        data_keys={
            "qxas_mu": {"source": "sim", "dtype": "array", "shape": [npts]},
            "qxas_potential": {"source": "sim", "dtype": "number", "shape": []},
            "qxas_current": {"source": "sim", "dtype": "number", "shape": []},
        },
        configuration={
            "qxas": {
                "data": {"qxas_energy": grid},
                "timestamps": {"qxas_energy": 0.0},
                "data_keys": {"qxas_energy": {"source": "sim", "dtype": "array", "shape": [npts]}},
            }
        },
        object_keys={"qxas": ["qxas_mu", "qxas_potential", "qxas_current"]},
    )
    docs.append(("descriptor", dict(desc.descriptor_doc)))
    rng = np.random.default_rng(0)
    base = 1.0 / (1.0 + np.exp(-(grid - 7709.0) / 2.0))
    for i in range(n_events):
        t = time.time()
        ev = desc.compose_event(
            data={
                "qxas_mu": base + 0.001 * rng.standard_normal(npts),
                "qxas_potential": 3.0 + 1e-4 * i,
                "qxas_current": 1e-3,
            },
            timestamps={"qxas_mu": t, "qxas_potential": t, "qxas_current": t},
            seq_num=i + 1,
        )
        docs.append(("event", dict(ev)))
    docs.append(("stop", dict(run.compose_stop())))
    return docs


def encode(docs: list[tuple[str, dict[str, Any]]]) -> list[bytes]:
    return [msgpack.packb([n, d], default=msgpack_numpy.encode) for n, d in docs]


def decode(msg: bytes) -> tuple[str, dict[str, Any]]:
    name, doc = msgpack.unpackb(msg, object_hook=msgpack_numpy.decode, raw=False)
    return name, doc


def timed(fn: Any, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--points", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    docs = make_documents(args.events, args.points)
    messages = encode(docs)
    decoded = [decode(m) for m in messages]
    n_frames: list[int] = []

    def assembly(stream: list[tuple[str, dict[str, Any]]]) -> None:
        frames: list[Any] = []
        ingest = DocumentIngest(frames.append)
        for name, doc in stream:
            ingest(name, doc)
        n_frames.append(len(frames))

    def decode_and_assembly() -> None:
        frames: list[Any] = []
        ingest = DocumentIngest(frames.append)
        for m in messages:
            name, doc = decode(m)
            ingest(name, doc)
        n_frames.append(len(frames))

    def decode_only() -> None:
        for m in messages:
            decode(m)

    rows = [
        ("decode only (msgpack-numpy)", timed(decode_only, args.repeat)),
        ("assembly (decoded, read-only arrays)", timed(lambda: assembly(decoded), args.repeat)),
        ("decode + assembly", timed(decode_and_assembly, args.repeat)),
        ("assembly (writable arrays, copied)", timed(lambda: assembly(docs), args.repeat)),
    ]
    assert all(n == args.events for n in n_frames), n_frames
    print(
        f"\n{args.events} events x {args.points}-point float64 spectra, one core, best of "
        f"{args.repeat}\n"
    )
    print("| stage | total s | us / event | frames/s |")
    print("|---|---:|---:|---:|")
    for label, seconds in rows:
        per = seconds / args.events
        print(f"| {label} | {seconds:.3f} | {per * 1e6:.1f} | {1.0 / per:,.0f} |")


if __name__ == "__main__":
    main()

"""Kafka ingest throughput: reading a backlog of Bluesky documents from a real broker.

Starts a local Tansu broker (:class:`spt_stream.devtools.broker.LocalBroker`), produces one run of
``--events`` event documents carrying ``--points``-point float64 spectra (plus start, descriptor
with the energy grid as configuration, stop) in the bluesky-kafka wire format into a
single-partition topic, then times reading the whole backlog from offset 0 with
:class:`spt_stream.transports.kafka.KafkaDocumentSource`:

* ``transport only``: kafka-python ``poll`` of the raw messages (no decode), the floor;
* ``decode only``: the source with a handler that only counts;
* ``decode + assembly``: the source feeding :class:`spt_stream.assembly.ingest.DocumentIngest`
  (frames counted; every event must become a frame).

It also times :func:`spt_stream.transports.wire.decode_document` alone on the encoded messages
(no Kafka). Wall time is from the first poll to the stop document; CPU time is this process's
(all threads, including kafka-python's IO thread). Best of ``--repeat``.

Run: ``nice -n 10 .venv/bin/python bench/bench_ingest.py [--events 20000] [--points 400]``.
"""

from __future__ import annotations

import argparse
import gc
import logging
import statistics
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from event_model import compose_run
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from spt_stream.config import KafkaSettings
from spt_stream.devtools.broker import LocalBroker, create_topic
from spt_stream.errors import SptError
from spt_stream.protocols import Position
from spt_stream.transports.kafka import KafkaDocumentSource
from spt_stream.transports.wire import decode_document, encode_document

TOPIC = "bench.bluesky.runengine.documents"


def make_run(n_events: int, npts: int) -> list[tuple[str, dict[str, Any]]]:
    """One quick-XAS run: spectrum per event, energy grid in the descriptor's configuration."""
    grid = np.linspace(7600.0, 7800.0, npts)
    run = compose_run(metadata={"element": "Co", "edge": "K"})
    desc = run.compose_descriptor(
        name="primary",
        data_keys={
            "qxas_mu": {"source": "sim", "dtype": "array", "shape": [npts]},
            "qxas_potential": {"source": "sim", "dtype": "number", "shape": []},
        },
        configuration={
            "qxas": {
                "data": {"qxas_energy": grid},
                "timestamps": {"qxas_energy": 0.0},
                "data_keys": {"qxas_energy": {"source": "sim", "dtype": "array", "shape": [npts]}},
            }
        },
        object_keys={"qxas": ["qxas_mu", "qxas_potential"]},
    )
    docs: list[tuple[str, dict[str, Any]]] = [("start", dict(run.start_doc))]
    docs.append(("descriptor", dict(desc.descriptor_doc)))
    rng = np.random.default_rng(0)
    edge = 1.0 / (1.0 + np.exp(-(grid - 7709.0) / 2.0))
    for i in range(n_events):
        t = 1.8e9 + 0.1 * i
        ev = desc.compose_event(
            data={"qxas_mu": edge + 1e-3 * rng.standard_normal(npts), "qxas_potential": 3.0},
            timestamps={"qxas_mu": t, "qxas_potential": t},
            seq_num=i + 1,
        )
        docs.append(("event", dict(ev)))
    docs.append(("stop", dict(run.compose_stop())))
    return docs


class _Until:
    """Handler wrapper: forwards documents, records when the stop document arrives."""

    def __init__(self, inner: Callable[[str, Mapping[str, Any], Position | None], None]) -> None:
        self.inner = inner
        self.done = threading.Event()
        self.end = 0.0
        self.docs = 0

    def __call__(self, name: str, doc: Mapping[str, Any], position: Position | None = None) -> None:
        self.docs += 1
        self.inner(name, doc, position)
        if name == "stop":
            self.end = time.perf_counter()
            self.done.set()

    def reject(
        self, error: SptError, payload: bytes | None = None, position: Position | None = None
    ) -> None:
        raise AssertionError(f"unexpected reject: {error}")


def read_with_source(bootstrap: str, make_handler: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall s, cpu s, inner handler) to read the backlog through KafkaDocumentSource."""
    settings = KafkaSettings(bootstrap_servers=bootstrap, topics=(TOPIC,), group_id=None)
    inner = make_handler()
    until = _Until(inner)
    source = KafkaDocumentSource(settings)
    stop = until.done
    gc.collect()
    t0, c0 = time.perf_counter(), time.process_time()
    source.run(until, stop)
    wall, cpu = until.end - t0, time.process_time() - c0
    source.close()
    return wall, cpu, inner


def read_raw(bootstrap: str, n_messages: int) -> tuple[float, float]:
    """(wall s, cpu s) for kafka-python alone to fetch every message (no decode)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=10,
        max_poll_records=5000,
        max_partition_fetch_bytes=10 * 1024 * 1024,
    )
    consumer.assign([TopicPartition(TOPIC, 0)])
    consumer.seek_to_beginning()
    gc.collect()
    t0, c0 = time.perf_counter(), time.process_time()
    seen = 0
    while seen < n_messages:
        for records in consumer.poll(timeout_ms=100).values():
            seen += len(records)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    consumer.close()
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--points", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)

    docs = make_run(args.events, args.points)
    values = [encode_document(n, d) for n, d in docs]
    n_msgs = len(values)

    # Wire decode alone (no Kafka): per event document, best of repeat.
    event_values = values[2:-1]
    per_doc, per_doc_cpu = [], []
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        for v in event_values:
            decode_document(v)
        per_doc.append((time.perf_counter() - t0) / len(event_values))
        per_doc_cpu.append((time.process_time() - c0) / len(event_values))

    try:
        from spt_stream.assembly.ingest import DocumentIngest
    except ImportError:  # frame assembly not available: decode rows only
        DocumentIngest = None  # type: ignore[assignment,misc]

    with LocalBroker() as broker:
        create_topic(broker.bootstrap, TOPIC, partitions=1)
        producer = KafkaProducer(
            bootstrap_servers=broker.bootstrap, linger_ms=5, batch_size=1 << 20, acks=1
        )
        t0 = time.perf_counter()
        for v in values:
            producer.send(TOPIC, value=v, key=b"run")
        producer.flush()
        produce_s = time.perf_counter() - t0
        producer.close()

        rows: list[tuple[str, float, float, int]] = []
        raw = [read_raw(broker.bootstrap, n_msgs) for _ in range(args.repeat)]
        wall, cpu = min(raw)
        rows.append(("transport only (kafka-python poll)", wall, cpu, args.events))

        class Count:
            def __call__(self, name: str, doc: Any, position: Any = None) -> None:
                pass

            def reject(self, *a: Any) -> None:
                pass

        best = min(read_with_source(broker.bootstrap, Count)[:2] for _ in range(args.repeat))
        rows.append(("decode only (KafkaDocumentSource)", *best, args.events))

        if DocumentIngest is not None:
            results = []
            for _ in range(args.repeat):
                frames: list[Any] = []

                def make_ingest(frames: list[Any] = frames) -> Any:
                    return DocumentIngest(frames.append)

                wall, cpu, ingest = read_with_source(broker.bootstrap, make_ingest)
                assert len(frames) == args.events, (len(frames), ingest.counts)
                results.append((wall, cpu))
            rows.append(("decode + assembly (DocumentIngest)", *min(results), args.events))

    size = statistics.mean(len(v) for v in event_values)
    print(
        f"\n{args.events} event documents x {args.points}-point float64 spectra "
        f"({size:,.0f} B each) read from a local Tansu broker, one partition, best of "
        f"{args.repeat}; backlog produced in {produce_s:.1f} s\n"
    )
    print("| stage | wall s | frames/s (wall) | CPU s | µs CPU / frame |")
    print("|---|---:|---:|---:|---:|")
    for label, wall, cpu, n in rows:
        print(f"| {label} | {wall:.2f} | {n / wall:,.0f} | {cpu:.2f} | {cpu / n * 1e6:.1f} |")
    print(
        f"\nwire decode alone (decode_document, no Kafka): {min(per_doc) * 1e6:.1f} µs wall, "
        f"{min(per_doc_cpu) * 1e6:.1f} µs CPU / event doc"
    )


if __name__ == "__main__":
    main()

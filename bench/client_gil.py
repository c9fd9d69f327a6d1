"""The live model step beside an idle Kafka consumer: kafka-python vs librdkafka (confluent-kafka).

At 100 frames/s the engine's model step takes ~7.5 ms at the median for batches of 1-2 frames
that take 1.5-4.5 ms alone (docs/BENCHMARKS.md). The suspect: torch takes the interpreter lock
back after every operator, and kafka-python's network thread runs Python (its selector loop
answers a fetch every ``fetch_max_wait_ms``, which Tansu holds even when data is waiting). This
measures the packaged model's forward pass at batch 1, one call every 10 ms (the live cadence),
in a process that also runs, on another thread:

* nothing;
* a kafka-python ``KafkaConsumer`` polling an idle topic on a local Tansu broker (the engine's
  fetch wait, 10 ms; the partition assigned, no group protocol);
* a confluent-kafka ``Consumer`` doing the same (librdkafka's threads are C: they never take the
  interpreter lock; ``poll`` releases it while it waits).

    .venv/bin/python bench/client_gil.py [--calls 400] [--compile]
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def _forward_times(runner: Any, calls: int) -> np.ndarray[Any, Any]:
    x = np.random.default_rng(0).normal(size=(1, 224)).astype(np.float32)
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        runner.predict_columns(x, ["Co"])
        out.append(time.perf_counter() - t)
        time.sleep(0.01)
    return np.asarray(out) * 1e3


def _kafka_python(bootstrap: str, topic: str, stop: threading.Event) -> None:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        fetch_max_wait_ms=10,
        max_poll_records=5000,
        enable_auto_commit=False,
    )
    consumer.assign([TopicPartition(topic, 0)])
    while not stop.is_set():
        consumer.poll(timeout_ms=100)
    consumer.close()


def _confluent(bootstrap: str, topic: str, stop: threading.Event) -> None:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "bench-client-gil-ck",  # required; assign() below uses no group protocol
            "fetch.wait.max.ms": 10,
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    while not stop.is_set():
        consumer.poll(0.1)
    consumer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()

    from spt_stream.config import load_settings
    from spt_stream.devtools.broker import LocalBroker, create_topic
    from spt_stream.engine.pipeline import ModelRunner

    runner = ModelRunner(
        load_settings(None).model,
        device="cpu",
        threads=1,
        backend="compile" if args.compile else "eager",
    )
    clients: list[tuple[str, Callable[[str, str, threading.Event], None] | None]] = [
        ("no Kafka client", None),
        ("kafka-python consumer, idle topic", _kafka_python),
        ("confluent-kafka consumer, idle topic", _confluent),
    ]
    model = "compiled" if args.compile else "eager"
    print(f"model {model}, batch 1, one call every 10 ms, {args.calls} calls per row\n")
    print("| beside the model | forward p50 ms | p90 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    with LocalBroker() as broker:
        topic = "bench.client-gil"
        create_topic(broker.bootstrap, topic, 1)
        _forward_times(runner, 20)  # warm-up
        for name, client in clients:
            stop = threading.Event()
            th = None
            if client is not None:
                th = threading.Thread(target=client, args=(broker.bootstrap, topic, stop))
                th.start()
                time.sleep(3.0)  # joined the group, fetching
            ms = _forward_times(runner, args.calls)
            stop.set()
            if th is not None:
                th.join(timeout=30)
            p50, p90, p99 = np.percentile(ms, [50, 90, 99])
            print(f"| {name} | {p50:.2f} | {p90:.2f} | {p99:.2f} | {ms.max():.2f} |", flush=True)


if __name__ == "__main__":
    main()

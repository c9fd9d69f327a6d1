"""KafkaDocumentSource in a consumer group: the readiness signal and the idle clock.

The broker holds a group join for a few seconds. ``assigned`` tells a producer when the consumer
holds its partitions, and ``run(idle_timeout_s=...)`` only counts idle time once it does, so a
backlog waiting behind a slow join is read instead of being abandoned.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import pytest
from kafka import KafkaProducer

from spt_stream.config import KafkaSettings
from spt_stream.errors import SptError
from spt_stream.protocols import Position
from spt_stream.transports.kafka import KafkaDocumentSource
from spt_stream.transports.wire import encode_document

pytestmark = pytest.mark.kafka


class Names:
    """A DocumentHandler recording document names and the source's readiness at each."""

    def __init__(self, source: KafkaDocumentSource) -> None:
        self.source = source
        self.names: list[str] = []
        self.ready_when_delivered: list[bool] = []
        self.rejected: list[SptError] = []

    def __call__(self, name: str, doc: Mapping[str, Any], position: Position | None = None) -> None:
        self.names.append(name)
        self.ready_when_delivered.append(self.source.assigned.is_set())

    def reject(
        self, error: SptError, payload: bytes | None = None, position: Position | None = None
    ) -> None:
        self.rejected.append(error)


def _produce(bootstrap: str, topic: str, n: int) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for i in range(n):
        producer.send(topic, encode_document("event", {"i": i}))
    producer.flush()
    producer.close()


def _group_settings(bootstrap: str, topic: str) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=bootstrap, topics=(topic,), group_id="ready-test")


def test_backlog_behind_a_group_join_is_read_despite_a_short_idle_timeout(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    """An idle timeout shorter than the join delay still reads the whole backlog, then stops."""
    _produce(kafka_bootstrap, kafka_topic, 20)
    source = KafkaDocumentSource(_group_settings(kafka_bootstrap, kafka_topic))
    handler = Names(source)
    assert not source.assigned.is_set()
    source.run(handler, threading.Event(), idle_timeout_s=0.5)
    assert handler.names == ["event"] * 20
    assert all(handler.ready_when_delivered)
    source.close()
    assert not source.assigned.is_set()  # cleared with the client


def test_assigned_is_set_before_the_first_message_a_waiting_producer_sends(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    """A producer that waits for ``assigned`` sends into a consumer already reading."""
    source = KafkaDocumentSource(_group_settings(kafka_bootstrap, kafka_topic))
    handler = Names(source)
    stop = threading.Event()
    worker = threading.Thread(
        target=source.run, args=(handler, stop), kwargs={"idle_timeout_s": 3.0}, daemon=True
    )
    worker.start()
    try:
        assert source.assigned.wait(30.0), "the consumer never joined its group"
        _produce(kafka_bootstrap, kafka_topic, 5)
        worker.join(30.0)
        assert not worker.is_alive()
    finally:
        stop.set()
        worker.join(10.0)
        source.close()
    assert handler.names == ["event"] * 5
    assert handler.rejected == []

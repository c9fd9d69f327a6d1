"""Publish Bluesky documents to Kafka in the bluesky-kafka wire format (kafka-python).

A RunEngine callback, ``RE.subscribe(KafkaDocumentPublisher(bootstrap, topic))``: one message per
document, value = msgpack of ``[name, doc]`` with msgpack-numpy arrays (byte-identical to
bluesky-kafka's ``Publisher``, see tests/unit/test_wire.py), key = the run's start uid so a run
stays ordered on one partition. Used by the demo's simulated beamline; a facility's own publisher
(bluesky-kafka) works the same for the engine.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from spt_stream.config import KafkaSettings
from spt_stream.errors import BrokerError
from spt_stream.transports.wire import encode_document

__all__ = ["KafkaDocumentPublisher"]

log = logging.getLogger(__name__)


class KafkaDocumentPublisher:
    """Callable ``(name, doc)`` that produces each document to ``topic``."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        key: str | None = None,
        flush_on_stop: bool = True,
        kafka: KafkaSettings | None = None,
    ) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        kafka = kafka or KafkaSettings()
        try:
            self._producer = KafkaProducer(
                linger_ms=0, acks=1, **kafka.producer_kwargs(bootstrap_servers, "publisher")
            )
        except KafkaError as exc:
            raise BrokerError(
                f"cannot connect a producer: {exc}", source=bootstrap_servers
            ) from exc
        self.topic = topic
        self._fixed_key = key
        self._key: bytes | None = key.encode() if key else None
        self._flush_on_stop = flush_on_stop
        self.sent = 0

    def __call__(self, name: str, doc: Mapping[str, Any]) -> None:
        if name == "start" and self._fixed_key is None:
            self._key = str(doc["uid"]).encode()
        self._producer.send(self.topic, key=self._key, value=encode_document(name, doc))
        self.sent += 1
        if name == "stop" and self._flush_on_stop:
            self._producer.flush(timeout=10)

    def flush(self, timeout: float = 10.0) -> None:
        self._producer.flush(timeout=timeout)

    def close(self) -> None:
        self._producer.flush(timeout=10)
        self._producer.close(timeout=5)

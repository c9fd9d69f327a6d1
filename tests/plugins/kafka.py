"""Kafka fixtures: a real Kafka-protocol broker for the whole session and a fresh topic per test.

``kafka_bootstrap`` uses ``$SPT_KAFKA_BOOTSTRAP`` when set (e.g. a real Kafka in CI), otherwise
starts one local Tansu broker (:class:`spt_stream.devtools.broker.LocalBroker`) for the session.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from spt_stream.devtools.broker import LocalBroker, create_topic


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``host:port`` of a running broker, shared by the session."""
    env = os.environ.get("SPT_KAFKA_BOOTSTRAP")
    if env:
        yield env
        return
    with LocalBroker() as broker:
        yield broker.bootstrap


@pytest.fixture
def kafka_topic(kafka_bootstrap: str, request: pytest.FixtureRequest) -> str:
    """A new single-partition topic with a unique name (order holds across the whole topic)."""
    safe = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]
    name = f"test.{safe}.{uuid.uuid4().hex[:8]}"
    create_topic(kafka_bootstrap, name, partitions=1)
    return name

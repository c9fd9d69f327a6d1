"""KafkaDocumentSource against a real broker: RunEngine -> bluesky-kafka Publisher -> source."""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from kafka import KafkaProducer

from spt_stream.config import KafkaSettings
from spt_stream.devtools.broker import LocalBroker, create_topic, find_free_port
from spt_stream.errors import ConfigError, DecodeError, SptError
from spt_stream.protocols import DocumentHandler, Position
from spt_stream.transports.kafka import KafkaDocumentSource, install_stop_signals
from spt_stream.transports.wire import encode_document

pytestmark = pytest.mark.kafka


class Collector:
    """A DocumentHandler that records everything it is given."""

    def __init__(self, on_doc: Callable[[Collector, Position | None], None] | None = None) -> None:
        self.docs: list[tuple[str, Mapping[str, Any]]] = []
        self.positions: list[Position | None] = []
        self.rejected: list[tuple[SptError, bytes | None, Position | None]] = []
        self._cond = threading.Condition()
        self._on_doc = on_doc

    def __call__(self, name: str, doc: Mapping[str, Any], position: Position | None = None) -> None:
        with self._cond:
            self.docs.append((name, doc))
            self.positions.append(position)
            self._cond.notify_all()
        if self._on_doc is not None:
            self._on_doc(self, position)

    def reject(
        self, error: SptError, payload: bytes | None = None, position: Position | None = None
    ) -> None:
        with self._cond:
            self.rejected.append((error, payload, position))
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[Collector], bool], timeout: float = 20.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    def names(self) -> list[str]:
        return [n for n, _ in self.docs]


def _settings(bootstrap: str, topics: tuple[str, ...], **kw: Any) -> KafkaSettings:
    base: dict[str, Any] = {"group_id": None, "reconnect_backoff_ms": 50}
    base.update(kw)
    return KafkaSettings(bootstrap_servers=bootstrap, topics=topics, **base)


@contextmanager
def running(source: KafkaDocumentSource, handler: DocumentHandler) -> Iterator[threading.Event]:
    """Run ``source`` in a thread for the duration of the block, then stop and close it."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            source.run(handler, stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(15)
        source.close()
    assert not thread.is_alive(), "run() did not return after stop was set"
    assert not errors, f"run() raised {errors!r}"


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, key_serializer=None)
    for v in values:
        producer.send(topic, value=v, key=b"run")
    producer.flush()
    producer.close()


def _run_plan_into_kafka(bootstrap: str, topic: str) -> list[tuple[str, dict[str, Any]]]:
    """Run count([det, spectrum], 5) with a real RunEngine publishing via bluesky-kafka."""
    from bluesky import RunEngine
    from bluesky.plans import count
    from bluesky_kafka import Publisher
    from ophyd.sim import SynSignal, det

    rng = np.random.default_rng(7)
    spectrum = SynSignal(func=lambda: rng.normal(size=64), name="spectrum")
    publisher = Publisher(
        topic=topic,
        bootstrap_servers=bootstrap,
        key=str(uuid.uuid4()),
        producer_config={"acks": 1, "linger.ms": 0},
    )
    emitted: list[tuple[str, dict[str, Any]]] = []
    RE = RunEngine({})
    RE.subscribe(lambda name, doc: emitted.append((name, doc)))
    RE.subscribe(publisher)
    RE(count([det, spectrum], num=5))
    publisher.flush()
    return emitted


def test_runengine_documents_arrive_intact(kafka_bootstrap: str, kafka_topic: str) -> None:
    """Every (name, doc) the RunEngine emitted arrives, in order, equal (arrays bit for bit)."""
    emitted = _run_plan_into_kafka(kafka_bootstrap, kafka_topic)
    assert [n for n, _ in emitted] == ["start", "descriptor", *["event"] * 5, "stop"]
    source = KafkaDocumentSource(_settings(kafka_bootstrap, (kafka_topic,)))
    got = Collector()
    with running(source, got):
        assert got.wait_for(lambda c: len(c.docs) >= len(emitted))
    assert got.names() == [n for n, _ in emitted]
    np.testing.assert_equal([d for _, d in got.docs], [d for _, d in emitted])
    spectra = [d["data"]["spectrum"] for n, d in got.docs if n == "event"]
    assert all(isinstance(s, np.ndarray) and s.shape == (64,) for s in spectra)
    assert [p.offset for p in got.positions if p is not None] == list(range(len(emitted)))
    assert {(p.topic, p.partition) for p in got.positions if p is not None} == {(kafka_topic, 0)}
    assert source.stats.messages == len(emitted)
    assert source.stats.decode_errors == 0
    assert source.stats.bytes > 64 * 8 * 5


def test_bad_bytes_are_rejected_and_reading_goes_on(kafka_bootstrap: str, kafka_topic: str) -> None:
    """Undecodable messages go to reject() with their position; later documents still arrive."""
    good = [encode_document("start", {"uid": "u1", "time": 1.0})]
    bad = [b"\xc1not msgpack", encode_document("start", {"uid": "u2"})[:-3]]
    after = [encode_document("stop", {"uid": "s1", "run_start": "u1", "time": 2.0})]
    _produce(kafka_bootstrap, kafka_topic, good + bad + after)
    source = KafkaDocumentSource(_settings(kafka_bootstrap, (kafka_topic,)))
    got = Collector()
    with running(source, got):
        assert got.wait_for(lambda c: len(c.docs) == 2 and len(c.rejected) == 2)
    assert got.names() == ["start", "stop"]
    assert [p.offset for _, _, p in got.rejected if p is not None] == [1, 2]
    for (err, payload, pos), raw in zip(got.rejected, bad, strict=True):
        assert isinstance(err, DecodeError)
        assert payload == raw
        assert err.source == f"{kafka_topic}[0]@{pos.offset if pos else None}"
        assert err.source in str(err)
    assert source.stats.decode_errors == 2
    assert source.stats.messages == 4


def test_handler_spt_error_is_rejected_not_fatal(kafka_bootstrap: str, kafka_topic: str) -> None:
    """An SptError raised by the handler is routed to reject() and the loop keeps going."""
    _produce(kafka_bootstrap, kafka_topic, [encode_document("start", {"i": i}) for i in range(3)])

    class Picky(Collector):
        def __call__(self, name: str, doc: Mapping[str, Any], position: Any = None) -> None:
            if doc["i"] == 1:
                raise SptError("i == 1 is not allowed")
            super().__call__(name, doc, position)

    got = Picky()
    with running(KafkaDocumentSource(_settings(kafka_bootstrap, (kafka_topic,))), got):
        assert got.wait_for(lambda c: len(c.docs) == 2 and len(c.rejected) == 1)
    error, payload, position = got.rejected[0]
    assert "i == 1" in str(error)
    assert position == Position(kafka_topic, 0, 1)
    assert payload == encode_document("start", {"i": 1})


def test_regex_subscription_reads_matching_topics(kafka_bootstrap: str) -> None:
    """A '^' entry subscribes by pattern: both matching topics are read, a non-matching one not."""
    prefix = f"test.regex.{uuid.uuid4().hex[:8]}"
    for suffix in ("a.documents", "b.documents", "c.other"):
        create_topic(kafka_bootstrap, f"{prefix}.{suffix}")
        _produce(
            kafka_bootstrap,
            f"{prefix}.{suffix}",
            [encode_document("start", {"topic": suffix})],
        )
    pattern = "^" + re.escape(prefix) + r"\..*\.documents$"
    source = KafkaDocumentSource(_settings(kafka_bootstrap, (pattern,)))
    got = Collector()
    with running(source, got):
        assert got.wait_for(lambda c: len(c.docs) >= 2)
        time.sleep(0.3)  # anything else that could arrive, would have by now
    assert sorted(d["topic"] for _, d in got.docs) == ["a.documents", "b.documents"]


def test_group_joins_a_pattern_of_several_topics(kafka_bootstrap: str) -> None:
    """A consumer group subscribed by pattern to five topics joins and reads every one (with
    kafka-python 3.0 on this broker a 20 ms poll never finished the join: the group was
    re-joined in a loop, forever, and nothing was read; the source polls long while it holds
    no partition)."""
    prefix = f"test.groupregex.{uuid.uuid4().hex[:8]}"
    for i in range(5):
        create_topic(kafka_bootstrap, f"{prefix}.r{i}.documents")
        _produce(
            kafka_bootstrap,
            f"{prefix}.r{i}.documents",
            [encode_document("start", {"topic": i, "n": n}) for n in range(3)],
        )
    pattern = "^" + re.escape(prefix) + r"\.r\d+\.documents$"
    settings = _settings(kafka_bootstrap, (pattern,), group_id=f"g-{prefix}", poll_timeout_ms=20)
    got = Collector()
    with running(KafkaDocumentSource(settings), got):
        assert got.wait_for(lambda c: len(c.docs) >= 15, timeout=60)
    assert sorted({d["topic"] for _, d in got.docs}) == [0, 1, 2, 3, 4]


def test_explicit_partition_assignment(kafka_bootstrap: str) -> None:
    """'topic:partition' entries restrict reading to those partitions."""
    topic = f"test.assign.{uuid.uuid4().hex[:8]}"
    create_topic(kafka_bootstrap, topic, partitions=2)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=0)
    for p in (0, 1):
        producer.send(topic, encode_document("start", {"p": p}), partition=p)
    producer.flush()
    producer.close()
    source = KafkaDocumentSource(_settings(kafka_bootstrap, (topic,), partitions=(f"{topic}:1",)))
    got = Collector()
    with running(source, got):
        assert got.wait_for(lambda c: len(c.docs) >= 1)
        time.sleep(0.3)
    assert [d["p"] for _, d in got.docs] == [1]


def test_group_commit_then_new_member_resumes(kafka_bootstrap: str, kafka_topic: str) -> None:
    """Offsets committed via mark_done/commit_marked (from another thread) are where a new
    source in the same group starts; nothing is committed on close."""
    group = f"test-group-{uuid.uuid4().hex[:8]}"
    _produce(kafka_bootstrap, kafka_topic, [encode_document("event", {"i": i}) for i in range(6)])
    settings = _settings(
        kafka_bootstrap,
        (kafka_topic,),
        group_id=group,
        session_timeout_ms=2000,  # Tansu holds JoinGroup ~session_timeout/2
        heartbeat_interval_ms=500,
    )

    first = KafkaDocumentSource(settings)

    def mark_first_three(c: Collector, pos: Position | None) -> None:
        if pos is not None and pos.offset is not None and pos.offset < 3:
            first.mark_done(pos)

    got = Collector(on_doc=mark_first_three)
    with running(first, got):
        assert got.wait_for(lambda c: len(c.docs) == 6)
        assert first.commit_marked()  # called from this (non-polling) thread
        assert first.stats.commits == 1

    second = KafkaDocumentSource(settings)
    again = Collector()
    with running(second, again):
        assert again.wait_for(lambda c: len(c.docs) == 3)
        time.sleep(0.2)
    assert [d["i"] for _, d in again.docs] == [3, 4, 5]


def test_idle_timeout_returns(kafka_bootstrap: str, kafka_topic: str) -> None:
    """run(idle_timeout_s=...) returns by itself once nothing arrives for that long."""
    _produce(kafka_bootstrap, kafka_topic, [encode_document("start", {"uid": "x"})])
    source = KafkaDocumentSource(_settings(kafka_bootstrap, (kafka_topic,)))
    got = Collector()
    source.run(got, threading.Event(), idle_timeout_s=0.5)
    source.close()
    assert got.names() == ["start"]


def test_stop_inside_a_batch_then_run_again_loses_nothing(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    """Stopping after 3 of 10 fetched messages and calling run() again continues at the 4th."""
    _produce(kafka_bootstrap, kafka_topic, [encode_document("event", {"i": i}) for i in range(10)])
    source = KafkaDocumentSource(_settings(kafka_bootstrap, (kafka_topic,)))
    stop = threading.Event()

    def stop_after_three(c: Collector, pos: Position | None) -> None:
        if len(c.docs) == 3:
            stop.set()

    got = Collector(on_doc=stop_after_three)
    source.run(got, stop)
    assert len(got.docs) == 3
    source.run(got, threading.Event(), idle_timeout_s=0.5)
    source.close()
    assert [d["i"] for _, d in got.docs] == list(range(10))


def test_start_offsets_replay_from_offset(kafka_bootstrap: str, kafka_topic: str) -> None:
    """start_offsets makes the source begin at the given offset."""
    _produce(kafka_bootstrap, kafka_topic, [encode_document("event", {"i": i}) for i in range(4)])
    source = KafkaDocumentSource(
        _settings(kafka_bootstrap, (kafka_topic,)), start_offsets={(kafka_topic, 0): 2}
    )
    got = Collector()
    source.run(got, threading.Event(), idle_timeout_s=0.5)
    source.close()
    assert [d["i"] for _, d in got.docs] == [2, 3]


def test_broker_restart_mid_consumption(caplog: pytest.LogCaptureFixture) -> None:
    """Broker stops and comes back on the same port: the source logs it, reconnects and reads
    what is produced after the restart, without raising."""
    caplog.set_level(logging.WARNING, logger="spt_stream.transports.kafka")
    port = find_free_port()
    topic = "test.restart.documents"
    broker = LocalBroker(port=port).start()
    try:
        create_topic(broker.bootstrap, topic)
        _produce(broker.bootstrap, topic, [encode_document("start", {"n": 0})])
        source = KafkaDocumentSource(
            _settings(broker.bootstrap, (topic,), reconnect_backoff_max_ms=500)
        )
        got = Collector()
        with running(source, got):
            assert got.wait_for(lambda c: len(c.docs) == 1)
            broker.stop()
            time.sleep(1.5)
            broker.start()
            create_topic(broker.bootstrap, topic)
            deadline = time.monotonic() + 15
            while source.stats.reconnects < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            _produce(broker.bootstrap, topic, [encode_document("event", {"n": i}) for i in (1, 2)])
            assert got.wait_for(lambda c: len(c.docs) == 3)
        assert [d["n"] for _, d in got.docs] == [0, 1, 2]
        assert source.stats.reconnects >= 1
        text = caplog.text
        assert "lost connection to Kafka" in text
        assert "reachable again" in text
    finally:
        broker.stop()


def test_source_waits_for_a_broker_that_is_not_up_yet(caplog: pytest.LogCaptureFixture) -> None:
    """Started before any broker listens, the source retries with backoff (logging it), then
    reads once the broker and topic appear; no client threads leak from failed attempts."""
    caplog.set_level(logging.WARNING, logger="spt_stream.transports.kafka")
    broker = LocalBroker(port=find_free_port())
    topic = "test.late.documents"
    threads_before = threading.active_count()
    source = KafkaDocumentSource(
        _settings(broker.bootstrap, (topic,), reconnect_backoff_max_ms=400)
    )
    got = Collector()
    try:
        with running(source, got):
            deadline = time.monotonic() + 10
            while "cannot reach Kafka" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "cannot reach Kafka" in caplog.text
            assert threading.active_count() <= threads_before + 1  # only the run() thread
            broker.start()
            create_topic(broker.bootstrap, topic)
            _produce(broker.bootstrap, topic, [encode_document("start", {"uid": "late"})])
            assert got.wait_for(lambda c: len(c.docs) == 1)
    finally:
        broker.stop()
    assert got.docs[0][1]["uid"] == "late"


def test_invalid_settings_are_config_errors() -> None:
    """Bad partition entries, bad regexes and SASL without a mechanism fail at construction."""
    with pytest.raises(ConfigError, match="topic:partition"):
        KafkaDocumentSource(KafkaSettings(topics=("t",), group_id=None, partitions=("t-0",)))
    with pytest.raises(ConfigError, match="regular expression"):
        KafkaDocumentSource(KafkaSettings(topics=("^(unclosed",)))
    with pytest.raises(ConfigError, match="sasl_mechanism"):
        KafkaDocumentSource(KafkaSettings(security_protocol="SASL_PLAINTEXT"))


def test_sasl_password_is_passed_but_never_in_repr() -> None:
    """The SASL password reaches the client config but not the settings' repr."""
    settings = KafkaSettings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="spt",
        sasl_password="hunter2",  # type: ignore[arg-type]
    )
    source = KafkaDocumentSource(settings)
    assert source._consumer_config()["sasl_plain_password"] == "hunter2"
    assert "hunter2" not in repr(settings)


def test_install_stop_signals_sets_the_event() -> None:
    """SIGTERM and SIGINT set the stop event; restore() puts the old handlers back."""
    before = signal.getsignal(signal.SIGINT)
    stop = threading.Event()
    restore = install_stop_signals(stop)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(2)
    finally:
        restore()
    assert signal.getsignal(signal.SIGINT) is before

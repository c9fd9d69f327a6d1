"""FeedbackPublisher: per-frame JSON and a derived Bluesky run on a real broker, read back the
way agents read them (a plain consumer + JSON Schema; bluesky-kafka's RemoteDispatcher)."""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from spt_stream.devtools.broker import create_topic
from spt_stream.feedback.derived import FrameColumns, derived_run_uid, frame_messages
from spt_stream.feedback.message import FrameFeedback
from spt_stream.feedback.publisher import PURPOSE, FeedbackPublisher
from spt_stream.sinks.base import TraceSink
from spt_stream.sinks.rows import Column2D, TraceRows

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "spt_stream/schemas/frame_feedback.schema.json"
CLASSES = np.array([2.0, 3.0, 4.0])


def make_rows(first: int, n: int, *, os_values: Any = None) -> TraceRows:
    """n analysed frames: os (+std, probs over 3 classes), ood, flags, e0 and a potential."""
    seq = np.arange(first, first + n, dtype=np.int64)
    os_values = np.linspace(3.0, 4.0, n) if os_values is None else np.asarray(os_values)
    return TraceRows(
        seq_num=seq,
        time=1.7e9 + seq.astype(np.float64),
        columns={
            "os": os_values,
            "os_std": np.full(n, 0.2),
            "e0": np.full(n, 7720.0),
            "ood_score": np.where(seq % 4 == 3, 9.0, 1.0),
            "ood": seq % 4 == 3,
            "flags": np.zeros(n, dtype=np.int64),
            "potential": 3.5 + 0.01 * seq,
        },
        arrays={"os_probs": Column2D(np.tile([0.1, 0.6, 0.3], (n, 1)), "os_class", CLASSES)},
    )


def read_topic(bootstrap: str, topic: str, n: int, timeout_s: float = 20.0) -> list[Any]:
    """The first ``n`` records of partition 0 of ``topic`` (kafka-python, no consumer group)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=10,
    )
    consumer.assign([TopicPartition(topic, 0)])
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < n and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=100).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def confident_high_os(frames: list[FrameFeedback], threshold: float = 3.5) -> list[int]:
    """A tiny agent's decision rule: frames whose oxidation state is above ``threshold`` by more
    than one standard deviation, from a trusted spectrum (not OOD, no quality flag)."""
    return [
        f.seq_num
        for f in frames
        if "os" in f.descriptors
        and not f.ood
        and f.quality_flags == 0
        and f.descriptors["os"].value - f.descriptors["os"].std > threshold
    ]


def test_frame_messages_follow_column_conventions() -> None:
    """Descriptors come from X/X_std pairs, probs are keyed by class label, NaNs are left out."""
    rows = make_rows(0, 4, os_values=[3.0, math.nan, 3.8, 3.9])
    cols = FrameColumns.from_rows(rows)
    assert cols.descriptors == ("os",)
    assert cols.scalars == ("potential",)
    msgs = frame_messages("raw", rows, cols, model="m 1", analysis_time=1.0, element="Co")
    assert [m.seq_num for m in msgs] == [0, 1, 2, 3]
    assert msgs[0].descriptors["os"].probs == {"2": 0.1, "3": 0.6, "4": 0.3}
    assert "os" not in msgs[1].descriptors  # NaN value: no estimate for that frame
    assert msgs[3].ood is True
    assert msgs[0].scalars == {"potential": 3.5}
    assert msgs[0].e0 == 7720.0
    assert derived_run_uid("raw", "m 1") == derived_run_uid("raw", "m 1")
    assert derived_run_uid("raw", "m 1") != derived_run_uid("raw", "m 2")


@pytest.mark.kafka
def test_frame_topic_schema_and_test_agent(kafka_bootstrap: str, kafka_topic: str) -> None:
    """Every frame message validates against the committed JSON Schema, is keyed by the raw run
    uid, appears once (re-delivered rows are not republished), and an agent can act on it."""
    raw_uid = str(uuid.uuid4())
    with FeedbackPublisher(
        kafka_bootstrap, frame_topic=kafka_topic, documents_topic=None, model_name="spt-test 0.1"
    ) as pub:
        assert isinstance(pub, TraceSink)
        pub.open_run(raw_uid, {"element": "Co", "edge": "K"})
        pub.write(raw_uid, make_rows(0, 10))
        pub.write(raw_uid, make_rows(5, 10))  # 5 re-delivered rows
        pub.finalize(raw_uid, "success")
        pub.flush(timeout=10)
        assert pub.stats["frames_published"] == 15
        assert pub.stats["rows_duplicate"] == 5
    records = read_topic(kafka_bootstrap, kafka_topic, 15)
    schema = json.loads(SCHEMA_PATH.read_text())
    frames = []
    for rec in records:
        payload = json.loads(rec.value)
        jsonschema.validate(payload, schema)
        assert rec.key == raw_uid.encode()
        frames.append(FrameFeedback.model_validate(payload))
    assert [f.seq_num for f in frames] == list(range(15))
    assert all(f.element == "Co" and f.model == "spt-test 0.1" for f in frames)
    decided = confident_high_os(frames)
    assert decided  # some frames qualify ...
    assert all(f.seq_num % 4 != 3 for f in frames if f.seq_num in decided)  # ... never OOD ones
    assert all(frames[s].descriptors["os"].value > 3.7 for s in decided)


@pytest.mark.kafka
def test_derived_run_through_remote_dispatcher(kafka_bootstrap: str, kafka_topic: str) -> None:
    """bluesky-kafka's RemoteDispatcher receives a valid derived run naming the raw run, with
    one row per frame, and the stop is published only after the before_stop barrier."""
    import bluesky_kafka  # the ecosystem's consumer (dev extra); missing = a failure
    from event_model import DocumentNames, schema_validators

    docs_topic = f"{kafka_topic}.documents"
    create_topic(kafka_bootstrap, docs_topic, partitions=1)
    raw_uid = str(uuid.uuid4())
    barrier_calls: list[tuple[str, str, float]] = []

    def barrier(run_uid: str, status: str) -> bool:
        barrier_calls.append((run_uid, status, pub.stats["runs_stopped"]))
        return False  # as if Tiled were down: the stop still goes out, with a reason

    pub = FeedbackPublisher(
        kafka_bootstrap,
        frame_topic=None,
        documents_topic=docs_topic,
        model_name="spt-test 0.1",
        model_info={"hash": "abc123"},
        before_stop=barrier,
    )
    with pub:
        pub.open_run(raw_uid, {"element": "Ni", "edge": "K", "plan_name": "count"})
        for first in (0, 6, 12):
            pub.write(raw_uid, make_rows(first, 6))
        pub.finalize(raw_uid, "success")
        pub.flush(timeout=10)
    assert barrier_calls == [(raw_uid, "success", 0)]

    received: list[tuple[str, dict[str, Any]]] = []
    dispatcher = bluesky_kafka.RemoteDispatcher(
        topics=[docs_topic],
        bootstrap_servers=kafka_bootstrap,
        group_id=f"test-{uuid.uuid4().hex[:8]}",
        consumer_config={"auto.offset.reset": "earliest", "session.timeout.ms": 6000},
    )
    dispatcher.subscribe(lambda name, doc: received.append((name, doc)))
    deadline = time.monotonic() + 30
    dispatcher.start(
        continue_polling=lambda: (
            not any(n == "stop" for n, _ in received) and time.monotonic() < deadline
        )
    )
    names = [n for n, _ in received]
    assert names == ["start", "descriptor", "event_page", "event_page", "event_page", "stop"]
    for name, doc in received:
        schema_validators[DocumentNames[name]].validate(doc)
    start, descriptor, stop = received[0][1], received[1][1], received[-1][1]
    assert start["uid"] == derived_run_uid(raw_uid, "spt-test 0.1")
    assert start["spt_raw_run_uid"] == raw_uid
    assert start["purpose"] == PURPOSE
    assert start["spt_model"] == {"name": "spt-test 0.1", "hash": "abc123"}
    assert {"os", "os_std", "os_probs", "ood_score", "quality_flags", "raw_seq_num"} <= set(
        descriptor["data_keys"]
    )
    seq = [s for _, d in received[2:5] for s in d["data"]["raw_seq_num"]]
    assert seq == list(range(18))
    assert stop["exit_status"] == "success"
    assert stop["num_events"] == {"primary": 18}
    assert "not confirmed in Tiled" in stop["reason"]


@pytest.mark.kafka
def test_stop_waits_for_tiled(kafka_bootstrap: str, kafka_topic: str, tiled_server: Any) -> None:
    """With the Tiled writer's finalize_and_wait as barrier, an agent that reacts to the stop
    document finds every row of the run, and its final status, already in Tiled."""
    from tiled.client import from_uri

    from spt_stream.sinks.tiled_trace import TiledTraceWriter

    url, api_key = tiled_server
    raw_uid = str(uuid.uuid4())
    seen_at_stop: dict[str, Any] = {}

    def agent() -> None:  # acts on the stop document, like a bluesky-adaptive 0.x agent
        from spt_stream.transports.wire import decode_document

        docs = [decode_document(r.value) for r in read_topic(kafka_bootstrap, kafka_topic, 8)]
        if docs and docs[-1][0] == "stop":
            start = docs[0][1]
            node = from_uri(url, api_key=api_key, remember_me=False)[start["spt_raw_run_uid"]]
            seen_at_stop["rows"] = len(node["trace"].read())
            seen_at_stop["status"] = node.metadata["status"]

    thread = threading.Thread(target=agent)
    thread.start()  # listening before the run starts
    with TiledTraceWriter(url, api_key) as tiled:
        pub = FeedbackPublisher(
            kafka_bootstrap,
            frame_topic=None,
            documents_topic=kafka_topic,
            model_name="spt-test 0.1",
            before_stop=partial(tiled.finalize_and_wait, timeout=30.0),
        )
        with pub:
            sinks: list[TraceSink] = [tiled, pub]
            for sink in sinks:
                sink.open_run(raw_uid, {"element": "Co", "edge": "K"})
            for first in range(0, 40, 8):
                for sink in sinks:
                    sink.write(raw_uid, make_rows(first, 8))
            pub.flush(timeout=10)  # start, descriptor, pages are out; Tiled is still writing
            pub.finalize(raw_uid, "success")  # barrier: Tiled first, then the stop
            pub.flush(timeout=10)
    thread.join(30)
    assert seen_at_stop == {"rows": 40, "status": "success"}

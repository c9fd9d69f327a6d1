"""The feedback sink: per-frame JSON messages and a derived Bluesky run on Kafka.

Two streams, both keyed by the **raw** run uid (so everything about one raw run, on either
topic, stays on one partition and in order; the derived run is one-to-one with the raw run):

* ``frame_topic``: one :class:`~spt_stream.feedback.message.FrameFeedback` JSON object per frame
  (UTF-8, schema committed in ``spt_stream/schemas/frame_feedback.schema.json``);
* ``documents_topic``: the event-model documents of a *derived analysis run* in the
  bluesky-kafka wire format (msgpack ``[name, doc]``): ``start`` (at :meth:`open_run`;
  ``spt_raw_run_uid``, ``purpose: "spt-stream analysis"``, ``spt_model``, element, edge),
  ``descriptor`` ``primary`` (at the first write), one ``event_page`` per written batch, and
  ``stop`` with the raw run's exit status (at :meth:`finalize`).

Ordering contract with Tiled: bluesky-adaptive 0.x agents act on a *stop* document and then read
the run from Tiled, so the stop must not be published before the run is there. Pass
``before_stop`` (e.g. ``tiled_writer.finalize_and_wait`` with a timeout bound by
``functools.partial``): :meth:`finalize` calls ``before_stop(run_uid, status)`` and publishes the
stop only after it returns. If it returns ``False`` (Tiled down past the timeout) the stop is
still published, with ``reason`` saying the analysis is not confirmed in Tiled, and counted.

Delivery: ``acks="all"``, one request in flight per connection (order preserved across
retries), ``linger_ms=0`` for latency. :meth:`flush` waits for every acknowledgement and raises
:class:`~spt_stream.errors.SinkError` if a send failed since the last flush, so the engine does
not commit offsets past undelivered feedback. Re-delivered rows (same ``seq_num``) are not
republished within a process; after a crash, at-least-once delivery may repeat messages, so
agents de-duplicate on ``(run_uid, seq_num)``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import event_model

from spt_stream.config import KafkaSettings
from spt_stream.errors import BrokerError, SinkError, SptValueError
from spt_stream.feedback.derived import (
    FrameColumns,
    data_keys_for,
    derived_run_uid,
    event_page_data,
    frame_messages,
)
from spt_stream.sinks.rows import TraceRows
from spt_stream.transports.wire import encode_document

__all__ = ["PURPOSE", "FeedbackPublisher"]

log = logging.getLogger(__name__)

#: ``start["purpose"]`` of every derived run this publisher writes.
PURPOSE = "spt-stream analysis"

BeforeStop = Callable[[str, str], bool]


@dataclass
class _Derived:
    raw_uid: str
    uid: str
    bundle: Any
    element: str | None
    edge: str | None
    cols: FrameColumns | None = None
    descriptor: Any = None
    data_keys: dict[str, Any] = field(default_factory=dict)
    published: set[int] = field(default_factory=set)
    next_seq: int = 1

    @property
    def namespace(self) -> uuid.UUID:
        """Event uids are ``uuid5(derived run uid, raw seq_num)``: stable across re-analysis."""
        return uuid.UUID(self.uid)


class FeedbackPublisher:
    """Publishes per-frame feedback and a derived run (implements ``TraceSink``).

    Parameters
    ----------
    bootstrap_servers:
        Kafka ``host:port[,host:port]``.
    frame_topic, documents_topic:
        Where the per-frame JSON and the derived run's documents go; ``None`` disables one.
    model_name:
        Model identity written into every message and the derived start document (name and
        version, e.g. ``"spt-co-k 1.2"``); ``model_info`` adds details (hash, checkpoint path).
    descriptors:
        Descriptor column names; ``None``: every column ``X`` with an ``X_std`` column.
    units:
        Units per descriptor (``{"nnrs": "Å"}``); dimensionless when absent.
    ood_threshold:
        Used when the rows carry ``ood_score`` but no ``ood`` column.
    before_stop:
        Barrier called as ``before_stop(raw_run_uid, status) -> bool`` before the stop document
        is published (see the module docstring).
    kafka:
        Security settings (``security_protocol``, SASL) and ``client_id`` are taken from it.
    linger_ms, acks, max_block_ms:
        Producer settings; ``max_block_ms`` bounds how long a send may block when the broker is
        unknown or the buffer is full.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        frame_topic: str | None,
        documents_topic: str | None,
        model_name: str,
        model_info: Mapping[str, Any] | None = None,
        descriptors: Sequence[str] | None = None,
        units: Mapping[str, str] | None = None,
        ood_threshold: float | None = None,
        before_stop: BeforeStop | None = None,
        kafka: KafkaSettings | None = None,
        linger_ms: int = 0,
        acks: Literal["all", 0, 1] = "all",
        max_block_ms: int = 5000,
    ) -> None:
        if frame_topic is None and documents_topic is None:
            raise SptValueError("FeedbackPublisher needs a frame_topic or a documents_topic")
        if not model_name:
            raise SptValueError("model_name must not be empty")
        from kafka import KafkaProducer

        kafka = kafka or KafkaSettings()
        try:
            self._producer = KafkaProducer(
                acks=acks,
                linger_ms=linger_ms,
                max_block_ms=max_block_ms,
                retries=5,
                **kafka.producer_kwargs(bootstrap_servers, "feedback"),
            )
        except Exception as exc:
            raise BrokerError(
                f"cannot create the feedback producer: {exc}", source=bootstrap_servers
            ) from exc
        self.frame_topic = frame_topic
        self.documents_topic = documents_topic
        self.model_name = model_name
        self.model_info = dict(model_info or {})
        self.descriptors = tuple(descriptors) if descriptors is not None else None
        self.units = dict(units or {})
        self.ood_threshold = ood_threshold
        self.before_stop = before_stop
        self._runs: dict[str, _Derived] = {}
        self._lock = threading.Lock()
        self._errors: list[str] = []
        self._counters: dict[str, int | float] = {
            "frames_published": 0,
            "documents_published": 0,
            "rows_duplicate": 0,
            "send_errors": 0,
            "runs_started": 0,
            "runs_stopped": 0,
            "stops_not_in_tiled": 0,
        }

    @property
    def stats(self) -> Mapping[str, int | float]:
        """Counters: frames/documents published, duplicates skipped, send errors, runs."""
        with self._lock:
            return dict(self._counters)

    # ------------------------------------------------------------------ sink interface

    def open_run(self, run_uid: str, attrs: Mapping[str, Any]) -> None:
        """Start the derived run (publishes its start document); idempotent per run."""
        if run_uid in self._runs:
            return
        uid = derived_run_uid(run_uid, self.model_name)
        element, edge = attrs.get("element"), attrs.get("edge")
        md: dict[str, Any] = {
            "purpose": PURPOSE,
            "spt_raw_run_uid": run_uid,
            "spt_model": {"name": self.model_name, **self.model_info},
            "element": element,
            "edge": edge,
        }
        for key in ("beamline", "sample", "plan_name", "scan_id"):
            if attrs.get(key) is not None:
                md[f"raw_{key}"] = attrs[key]
        bundle = event_model.compose_run(uid=uid, metadata=md)
        self._runs[run_uid] = _Derived(
            raw_uid=run_uid,
            uid=uid,
            bundle=bundle,
            element=element if isinstance(element, str) else None,
            edge=edge if isinstance(edge, str) else None,
        )
        self._send_doc(run_uid, "start", bundle.start_doc)
        self._count("runs_started")

    def write(self, run_uid: str, rows: TraceRows) -> None:
        """Publish one message per new frame and one event page for the batch."""
        run = self._runs.get(run_uid)
        if run is None:
            raise SinkError("write() before open_run()", run_uid=run_uid)
        keep = rows.unseen(run.published)
        if not keep.all():
            self._count("rows_duplicate", len(rows) - int(keep.sum()))
            if not keep.any():
                return
            rows = rows.take(keep)
        if run.cols is None:
            run.cols = FrameColumns.from_rows(rows, self.descriptors)
        now = time.time()
        messages = frame_messages(
            run_uid,
            rows,
            run.cols,
            model=self.model_name,
            analysis_time=now,
            element=run.element,
            edge=run.edge,
            units=self.units,
            ood_threshold=self.ood_threshold,
        )
        key = run_uid.encode()
        if self.frame_topic is not None:
            for m in messages:
                self._send(self.frame_topic, key, m.model_dump_json().encode(), "frame")
            self._count("frames_published", len(messages))
        run.published.update(rows.seq_num.tolist())
        if self.documents_topic is None:
            return
        if run.descriptor is None:
            run.data_keys, coords = data_keys_for(rows, run.cols, units=self.units)
            configuration = {
                "spt": {
                    "data": dict(coords),
                    "timestamps": dict.fromkeys(coords, now),
                    "data_keys": {
                        k: {"dtype": "array", "shape": [len(v)], "source": "spt-stream"}
                        for k, v in coords.items()
                    },
                }
            }
            run.descriptor = run.bundle.compose_descriptor(
                name="primary",
                data_keys=run.data_keys,
                configuration=configuration,
                object_keys={"spt": list(run.data_keys)},
            )
            self._send_doc(run_uid, "descriptor", run.descriptor.descriptor_doc)
        k = len(messages)
        data = event_page_data(messages, rows, run.data_keys)
        seq = list(range(run.next_seq, run.next_seq + k))
        run.next_seq += k
        page = run.descriptor.compose_event_page(
            data=data,
            timestamps={key_: [now] * k for key_ in data},
            seq_num=seq,
            time=[m.event_time for m in messages],
            uid=[str(uuid.uuid5(run.namespace, str(m.seq_num))) for m in messages],
            validate=False,
        )
        self._send_doc(run_uid, "event_page", page)

    def finalize(self, run_uid: str, status: str) -> None:
        """Run the ``before_stop`` barrier, then publish the stop document."""
        run = self._runs.pop(run_uid, None)
        if run is None:
            return
        reason = ""
        if self.before_stop is not None:
            try:
                confirmed = self.before_stop(run_uid, status)
            except Exception as exc:
                log.exception("feedback: before_stop barrier failed for run %s", run_uid)
                confirmed, reason = False, f"before_stop failed: {exc}"[:200]
            if not confirmed:
                self._count("stops_not_in_tiled")
                reason = reason or "analysis not confirmed in Tiled before stop"
                log.warning("feedback: run %s stopped without Tiled confirmation", run_uid)
        exit_status = status if status in ("success", "abort", "fail") else "fail"
        if exit_status != status:
            reason = f"raw run status {status!r}; {reason}".strip("; ")
        stop = run.bundle.compose_stop(exit_status=exit_status, reason=reason)
        self._send_doc(run_uid, "stop", stop)
        self._count("runs_stopped")

    def warm_up(self, rows: TraceRows | None = None) -> None:
        """Before the first frame: fetch the topics' metadata (for a topic the producer did not
        know when it was created, its first send would wait for it on the first frame's path)
        and build the messages of ``rows`` once without sending them (the message and document
        code's first-use costs). A topic whose metadata does not come within ``max_block_ms``
        is logged, not raised: the first send tries again."""
        for topic in (self.frame_topic, self.documents_topic):
            if topic is None:
                continue
            try:
                self._producer.partitions_for(topic)
            except Exception as exc:
                log.warning("feedback: no metadata for topic %s yet (%s)", topic, exc)
        if rows is None or len(rows) == 0:
            return
        cols = FrameColumns.from_rows(rows, self.descriptors)
        messages = frame_messages(
            "warm-up", rows, cols, model=self.model_name, analysis_time=time.time(),
            element=None, edge=None, units=self.units, ood_threshold=self.ood_threshold,
        )  # fmt: skip
        for m in messages:
            m.model_dump_json()
        if self.documents_topic is not None:
            data_keys, _ = data_keys_for(rows, cols, units=self.units)
            encode_document("event_page", {"data": event_page_data(messages, rows, data_keys)})

    def flush(self, timeout: float | None = None) -> None:
        """Wait for every acknowledgement; SinkError on timeout or if a send failed."""
        try:
            self._producer.flush(timeout=timeout)
        except Exception as exc:
            raise SinkError(f"feedback flush did not complete: {exc}") from exc
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            raise SinkError(
                f"{len(errors)} feedback messages were not delivered; last: {errors[-1]}"
            )

    def close(self, timeout: float = 10.0) -> None:
        """Flush (best effort) and close the producer."""
        try:
            self._producer.flush(timeout=timeout)
        finally:
            self._producer.close(timeout=timeout)

    def __enter__(self) -> FeedbackPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] += n

    def _send_doc(self, run_uid: str, name: str, doc: Mapping[str, Any]) -> None:
        if self.documents_topic is None:
            return
        self._send(self.documents_topic, run_uid.encode(), encode_document(name, doc), name)
        self._count("documents_published")

    def _send(self, topic: str, key: bytes, value: bytes, what: str) -> None:
        try:
            future = self._producer.send(topic, key=key, value=value)
        except Exception as exc:  # buffer full / broker unknown past max_block_ms
            self._failed(f"{what} to {topic}: {exc}")
            return
        future.add_errback(lambda exc: self._failed(f"{what} to {topic}: {exc}"))

    def _failed(self, message: str) -> None:
        log.error("feedback: send failed: %s", message)
        with self._lock:
            self._counters["send_errors"] += 1
            if len(self._errors) < 1000:
                self._errors.append(message)

"""Kafka transport: bluesky-kafka messages in, ``(name, doc, Position)`` out (kafka-python).

:class:`KafkaDocumentSource` reads one or more topics (names, or regular expressions starting with
``^``), either as a member of a consumer group or with an explicit partition assignment, decodes
each message with :func:`spt_stream.transports.wire.decode_document` and hands it to a
:class:`~spt_stream.protocols.DocumentHandler`. A message that cannot be decoded goes to
``handler.reject`` with its position; it never stops the loop.

Offsets are never committed automatically (``enable_auto_commit=False``) and :meth:`close`
commits nothing: the engine commits, with :meth:`KafkaDocumentSource.commit` or
:meth:`~KafkaDocumentSource.mark_done` + :meth:`~KafkaDocumentSource.commit_marked`, only after its
sinks have flushed what those messages produced (at-least-once delivery).

When the broker goes away the source logs it, lets kafka-python reconnect with exponential backoff
(``reconnect_backoff_ms`` .. ``reconnect_backoff_max_ms``) and, if the client itself fails,
rebuilds it with the same backoff, resuming after the last message it delivered.

kafka-python's consumer is not thread-safe: :meth:`run` owns it. :meth:`commit` may be called
from any thread; from another thread it is handed to the polling thread and waited for.

One module: the source's consumer lifecycle (connect with a deadline, group join, poll, reconnect,
commits handed to the polling thread, stop signals) is one state machine around one non-thread-safe
client.
"""

from __future__ import annotations

import logging
import random
import re
import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from types import FrameType
from typing import Any, NoReturn

import tenacity
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaConfigurationError, KafkaError
from kafka.structs import OffsetAndMetadata

try:  # kafka-python >= 3: the network client class, to close it when the constructor fails
    from kafka.net.compat import KafkaNetClient
except ImportError:  # pragma: no cover - kafka-python 2.x creates no IO thread there
    KafkaNetClient = None

from spt_stream.config import KafkaSettings
from spt_stream.core.backoff import RetryStoppedError, doubling, last_error, next_wait, sleep_unless
from spt_stream.errors import BrokerError, ConfigError, DecodeError, SptError
from spt_stream.protocols import DocumentHandler, PeriodicHandler, Position
from spt_stream.transports.wire import decode_document

__all__ = ["KafkaDocumentSource", "SourceStats", "install_stop_signals"]

log = logging.getLogger(__name__)

#: ``(topic, partition)``: the key of every offset map in this module.
TP = tuple[str, int]

_RESOLVE_EVERY_S = 5.0  # explicit assignment: how often to look for new partitions/topics
_CONNECTION_CHECK_S = 0.5
#: Shortest poll while a group member holds no partition (see KafkaDocumentSource._poll_timeout_ms).
_JOIN_POLL_MS = 500
_FIRST_ATTEMPT_MS = 2000  # first bootstrap attempt's time limit


@dataclass
class SourceStats:
    """Running counters of one :class:`KafkaDocumentSource` (read them at any time)."""

    messages: int = 0
    bytes: int = 0
    decode_errors: int = 0
    reconnects: int = 0
    commits: int = 0
    commit_failures: int = 0
    #: Messages between our position and the log end, over the partitions read (None: unknown).
    lag: int | None = None


def _parse_partitions(entries: tuple[str, ...]) -> list[TP]:
    out: list[TP] = []
    for entry in entries:
        topic, sep, part = entry.rpartition(":")
        if not sep or not topic or not part.isdigit():
            raise ConfigError(
                f"kafka.partitions entry {entry!r} must look like 'topic:partition'",
                source="kafka.partitions",
            )
        out.append((topic, int(part)))
    return out


def _topic_pattern(topics: tuple[str, ...]) -> re.Pattern[str] | None:
    """One regex matching every entry, or None when all entries are plain names."""
    if not any(t.startswith("^") for t in topics):
        return None
    parts = [t if t.startswith("^") else f"^{re.escape(t)}$" for t in topics]
    try:
        return re.compile("|".join(f"(?:{p})" for p in parts))
    except re.error as exc:
        raise ConfigError(
            f"invalid topic regular expression: {exc}", source="kafka.topics"
        ) from exc


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: KafkaDocumentSource) -> None:
        self._source = source

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self._source.assigned.clear()
        log.info("partitions revoked: %s", ", ".join(f"{t.topic}[{t.partition}]" for t in revoked))

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info(
            "partitions assigned: %s", ", ".join(f"{t.topic}[{t.partition}]" for t in assigned)
        )
        self._source._position_assigned(assigned)
        self._source.assigned.set()


class KafkaDocumentSource:
    """Feed Bluesky documents from Kafka topics to a :class:`DocumentHandler`.

    Parameters
    ----------
    settings:
        Connection, topics, group and fetch settings (validated here, once).
    start_offsets:
        Optional ``{(topic, partition): offset}`` to start reading from, overriding committed
        offsets and ``auto_offset_reset`` for those partitions (e.g. to replay).
    start_timestamp_ms:
        Optional epoch milliseconds: start every assigned partition at the first message written
        at or after that time (partitions with no such message start at their end).
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        start_offsets: Mapping[TP, int] | None = None,
        start_timestamp_ms: int | None = None,
    ) -> None:
        if not settings.topics:
            raise ConfigError("no Kafka topics configured", source="kafka.topics")
        self.settings = settings
        self._pattern = _topic_pattern(settings.topics)
        self._explicit = _parse_partitions(settings.partitions)
        if settings.group_id is None and self._explicit:
            wanted = set(settings.topics)
            stray = [t for t, _ in self._explicit if t not in wanted and self._pattern is None]
            if stray:
                raise ConfigError(f"kafka.partitions names topics not in kafka.topics: {stray}")
        if settings.security_protocol.startswith("SASL") and not settings.sasl_mechanism:
            raise ConfigError("SASL security_protocol needs kafka.sasl_mechanism")
        self._start_offsets: dict[TP, int] = dict(start_offsets or {})
        self._start_timestamp_ms = start_timestamp_ms
        self._started: set[TP] = set()  # partitions whose start position was applied
        self._next: dict[TP, int] = {}  # next offset to read, per partition delivered from
        self._marked: dict[TP, int] = {}
        self._pending: list[tuple[dict[TP, int], Future[bool]]] = []
        self._lock = threading.Lock()
        self._consumer: KafkaConsumer | None = None
        self._owner: int | None = None
        self._connected = False
        self._lost_at: float | None = None
        self._last_check = 0.0
        self._last_resolve = 0.0
        self.stats = SourceStats()
        #: Whether a broker has answered since this source was made (the connect deadline,
        #: ``connect_timeout_s``, applies only before it has).
        self.connected_once = False
        #: Set once the consumer holds its partition assignment, positioned where reading starts
        #: (group join finished, or explicit assignment made); cleared on revocation and when the
        #: client is rebuilt. A producer may wait on it so that its first messages are not
        #: delayed by the join (``assigned.wait(timeout)``).
        self.assigned = threading.Event()

    # -- connection -------------------------------------------------------------------------

    def _consumer_config(self) -> dict[str, Any]:
        s = self.settings
        cfg: dict[str, Any] = {
            "bootstrap_servers": [b.strip() for b in s.bootstrap_servers.split(",") if b.strip()],
            "client_id": s.client_id,
            "group_id": s.group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": s.auto_offset_reset,
            "fetch_max_wait_ms": s.fetch_max_wait_ms,
            "max_poll_records": s.max_poll_records,
            "max_partition_fetch_bytes": s.max_partition_fetch_bytes,
            "session_timeout_ms": s.session_timeout_ms,
            "heartbeat_interval_ms": s.heartbeat_interval_ms,
            "reconnect_backoff_ms": s.reconnect_backoff_ms,
            "reconnect_backoff_max_ms": s.reconnect_backoff_max_ms,
            "request_timeout_ms": s.request_timeout_ms,
            "allow_auto_create_topics": False,
            **s.security_kwargs(),
        }
        return cfg

    def _new_consumer(self, bootstrap_timeout_ms: int) -> KafkaConsumer:
        config = self._consumer_config()
        config["bootstrap_timeout_ms"] = bootstrap_timeout_ms
        clients: list[Any] = []
        if KafkaNetClient is not None:

            def make_client(**kw: Any) -> Any:
                clients.append(KafkaNetClient(**kw))
                return clients[-1]

            config["kafka_client"] = make_client
        try:
            return KafkaConsumer(**config)
        except BaseException:
            for client in clients:  # kafka-python 3 leaks its IO thread otherwise
                client.close()
            raise

    def _connect(self, stop: threading.Event) -> KafkaConsumer | None:
        """Build the consumer, retrying with exponential backoff; None if ``stop`` was set.

        tenacity runs the attempts: backoff ``reconnect_backoff_ms`` doubling to
        ``reconnect_backoff_max_ms`` (each wait jittered by +-20 %), one warning per retry, and
        a stop request ends a wait at once (:func:`~spt_stream.core.backoff.sleep_unless`).

        Raises
        ------
        BrokerError
            No broker answered within ``connect_timeout_s`` of the first attempt, and this
            source has never been connected (a later outage is retried without limit).
        """
        s = self.settings
        # One attempt blocks up to this (a stop request still ends the wait at once); it grows
        # after each failure so that a slow-to-bootstrap cluster (SASL_SSL over a WAN) still
        # gets through.
        attempt_ms = min(s.request_timeout_ms, _FIRST_ATTEMPT_MS)
        first = not self.connected_once
        deadline = time.monotonic() + s.connect_timeout_s
        wait = doubling(s.reconnect_backoff_ms / 1000, s.reconnect_backoff_max_ms / 1000)

        def attempt() -> KafkaConsumer | None:
            nonlocal attempt_ms
            if stop.is_set():
                return None
            if first:
                left_ms = int((deadline - time.monotonic()) * 1000)
                attempt_ms = max(min(attempt_ms, left_ms), 100)
            try:
                consumer = self._build_consumer(attempt_ms, stop)
                if consumer is None:
                    return None
                self._consumer = consumer
                self._subscribe(consumer)
            except KafkaConfigurationError as exc:
                self._drop_consumer()
                raise ConfigError(f"invalid Kafka consumer settings: {exc}") from exc
            except (KafkaError, OSError):
                self._drop_consumer()
                self._note_lost()
                attempt_ms = min(attempt_ms * 2, s.request_timeout_ms)
                raise
            self._note_connected()
            return consumer

        def past_deadline(state: tenacity.RetryCallState) -> bool:
            # the next wait would end past the deadline: give up now (first connection only)
            return first and time.monotonic() + wait(state) >= deadline

        def give_up(state: tenacity.RetryCallState) -> NoReturn:
            exc = last_error(state)
            raise BrokerError(
                f"no Kafka broker answered at {s.bootstrap_servers} within "
                f"{s.connect_timeout_s:g} s ({state.attempt_number} attempts; "
                f"last: {_brief(exc)})",
                source=s.bootstrap_servers,
            ) from exc

        def log_retry(state: tenacity.RetryCallState) -> None:
            log.warning(
                "cannot reach Kafka at %s (attempt %d: %s); retrying in %.1f s",
                s.bootstrap_servers,
                state.attempt_number,
                _brief(last_error(state)),
                next_wait(state),
            )

        try:
            return tenacity.Retrying(
                retry=tenacity.retry_if_exception_type((KafkaError, OSError)),
                wait=wait,
                stop=past_deadline,
                sleep=sleep_unless(stop, jitter=lambda delay: delay * random.uniform(0.8, 1.2)),
                before_sleep=log_retry,
                retry_error_callback=give_up,
            )(attempt)
        except RetryStoppedError:
            return None

    def _build_consumer(self, attempt_ms: int, stop: threading.Event) -> KafkaConsumer | None:
        """:meth:`_new_consumer` on a helper thread, so that ``stop`` ends the wait at once
        (kafka-python's constructor blocks for the whole bootstrap attempt); None if stopped.
        A consumer finished after the stop is closed by the helper thread."""
        done: Future[KafkaConsumer] = Future()
        lock = threading.Lock()
        abandoned = False

        def build() -> None:
            try:
                consumer = self._new_consumer(attempt_ms)
            except BaseException as exc:
                done.set_exception(exc)
                return
            with lock:
                if not abandoned:
                    done.set_result(consumer)
                    return
            try:
                consumer.close(autocommit=False, timeout_ms=1000)
            except Exception as exc:  # pragma: no cover - closing an unused client
                log.debug("closing an abandoned Kafka consumer: %s", exc)

        threading.Thread(target=build, name="spt-kafka-connect", daemon=True).start()
        while True:
            try:
                return done.result(timeout=0.05)
            except FutureTimeout:
                if stop.is_set():
                    with lock:
                        if not done.done():
                            abandoned = True
                            return None

    def _subscribe(self, consumer: KafkaConsumer) -> None:
        s = self.settings
        if s.group_id is not None:
            listener = _Listener(self)
            if self._pattern is not None:
                consumer.subscribe(pattern=self._pattern.pattern, listener=listener)
            else:
                consumer.subscribe(topics=list(s.topics), listener=listener)
            log.info(
                "joined group %r for topics %s at %s", s.group_id, s.topics, s.bootstrap_servers
            )
        else:
            self._resolve_assignment(consumer)

    def _resolve_assignment(self, consumer: KafkaConsumer) -> None:
        """Explicit assignment: the configured partitions, or all partitions of the topics."""
        self._last_resolve = time.monotonic()
        if self._explicit:
            wanted = set(self._explicit)
        else:
            if self._pattern is not None:
                names = sorted(t for t in consumer.topics() if self._pattern.match(t))
            else:
                names = list(self.settings.topics)
            wanted = set()
            for name in names:
                for p in consumer.partitions_for_topic(name) or ():
                    wanted.add((name, p))
        current = {(tp.topic, tp.partition) for tp in consumer.assignment()}
        if wanted == current:
            return
        if not wanted:
            log.warning("no partitions found yet for topics %s; waiting", self.settings.topics)
            return
        tps = [TopicPartition(t, p) for t, p in sorted(wanted)]
        consumer.assign(tps)
        log.info("assigned %s", ", ".join(f"{t}[{p}]" for t, p in sorted(wanted)))
        self._position_assigned([tp for tp in tps if (tp.topic, tp.partition) not in current])
        self.assigned.set()

    def _position_assigned(self, tps: list[TopicPartition]) -> None:
        """Seek newly assigned partitions: resume where we left off, else the start options."""
        consumer = self._consumer
        if consumer is None:
            return
        by_time: list[TopicPartition] = []
        for tp in tps:
            key = (tp.topic, tp.partition)
            if key in self._next:
                consumer.seek(tp, self._next[key])
            elif key not in self._started:
                self._started.add(key)
                if key in self._start_offsets:
                    consumer.seek(tp, self._start_offsets[key])
                elif self._start_timestamp_ms is not None:
                    by_time.append(tp)
        if by_time:
            found = consumer.offsets_for_times({tp: self._start_timestamp_ms for tp in by_time})
            for tp in by_time:
                hit = found.get(tp)
                if hit is None:
                    consumer.seek_to_end(tp)
                else:
                    consumer.seek(tp, hit.offset)

    def _note_lost(self) -> None:
        if self._connected or self._lost_at is None:
            self._connected = False
            self._lost_at = time.monotonic()

    def _note_connected(self) -> None:
        if not self.connected_once:
            log.info("connected to Kafka at %s", self.settings.bootstrap_servers)
        self.connected_once = True
        if self._lost_at is not None:
            self.stats.reconnects += 1
            log.warning(
                "Kafka at %s reachable again after %.1f s",
                self.settings.bootstrap_servers,
                time.monotonic() - self._lost_at,
            )
            self._check_positions()
        self._connected = True
        self._lost_at = None

    def _watch_connection(self) -> None:
        """While idle: notice a lost/regained broker connection (kafka-python reconnects)."""
        now = time.monotonic()
        if self._consumer is None or now - self._last_check < _CONNECTION_CHECK_S:
            return
        self._last_check = now
        metrics = self._consumer.metrics().get("consumer-metrics", {})
        up = metrics.get("connection-count", 1.0) > 0
        if up and not self._connected:
            self._note_connected()
        elif not up and self._connected:
            self._note_lost()
            log.warning(
                "lost connection to Kafka at %s; reconnecting with backoff %d..%d ms",
                self.settings.bootstrap_servers,
                self.settings.reconnect_backoff_ms,
                self.settings.reconnect_backoff_max_ms,
            )
        if self.settings.group_id is None:
            every = _RESOLVE_EVERY_S if self._consumer.assignment() else _CONNECTION_CHECK_S
            if now - self._last_resolve > every:
                self._resolve_assignment(self._consumer)

    def _check_positions(self) -> None:
        """After an outage: a position past the log end means the log was lost or recreated."""
        consumer = self._consumer
        if consumer is None or not self._next:
            return
        tps = [TopicPartition(t, p) for t, p in self._next]
        try:
            ends = consumer.end_offsets(tps, timeout_ms=2000)
        except KafkaError as exc:
            log.debug("end_offsets after reconnect failed: %s", exc)
            return
        for tp in tps:
            key = (tp.topic, tp.partition)
            end = ends.get(tp)
            if end is not None and end < self._next[key]:
                log.warning(
                    "%s[%d]: next offset %d is past the log end %d (topic recreated or broker "
                    "lost its data); resetting to %s",
                    tp.topic,
                    tp.partition,
                    self._next[key],
                    end,
                    self.settings.auto_offset_reset,
                )
                del self._next[key]
                if tp in consumer.assignment():
                    if self.settings.auto_offset_reset == "earliest":
                        consumer.seek_to_beginning(tp)
                    else:
                        consumer.seek_to_end(tp)

    # -- the loop ---------------------------------------------------------------------------

    def run(
        self,
        handler: DocumentHandler,
        stop: threading.Event,
        *,
        idle_timeout_s: float | None = None,
    ) -> None:
        """Poll and hand documents to ``handler`` until ``stop`` is set.

        Returns when ``stop`` is set or, if ``idle_timeout_s`` is given, after that many seconds
        without a message while partitions are assigned (time spent joining the group or
        reconnecting does not count: a backlog waiting behind a slow join is still read).
        Undecodable messages go to ``handler.reject``; an :class:`~spt_stream.errors.SptError`
        raised by the handler is passed to ``handler.reject`` too. Other exceptions from the
        handler propagate (they are bugs). Broker outages are logged and retried, never raised.
        """
        self._owner = threading.get_ident()
        idle_since = time.monotonic()
        s = self.settings
        # A failed poll drops the client and the next attempt builds a new one (:meth:`_connect`,
        # with its own retries), after a backoff that a stop request ends at once; the backoff
        # starts over after each good poll (one tenacity run per poll).
        polling = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(KafkaError),
            wait=doubling(s.reconnect_backoff_ms / 1000, s.reconnect_backoff_max_ms / 1000),
            sleep=sleep_unless(stop),
            before_sleep=self._poll_failed,
        )
        try:
            while not stop.is_set():
                try:
                    polled = polling(self._poll, handler, stop)
                except RetryStoppedError:
                    break
                if polled is None:
                    break
                consumer, batch = polled
                if not self.assigned.is_set():
                    idle_since = time.monotonic()  # not reading yet: not idle
                if batch:
                    idle_since = time.monotonic()
                    if not self._connected:
                        self._note_connected()
                    self._deliver(batch, handler, stop)
                    self._update_lag(consumer)
                n_records = sum(len(r) for r in batch.values()) if batch else 0
                if n_records < self.settings.max_poll_records:
                    _call_hook(handler, "idle")  # caught up: let the handler flush its batch
                else:
                    _call_hook(handler, "tick")
                if (
                    not batch
                    and idle_timeout_s is not None
                    and time.monotonic() - idle_since >= idle_timeout_s
                ):
                    log.info("no message for %.1f s; stopping", idle_timeout_s)
                    break
        finally:
            self._run_pending_commits()
            self._owner = None

    def _poll(
        self, handler: DocumentHandler, stop: threading.Event
    ) -> tuple[KafkaConsumer, Mapping[TopicPartition, list[Any]]] | None:
        """One poll, connecting first when there is no client; None if ``stop`` was set."""
        if stop.is_set():
            return None
        consumer = self._consumer or self._connect(stop)
        if consumer is None:
            return None
        self._run_pending_commits()
        batch = consumer.poll(timeout_ms=self._poll_timeout_ms(handler, consumer))
        if not batch:
            self._watch_connection()
        return consumer, batch

    def _poll_failed(self, state: tenacity.RetryCallState) -> None:
        """Before the backoff after a failed poll: say so and drop the client."""
        log.warning(
            "Kafka poll failed (%s); rebuilding the client in %.1f s",
            last_error(state),
            next_wait(state),
        )
        self._drop_consumer()
        self._note_lost()

    def _update_lag(self, consumer: KafkaConsumer) -> None:
        """Lag from the high watermarks the last fetches reported (no extra request)."""
        total = 0
        for (topic, partition), nxt in self._next.items():
            high = consumer.highwater(TopicPartition(topic, partition))
            if high is None:
                return
            total += max(0, high - nxt)
        self.stats.lag = total

    def _poll_timeout_ms(self, handler: DocumentHandler, consumer: KafkaConsumer) -> int:
        """The configured poll timeout, shortened to the handler's next deadline if any; at
        least ``_JOIN_POLL_MS`` while a group member holds no partition (joining or
        rebalancing: with kafka-python 3.0 on the development broker, a group subscribed by
        pattern to several topics never finished joining with 20 ms polls; it re-joined in a
        loop and read nothing)."""
        if self.settings.group_id is not None and not consumer.assignment():
            return max(self.settings.poll_timeout_ms, _JOIN_POLL_MS)
        timeout = self.settings.poll_timeout_ms
        if isinstance(handler, PeriodicHandler):
            left = handler.time_until_due()
            if left is not None:
                timeout = min(timeout, max(0, int(left * 1000)))
        return timeout

    def _deliver(
        self,
        batch: Mapping[TopicPartition, list[Any]],
        handler: DocumentHandler,
        stop: threading.Event,
    ) -> None:
        stats = self.stats
        items = list(batch.items())
        for i, (tp, records) in enumerate(items):
            topic, partition = tp.topic, tp.partition
            for j, rec in enumerate(records):
                if stop.is_set():
                    self._rewind(tp, records[j].offset, items[i + 1 :])
                    return
                position = Position(topic, partition, rec.offset)
                value = rec.value
                stats.messages += 1
                stats.bytes += len(value) if value is not None else 0
                self._next[(topic, partition)] = rec.offset + 1
                try:
                    name, doc = decode_document(value)
                except DecodeError as exc:
                    stats.decode_errors += 1
                    err = DecodeError(exc.message, source=str(position))
                    log.warning("rejected message: %s", err)
                    handler.reject(err, value, position)
                    continue
                try:
                    handler(name, doc, position)
                except SptError as exc:
                    handler.reject(exc, value, position)

    def _rewind(
        self, tp: TopicPartition, offset: int, rest: list[tuple[TopicPartition, list[Any]]]
    ) -> None:
        """Stopped inside a fetched batch: seek back so a later run() re-reads what was skipped."""
        consumer = self._consumer
        if consumer is None:
            return
        consumer.seek(tp, offset)
        for other, records in rest:
            if records:
                consumer.seek(other, records[0].offset)

    # -- offsets ----------------------------------------------------------------------------

    def commit(self, offsets: Mapping[TP, int], timeout_s: float | None = None) -> bool:
        """Commit ``{(topic, partition): next_offset}`` for the group (Kafka's meaning: the
        offset of the next message to read, i.e. last handled + 1).

        Returns True when the broker accepted it, False when it failed (logged and counted: the
        messages will be delivered again, which at-least-once sinks tolerate) or when there is
        no consumer group. Safe to call from any thread.
        """
        offsets = dict(offsets)
        if not offsets:
            return True
        if self.settings.group_id is None:
            log.debug("no consumer group: nothing to commit")
            return False
        if self._owner is None or self._owner == threading.get_ident():
            return self._commit_now(offsets)
        fut: Future[bool] = Future()
        with self._lock:
            self._pending.append((offsets, fut))
        try:
            return fut.result(timeout_s or self.settings.request_timeout_ms / 1000)
        except FutureTimeout:
            log.warning("commit of %s timed out waiting for the polling thread", offsets)
            return False

    def _commit_now(self, offsets: dict[TP, int]) -> bool:
        consumer = self._consumer
        if consumer is None:
            self.stats.commit_failures += 1
            log.warning("cannot commit %s: not connected", offsets)
            return False
        try:
            consumer.commit(
                {
                    TopicPartition(t, p): OffsetAndMetadata(o, None, -1)
                    for (t, p), o in offsets.items()
                }
            )
        except KafkaError as exc:
            self.stats.commit_failures += 1
            log.warning("offset commit failed (%s); those messages may be delivered again", exc)
            return False
        self.stats.commits += 1
        return True

    def _run_pending_commits(self) -> None:
        if not self._pending:
            return
        with self._lock:
            pending, self._pending = self._pending, []
        for offsets, fut in pending:
            fut.set_result(self._commit_now(offsets))

    def mark_done(self, position: Position) -> None:
        """Record that ``position`` and all before it are safely handled (:meth:`commit_marked`)."""
        if position.topic is None or position.partition is None or position.offset is None:
            return
        key = (position.topic, position.partition)
        with self._lock:
            if position.offset >= self._marked.get(key, -1):
                self._marked[key] = position.offset

    def commit_marked(self) -> bool:
        """Commit, per partition, one past the highest position given to :meth:`mark_done`."""
        with self._lock:
            marked, self._marked = self._marked, {}
        ok = self.commit({k: o + 1 for k, o in marked.items()})
        if not ok:
            with self._lock:  # keep them for the next try unless newer marks arrived
                for k, o in marked.items():
                    self._marked[k] = max(o, self._marked.get(k, -1))
        return ok

    def committed(self, topic: str, partition: int) -> int | None:
        """The group's committed offset for one partition (None if none), from the broker."""
        if self._consumer is None:
            return None
        result = self._consumer.committed(TopicPartition(topic, partition))
        return None if result is None else int(result)

    # -- shutdown ---------------------------------------------------------------------------

    def _drop_consumer(self) -> None:
        self.assigned.clear()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                consumer.close(autocommit=False, timeout_ms=2000)
            except Exception as exc:  # closing a broken client must not mask the real problem
                log.debug("closing Kafka consumer: %s", exc)

    def close(self) -> None:
        """Leave the group and close connections. Commits nothing (engine-driven commits only)."""
        self._drop_consumer()

    def __enter__(self) -> KafkaDocumentSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _brief(exc: BaseException) -> str:
    """An exception as ``Type: message`` on one line (kafka-python's messages can be long)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    name = type(exc).__name__
    text = text if text.startswith(name) else f"{name}: {text}"
    return text[:200]


def _call_hook(handler: DocumentHandler, name: str) -> None:
    """Call an optional handler hook: ``idle()`` when the source has caught up with the log
    (nothing more buffered: a batching handler should process what it holds now), ``tick()``
    after a full poll (a backlog: only deadlines are due)."""
    if not isinstance(handler, PeriodicHandler):
        return
    if name == "idle":
        handler.idle()
    else:
        handler.tick()


def install_stop_signals(stop: threading.Event) -> Callable[[], None]:
    """Set ``stop`` on SIGINT/SIGTERM (main thread only); a second SIGINT raises KeyboardInterrupt.

    Returns a function restoring the previous handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("install_stop_signals must be called from the main thread")
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.info("received %s; stopping", signal.Signals(signum).name)
        stop.set()

    for sig in previous:
        signal.signal(sig, _on_signal)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore

"""Engine metrics: Prometheus exposition for the facility, quantiles for the live status view.

Counters and gauges live in a private ``prometheus_client.CollectorRegistry`` per engine (several
engines in one process never collide). Latency (event time -> results written) is recorded both
in a Prometheus histogram (what a facility scrapes and aggregates) and in a bounded sliding window
from which the status view computes p50/p99 exactly over the recent frames.

Sinks behind a bounded queue (:class:`~spt_stream.sinks.threaded.ThreadedSink`, the Tiled
writer) are read at scrape time once :meth:`EngineMetrics.watch_sinks` names them: per sink
(label ``sink``) the queue's depth, capacity and high-water mark, whether the engine is blocked
on it right now, and the seconds it has spent blocked (backpressure; see :func:`sink_queues`);
for a sink whose writer runs in a child process (the Zarr trace), ``spt_sink_process_starts``
counts the processes started (above 1: a writer died and was replaced).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from spt_stream.protocols import NamedSink

__all__ = ["EngineMetrics", "LatencyWindow", "sink_queues"]

#: Keys of a sink's ``stats`` that describe its queue (sinks without a queue have none).
_QUEUE_KEYS = ("queue_capacity", "queue_depth", "queue_high_water", "blocked", "blocked_s")


def sink_queues(sinks: Sequence[Any]) -> list[dict[str, Any]]:
    """The queue of every sink that has one, from its ``stats``: ``name``, ``queue_capacity``,
    ``queue_depth``, ``queue_high_water`` (in the sink's unit: batches for a ThreadedSink,
    rows for Tiled), ``blocked`` (bool: the engine waits on the full queue now) and
    ``blocked_s`` (seconds it has waited in all); ``process_starts`` where the sink's writer
    runs in a child process. Sinks whose stats fail are left out."""
    out: list[dict[str, Any]] = []
    for i, sink in enumerate(sinks):
        try:
            stats: Mapping[str, Any] = sink.stats
        except Exception:  # a broken stats property must not break a scrape or the view
            continue
        if "queue_depth" not in stats:
            continue
        name = sink.name if isinstance(sink, NamedSink) else None
        entry: dict[str, Any] = {"name": name if isinstance(name, str) else f"sink{i}"}
        for key in _QUEUE_KEYS:
            entry[key] = stats.get(key, 0)
        entry["blocked"] = bool(entry["blocked"])
        entry["blocked_s"] = float(entry["blocked_s"])
        if "process_starts" in stats:  # the writer runs in a child process
            entry["process_starts"] = int(stats["process_starts"])
        out.append(entry)
    return out


class _SinkQueueCollector(Collector):
    """Reads the watched sinks' queues at scrape time (see :func:`sink_queues`)."""

    def __init__(self) -> None:
        self.sinks: list[Any] = []

    def describe(self) -> Iterable[Metric]:
        return []  # families depend on the sinks: let the registry collect to check names

    def collect(self) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "queue_depth": GaugeMetricFamily(
                "spt_sink_queue_depth", "Items queued for background sinks", labels=["sink"]
            ),
            "queue_capacity": GaugeMetricFamily(
                "spt_sink_queue_capacity", "Bound of each sink queue", labels=["sink"]
            ),
            "queue_high_water": GaugeMetricFamily(
                "spt_sink_queue_high_water", "Deepest each sink queue has been", labels=["sink"]
            ),
            "blocked": GaugeMetricFamily(
                "spt_sink_blocked",
                "1 while the engine waits for room in the sink's full queue (backpressure)",
                labels=["sink"],
            ),
            "blocked_s": CounterMetricFamily(
                "spt_sink_blocked_seconds",
                "Seconds the engine waited for room in the sink's queue (backpressure)",
                labels=["sink"],
            ),
        }
        starts = CounterMetricFamily(
            "spt_sink_process_starts",
            "Writer processes started per sink (more than 1: a writer died and was restarted)",
            labels=["sink"],
        )
        for q in sink_queues(self.sinks):
            for key, family in families.items():
                family.add_metric([q["name"]], float(q[key]))
            if "process_starts" in q:
                starts.add_metric([q["name"]], float(q["process_starts"]))
        yield from families.values()
        yield starts


class _ModelCollector(Collector):
    """The model backend serving now, read at scrape time (a background compile switches it)."""

    def __init__(self) -> None:
        self.state: Callable[[], Mapping[str, Any]] | None = None

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        if self.state is None:
            return
        try:
            state = self.state()
        except Exception:  # a scrape never fails for it
            return
        backend = GaugeMetricFamily(
            "spt_model_backend",
            "1 for the model backend serving now (eager, compile, aot)",
            labels=["backend"],
        )
        backend.add_metric([str(state.get("backend", "?"))], 1.0)
        yield backend
        yield GaugeMetricFamily(
            "spt_model_compiling",
            "1 while the AOT model compiles in the background (the eager model serves)",
            value=1.0 if state.get("compiling") else 0.0,
        )


_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LatencyWindow:
    """The last ``size`` latencies (seconds), thread-safe, for exact recent quantiles."""

    def __init__(self, size: int = 4096) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def extend(self, values: Iterable[float]) -> None:
        with self._lock:
            self._values.extend(values)

    def quantiles(self, qs: tuple[float, ...] = (0.5, 0.99)) -> tuple[float, ...]:
        """Quantiles in seconds (NaN when empty)."""
        with self._lock:
            data = np.fromiter(self._values, dtype=np.float64)
        if data.size == 0:
            return tuple(float("nan") for _ in qs)
        return tuple(float(v) for v in np.quantile(data, qs))


class EngineMetrics:
    """All counters the engine exposes. Names follow Prometheus conventions (``spt_*``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.documents = Counter(
            "spt_documents", "Bluesky documents received", ["name"], registry=r
        )
        self.rejected = Counter(
            "spt_rejected", "Inputs rejected (dead-lettered), by reason", ["reason"], registry=r
        )
        self.frames = Counter("spt_frames", "Frames analysed and written", registry=r)
        self.duplicates = Counter(
            "spt_duplicate_frames", "Re-delivered frames skipped (already in the trace)", registry=r
        )
        self.batches = Counter("spt_batches", "Micro-batches run through the model", registry=r)
        self.commits = Counter("spt_offset_commits", "Kafka offset commits", registry=r)
        self.sink_errors = Counter("spt_sink_errors", "Sink failures", ["sink"], registry=r)
        self.open_runs = Gauge("spt_open_runs", "Runs in progress", registry=r)
        self.pending_frames = Gauge(
            "spt_pending_frames", "Frames waiting in the micro-batcher", registry=r
        )
        self._sink_queues = _SinkQueueCollector()
        r.register(self._sink_queues)
        self._model = _ModelCollector()
        r.register(self._model)
        self.lag = Gauge("spt_consumer_lag", "Messages behind the log end", registry=r)
        self.latency = Histogram(
            "spt_frame_latency_seconds",
            "Event time to results written",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "spt_batch_seconds",
            "Normalize + predict + write time per batch",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.window = LatencyWindow()

    def watch_sinks(self, sinks: Sequence[Any]) -> None:
        """Expose the queues of ``sinks`` (read at every scrape); replaces earlier sinks."""
        self._sink_queues.sinks = list(sinks)

    def watch_model(self, state: Callable[[], Mapping[str, Any]]) -> None:
        """Expose ``state()`` (``backend``, ``compiling``) as ``spt_model_backend{backend}`` and
        ``spt_model_compiling``, read at every scrape."""
        self._model.state = state

    def observe_latencies(self, values: Iterable[float]) -> None:
        vals = list(values)
        for v in vals:
            self.latency.observe(v)
        self.window.extend(vals)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return bytes(generate_latest(self.registry))

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` on ``addr:port`` from a daemon thread."""
        start_http_server(port, addr=addr, registry=self.registry)

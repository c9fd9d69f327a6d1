"""Engine metrics: Prometheus exposition for the facility, quantiles for the live status view.

Counters and gauges live in a private ``prometheus_client.CollectorRegistry`` per engine (several
engines in one process never collide). Latency (event time -> results written) is recorded both
in a Prometheus histogram (what a facility scrapes and aggregates) and in a bounded sliding window
from which the status view computes p50/p99 exactly over the recent frames.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import start_http_server

__all__ = ["EngineMetrics", "LatencyWindow"]

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
        self.sink_queue_depth = Gauge(
            "spt_sink_queue_depth", "Items queued for background sinks", ["sink"], registry=r
        )
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

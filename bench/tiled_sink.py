"""Tiled trace sink and feedback publisher costs, against a real local Tiled server and broker.

Run: ``.venv/bin/python bench/tiled_sink.py`` (starts both, ~1-2 min on 2 cores). Prints
markdown tables:

1. ``append_partition`` latency by rows per append (what one HTTP append costs);
2. :class:`TiledTraceWriter` at offered frame rates: time the engine spends in ``write()``,
   rows written/dropped, mean rows per coalesced append, time to drain after the last write;
3. :class:`FeedbackPublisher` cost in the engine thread per frame (JSON + event page + send).
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spt_stream.devtools.broker import LocalBroker
from spt_stream.feedback.publisher import FeedbackPublisher
from spt_stream.sinks.arrow_rows import TableLayout
from spt_stream.sinks.rows import Column2D, TraceRows
from spt_stream.sinks.tiled_trace import TiledTraceWriter
from tests.plugins.tiled import TiledServer

CLASSES = np.arange(7, dtype=np.float64)


def rows(first: int, n: int) -> TraceRows:
    seq = np.arange(first, first + n, dtype=np.int64)
    cols = {f"d{i}": np.random.rand(n) for i in range(6)}
    cols.update({f"d{i}_std": np.random.rand(n) for i in range(6)})
    cols.update({"e0": np.full(n, 7709.0), "ood_score": np.ones(n), "potential": np.ones(n)})
    cols["flags"] = np.zeros(n, dtype=np.int64)
    return TraceRows(
        seq_num=seq,
        time=time.time() + 0 * seq,
        columns=cols,
        arrays={"d0_probs": Column2D(np.random.rand(n, 7), "d0_class", CLASSES)},
    )


def pct(x: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(x), q))


def bench_append(url: str, key: str) -> None:
    from tiled.client import from_uri

    client = from_uri(url, api_key=key, remember_me=False)
    print("\n### append_partition latency (one HTTP append)\n")
    print("| rows/append | p50 ms | p95 ms | rows/s |")
    print("|---|---|---|---|")
    for n in (1, 16, 64, 256, 1024):
        node = client.create_container(key=f"bench-{uuid.uuid4().hex[:8]}")
        layout = TableLayout.from_rows(rows(0, n))
        table = node.create_appendable_table(layout.schema, key="trace")
        lat = []
        for i in range(25):
            t, _ = layout.to_table(rows(i * n, n))
            t0 = time.perf_counter()
            table.append_partition(0, t)
            lat.append(time.perf_counter() - t0)
        p50 = pct(lat, 50) * 1e3
        print(f"| {n} | {p50:.1f} | {pct(lat, 95) * 1e3:.1f} | {n / pct(lat, 50):,.0f} |")


def bench_writer(url: str, key: str) -> None:
    print("\n### TiledTraceWriter at offered rates (batches every 20 ms for 5 s, queue 1024)\n")
    print(
        "| frames/s | write() p50 us | write() p99 us | written | dropped | rows/append | drain s |"
    )
    print("|---|---|---|---|---|---|---|")
    for rate in (100, 500, 2000):
        per_batch = max(1, rate // 50)
        with TiledTraceWriter(url, key, queue_size=1024, on_full="drop") as w:
            uid = str(uuid.uuid4())
            w.open_run(uid, {"element": "Co"})
            w.write(uid, rows(0, 1))
            w.flush(30)  # table created; measure steady state
            lat = []
            seq = 1
            t_end = time.monotonic() + 5.0
            while time.monotonic() < t_end:
                batch = rows(seq, per_batch)
                seq += per_batch
                t0 = time.perf_counter()
                w.write(uid, batch)
                lat.append(time.perf_counter() - t0)
                time.sleep(0.02)
            t0 = time.perf_counter()
            w.flush(60)
            drain = time.perf_counter() - t0
            s = w.stats
            per_append = s["rows_written"] / max(1, s["appends"])
            print(
                f"| {rate} | {pct(lat, 50) * 1e6:.0f} | {pct(lat, 99) * 1e6:.0f} "
                f"| {s['rows_written']} | {s['rows_dropped']} | {per_append:.1f} | {drain:.2f} |"
            )


def bench_publisher() -> None:
    print("\n### FeedbackPublisher in the engine thread (frame JSON + event page + send)\n")
    print("| rows/batch | write() p50 ms | p99 ms | us/frame |")
    print("|---|---|---|---|")
    with LocalBroker() as broker:
        for n in (1, 8, 64):
            with FeedbackPublisher(
                broker.bootstrap,
                frame_topic="bench.frames",
                documents_topic="bench.docs",
                model_name="bench",
            ) as pub:
                uid = str(uuid.uuid4())
                pub.open_run(uid, {"element": "Co", "edge": "K"})
                lat = []
                for i in range(200):
                    batch = rows(i * n, n)
                    t0 = time.perf_counter()
                    pub.write(uid, batch)
                    lat.append(time.perf_counter() - t0)
                pub.finalize(uid, "success")
                pub.flush(30)
            p50 = pct(lat, 50)
            print(f"| {n} | {p50 * 1e3:.2f} | {pct(lat, 99) * 1e3:.2f} | {p50 / n * 1e6:.0f} |")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = TiledServer(workdir=Path(tmp))
        t0 = time.perf_counter()
        server.start()
        print(f"Tiled server start: {time.perf_counter() - t0:.1f} s")
        try:
            bench_append(server.url, server.api_key)
            bench_writer(server.url, server.api_key)
        finally:
            server.stop()
    bench_publisher()


if __name__ == "__main__":
    main()

"""What the live view costs the engine: backlog throughput and live latency, without and with
the view serving two open "pages".

The engine runs in this process, in process (``build_pipeline`` + the RunEngine's documents,
as ``tests/_runengine.py``), writing its Zarr trace under a temporary root. With the view, a
:class:`~spt_stream.view.server.ViewProcess` serves that root next to the engine (its own
process, fed the engine's snapshot once a second through a dropping queue, exactly what
``--view`` starts) and two client processes play the pages: each follows every run over the
WebSocket and counts the rows it receives (a headless browser would add its rendering cost to the
shared CPUs, which is the page's cost, not the engine's).

* backlog: ``--backlog`` frames' documents recorded from a RunEngine run first, then fed to the
  engine as fast as it takes them; frames/s = frames / time until the trace was finalized.
* live: a RunEngine run of ``--live`` frames at ``--rate`` Hz feeding the engine as it acquires;
  latency = the engine's own event -> trace-written quantiles (``Engine.snapshot``).

Run: ``.venv/bin/python bench/bench_view.py [--backlog 600 --live 200 --rate 20 --repeat 2]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("SPT_MODEL_BACKEND", "eager")


def _page(url: str, stop: Any, counts: Any, idx: int) -> None:
    """One "page": follow every run of the view over its WebSocket, count rows received."""
    from websockets.sync.client import connect

    followed: set[str] = set()

    def follow(uid: str) -> None:
        ws_url = url.replace("http://", "ws://") + f"ws/runs/{uid}"
        try:
            with connect(ws_url, max_size=None) as ws:
                while not stop.is_set():
                    try:
                        msg = json.loads(ws.recv(timeout=0.5))
                    except TimeoutError:
                        continue
                    if msg["type"] == "rows":
                        counts[idx] += len(msg["seq_num"])
        except Exception:  # the view stopped: the benchmark is over
            return

    while not stop.is_set():
        try:
            runs = json.load(urllib.request.urlopen(url + "api/runs", timeout=5))["runs"]
        except OSError:
            runs = []
        for r in runs:
            if r["run_uid"] not in followed:
                followed.add(r["run_uid"])
                threading.Thread(target=follow, args=(r["run_uid"],), daemon=True).start()
        time.sleep(0.2)


def _record_docs(frames: int) -> list[tuple[str, dict[str, Any]]]:
    from bluesky import RunEngine

    from spt_stream.devtools.demo.experiment import (
        DelithiationCell,
        QuickXASDetector,
        delithiation_plan,
    )

    docs: list[tuple[str, dict[str, Any]]] = []
    cell = DelithiationCell(name="cell", duration_s=1.0)
    det = QuickXASDetector(name="qxas", cell=cell, seed=5)
    RE = RunEngine({}, call_returns_result=True)
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(delithiation_plan(det, cell, frames=frames, rate_hz=1e4))
    return docs


def _measure(
    docs: list[tuple[str, dict[str, Any]]], live: int, rate: float, view: bool
) -> dict[str, float]:
    from bluesky import RunEngine

    from spt_stream.config import load_settings
    from spt_stream.devtools.demo.experiment import (
        DelithiationCell,
        QuickXASDetector,
        delithiation_plan,
    )
    from spt_stream.engine.metrics import LatencyWindow
    from spt_stream.engine.pipeline import build_pipeline
    from spt_stream.sinks.deadletter import MemoryDeadLetter
    from spt_stream.sinks.zarr_trace import open_trace
    from spt_stream.transports.inprocess import InProcessConsumer

    with tempfile.TemporaryDirectory(prefix="spt-bench-view-") as tmp:
        root = Path(tmp) / "traces"
        settings = load_settings(None, {"zarr": {"root": root}, "dead_letter": {"path": None}})
        pipe = build_pipeline(settings, dead_letter=MemoryDeadLetter())
        stop = mp.get_context("spawn").Event()
        pages: list[Any] = []
        counts = mp.get_context("spawn").Array("l", 2)
        view_proc = None
        if view:
            from spt_stream.view.server import ViewProcess

            view_proc = ViewProcess(root, snapshot=pipe.engine.snapshot).start()
            for i in range(2):
                p = mp.get_context("spawn").Process(
                    target=_page, args=(view_proc.url, stop, counts, i), daemon=True
                )
                p.start()
                pages.append(p)
            time.sleep(3.0)  # the pages are up and polling
        consumer = InProcessConsumer(pipe.engine)
        t0 = time.perf_counter()
        for name, doc in docs:
            consumer(name, doc)
        backlog_s = time.perf_counter() - t0
        n_backlog = sum(1 for n, _ in docs if n == "event")
        cell = DelithiationCell(name="cell", duration_s=live / rate)
        det = QuickXASDetector(name="qxas", cell=cell, seed=6)
        RE = RunEngine({}, call_returns_result=True)
        RE.subscribe(InProcessConsumer(pipe.engine))
        pipe.engine.metrics.window = LatencyWindow()  # the live run's latencies only
        uid = RE(delithiation_plan(det, cell, frames=live, rate_hz=rate)).run_start_uids[0]
        snap = pipe.engine.snapshot()
        pipe.close()
        rows = int(open_trace(root / f"{uid}.zarr").sizes["time"])
        received = -1
        if view:
            expected = n_backlog + rows
            deadline = time.monotonic() + 15
            while min(counts[:]) < expected and time.monotonic() < deadline:
                time.sleep(0.1)
            received = min(counts[:])
            stop.set()
            for p in pages:
                p.join(5)
            assert view_proc is not None
            view_proc.stop()
        return {
            "backlog_frames_per_s": n_backlog / backlog_s,
            "live_p50_ms": float(snap["latency_p50_ms"]),
            "live_p99_ms": float(snap["latency_p99_ms"]),
            "live_rows": rows,
            "rows_each_page_received": received,
            "rows_expected_per_page": n_backlog + rows if view else -1,
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backlog", type=int, default=600)
    ap.add_argument("--live", type=int, default=200)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    docs = _record_docs(args.backlog)
    results: dict[str, list[dict[str, float]]] = {"without view": [], "with view, 2 pages": []}
    for _ in range(args.repeat):  # interleaved, so drifts of a shared machine hit both
        results["without view"].append(_measure(docs, args.live, args.rate, view=False))
        results["with view, 2 pages"].append(_measure(docs, args.live, args.rate, view=True))
    print(f"backlog {args.backlog} frames, live {args.live} frames at {args.rate:g} Hz, "
          f"{args.repeat} repeats (median)")  # fmt: skip
    base: dict[str, float] = {}
    for name, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        line = (
            f"  {name:20s} backlog {med['backlog_frames_per_s']:7.1f} frames/s | live latency "
            f"p50 {med['live_p50_ms']:6.1f} ms p99 {med['live_p99_ms']:6.1f} ms"
        )
        if med["rows_each_page_received"] >= 0:
            line += (
                f" | each page got {int(med['rows_each_page_received'])}"
                f"/{int(med['rows_expected_per_page'])} rows"
            )
        if base:
            d_backlog = 100 * (med["backlog_frames_per_s"] / base["backlog_frames_per_s"] - 1)
            d_p50 = 100 * (med["live_p50_ms"] / base["live_p50_ms"] - 1)
            line += f" | backlog {d_backlog:+.1f} %, p50 {d_p50:+.1f} %"
        else:
            base = med
        print(line)


if __name__ == "__main__":
    main()

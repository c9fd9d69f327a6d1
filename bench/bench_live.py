"""Live-engine benchmarks: feedback latency, backlog throughput and memory over a long run.

Everything runs against a local Tansu broker (:class:`spt_stream.devtools.broker.LocalBroker`) with
the
packaged default model and the engine's packaged settings
(``spt_stream/configs/engine.yaml``), in separate processes so each has its own interpreter:

* this process: the broker, and the producer, which sends pre-built Bluesky documents (a real
  ``start``/``descriptor``/``stop`` from ``event_model.compose_run`` with ``md["spt"]``; events
  carrying 400-point Co K-edge spectra from the demo's simulated quick-XAS detector) with
  :class:`spt_stream.transports.publish.KafkaDocumentPublisher`, paced by a deadline loop; each
  event's
  ``time`` is stamped just before it is sent;
* the engine: :class:`~spt_stream.transports.kafka.KafkaDocumentSource` (consumer group) feeding
  :func:`spt_stream.engine.pipeline.build_pipeline` (Zarr trace under a temporary directory +
  per-frame
  feedback topic), exactly what ``spt-stream run`` builds;
* the agent: a plain kafka-python consumer of the feedback topic (explicit assignment, the
  engine's ``fetch_max_wait_ms``) recording when each :class:`FrameFeedback` message arrives.

Benchmarks:

1. **latency**: one engine, one warm-up run, then one run per offered rate (``--rates``, each
   ``--seconds`` long). Latency = agent receive time - the event's ``time``, per frame, split
   into event -> ``analysis_time`` (the publisher's stamp: Kafka in, assembly, batching,
   normalization, model, hand-off to the feedback thread) and ``analysis_time`` -> receive
   (feedback producer, broker, agent fetch). The engine's own event -> batch-written latency
   (what ``Engine.metrics`` observes) is recorded in the engine process, and the batch sizes.
2. **backlog**: ``--backlog`` frames produced first, then the engine started; throughput is frames
   / (time the stop document's processing finished, i.e. every frame flushed to the Zarr trace -
   time the first document arrived); the trace is then read back and its rows counted.
3. **memory**: ``--memory-frames`` frames (in runs of ``--memory-run-frames``, one topic per run:
   the development broker stops serving a partition of ~100k such messages) produced first, then
   ``spt-stream run --stop-after-idle`` in a subprocess; its RSS (``/proc/PID/status``) is sampled
   against the frames analysed (its Prometheus ``spt_frames_total``).

Run: ``.venv/bin/python bench/bench_live.py`` (all three; ``--only latency`` etc. for one).
``BENCH_ENGINE_ENV=NAME=VALUE[,NAME=VALUE]`` adds variables to the engine process's environment
(e.g. ``SPT_COMPUTE_THREADS=2`` to compare thread caps).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    REPO,
    Lines,
    Producer,
    feedback_consumer,
    fmt,
    loadavg,
    make_run,
    q,
    simulated_spectra,
    trace_rows,
    wait_child,
)

# ----------------------------------------------------------------------------------- children


class _Watch:
    """Wraps the engine: counts stop documents, stops the source after the last expected one."""

    def __init__(
        self,
        engine: Any,
        expected_stops: int,
        stop: threading.Event,
        children_cpu: Any = None,
    ) -> None:
        self.engine = engine
        self.expected = expected_stops
        self.stop = stop
        self.first_doc: float | None = None
        #: () -> CPU seconds of the engine's child processes (the Zarr writer), read at each stop
        self.children_cpu = children_cpu or (lambda: 0.0)
        #: (run uid, wall time, process CPU seconds, child processes' CPU seconds) at each stop
        self.stops: list[tuple[str, float, float, float]] = []
        #: (run uid, seq_num, wall time) when each event document reached the engine
        self.received: list[tuple[str, int, float]] = []
        self._runs: dict[str, str] = {}  # descriptor uid -> run uid

    def __call__(self, name: str, doc: Mapping[str, Any], position: Any = None) -> None:
        now = time.time()
        if self.first_doc is None:
            self.first_doc = now
        if name == "descriptor":
            self._runs[str(doc.get("uid"))] = str(doc.get("run_start"))
        elif name == "event":
            run = self._runs.get(str(doc.get("descriptor")), "")
            self.received.append((run, int(doc.get("seq_num", -1)), now))
        self.engine(name, doc, position)
        if name == "stop":
            self.stops.append(
                (
                    str(doc.get("run_start")),
                    time.time(),
                    time.process_time(),
                    self.children_cpu(),
                )
            )
            if len(self.stops) >= self.expected:
                self.stop.set()

    def __getattr__(self, name: str) -> Any:  # reject, tick, idle, time_until_due
        return getattr(self.engine, name)


def engine_child(cfg: Mapping[str, Any]) -> None:
    """The engine process: source + pipeline until ``expected_stops`` stop documents."""
    import logging

    from spt_stream.config import load_settings
    from spt_stream.engine.metrics import EngineMetrics
    from spt_stream.engine.pipeline import build_pipeline
    from spt_stream.transports.kafka import KafkaDocumentSource

    logging.basicConfig(level=logging.WARNING, format="engine: %(name)s: %(message)s")

    class RecordingMetrics(EngineMetrics):
        """Keeps every (event time, latency) pair and every batch size."""

        def __init__(self) -> None:
            super().__init__()
            self.pairs: list[tuple[float, float]] = []
            self.batch_sizes: list[int] = []

        def observe_latencies(self, values: Iterable[float]) -> None:
            now = time.time()
            vals = list(values)
            self.pairs.extend((now - v, v) for v in vals)
            self.batch_sizes.append(len(vals))
            super().observe_latencies(vals)

    settings = load_settings(
        None,
        {
            "kafka": {
                "bootstrap_servers": cfg["bootstrap"],
                "topics": (cfg["topic"],),
                "group_id": cfg["group"],
                "fetch_max_wait_ms": cfg.get("fetch_max_wait_ms"),
            },
            "zarr": {"root": cfg["zarr"]},
            "feedback": {"topic": cfg.get("feedback")},
            "dead_letter": {"path": cfg["dead_letter"]},
        },
    )
    t_start = time.time()
    metrics = RecordingMetrics()
    source = KafkaDocumentSource(settings.kafka)
    pipe = build_pipeline(settings, commit=source.commit, metrics=metrics)
    t_ready = time.time()
    commits: list[tuple[float, float]] = []  # (wall start, seconds): flush sinks + commit
    engine_commit = pipe.engine.commit

    def timed_commit() -> None:
        t0, p0 = time.time(), time.perf_counter()
        engine_commit()
        commits.append((t0, time.perf_counter() - p0))

    pipe.engine.commit = timed_commit  # type: ignore[method-assign]
    # stage times per batch: (process start, model start, process end, [(run uid, seq_num)])
    stages: list[tuple[float, float, float, list[tuple[str, int]]]] = []
    engine_process, engine_predict = pipe.engine._process, pipe.engine._predict_and_write
    predict_started: list[float] = []

    profile_first = [bool(cfg.get("profile_first"))]

    def timed_process(frames: list[Any]) -> None:
        t0 = time.time()
        if profile_first[0]:  # where the first batch's time goes (to stderr)
            import cProfile
            import io
            import pstats

            profile_first[0] = False
            prof = cProfile.Profile()
            prof.runcall(engine_process, frames)
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(30)
            print(f"engine: first batch profile\n{out.getvalue()}", file=sys.stderr)
        else:
            engine_process(frames)
        stages.append(
            (
                t0,
                predict_started.pop() if predict_started else t0,
                time.time(),
                [(f.run_uid, f.seq_num) for f in frames],
            )
        )

    def timed_predict(item: Any) -> None:
        predict_started.append(time.time())
        engine_predict(item)

    pipe.engine._process = timed_process  # type: ignore[method-assign]
    pipe.engine._predict_and_write = timed_predict  # type: ignore[method-assign]
    stop = threading.Event()
    writer_pids = [
        pid for s in pipe.sinks if (pid := getattr(getattr(s, "writer", None), "pid", None))
    ]
    watch = _Watch(
        pipe.engine,
        int(cfg["expected_stops"]),
        stop,
        children_cpu=lambda: sum(_proc_cpu_s(p) for p in writer_pids),
    )
    if cfg.get("announce"):  # tell the parent once the engine holds its partition

        def announce() -> None:
            if source.assigned.wait(120):
                print(f"ASSIGNED {time.time():.6f}", flush=True)

        threading.Thread(target=announce, daemon=True).start()
    c0 = time.process_time()
    writer_hwm_mb = 0.0
    try:
        source.run(watch, stop, idle_timeout_s=float(cfg.get("idle_timeout_s", 600)))
    finally:
        for sink in pipe.sinks:  # ru_maxrss of a child counts the parent's pages at fork
            pid = getattr(getattr(sink, "writer", None), "pid", None)
            if pid is not None:
                writer_hwm_mb += _status_mb(pid, "VmHWM")
        pipe.close()
        source.close()
    sinks = {
        getattr(s, "name", type(s).__name__): dict(getattr(s, "stats", {})) for s in pipe.sinks
    }
    out = {
        "t_start": t_start,
        "t_ready": t_ready,
        "first_doc": watch.first_doc,
        "stops": watch.stops,
        "pairs": metrics.pairs,
        "commits": commits,
        "received": watch.received,
        "stages": stages,
        "threads": pipe.model.threads,
        "backend": str(pipe.model.info.get("backend")),
        "batch_sizes": metrics.batch_sizes,
        "released": dict(pipe.engine._batcher.released),
        "sinks": sinks,
        "source": vars(source.stats),
        "cpu_s": time.process_time() - c0,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        # the Zarr writer process's peak RSS (read before pipe.close() ended it)
        "maxrss_children_mb": writer_hwm_mb,
        "cpu_children_s": (
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
            + resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime
        ),
    }
    Path(cfg["out"]).write_text(json.dumps(out))


def listen_child(cfg: Mapping[str, Any]) -> None:
    """The agent: consume the feedback topic, note when each frame's message arrives."""
    expected: dict[str, int] = dict(cfg["expected"])
    consumer = feedback_consumer(cfg)
    rows: dict[str, list[tuple[int, float, float, float]]] = {u: [] for u in expected}
    done: set[str] = set()
    deadline = time.monotonic() + float(cfg["timeout_s"])
    while len(done) < len(expected) and time.monotonic() < deadline:
        batch = consumer.poll(timeout_ms=20)  # as the engine (see _common.feedback_consumer)
        t = time.time()
        for records in batch.values():
            for rec in records:
                m = json.loads(rec.value)
                uid = m["run_uid"]
                if uid not in rows:
                    continue
                rows[uid].append((m["seq_num"], m["event_time"], m["analysis_time"], t))
                if uid not in done and len(rows[uid]) >= expected[uid]:
                    done.add(uid)
                    print(f"GOT {uid}", flush=True)
    consumer.close()
    Path(cfg["out"]).write_text(json.dumps(rows))
    print("DONE", flush=True)


def _spawn(kind: str, cfg: Mapping[str, Any], **kw: Any) -> subprocess.Popen[str]:
    env = {**os.environ, **{k: v for k, v in (x.split("=", 1) for x in _ENGINE_ENV)}}
    return subprocess.Popen(
        [sys.executable, __file__, f"--child-{kind}", json.dumps(cfg)],
        text=True,
        cwd=REPO,
        env=env if kind == "engine" else None,
        **kw,
    )


_ENGINE_ENV: list[str] = [e for e in os.environ.get("BENCH_ENGINE_ENV", "").split(",") if e]


# ----------------------------------------------------------------------------------- benchmarks


def bench_latency(
    bootstrap: str,
    tmp: Path,
    data: tuple[Any, Any, Any],
    rates: Sequence[float],
    seconds: Sequence[float],
    fetch_wait_ms: int | None = None,
) -> None:
    from spt_stream.config import load_settings
    from spt_stream.devtools.broker import create_topic

    grid, spectra, pots = data
    topic, feedback = "bench.live.latency.documents", "bench.live.latency.feedback"
    create_topic(bootstrap, topic, 1)
    create_topic(bootstrap, feedback, 1)
    warm = make_run(100, grid, "warm-up")
    runs = [
        make_run(max(2, int(r * s)), grid, f"{r:g}/s") for r, s in zip(rates, seconds, strict=True)
    ]
    # the engine's packaged value unless told otherwise; the agent uses the same
    fetch_wait = fetch_wait_ms or load_settings(None).kafka.fetch_max_wait_ms
    listener = _spawn(
        "listen",
        {
            "bootstrap": bootstrap,
            "topic": feedback,
            "expected": {r.uid: r.n for r in [warm, *runs]},
            "fetch_max_wait_ms": fetch_wait,
            "timeout_s": 120 + sum(seconds) * 2,
            "out": str(tmp / "listen.json"),
        },
        stdout=subprocess.PIPE,
    )
    lines = Lines(listener)
    lines.expect("READY", 60)
    engine = _spawn(
        "engine",
        {
            "bootstrap": bootstrap,
            "topic": topic,
            "group": "bench-live-latency",
            "fetch_max_wait_ms": fetch_wait,
            "feedback": feedback,
            "zarr": str(tmp / "traces-latency"),
            "dead_letter": str(tmp / "dead-letter.jsonl"),
            "expected_stops": 1 + len(runs),
            "out": str(tmp / "engine-latency.json"),
        },
    )
    producer = Producer(bootstrap, topic, spectra, pots)
    try:
        t0 = time.time()
        producer.paced(warm, 50.0)
        lines.expect(f"GOT {warm.uid}", 400)  # a cold torch.compile cache: minutes
        print(f"engine up, warm-up run through the whole path {time.time() - t0:.1f} s after start")
        pacing: dict[str, dict[str, float]] = {}
        loads: dict[str, str] = {}
        for run, rate in zip(runs, rates, strict=True):
            time.sleep(1.0)
            loads[run.uid] = loadavg()
            pacing[run.uid] = producer.paced(run, rate)
            lines.expect(f"GOT {run.uid}", 60)
            print(f"  {rate:g} frames/s done (load {loads[run.uid]})", flush=True)
    finally:
        producer.close()
    wait_child(engine, 120, "engine")
    wait_child(listener, 60, "listener")
    got = json.loads((tmp / "listen.json").read_text())
    eng = json.loads((tmp / "engine-latency.json").read_text())
    pairs = np.asarray(eng["pairs"], dtype=np.float64).reshape(-1, 2)

    print()
    print(
        f"Latency, event time -> feedback message received by a separate consumer "
        f"(engine fetch_max_wait_ms={fetch_wait}, agent the same); ms p50 / p95 / p99"
    )
    print()
    print(
        "| offered frames/s | achieved | frames | received once | end-to-end | "
        "event -> analysis_time | analysis_time -> received | engine event -> batch written | "
        "mean batch | engine CPU ms/frame | engine cores busy | load avg (1/5/15 min) |"
    )
    print("|---:|---:|---:|:---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for run, rate in zip(runs, rates, strict=True):
        rec = np.asarray(got[run.uid], dtype=np.float64).reshape(-1, 4)
        seqs = rec[:, 0].astype(int)
        once = len(seqs) == run.n and len(set(seqs.tolist())) == run.n
        e2e = rec[:, 3] - rec[:, 1]
        to_analysis = rec[:, 2] - rec[:, 1]
        out = rec[:, 3] - rec[:, 2]
        p = pacing[run.uid]
        sel = (pairs[:, 0] >= p["first"] - 1e-6) & (pairs[:, 0] <= p["last"] + 1e-6)
        inner = pairs[sel, 1]
        batch = run.n / max(1, _batches_in(eng, pairs, sel))
        k = [s[0] for s in eng["stops"]].index(run.uid)
        cpu = eng["stops"][k][2] - eng["stops"][k - 1][2]  # from the previous run's stop
        busy = cpu / (eng["stops"][k][1] - eng["stops"][k - 1][1])
        print(
            f"| {rate:g} | {p['achieved_rate']:.1f} | {run.n} | {'yes' if once else 'NO'} | "
            f"**{fmt(q(e2e))}** | {fmt(q(to_analysis))} | {fmt(q(out))} | {fmt(q(inner))} | "
            f"{batch:.1f} | {cpu / run.n * 1e3:.2f} | {busy:.2f} | {loads[run.uid]} |"
        )
    print()
    print(
        "max e2e per rate (ms): "
        + ", ".join(
            f"{r:g}/s {np.max(np.diff(np.asarray(got[u.uid])[:, [1, 3]], axis=1)) * 1e3:.1f}"
            for u, r in zip(runs, rates, strict=True)
        )
    )
    print(
        "producer send lag p99 (ms): "
        + ", ".join(
            f"{r:g}/s {pacing[u.uid]['send_lag_p99_ms']:.2f}"
            for u, r in zip(runs, rates, strict=True)
        )
    )
    commits = np.asarray(eng["commits"], dtype=np.float64).reshape(-1, 2)
    print()
    print(
        "Where the slow frames are (end-to-end > 25 ms): the engine commits offsets about once "
        "a second, flushing every sink first (Zarr fsync, feedback acks) on its own thread."
    )
    print()
    print(
        "| offered frames/s | frames > 25 ms | of which overlapping a commit | commit (flush + "
        "commit) ms p50 / max | commits |"
    )
    print("|---:|---:|---:|---:|---:|")
    for run, rate in zip(runs, rates, strict=True):
        rec = np.asarray(got[run.uid], dtype=np.float64).reshape(-1, 4)
        slow = rec[(rec[:, 3] - rec[:, 1]) > 0.025]
        p = pacing[run.uid]
        cw = commits[(commits[:, 0] >= p["first"]) & (commits[:, 0] <= p["last"] + 0.5)]
        overl = 0
        for _, t_ev, t_an, _ in slow:
            if np.any((cw[:, 0] <= t_an) & (cw[:, 0] + cw[:, 1] >= t_ev)):
                overl += 1
        cd = cw[:, 1] if len(cw) else np.array([np.nan])
        print(
            f"| {rate:g} | {len(slow)} ({100 * len(slow) / run.n:.1f}%) | {overl} | "
            f"{np.nanmedian(cd) * 1e3:.1f} / {np.nanmax(cd) * 1e3:.1f} | {len(cw)} |"
        )
    _print_stages(eng, got, runs, rates)
    print()
    print(
        f"engine: compute threads {eng['threads']}, batches released by {eng['released']}, "
        f"CPU {eng['cpu_s']:.1f} s, "
        f"max RSS {eng['maxrss_mb']:.0f} MB (Zarr writer process "
        f"{eng.get('maxrss_children_mb', 0):.0f} MB), sinks {eng['sinks']}"
    )


def _print_stages(
    eng: Mapping[str, Any], got: Mapping[str, Any], runs: Sequence[Any], rates: Sequence[float]
) -> None:
    """Where each frame's time goes, stage by stage (ms p50 / p99)."""
    recv = {(u, int(s)): t for u, s, t in eng["received"]}
    stage: dict[tuple[str, int], tuple[float, float, float]] = {}
    for t0, tm, t1, ids in eng["stages"]:
        for u, s in ids:
            stage[(u, int(s))] = (t0, tm, t1)
    print()
    print(
        "Stages per frame, ms p50 / p99: Kafka in (event time -> the engine's handler), wait "
        "(-> its batch starts: poll, batching, earlier batches), normalize, model + sink "
        "hand-off, -> the feedback thread stamps analysis_time, feedback out (-> the agent)."
    )
    print()
    print(
        "| offered frames/s | Kafka in | wait | normalize | model + hand-off | to feedback "
        "thread | feedback out |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for run, rate in zip(runs, rates, strict=True):
        cols: list[list[float]] = [[] for _ in range(6)]
        for seq, t_ev, t_an, t_rx in got[run.uid]:
            key = (run.uid, int(seq))
            if key not in recv or key not in stage:
                continue
            t0, tm, t1 = stage[key]
            r = recv[key]
            for i, v in enumerate((r - t_ev, t0 - r, tm - t0, t1 - tm, t_an - t1, t_rx - t_an)):
                cols[i].append(v)
        cells = " | ".join(
            f"{np.percentile(c, 50) * 1e3:.1f} / {np.percentile(c, 99) * 1e3:.1f}" if c else "-"
            for c in cols
        )
        print(f"| {rate:g} | {cells} |")


def _batches_in(
    eng: Mapping[str, Any], pairs: np.ndarray[Any, Any], sel: np.ndarray[Any, Any]
) -> int:
    """Number of batches covering the selected pairs (pairs are recorded batch by batch)."""
    sizes = np.asarray(eng["batch_sizes"], dtype=np.int64)
    ends = np.cumsum(sizes)
    idx = np.flatnonzero(sel)
    if idx.size == 0:
        return 0
    batch_of = np.searchsorted(ends, idx, side="right")
    return int(np.unique(batch_of).size)


def bench_backlog(
    bootstrap: str, tmp: Path, data: tuple[Any, Any, Any], frames: int, feedback: bool
) -> None:
    from spt_stream.devtools.broker import create_topic

    grid, spectra, pots = data
    tag = "fb" if feedback else "zarr"
    topic = f"bench.live.backlog.{tag}.documents"
    create_topic(bootstrap, topic, 1)
    fb_topic = f"bench.live.backlog.{tag}.feedback" if feedback else None
    if fb_topic:
        create_topic(bootstrap, fb_topic, 1)
    run = make_run(frames, grid, "backlog")
    producer = Producer(bootstrap, topic, spectra, pots)
    try:
        produce_s = producer.backlog([run])
    finally:
        producer.close()
    zroot = tmp / f"traces-backlog-{tag}"
    load = loadavg()
    engine = _spawn(
        "engine",
        {
            "bootstrap": bootstrap,
            "topic": topic,
            "group": f"bench-live-backlog-{tag}",
            "feedback": fb_topic,
            "zarr": str(zroot),
            "dead_letter": str(tmp / "dead-letter.jsonl"),
            "expected_stops": 1,
            "out": str(tmp / f"engine-backlog-{tag}.json"),
        },
    )
    wait_child(engine, 900, "engine")
    eng = json.loads((tmp / f"engine-backlog-{tag}.json").read_text())
    done = eng["stops"][-1][1]
    wall = done - eng["first_doc"]
    rows = trace_rows(zroot, run.uid)
    sizes = np.asarray(eng["batch_sizes"])
    print(
        f"| {'Zarr + feedback topic' if feedback else 'Zarr only'} | {frames} | {rows} | "
        f"{produce_s:.1f} | {done - eng['t_start']:.1f} | {wall:.2f} | **{rows / wall:,.0f}** | "
        f"{eng['cpu_s']:.1f} + {eng.get('cpu_children_s', 0):.1f} | {sizes.mean():.1f} | "
        f"{eng['maxrss_mb']:.0f} + {eng.get('maxrss_children_mb', 0):.0f} | {load} |",
        flush=True,
    )


def _status_mb(pid: int, field: str) -> float:
    """A memory field of ``/proc/PID/status`` (VmRSS, VmHWM, ...) in MB; NaN if unreadable."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    m = re.search(rf"{field}:\s+(\d+) kB", text)
    return int(m.group(1)) / 1024 if m else float("nan")


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (``/proc/PID/stat``); NaN if unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    return _status_mb(pid, "VmRSS")


def _children_rss_mb(pid: int) -> float:
    """Summed RSS of the direct children of ``pid`` (the engine's Zarr writer process)."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for kid in kids:
            rss = _rss_mb(int(kid))
            if rss == rss:  # not NaN
                total += rss
    return total


def _frames_metric(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    m = re.search(r"^spt_frames_total ([0-9.e+]+)$", text, re.M)
    return int(float(m.group(1))) if m else None


def bench_memory(
    bootstrap: str, tmp: Path, data: tuple[Any, Any, Any], frames: int, per_run: int
) -> None:
    from spt_stream.devtools.broker import create_topic, find_free_port
    from spt_stream.sinks.zarr_trace import trace_path

    grid, spectra, pots = data
    # One topic per run: Tansu 0.6's in-memory partition stops serving fetches somewhere
    # between 40,000 and 100,000 of these 3.4 kB messages (measured: no record in 60 s at
    # 100,000, at any offset), a limit of the development broker, not of the engine.
    fb_topic = "bench.live.memory.feedback"
    create_topic(bootstrap, fb_topic, 1)
    runs = []
    left = frames
    while left > 0:
        runs.append(make_run(min(per_run, left), grid, "memory"))
        left -= runs[-1].n
    produce_s = 0.0
    for k, run in enumerate(runs):
        create_topic(bootstrap, f"bench.live.memory.r{k}.documents", 1)
        producer = Producer(bootstrap, f"bench.live.memory.r{k}.documents", spectra, pots)
        try:
            produce_s += producer.backlog([run])
        finally:
            producer.close()
    topic = r"^bench\.live\.memory\.r\d+\.documents$"
    port = find_free_port()
    zroot = tmp / "traces-memory"
    cmd = [
        str(REPO / ".venv" / "bin" / "spt-stream"),
        "run",
        "--bootstrap-servers",
        bootstrap,
        "--topic",
        topic,
        "--group-id",
        "bench-live-memory",
        "--zarr",
        str(zroot),
        "--feedback-topic",
        fb_topic,
        "--metrics-port",
        str(port),
        "--no-status",
        "--log-level",
        "INFO",
        "--stop-after-idle",
        "5",
    ]
    print(
        f"command: {' '.join(cmd)}  ({frames} frames in {len(runs)} runs, produced in "
        f"{produce_s:.0f} s; load {loadavg()})",
        flush=True,
    )
    t0 = time.monotonic()
    log_file = (tmp / "engine-memory.log").open("w")
    proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.DEVNULL, stderr=log_file, text=True)
    series: list[tuple[float, int | None, float, float]] = []
    try:
        while proc.poll() is None:
            series.append(
                (
                    time.monotonic() - t0,
                    _frames_metric(port),
                    _rss_mb(proc.pid),
                    _children_rss_mb(proc.pid),
                )
            )
            time.sleep(0.5)
            if time.monotonic() - t0 > 1800:
                raise RuntimeError("memory run took more than 30 min")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
    log_file.close()
    err = (tmp / "engine-memory.log").read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"spt-stream run failed ({proc.returncode}): {err[-2000:]}")
    rows = sum(trace_rows(zroot, r.uid) for r in runs if trace_path(zroot, r.uid).exists())
    if rows != frames:
        print(f"WARNING: {rows} of {frames} frames in the traces; engine log tail:\n{err[-3000:]}")
    print()
    print(
        f"RSS of `spt-stream run` over {frames:,} frames ({len(runs)} runs of {per_run:,}); "
        f"trace rows at the end: {rows:,}"
    )
    print()
    print("| elapsed s | frames analysed | engine RSS MB | Zarr writer process RSS MB | total MB |")
    print("|---:|---:|---:|---:|---:|")
    # one row per ~10% of the run, plus start and end
    marks = [int(frames * k / 10) for k in range(11)]
    shown: set[int] = set()
    last_frames = -1
    for t, n, rss, kids in series:
        if n is None:
            continue
        for k, mark in enumerate(marks):
            if k not in shown and n >= mark and n != last_frames:
                shown.add(k)
                print(f"| {t:.0f} | {n:,} | {rss:.0f} | {kids:.0f} | {rss + kids:.0f} |")
                last_frames = n
                break
    rss_all = np.array([s[2] + s[3] for s in series if s[1] is not None and s[1] > 0])
    steady = np.array([s[2] + s[3] for s in series if s[1] is not None and s[1] >= frames * 0.2])
    n_done = [s for s in series if s[1] is not None and s[1] > 0]
    wall = n_done[-1][0] - n_done[0][0] if len(n_done) > 1 else float("nan")
    print()
    print(
        f"peak RSS (engine + its Zarr writer) {np.nanmax(rss_all):.0f} MB; from 20% of the "
        "frames to the end: "
        f"min {np.nanmin(steady):.0f} / max {np.nanmax(steady):.0f} MB; "
        f"~{frames / wall:,.0f} frames/s over the run"
    )


# ----------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", choices=["latency", "backlog", "memory"], action="append")
    ap.add_argument("--rates", type=float, nargs="+", default=[10.0, 100.0, 500.0])
    ap.add_argument(
        "--seconds",
        type=float,
        nargs="+",
        default=[60.0, 30.0, 20.0],
        help="duration of each rate's run (one value, or one per rate)",
    )
    ap.add_argument(
        "--fetch-wait-ms",
        type=int,
        default=None,
        help="fetch_max_wait_ms of the engine and the agent (default: the engine's setting)",
    )
    ap.add_argument("--backlog", type=int, default=20_000)
    ap.add_argument("--memory-frames", type=int, default=100_000)
    ap.add_argument("--memory-run-frames", type=int, default=20_000)
    args = ap.parse_args()
    seconds = args.seconds * len(args.rates) if len(args.seconds) == 1 else args.seconds
    if len(seconds) != len(args.rates):
        ap.error("--seconds needs one value or one per rate")
    which = set(args.only or ["latency", "backlog", "memory"])

    from spt_stream.devtools.broker import LocalBroker

    print(
        f"# bench_live: {os.cpu_count()} CPUs, load average {loadavg()}, "
        f"started {time.strftime('%Y-%m-%d %H:%M:%S')}"
    )
    data = simulated_spectra()
    tmp = Path(tempfile.mkdtemp(prefix="spt-bench-live-"))
    try:
        with LocalBroker() as broker:
            if "latency" in which:
                print("\n## Latency\n", flush=True)
                bench_latency(broker.bootstrap, tmp, data, args.rates, seconds, args.fetch_wait_ms)
            if "backlog" in which:
                print("\n## Backlog throughput\n")
                print(
                    "| sinks | frames produced | rows in trace | produce s | engine start -> done s"
                    " | first doc -> all in Zarr s | frames/s | engine CPU s (+ Zarr writer "
                    "process) | mean batch | max RSS MB (+ Zarr writer process) | load avg |"
                )
                print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|", flush=True)
                bench_backlog(broker.bootstrap, tmp, data, args.backlog, feedback=False)
                bench_backlog(broker.bootstrap, tmp, data, args.backlog, feedback=True)
            if "memory" in which:
                print("\n## Memory\n", flush=True)
                bench_memory(
                    broker.bootstrap, tmp, data, args.memory_frames, args.memory_run_frames
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nfinished {time.strftime('%H:%M:%S')}, load average {loadavg()}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child-engine":
        engine_child(json.loads(sys.argv[2]))
    elif len(sys.argv) == 3 and sys.argv[1] == "--child-listen":
        listen_child(json.loads(sys.argv[2]))
    else:
        main()

"""The first frames after start and between runs: a RunEngine publishing many short runs.

What a beamline does: the engine is started, joins its consumer group and waits; then a bluesky
RunEngine publishes run after run through Kafka
(:class:`spt_stream.transports.publish.KafkaDocumentPublisher`,
bluesky-kafka's wire format). Everything runs against one local Tansu broker
(:class:`spt_stream.devtools.broker.LocalBroker`), in separate processes:

* this process: the broker and the RunEngine, counting the demo's simulated operando devices
  (``spt_stream.devtools.demo.experiment``: ``DelithiationCell`` and ``QuickXASDetector``,
  400-point Co
  K-edge spectra) with ``bluesky.plans.count(..., delay=1/rate)``, the demo's plan;
* the engine: ``bench_live.py``'s engine child, i.e. :class:`KafkaDocumentSource` feeding
  :func:`spt_stream.engine.pipeline.build_pipeline` (Zarr trace + feedback topic, the packaged
  settings),
  exactly what ``spt-stream run`` builds;
* the agent: a kafka-python consumer of the feedback topic noting when each frame's message
  arrives.

Sequence, one engine start: the engine starts; once it holds its partition (and ``--settle`` s
later) the RunEngine publishes ``--runs`` runs of ``--run-frames`` frames at ``--rate`` frames/s
back to back (the first one is the first run after start; no warm-up run), then one run of
``--long-frames`` frames at the same rate. Then, on the same broker, the two bare Kafka hops
(``bench/kafka_relay.py``: producer -> relay -> agent, the same client settings, no engine) at
the same rate for ``--relay-seconds``.

Latency = the agent's receive time - the event's ``time`` (event -> feedback). Prints:

* the first frame of the first run after start, against steady state (the long run's p50/p99);
* the first frames of the later runs (frame 1, 2, 3 of each), against the rest of their frames;
* p50 / p95 / p99 / max over the many short runs and over the long run, and their ratio;
* the bare hops' p99 and the engine's added p99 (long run's p99 - the hops' p99);
* the engine's CPU per frame during the long run (its own process, and its Zarr writer process);
* where the first frame's time went, stage by stage (as ``bench_live.py`` splits it).

Run: ``.venv/bin/python bench/bench_runs.py`` (defaults: 50 runs x 20 frames and 1,000 frames at
100 frames/s, 10 s of bare hops). ``BENCH_ENGINE_ENV=NAME=VALUE[,...]`` sets variables of the
engine process (as for ``bench_live.py``). ``--json PATH`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _common import Lines, feedback_consumer, loadavg, wait_child

TOPIC = "bench.runs.documents"
FEEDBACK = "bench.runs.feedback"


def listen_child(cfg: Mapping[str, Any]) -> None:
    """The agent: every feedback message's (run, seq_num, event time, analysis time, receive
    time) until ``total`` messages arrived or ``timeout_s`` passed."""
    consumer = feedback_consumer(cfg)
    rows: list[tuple[str, int, float, float, float]] = []
    deadline = time.monotonic() + float(cfg["timeout_s"])
    while len(rows) < int(cfg["total"]) and time.monotonic() < deadline:
        batch = consumer.poll(timeout_ms=20)  # as the engine (see _common.feedback_consumer)
        t = time.time()
        for records in batch.values():
            for rec in records:
                m = json.loads(rec.value)
                rows.append((m["run_uid"], m["seq_num"], m["event_time"], m["analysis_time"], t))
    consumer.close()
    Path(cfg["out"]).write_text(json.dumps(rows))
    print("DONE", flush=True)


def _spawn_listener(cfg: Mapping[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--child-listen", json.dumps(cfg)],
        text=True,
        stdout=subprocess.PIPE,
    )


def publish_runs(
    bootstrap: str, n_runs: int, run_frames: int, long_frames: int, rate: float
) -> tuple[list[str], str, dict[str, float]]:
    """The RunEngine: ``n_runs`` short runs then one long one; returns their uids and timings."""
    from bluesky import RunEngine

    from spt_stream.devtools.demo.experiment import (
        DelithiationCell,
        QuickXASDetector,
        delithiation_plan,
    )
    from spt_stream.transports.publish import KafkaDocumentPublisher

    cell = DelithiationCell(name="cell", duration_s=(n_runs * run_frames + long_frames) / rate)
    det = QuickXASDetector(name="qxas", cell=cell)
    publisher = KafkaDocumentPublisher(bootstrap, TOPIC)
    RE = RunEngine({}, call_returns_result=True)
    RE.subscribe(publisher)  # type: ignore[no-untyped-call]

    def plan() -> Any:
        for _ in range(n_runs):
            yield from delithiation_plan(det, cell, frames=run_frames, rate_hz=rate)
        yield from delithiation_plan(det, cell, frames=long_frames, rate_hz=rate)

    t0 = time.time()
    try:
        result = RE(plan())
    finally:
        publisher.close()
    uids = [str(u) for u in getattr(result, "run_start_uids", result)]
    return uids[:-1], uids[-1], {"start": t0, "end": time.time()}


def bare_hops(bootstrap: str, rate: float, seconds: float, tmp: Path) -> np.ndarray[Any, Any]:
    """``bench/kafka_relay.py`` at ``rate`` on this broker: producer -> relay -> agent, ms."""
    import kafka_relay

    from spt_stream.config import KafkaSettings
    from spt_stream.devtools.broker import create_topic

    ks = KafkaSettings()
    n = int(rate * seconds)
    a, b = "bench.runs.relay-a", "bench.runs.relay-b"
    create_topic(bootstrap, a, 1)
    create_topic(bootstrap, b, 1)
    cfg: dict[str, Any] = {
        "bootstrap": bootstrap, "a": a, "b": b, "n": n, "fetch_wait": ks.fetch_max_wait_ms,
        "poll_ms": ks.poll_timeout_ms, "out": str(tmp / "relay.json"),
    }  # fmt: skip
    ag = kafka_relay._child("agent", cfg)
    rl = kafka_relay._child("relay", cfg)
    p = kafka_relay._producer(bootstrap)
    pad = np.random.default_rng(0).normal(size=400).astype(np.float64).tobytes()
    time.sleep(1.0)
    kafka_relay.send_paced(p, a, n, rate, pad)
    p.close()
    wait_child(rl, 120, "relay")  # type: ignore[arg-type]
    wait_child(ag, 120, "relay agent")  # type: ignore[arg-type]
    r = np.asarray(json.loads((tmp / "relay.json").read_text()))
    return np.asarray((r[:, 2] - r[:, 0]) * 1e3)


def _q(x: np.ndarray[Any, Any]) -> str:
    if x.size == 0:
        return "-"
    p50, p95, p99 = np.percentile(x, [50, 95, 99])
    return f"{p50:.1f} / {p95:.1f} / {p99:.1f} / {x.max():.1f}"


def _stages(eng: Mapping[str, Any], key: tuple[str, int], rx: float, row: Sequence[float]) -> str:
    """One frame's time, ms: Kafka in, wait, normalize, model + hand-off, to the feedback thread,
    feedback out (as bench_live._print_stages)."""
    recv = {(u, int(s)): t for u, s, t in eng["received"]}
    stage = {(u, int(s)): (t0, tm, t1) for t0, tm, t1, ids in eng["stages"] for u, s in ids}
    if key not in recv or key not in stage:
        return "-"
    t_ev, t_an = row
    t0, tm, t1 = stage[key]
    r = recv[key]
    parts = (r - t_ev, t0 - r, tm - t0, t1 - tm, t_an - t1, rx - t_an)
    return " | ".join(f"{v * 1e3:.1f}" for v in parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--run-frames", type=int, default=20)
    ap.add_argument("--long-frames", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--relay-seconds", type=float, default=10.0)
    ap.add_argument("--settle", type=float, default=2.0, help="s between assignment and run 1")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--profile-first", action="store_true", help="profile the engine's first batch (stderr)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the raw records (temporary folder)")
    args = ap.parse_args()

    import bench_live

    from spt_stream.config import load_settings
    from spt_stream.devtools.broker import LocalBroker, create_topic

    print(f"# bench_runs: load average {loadavg()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}")
    fetch_wait = load_settings(None).kafka.fetch_max_wait_ms
    total = args.runs * args.run_frames + args.long_frames
    tmp = Path(tempfile.mkdtemp(prefix="spt-bench-runs-"))
    try:
        with LocalBroker() as broker:
            bs = broker.bootstrap
            create_topic(bs, TOPIC, 1)
            create_topic(bs, FEEDBACK, 1)
            listener = _spawn_listener(
                {
                    "bootstrap": bs,
                    "topic": FEEDBACK,
                    "total": total,
                    "fetch_max_wait_ms": fetch_wait,
                    "timeout_s": 300 + total / args.rate * 3,
                    "out": str(tmp / "listen.json"),
                }
            )
            Lines(listener).expect("READY", 60)
            t_spawn = time.time()
            engine = bench_live._spawn(
                "engine",
                {
                    "bootstrap": bs,
                    "topic": TOPIC,
                    "group": "bench-runs",
                    "fetch_max_wait_ms": fetch_wait,
                    "feedback": FEEDBACK,
                    "zarr": str(tmp / "traces"),
                    "dead_letter": str(tmp / "dead-letter.jsonl"),
                    "expected_stops": args.runs + 1,
                    "announce": True,
                    "profile_first": args.profile_first,
                    "out": str(tmp / "engine.json"),
                },
                stdout=subprocess.PIPE,
            )
            line = Lines(engine).expect("ASSIGNED", 600)
            t_assigned = float(line.split()[1])
            print(f"engine holds its partition {t_assigned - t_spawn:.1f} s after its start")
            time.sleep(args.settle)
            load_runs = loadavg()
            short, long_uid, _ = publish_runs(
                bs, args.runs, args.run_frames, args.long_frames, args.rate
            )
            wait_child(engine, 300, "engine")
            wait_child(listener, 300, "listener")
            relay_ms = bare_hops(bs, args.rate, args.relay_seconds, tmp)
            load_relay = loadavg()
        got = json.loads((tmp / "listen.json").read_text())
        eng = json.loads((tmp / "engine.json").read_text())
    finally:
        if args.keep:
            print(f"raw records kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    by_run: dict[str, dict[int, tuple[float, float, float]]] = {}
    for uid, seq, t_ev, t_an, t_rx in got:
        by_run.setdefault(uid, {}).setdefault(int(seq), (t_ev, t_an, t_rx))

    def lat(uid: str, seqs: Sequence[int] | None = None) -> np.ndarray[Any, Any]:
        rows = by_run.get(uid, {})
        keys = sorted(rows) if seqs is None else [s for s in seqs if s in rows]
        return np.array([(rows[s][2] - rows[s][0]) * 1e3 for s in keys])

    missing = {u: n - len(by_run.get(u, {})) for u, n in
               [*((u, args.run_frames) for u in short), (long_uid, args.long_frames)]}  # fmt: skip
    lost = sum(v for v in missing.values() if v > 0)
    short_all = np.concatenate([lat(u) for u in short])
    long_all = lat(long_uid)
    first = lat(short[0], [1])
    later_first = np.concatenate([lat(u, [1]) for u in short[1:]]) if len(short) > 1 else first
    later_23 = np.concatenate([lat(u, [2, 3]) for u in short[1:]])
    later_rest = np.concatenate([lat(u, range(4, args.run_frames + 1)) for u in short[1:]])
    p50_long, p99_long = np.percentile(long_all, [50, 99])
    p99_short = float(np.percentile(short_all, 99))
    p99_relay = float(np.percentile(relay_ms, 99))
    k = [s[0] for s in eng["stops"]].index(long_uid)
    s0, s1 = eng["stops"][k - 1], eng["stops"][k]
    cpu = (s1[2] - s0[2]) / args.long_frames * 1e3
    cpu_writer = (s1[3] - s0[3]) / args.long_frames * 1e3
    busy = (s1[2] - s0[2]) / (s1[1] - s0[1])
    first_ms = float(first[0]) if first.size else float("nan")

    print()
    print(
        f"{args.runs} runs x {args.run_frames} frames, then {args.long_frames} frames, at "
        f"{args.rate:g} frames/s by a RunEngine (load {load_runs} before); latency event -> "
        f"feedback message at a separate consumer, ms p50 / p95 / p99 / max; frames lost: {lost}"
    )
    print()
    print("| frames | count | latency |")
    print("|---|---:|---:|")
    print(f"| first frame of the first run after start | 1 | **{first_ms:.1f}** |")
    print(f"| first frame of runs 2..{args.runs} | {later_first.size} | {_q(later_first)} |")
    print(f"| frames 2-3 of runs 2..{args.runs} | {later_23.size} | {_q(later_23)} |")
    print(f"| frames 4.. of runs 2..{args.runs} | {later_rest.size} | {_q(later_rest)} |")
    print(f"| all {args.runs} short runs | {short_all.size} | **{_q(short_all)}** |")
    print(f"| one {args.long_frames}-frame run | {long_all.size} | **{_q(long_all)}** |")
    print(f"| bare Kafka hops (kafka_relay, load {load_relay}) | {relay_ms.size} | "
          f"{_q(relay_ms)} |")  # fmt: skip
    print()
    print("| measure | value | target |")
    print("|---|---:|---|")
    print(f"| first frame / long run's p50 | {first_ms / p50_long:.2f}x | <= 2x |")
    print(f"| first frame / long run's p99 | {first_ms / p99_long:.2f}x | |")
    print(f"| short runs' p99 / long run's p99 | {p99_short / p99_long:.2f}x | <= 1.3x |")
    print(f"| engine's added p99 (long run p99 - bare hops p99) | {p99_long - p99_relay:.1f} ms "
          "| <= 10 ms |")  # fmt: skip
    print(f"| engine CPU per frame (long run) | {cpu:.2f} ms + {cpu_writer:.2f} ms Zarr writer "
          f"process ({busy:.2f} cores busy) | |")  # fmt: skip
    print()
    print("Stages of the first frames, ms: Kafka in | wait | normalize | model + hand-off | "
          "to feedback thread | feedback out")  # fmt: skip
    for label, uid in (("run 1", short[0]), ("run 2", short[1] if len(short) > 1 else "")):
        for seq in (1, 2, 3):
            row = by_run.get(uid, {}).get(seq)
            if row is not None:
                print(f"  {label} frame {seq}: {_stages(eng, (uid, seq), row[2], row[:2])}")
    print(f"\nengine: start -> ready {eng['t_ready'] - eng['t_start']:.1f} s, model backend at "
          f"the end {eng.get('backend', '?')}, threads {eng['threads']}, CPU {eng['cpu_s']:.1f} s;"
          f" finished {time.strftime('%H:%M:%S')}, load {loadavg()}")  # fmt: skip
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "first_ms": first_ms,
                    "long_p50_ms": p50_long,
                    "long_p99_ms": p99_long,
                    "short_p99_ms": p99_short,
                    "relay_p99_ms": p99_relay,
                    "cpu_ms_per_frame": cpu,
                    "writer_cpu_ms_per_frame": cpu_writer,
                    "lost": lost,
                }
            )
        )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child-listen":
        listen_child(json.loads(sys.argv[2]))
    else:
        main()

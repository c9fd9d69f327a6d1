"""The engine's start-up in process (no Kafka): first frames, run set-up, the first start's compile.

Two probes on ``build_pipeline`` (Zarr trace under a temporary folder, the packaged settings)
fed Bluesky documents directly (``engine(name, doc)`` then ``engine.idle()`` per event: the
engine's own time per frame, without the Kafka hops that ``bench_runs.py`` adds):

* ``runs`` (default): start -> ready, then ``--runs`` runs of ``--frames`` frames: per run the
  time to take its start and descriptor documents (the run's set-up) and each frame's engine
  time (the first run's first frame is what start-up left for the frame path), and the CPU the
  Zarr writer process spent on the run (its store's creation, writes, flush and finalize: off
  the engine's thread, but CPU the machine must have).
* ``compile``: an empty model cache (``model_backend: auto``): start -> ready and the model's
  status lines; then a ``--frames``-frame run every ``--frames``/``--rate`` s until the AOT
  model serves and ``--after`` frames ran on it (at most ``--limit`` s); engine time per frame
  on each backend. The compile happens in a background process; nothing waits for it.

    .venv/bin/python bench/startup_probe.py [runs|compile] [--runs 3] [--frames 5]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from typing import Any

import numpy as np
from _common import loadavg, make_run, simulated_spectra


def _pipeline(tmp: str, **extra: Any) -> tuple[Any, float]:
    from spt_stream.config import load_settings
    from spt_stream.engine.pipeline import build_pipeline

    settings = load_settings(
        None,
        {"zarr": {"root": f"{tmp}/traces"}, "dead_letter": {"path": None}, **extra},
    )
    t0 = time.perf_counter()
    pipe = build_pipeline(settings)
    return pipe, time.perf_counter() - t0


def _feed(engine: Any, run: Any, data: tuple[Any, Any, Any], pause: float = 0.0) -> list[float]:
    """[start + descriptor ms, frame ms ..., stop ms]."""
    _, spectra, pots = data
    t = time.perf_counter()
    engine("start", run.start)
    engine("descriptor", run.descriptor)
    out = [(time.perf_counter() - t) * 1e3]
    for i in range(run.n):
        ev = run.event(i, spectra, pots)
        t = time.perf_counter()
        engine("event", ev)
        engine.idle()
        out.append((time.perf_counter() - t) * 1e3)
        if pause:
            time.sleep(pause)
    t = time.perf_counter()
    engine("stop", run.stop)
    out.append((time.perf_counter() - t) * 1e3)
    return out


def _writer_cpu_s(pipe: Any) -> float:
    """CPU seconds of the engine's Zarr writer process so far (NaN when it has none)."""
    from bench_live import _proc_cpu_s

    pid = getattr(getattr(pipe.sinks[0], "writer", None), "pid", None)
    return _proc_cpu_s(pid) if pid else float("nan")


def probe_runs(args: argparse.Namespace, data: tuple[Any, Any, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pipe, ready = _pipeline(tmp)
        line = getattr(pipe.model, "status_line", f"backend {pipe.model.info.get('backend')}")
        print(f"start -> ready {ready:.1f} s ({line})")
        print()
        print(
            "| run | start + descriptor ms | frame ms (engine time, in order) | stop ms | "
            "Zarr writer process CPU ms (the run's store: create, write, flush, finalize) |"
        )
        print("|---:|---:|---|---:|---:|")
        for k in range(args.runs):
            cpu0 = _writer_cpu_s(pipe)
            out = _feed(pipe.engine, make_run(args.frames, data[0], f"probe-{k}"), data)
            pipe.engine.flush_sinks()  # after the timings: the writer's work for this run done
            cpu = (_writer_cpu_s(pipe) - cpu0) * 1e3
            frames = " ".join(f"{x:.1f}" for x in out[1:-1])
            print(f"| {k + 1} | {out[0]:.1f} | {frames} | {out[-1]:.1f} | {cpu:.0f} |")
        pipe.close()


def probe_compile(args: argparse.Namespace, data: tuple[Any, Any, Any]) -> None:
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        pipe, ready = _pipeline(
            tmp, model_backend="auto", model_cache_dir=f"{tmp}/empty-cache", device="cpu"
        )
        lines.append(f"{ready:.1f} s: {pipe.model.status_line}")
        pipe.model.add_listener(
            lambda line: lines.append(f"{time.perf_counter() - t0:.1f} s: {line}")
        )
        print(f"start -> ready {ready:.1f} s", flush=True)
        per: dict[str, list[float]] = {}
        k = 0
        while time.perf_counter() - t0 < args.limit:
            backend = pipe.model.backend
            out = _feed(
                pipe.engine, make_run(args.frames, data[0], f"c{k}"), data, pause=1 / args.rate
            )
            per.setdefault(backend, []).extend(out[1:-1])
            k += 1
            if len(per.get("aot", [])) >= args.after:
                break
        pipe.close()
    for line in lines:
        print(line)
    print()
    print("| backend serving | frames | engine ms per frame p50 / p99 / max |")
    print("|---|---:|---:|")
    for backend, v in per.items():
        a = np.asarray(v)
        p50, p99 = np.percentile(a, [50, 99])
        print(f"| {backend} | {a.size} | {p50:.1f} / {p99:.1f} / {a.max():.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("mode", nargs="?", choices=["runs", "compile"], default="runs")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--rate", type=float, default=20.0, help="compile: frames/s fed")
    ap.add_argument("--after", type=int, default=100, help="compile: frames on the AOT model")
    ap.add_argument("--limit", type=float, default=400.0, help="compile: give up after s")
    args = ap.parse_args()
    if args.mode == "compile" and args.frames == 5:
        args.frames = 50
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    print(f"# startup_probe {args.mode}: load {loadavg()}, {time.strftime('%Y-%m-%d %H:%M:%S')}")
    data = simulated_spectra()
    (probe_runs if args.mode == "runs" else probe_compile)(args, data)
    print(f"\nload {loadavg()}, {time.strftime('%H:%M:%S')}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

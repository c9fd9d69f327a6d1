"""The engine's model call on a CUDA GPU: ``Predictor.predict`` from host numpy to host numpy.

What the engine pays per micro-batch on a GPU (pinned host buffer, non-blocking copy, one
forward, one device-to-host copy of the packed outputs), for the served backends and
precisions, at the batch sizes the engine makes (1-4 live at 100 frames/s, 64 = its size cap in
a backlog, 256 for comparison):

* ``eager`` fp32 / bf16 (bf16 autocast is the default on CUDA);
* ``compile`` (torch.compile, batches padded to power-of-four buckets) with its default mode,
  and with ``reduce-overhead`` (CUDA graphs: one graph launch per batch instead of one kernel
  launch per operator), fp32 and bf16.

Each variant also runs beside a pure-Python spinning thread (the engine's other threads):
the batch time then, and the spinner's pace as a share of its pace alone (what the model's
launches leave to the rest of the engine). Prints a markdown table; medians of ``--repeats``.

    python bench/bench_gpu.py [--batches 1,4,64,256] [--repeats 200] [--no-compile]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import numpy as np
import torch
from _common import spin, spin_rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", default="1,4,64,256")
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu needs a CUDA GPU")
    from spt_stream.engine.pipeline import limit_compute_threads
    from spt_stream.model.predictor import Predictor

    limit_compute_threads(1)
    batches = [int(b) for b in args.batches.split(",")]
    top = max(batches)
    variants: list[tuple[str, dict[str, object]]] = [
        ("eager fp32", {"backend": "eager", "precision": "fp32"}),
        ("eager bf16 (default)", {"backend": "eager", "precision": "bf16"}),
    ]
    if not args.no_compile:
        variants += [
            ("compile fp32", {"backend": "compile", "precision": "fp32"}),
            (
                "compile fp32 + CUDA graphs",
                {"backend": "compile", "precision": "fp32", "compile_mode": "reduce-overhead"},
            ),
            (
                "compile bf16 + CUDA graphs",
                {"backend": "compile", "precision": "bf16", "compile_mode": "reduce-overhead"},
            ),
        ]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, batches {batches}")
    rng = np.random.default_rng(0)
    pace = spin_rate(0.5)
    rows = []
    for name, kw in variants:
        t0 = time.perf_counter()
        p = Predictor.from_checkpoint(None, device="cuda", max_batch=top, **kw)
        p.warmup(batch_sizes=batches)
        setup = time.perf_counter() - t0
        for b in batches:
            x = rng.normal(0.5, 0.3, size=(b, p.n_points)).astype(np.float32)
            el = ["Co"] * b
            for _ in range(5):
                p.predict(x, el)
            ts = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                p.predict(x, el)
                ts.append(time.perf_counter() - t)
            alone = statistics.median(ts)
            stop, count = threading.Event(), [0]
            th = threading.Thread(target=spin, args=(stop, count), daemon=True)
            th.start()
            time.sleep(0.05)
            ts = []
            c0, w0 = count[0], time.perf_counter()
            for _ in range(max(20, args.repeats // 4)):
                t = time.perf_counter()
                p.predict(x, el)
                ts.append(time.perf_counter() - t)
            share = (count[0] - c0) / (time.perf_counter() - w0) / pace
            stop.set()
            th.join()
            beside = statistics.median(ts)
            rows.append((name, b, alone * 1e3, b / alone, beside * 1e3, share, setup))
            print(f"  {name} b{b}: {alone * 1e3:.3f} ms", flush=True)
        del p
        torch.cuda.empty_cache()
    print(
        "\n| variant | batch | predict() ms | spectra/s | beside a Python thread ms "
        "| spinner's pace | set-up + warm-up s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, b, ms, sps, bms, share, setup in rows:
        print(f"| {name} | {b} | {ms:.3f} | {sps:,.0f} | {bms:.3f} | {share:.0%} | {setup:.1f} |")


if __name__ == "__main__":
    main()

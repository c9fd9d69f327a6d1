"""How much a Python-busy thread slows the model's forward pass in the same process.

torch releases the interpreter lock (GIL) around each operator and takes it back afterwards;
while another thread runs pure Python, each take-back waits for that thread to drop the lock
(up to ``sys.getswitchinterval()``, 5 ms by default). This measures the packaged model's batch
forward pass (one compute thread) alone and with a pure-Python spinning thread beside it, and
what the spinner achieved meanwhile. It is why the engine keeps Python work off the model's
process where it can (the Zarr writer in a child process) and why ``batch.overlap`` is off.

    .venv/bin/python bench/gil_convoy.py [--compile] [--aot] [--batch 64] [--repeats 20]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from typing import Any

import numpy as np
from _common import spin, spin_rate


def _forward_ms(runner: Any, x: np.ndarray, n: int) -> float:
    elements = ["Co"] * x.shape[0]
    t = time.perf_counter()
    for _ in range(n):
        runner.predict_columns(x, elements)
    return (time.perf_counter() - t) / n * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compile", action="store_true", help="also the torch.compile'd model")
    ap.add_argument("--aot", action="store_true", help="also the AOTInductor package (default)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()

    from spt_stream.config import load_settings
    from spt_stream.engine.pipeline import ModelRunner
    from spt_stream.model.predictor import Backend

    print(f"switch interval {sys.getswitchinterval() * 1e3:.1f} ms, batch {args.batch}\n")
    print(
        "| model | forward alone ms | with a Python thread spinning ms | slowdown "
        "| spinner's pace meanwhile (% of alone) |"
    )
    print("|---|---:|---:|---:|---:|")
    backends: list[Backend] = ["eager"]
    backends += ["compile"] if args.compile else []
    backends += ["aot"] if args.aot else []
    for backend in backends:
        runner = ModelRunner(load_settings(None).model, device="cpu", threads=1, backend=backend)
        x = np.random.default_rng(0).normal(size=(args.batch, 224)).astype(np.float32)
        _forward_ms(runner, x, 3)
        alone = _forward_ms(runner, x, args.repeats)
        pace = spin_rate(0.3)
        stop, count = threading.Event(), [0]
        th = threading.Thread(target=spin, args=(stop, count), daemon=True)
        th.start()
        time.sleep(0.1)
        c0, t0 = count[0], time.perf_counter()
        contended = _forward_ms(runner, x, max(2, args.repeats // 4))
        spun = (count[0] - c0) / (time.perf_counter() - t0)
        stop.set()
        th.join()
        names = {"compile": "compiled", "aot": "AOT package (lock-free runner)"}
        name = names.get(backend, backend)
        print(
            f"| {name} | {alone:.1f} | {contended:.1f} | {contended / alone:.1f}x "
            f"| {100 * spun / pace:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

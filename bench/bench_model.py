"""SPT inference benchmark: batch-1 latency and throughput vs batch size.

    .venv/bin/python bench/bench_model.py [--threads 2] [--batches 1,8,64,256,512] [--bf16]
        [--compile] [--aot] [--device cpu|cuda] [--model CHECKPOINT]

Prints a markdown table (median of repeated timings of ``SPTInference.forward``, the whole
served pass: network, temperature scaling, de-standardization, OOD score) plus the
architecture's size. Without ``--model`` the default architecture with the packaged schema's
os/cn/cn2/ocn/nnrs/mood/mean_nn_distance heads is timed with random weights (speed does not
depend on the weight values).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from spt_stream.model.checkpoint import load_checkpoint
from spt_stream.model.descriptors import load_descriptor_schema
from spt_stream.model.network import SPTConfig, SPTInference
from spt_stream.training.train import heads_from_schema


def _model(path: Path | None) -> SPTInference:
    if path is not None:
        return load_checkpoint(path)[0]
    names = ["os", "cn", "cn2", "ocn", "nnrs", "mood", "mean_nn_distance"]
    schema = load_descriptor_schema().subset(names)
    return SPTInference(SPTConfig(heads=heads_from_schema(schema)))


def _time(fn: Callable[[], None], repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,8,64,256,512")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action="store_true", help="also time bf16 autocast")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile")
    ap.add_argument(
        "--aot", action="store_true", help="also time the AOTInductor package (CPU; engine default)"
    )
    ap.add_argument("--model", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    model = _model(args.model).to(dev).eval()
    n_params = sum(p.numel() for p in model.parameters())
    n_buf = sum(b.numel() for b in model.buffers())
    variants: list[tuple[str, object, bool]] = [("fp32", model, False)]
    if args.bf16:
        variants.append(("bf16", model, True))
    if args.compile:
        variants.append(("fp32 compiled", torch.compile(model, dynamic=False), False))
    if args.aot and dev.type == "cpu":
        from spt_stream.model.aot import aot_forward

        biggest = max(int(s) for s in args.batches.split(","))
        fwd, info = aot_forward(model, max_batch=max(512, biggest), device=dev)
        how = "compiled" if info["compiled"] else "loaded from the cache"
        print(f"AOT package {how} in {info['seconds']:.1f} s")
        variants.append(("fp32 AOT (lock-free runner)", fwd, False))

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    print(f"device {dev}, threads {args.threads}, torch {torch.__version__}")
    print(
        f"parameters {n_params:,} (+{n_buf:,} buffer values), "
        f"fp32 size {4 * (n_params + n_buf) / 1e6:.2f} MB\n"
    )
    print("| variant | batch | latency per batch (ms) | spectra/s |")
    print("|---|---:|---:|---:|")
    for name, fwd, bf16 in variants:
        for b in (int(s) for s in args.batches.split(",")):
            x = torch.rand(b, model.cfg.n_points, device=dev)
            el = torch.randint(0, len(model.cfg.elements) + 1, (b,), device=dev)

            def run(
                fwd: object = fwd, x: torch.Tensor = x, el: torch.Tensor = el, bf16: bool = bf16
            ) -> None:
                with torch.inference_mode(), torch.autocast(dev.type, torch.bfloat16, enabled=bf16):
                    fwd(x, el)  # type: ignore[operator]
                sync()

            for _ in range(3):
                run()
            repeats = max(5, min(200, int(2000 / b)))
            dt = _time(run, repeats)
            print(f"| {name} | {b} | {dt * 1e3:.2f} | {b / dt:,.0f} |")


if __name__ == "__main__":
    main()

"""Normalization throughput: spt-stream's batch kernels vs xraylarch's pre_edge, one run.

    .venv/bin/python bench/bench_normalize.py [--frames 10000] [--points 400] [--larch-subset 500]

Frames: a measured Co foil (co_metal_rt.xdi) resampled onto a 400-point grid (7600-7900 eV),
each with a random edge shift (+-3 eV), scale, offset and noise. Larch runs one spectrum at a
time (``pre_edge`` with its own e0 search) on the first ``--larch-subset`` frames only (it is
slow); its per-frame rate is compared with the batch paths' per-frame rate over all frames.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from typing import Literal

import numpy as np

from spt_stream.data import REFERENCE_DIR
from spt_stream.normalize import NormParams, normalize_batch
from spt_stream.readers import read_spectrum

REF = REFERENCE_DIR / "co_metal_rt.xdi"


def make_frames(n_frames: int, n_points: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    s = read_spectrum(REF)
    rng = np.random.default_rng(seed)
    energy = np.linspace(7600.0, 7900.0, n_points)
    shifts = rng.uniform(-3, 3, n_frames)
    mu = np.interp(energy[None, :] - shifts[:, None], s.energy, s.mu)
    mu = mu * rng.uniform(0.5, 2.0, (n_frames, 1)) + rng.uniform(-1, 1, (n_frames, 1))
    mu += rng.normal(0, 2e-3, mu.shape)
    return energy, mu


def timed(fn: Callable[[], object], repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--points", type=int, default=400)
    ap.add_argument("--larch-subset", type=int, default=500)
    ap.add_argument("--chunk", type=int, default=2048, help="batch size for the batch paths")
    ap.add_argument(
        "--device",
        action="append",
        default=None,
        help="torch device(s) to time (default: cpu, plus cuda when available)",
    )
    args = ap.parse_args()

    energy, mu = make_frames(args.frames, args.points)
    rows: list[tuple[str, int, float]] = []

    # Larch, one frame at a time (subset).
    from larch import Group
    from larch.xafs import pre_edge

    sub = mu[: args.larch_subset]

    def run_larch() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for row in sub:
                pre_edge(Group(energy=energy, mu=row))

    run_larch()  # warm-up (imports, caches)
    rows.append(
        (f"xraylarch pre_edge, one at a time ({len(sub)} frames)", len(sub), timed(run_larch))
    )

    def batched(fn: Callable[[np.ndarray], object]) -> Callable[[], None]:
        def go() -> None:
            for i in range(0, mu.shape[0], args.chunk):
                fn(mu[i : i + args.chunk])

        return go

    modes: tuple[Literal["larch", "robust"], ...] = ("larch", "robust")
    for mode in modes:
        p = NormParams(e0_mode=mode)

        def one(m: np.ndarray, p: NormParams = p) -> object:
            return normalize_batch(energy, m, p)

        fn = batched(one)
        fn()
        rows.append((f"spt-stream numpy batch, e0_mode={mode}", mu.shape[0], timed(fn, 2)))

    # The live path: frames one at a time (a micro-batch of 1), same frames as Larch's subset.
    p_live = NormParams(e0_mode="robust")

    def live() -> None:
        for i in range(sub.shape[0]):
            normalize_batch(energy, sub[i : i + 1], p_live)

    live()
    rows.append(
        (
            f"spt-stream numpy, one frame per call ({len(sub)} frames), e0_mode=robust",
            len(sub),
            timed(live, 2),
        )
    )

    import torch

    from spt_stream.normalize.torch_kernels import normalize_batch_torch

    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    for dev in devices:
        for dtype in (torch.float64, torch.float32):
            mu_t = torch.as_tensor(mu, dtype=dtype, device=dev)
            p = NormParams(e0_mode="robust")

            def go(mu_t: torch.Tensor = mu_t, p: NormParams = p, dev: str = dev) -> None:
                for i in range(0, mu_t.shape[0], args.chunk):
                    normalize_batch_torch(energy, mu_t[i : i + args.chunk], p)
                if dev.startswith("cuda"):
                    torch.cuda.synchronize()

            go()
            name = f"spt-stream torch {dev} {str(dtype).removeprefix('torch.')}, e0_mode=robust"
            rows.append((name, mu.shape[0], timed(go, 2)))

    larch_rate = rows[0][1] / rows[0][2]
    print(
        f"\n{args.frames} frames x {args.points} points; batch paths in chunks of {args.chunk}; "
        f"larch timed on {len(sub)} frames (per-frame rates compared)\n"
    )
    print("| path | frames timed | total s | ms / frame | frames / s | x larch |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, n, sec in rows:
        rate = n / sec
        ms = 1e3 * sec / n
        print(f"| {name} | {n} | {sec:.3f} | {ms:.4f} | {rate:,.0f} | {rate / larch_rate:.1f} |")


if __name__ == "__main__":
    main()

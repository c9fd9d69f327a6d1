"""Generation rate of the XANES simulator (spectra/s), as `spt-stream simulate` runs it.

Run: ``.venv/bin/python bench/simulate.py [N]`` (default N = 1024). Prints a markdown table.
"""

from __future__ import annotations

import sys
import time

from spt_stream.config import CONFIG_DIR
from spt_stream.simulate.calibrate import load_params
from spt_stream.simulate.generate import generate_arrays
from spt_stream.simulate.sampler import load_recipe


def main() -> None:
    """Time generate_arrays with 1 and 2 workers on the default recipe."""
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    recipe = load_recipe(CONFIG_DIR / "simulate" / "default.yaml")
    params = load_params(CONFIG_DIR / "simulate" / "calibrated.yaml")
    generate_arrays(recipe, params, 16, seed=99)  # warm caches (xraydb, FEFF table)
    print("| workers | spectra | seconds | spectra/s |")
    print("|---|---|---|---|")
    for workers in (1, 2):
        t0 = time.perf_counter()
        generate_arrays(recipe, params, n, seed=0, workers=workers)
        dt = time.perf_counter() - t0
        print(f"| {workers} | {n} | {dt:.1f} | {n / dt:.1f} |")


if __name__ == "__main__":
    main()

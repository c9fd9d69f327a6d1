#!/usr/bin/env bash
# Idempotent set-up of the project's virtual environment (.venv): the pinned CPU torch build,
# the package in editable mode with its dev and tiled extras, and xraylarch's lean install
# (test-only reference for normalization). Re-runs only when pyproject.toml or this file change.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SPT_VENV:-$root/.venv}"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null 2>&1 || py=python3
stamp="$venv/.spt-setup-stamp"
want="$(cat "$root/pyproject.toml" "$root/scripts/setup.sh" | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[setup] preparing $venv (first run takes a few minutes)" >&2
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
# pip's own output (progress, resolver notes, packages' banners) goes to a log, shown on failure.
log="$venv/setup.log"
: > "$log"
pip=("$venv/bin/python" -m pip --disable-pip-version-check --no-input -q)
step() {  # step "what" pip-arguments...: one line per step; the log's tail if pip fails
  echo "[setup] $1" >&2
  shift
  if ! "${pip[@]}" "$@" >>"$log" 2>&1; then
    echo "[setup] failed; the last lines of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
}
step "pip, setuptools, wheel" install --upgrade pip setuptools wheel
# torch first and pinned: this version is the CPU build on this disk; an open range would pull CUDA.
step "torch (CPU build)" install "torch==2.13.0"
step "spt-stream and its extras" install -e "$root[dev,tiled,tiled-server,train,view]"
# Larch without its 2 GB of optional dependencies: enough for larch.xafs.pre_edge (test reference).
# Its few needed dependencies first, then Larch itself with --no-deps (pip then has nothing to
# report about the optional ones it leaves out).
step "xraylarch (lean: the test reference for normalization)" install lmfit asteval \
  uncertainties dill packaging tomli tomli_w termcolor charset-normalizer psutil urllib3 \
  pyshortcuts python-dateutil h5py six
step "xraylarch itself" install --no-deps "xraylarch==2026.3.1"
echo "$want" > "$stamp"
echo "[setup] done (pip's output: $log)" >&2

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
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip setuptools wheel >&2
# torch first and pinned: this version is the CPU build on this disk; an open range would pull CUDA.
"${pip[@]}" install "torch==2.13.0" >&2
"${pip[@]}" install -e "$root[dev,tiled,tiled-server,train,view]" >&2
# Larch without its 2 GB of optional dependencies: enough for larch.xafs.pre_edge (test reference).
"${pip[@]}" install --no-deps "xraylarch==2026.3.1" >&2
"${pip[@]}" install lmfit asteval uncertainties dill packaging tomli tomli_w termcolor \
  charset-normalizer psutil urllib3 pyshortcuts python-dateutil h5py six >&2
echo "$want" > "$stamp"
echo "[setup] done" >&2

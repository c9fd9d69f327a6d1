#!/usr/bin/env bash
# The main job: sets up .venv if needed, then runs the one-command operando demo.
# Extra arguments go to `spt-stream demo` (e.g. `--frames 200 --rate 20`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
exec "${SPT_VENV:-$root/.venv}/bin/spt-stream" demo "$@"

#!/usr/bin/env bash
# The test command: sets up .venv if needed, then lint (ruff), types (mypy) and the test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k kafka`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
venv="${SPT_VENV:-$root/.venv}"
echo "== ruff" && "$venv/bin/ruff" check . && "$venv/bin/ruff" format --check .
echo "== mypy" && "$venv/bin/mypy"
echo "== pytest" && "$venv/bin/python" -m pytest "$@"

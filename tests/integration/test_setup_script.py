"""``scripts/setup.sh`` says what a user needs: one line per step, pip's own output (resolver
notes, packages' banners) in a log that is shown only when a step fails.

Installing for real takes minutes and the network, so these runs use a stand-in venv whose
``bin/python`` plays pip: it prints the resolver's ERROR block and a licence banner, as pip did
during a real set-up, and fails when asked to (``FAIL_ON``).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

#: What pip printed during a real set-up that a user does not need.
NOISE = """ERROR: pip's dependency resolver does not currently take into account all the packages \
that are installed. This behaviour is the source of the following dependency conflicts.
xraylarch 2026.3.1 requires wxpython>=4.2, which is not installed.
*** Licence: this package is distributed under the terms of ... ***"""

FAKE_PIP = f"""#!/usr/bin/env bash
cat >&2 <<'NOISE'
{NOISE}
NOISE
echo "pip $*" >> "$(dirname "$0")/../calls.txt"
if [ -n "${{FAIL_ON:-}}" ] && [[ "$*" == *"$FAIL_ON"* ]]; then
  echo "ERROR: No matching distribution found for $FAIL_ON" >&2
  exit 1
fi
"""


def _venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(FAKE_PIP)
    python.chmod(0o755)
    return venv


def _setup(venv: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "setup.sh")],
        env={**os.environ, "SPT_VENV": str(venv), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_set_up_prints_steps_not_pip_noise(tmp_path: Path) -> None:
    """A set-up that works: only ``[setup]`` lines; pip's output is in the log; xraylarch's
    --no-deps install comes last (no later install reports its missing optional deps)."""
    venv = _venv(tmp_path)
    done = _setup(venv)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines, done.stderr
    assert all(line.startswith("[setup] ") for line in lines), done.stderr
    assert "ERROR" not in done.stderr
    assert "Licence" not in done.stderr
    assert done.stdout == ""
    assert "pip's dependency resolver" in (venv / "setup.log").read_text()
    calls = (venv / "calls.txt").read_text().splitlines()
    assert "--no-deps xraylarch" in calls[-1]
    # the stamp is written: a second run does nothing and says nothing
    again = _setup(venv)
    assert again.returncode == 0
    assert again.stderr == ""


def test_failed_step_shows_pips_message(tmp_path: Path) -> None:
    """A step that fails: exit 1, the step named and the end of pip's log shown."""
    venv = _venv(tmp_path)
    done = _setup(venv, FAIL_ON="torch==")
    assert done.returncode == 1
    assert "[setup] torch (CPU build)" in done.stderr
    assert "No matching distribution found for torch==" in done.stderr
    assert not (venv / ".spt-setup-stamp").exists()

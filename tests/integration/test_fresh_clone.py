"""A fresh clone anywhere runs the test suite: nothing reads ``../shared/`` or other files that
live outside the repository.

The committed HEAD is cloned into a temporary folder with no ``shared/`` beside it, and there
(with this environment's interpreter, ``SPT_VENV``, so nothing is reinstalled) the whole suite is
collected and a subset that reads the measured reference spectra is run. The clone's own package
is the one imported (the working directory comes first on ``sys.path``), which is checked too.

Set ``SPT_SKIP_FRESH_CLONE=1`` to skip it (CI runs it; it takes about half a minute).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Tests run in the clone: they read the measured spectra shipped in the package.
SUBSET = ("tests/unit/test_readers.py", "tests/pipeline/test_replay_files.py")

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("SPT_SKIP_FRESH_CLONE", "") not in ("", "0"),
        reason="SPT_SKIP_FRESH_CLONE is set",
    ),
    pytest.mark.skipif(shutil.which("git") is None, reason="git not installed"),
    pytest.mark.skipif(not (REPO_ROOT / ".git").exists(), reason="not a git checkout"),
]


def _python() -> str:
    """This environment's interpreter (``$SPT_VENV/bin/python`` when set)."""
    venv = os.environ.get("SPT_VENV")
    if venv and (Path(venv) / "bin" / "python").is_file():
        return str(Path(venv) / "bin" / "python")
    return sys.executable


def _run(argv: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["SPT_SKIP_FRESH_CLONE"] = "1"  # the clone's suite must not clone again
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_fresh_clone_without_shared_collects_and_passes(tmp_path: Path) -> None:
    """``git clone`` of HEAD into an empty temporary folder: every test module imports (the
    whole suite is collected without an error) and the reference-reading subset passes there."""
    clone = tmp_path / "spt-stream"
    done = _run(["git", "clone", "--quiet", str(REPO_ROOT), str(clone)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not (clone.parent / "shared").exists()
    assert not (clone / "spt_stream" / "data" / "xas-references").is_symlink()

    py = _python()
    where = _run([py, "-c", "import spt_stream; print(spt_stream.__file__)"], cwd=clone)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).resolve().is_relative_to(clone.resolve()), where.stdout

    collected = _run(
        [py, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"], cwd=clone
    )
    assert collected.returncode == 0, collected.stdout[-4000:] + collected.stderr[-4000:]
    assert "error" not in collected.stdout.lower().splitlines()[-1], collected.stdout[-2000:]
    assert "tests/unit/test_readers.py::" in collected.stdout

    subset = _run([py, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *SUBSET], cwd=clone)
    report = subset.stdout[-4000:] + subset.stderr[-2000:]
    assert subset.returncode == 0, report
    assert "passed" in subset.stdout.splitlines()[-1], report
    assert "shared" not in subset.stdout, report  # no test skipped for want of ../shared

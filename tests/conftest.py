"""Shared test configuration. Fixture modules live in tests/plugins/."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from spt_stream.data import REFERENCE_DIR as PACKAGED_REFERENCES

# The engine's default model backend on the CPU is ``aot`` (an AOTInductor package compiled once
# per model, torch and CPU: ~40 s cold). Engines started by the suite (in process and as
# ``spt-stream`` subprocesses, which inherit this) run the eager model unless the caller sets
# SPT_MODEL_BACKEND; tests/pipeline/test_aot.py compiles once into its own cache and runs the
# engine on it.
os.environ.setdefault("SPT_MODEL_BACKEND", "eager")

pytest_plugins: list[str] = ["tests.plugins.kafka", "tests.plugins.tiled"]

REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE_DIR = PACKAGED_REFERENCES


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The real measured spectra shipped in the package (spt_stream/data/xas-references)."""
    if not REFERENCE_DIR.is_dir():
        raise RuntimeError(f"reference spectra not found at {REFERENCE_DIR}")
    return REFERENCE_DIR


@pytest.fixture
def own_dir_and_logging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """CLI tests: each test in its own working directory (stray files show), root logging and
    the loggers the commands retune restored afterwards (commands reconfigure logging)."""
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name in ("spt_stream", "kafka.net", "kafka.conn", "kafka.client_async"):
        logging.getLogger(name).setLevel(logging.NOTSET)

"""Shared test configuration. Fixture modules live in tests/plugins/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spt_stream.data import REFERENCE_DIR as PACKAGED_REFERENCES

# The engine's default model backend on the CPU is ``aot`` (an AOTInductor package compiled once
# per model, torch and CPU: ~40 s cold). Engines started by the suite (in process and as
# ``spt-stream`` subprocesses, which inherit this) run the eager model unless the caller sets
# SPT_MODEL_BACKEND; tests/test_aot.py compiles once into its own cache and runs the engine on it.
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

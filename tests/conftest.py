"""Shared test configuration. Fixture modules live in tests/plugins/."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins: list[str] = ["tests.plugins.kafka", "tests.plugins.tiled"]

REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE_DIR = REPO_ROOT.parent / "shared" / "data" / "xas-references"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The real measured spectra shipped in ../shared/data/xas-references."""
    if not REFERENCE_DIR.is_dir():
        raise RuntimeError(f"reference spectra not found at {REFERENCE_DIR}")
    return REFERENCE_DIR

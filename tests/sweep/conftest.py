"""Fixtures for the sweep/fuzz tests (helpers live in sweep_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return tmp_path / "results.db"

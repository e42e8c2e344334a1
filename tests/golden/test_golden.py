"""Every era × routine against its golden table in fixtures/golden/ (``make golden`` rewrites)."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from emu.runs.golden import Table, render, tables

GOLDEN = Path(__file__).resolve().parents[2] / "fixtures" / "golden"


@pytest.mark.parametrize("table", tables(), ids=lambda t: t.filename[:-4])
def test_golden(table: Table, update_golden: bool) -> None:
    path = GOLDEN / table.filename
    now = render(table)
    if update_golden:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(now)
        return
    assert path.is_file(), f"{path} is missing: run `make golden` and review the new file"
    was = path.read_text()
    if now != was:
        diff = "".join(difflib.unified_diff(was.splitlines(True), now.splitlines(True),
                                            str(path), "now", n=0))
        pytest.fail(f"behaviour changed against {path.name} (review, then `make golden`):\n{diff}")


def test_no_stale_golden_files() -> None:
    expected = {t.filename for t in tables()}
    stale = {p.name for p in GOLDEN.glob("*.txt")} - expected
    assert not stale, f"golden files with no table: {sorted(stale)}"

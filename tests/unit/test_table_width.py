"""Tables follow COLUMNS (or the terminal) and fit 80 columns when piped; a table too wide is
stacked, so no symbol+offset, routine name or command is ever cut or ellipsized."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SEED = ["--len", "4096", "--src-align", "0x7e0", "--poison", "0x960"]
RUN = ["run", "asm/examples/test_routines.S", "--routine", "demo_unrolled_copy", "--convention",
       "copy", *SEED]


def _emu(argv: list[str], columns: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns:
        env["COLUMNS"] = columns
    r = subprocess.run([sys.executable, "-m", "emu", *argv], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("argv, tokens", [
    (["diff", *SEED, "--cpu", "erms"], ["copy_user_enhanced_fast_string", "1 @ +0x960",
                                        "poison_consumed_twice", "A <= v5.9"]),
    (RUN, ["demo_unrolled_copy+0x1e", "demo_unrolled_copy+0x73", "0x7f0000011140",
           "EX_TYPE_UACCESS"]),
])
@pytest.mark.parametrize("columns", [None, "80", "100", "60"])
def test_piped_tables_fit_and_cut_nothing(argv: list[str], tokens: list[str],
                                          columns: str | None) -> None:
    out = _emu(argv, columns)
    width = int(columns or 80)
    assert max(len(ln.rstrip()) for ln in out.splitlines()) <= width
    assert "…" not in out
    for t in tokens:
        assert t in out, t


def test_a_wide_terminal_gets_the_table() -> None:
    out = _emu(["diff", *SEED, "--cpu", "none"], "200")
    assert "┃ variant" in out and "│ A <= v5.9       │ copy_user_generic_unrolled │" in out
    assert max(len(ln.rstrip()) for ln in out.splitlines()) <= 200

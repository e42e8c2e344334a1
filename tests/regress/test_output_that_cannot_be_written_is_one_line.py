"""Regression (issue 17, class 3): a full disk (``> /dev/full``) or a closed standard output
(``>&-``) ended in a traceback.  Now: one line on stderr, exit 2, for every kind of command
output (plain text, rich tables, JSON, a sweep summary)."""

from __future__ import annotations

import subprocess
import sys

import pytest

COMMANDS = [["eras"], ["diff", "--len", "64"], ["run", "E", "--len", "64", "--json"],
            ["sweep", "A", "--len", "64", "--jobs", "1"], ["map", "E"]]


def emu(argv: list[str], redirect: str) -> subprocess.CompletedProcess[str]:
    cmd = " ".join([sys.executable, "-m", "emu", *argv])
    return subprocess.run(["bash", "-c", f"{cmd} {redirect}"], capture_output=True, text=True)


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: a[0])
def test_full_disk(argv: list[str]) -> None:
    p = emu(argv, "> /dev/full")
    assert p.returncode == 2
    assert p.stderr == "emu: error: cannot write the output: No space left on device\n"


@pytest.mark.parametrize("argv", COMMANDS[:2], ids=lambda a: a[0])
def test_closed_stdout(argv: list[str]) -> None:
    p = emu(argv, ">&-")
    assert p.returncode == 2
    assert p.stderr.startswith("emu: error: standard output is closed")
    assert p.stderr.count("\n") == 1


def test_reader_gone_is_141_and_quiet() -> None:
    p = emu(["diff", "--len", "64"], "| head -c 1 >/dev/null; exit ${PIPESTATUS[0]}")
    assert p.returncode in (0, 141)        # 0 only if everything fit in the pipe first
    assert "Traceback" not in p.stderr and "Exception" not in p.stderr

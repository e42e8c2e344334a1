"""Regression (issue 17, class 7): options that were silently ignored or values that were
silently accepted.  Each is now refused with one line and exit 2 (or takes effect)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from emu.cli.main import main

ROOT = Path(__file__).resolve().parents[2]

REFUSED = {
    "era flag on an era key": (["run", "E", "--era", "C", "--len", "64"], "does not apply"),
    "unknown era on an era key": (["run", "E", "--era", "Z", "--len", "64"], "unknown era"),
    "era flag on era keys only": (["diff", "A", "B", "--era", "C", "--len", "64"],
                                  "changes nothing"),
    "source and --object": (["run", "E", "--object", "x.o", "--len", "64"], "not both"),
    "map --era each": (["map", "E", "--era", "each"], "unknown era"),
    "jobs 0": (["sweep", "A", "--len", "64", "--jobs", "0"], "at least 1"),
    "jobs negative": (["sweep", "A", "--len", "64", "--jobs", "-2"], "at least 1"),
    "max-cases 0": (["sweep", "A", "--len", "64", "--max-cases", "0"], "at least 1"),
    "examples 0": (["fuzz", "A", "--examples", "0"], "at least 1"),
    "empty cpu": (["run", "E", "--len", "64", "--cpu", ""], "names no CPU"),
    "commas cpu": (["run", "E", "--len", "64", "--cpu", ",,,"], "names no CPU"),
    "empty poison": (["run", "E", "--len", "64", "--poison", ","], "names no offset"),
    "empty faults": (["sweep", "A", "--len", "64", "--faults", ","], "names no fault kind"),
    "--file on a plain source": (["run", str(ROOT / "asm" / "era-E.S"), "--file", "x.S",
                                  "--len", "64"], "--file names a file inside"),
    "--rev without --tree": (["run", "E", "--rev", "v1", "--len", "64"], "--rev needs --tree"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv, words = REFUSED[name]
    assert main(argv, io.StringIO()) == 2
    err = capsys.readouterr().err
    assert err.startswith("emu: error: ") and err.count("\n") == 1
    assert words in err


def test_output_files_replace_only_regular_files(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Class 6: --force never turns a device or a directory into a regular file."""
    for argv in (["snapshot", "E", "-o", "/dev/null", "--force"],
                 ["check", "E", "E", "--junit", "/dev/null", "--force", "--routine",
                  "copy_user_generic_unrolled"]):
        assert main(argv, io.StringIO()) == 2
        assert "not a regular file" in capsys.readouterr().err
    assert Path("/dev/null").is_char_device()
    assert main(["snapshot", "E", "-o", str(tmp_path), "--force"], io.StringIO()) == 2
    assert "is a directory" in capsys.readouterr().err

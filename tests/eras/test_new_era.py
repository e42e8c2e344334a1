"""Adding an era is adding its record, its asm/ source and its golden rows — nothing else.

In a scratch copy of the package, a throwaway era G is added exactly that way: one ``Era``
record appended to ``CATALOG`` (its own #MC rules — the ≤ v5.9 ones, so the seed #MC
panics — its write(2) model and a source mark), ``asm/era-G.S`` (era E's source plus a marker
function the mark looks for), and its golden tables written by ``make golden``'s command.
Then every subcommand must know G: the catalog lists it, ``diff`` runs it by default, a copy
of its file is detected as G, the write(2) model, ``map``, ``sweep`` and the golden test run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SEED = ["--len", "4096", "--src-align", "0x7e0", "--poison", "0x960"]

RECORD = '''
    Era("G", "throwaway test era: E's code under the <= v5.9 #MC rules", "never", "era-G.S",
        Encoding.DATA, 517, Severity.V5_9, LEGACY,
        write=wm.WriteModel("G", Severity.V5_9, wm.FaultIn.UACCESS, wm.Touch.FIRST_PAGES, False,
                            wm.TaskWork.KILL_ME_NEVER, True, wm.COMMON + (wm.READABLE,)),
        marks=(Mark("copy_user", lambda m: "emu_era_g_marker" in m.defines,
                    "defines emu_era_g_marker (the throwaway era)", 1),)),
'''
MARKER = "\nSYM_FUNC_START(emu_era_g_marker)\n\tRET\nSYM_FUNC_END(emu_era_g_marker)\n"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("new-era")
    shutil.copytree(ROOT / "emu", d / "emu", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "asm", d / "asm")
    shutil.copytree(ROOT / "fixtures" / "golden", d / "fixtures" / "golden")
    (d / "tests" / "golden").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "conftest.py", d / "tests" / "conftest.py")
    shutil.copy(ROOT / "tests" / "golden" / "test_golden.py", d / "tests" / "golden")
    shutil.copy(ROOT / "pyproject.toml", d / "pyproject.toml")
    # 1. the record
    eras = d / "emu" / "kernel" / "eras.py"
    text = eras.read_text()
    end = text.index("\n)\n\nERAS:")
    eras.write_text(text[:end] + RECORD.rstrip("\n") + text[end:])
    # 2. its source
    (d / "asm" / "era-G.S").write_text((ROOT / "asm" / "era-E.S").read_text() + MARKER)
    # 3. its golden rows
    run(d, ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/golden", "--update-golden"])
    return d


def run(d: Path, argv: list[str], ok: tuple[int, ...] = (0,)) -> str:
    env = dict(os.environ, PYTHONPATH=str(d), PYTHONDONTWRITEBYTECODE="1")
    p = subprocess.run([sys.executable, *argv], cwd=d, env=env, capture_output=True, text=True)
    assert p.returncode in ok, f"{argv}: exit {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr}"
    assert "Traceback" not in p.stderr, p.stderr
    return p.stdout


def emu(d: Path, *args: str, ok: tuple[int, ...] = (0,)) -> str:
    return run(d, ["-m", "emu", *args], ok)


def test_the_scratch_copy_is_what_runs(scratch: Path) -> None:
    where = run(scratch, ["-c", "import emu; print(emu.__file__)"]).strip()
    assert Path(where).is_relative_to(scratch)


def test_only_the_record_the_source_and_the_golden_rows_were_added(scratch: Path) -> None:
    new = sorted(p.relative_to(scratch).as_posix() for p in (scratch / "fixtures").rglob("G.*"))
    assert new and all(p.startswith("fixtures/golden/G.") for p in new)
    changed = [p.relative_to(scratch).as_posix() for p in (scratch / "emu").rglob("*.py")
               if p.read_bytes() != (ROOT / p.relative_to(scratch)).read_bytes()]
    assert changed == ["emu/kernel/eras.py"]


def test_the_catalog_and_diff_know_the_new_era(scratch: Path) -> None:
    assert any(line.startswith("G  never") for line in emu(scratch, "eras").splitlines())
    rows = json.loads(emu(scratch, "diff", *SEED, "--json"))["rows"]
    by = {r["variant"].split()[0]: r for r in rows}
    assert by["E"]["state"] == "returned" and by["E"]["return_value"] == 1728
    assert by["G"]["state"] == "panic"          # the record's own #MC rules apply


def test_a_copy_of_its_file_is_detected_as_the_new_era(scratch: Path, tmp_path: Path) -> None:
    copy = tmp_path / "mine.S"
    copy.write_text((scratch / "asm" / "era-G.S").read_text())
    got = json.loads(emu(scratch, "run", str(copy), *SEED, "--json"))
    assert got["variant"] == "mine.S (G)" and got["state"] == "panic"


def test_every_subcommand_runs_the_new_era(scratch: Path, tmp_path: Path) -> None:
    w = json.loads(emu(scratch, "run", "G", "--caller", "write", *SEED, "--json"))
    assert w["era"] == "G" and w["state"] == "panic"
    assert "#MC PANICS" in emu(scratch, "map", "G", "--routine", "copy_user_generic_unrolled")
    assert "G" in emu(scratch, "explain", "G", *SEED)
    s = json.loads(emu(scratch, "sweep", "G", "--len", "128", "--jobs", "1", "--json"))
    assert s["variants"]["G"]["classes"]["panic"]["count"] == 128
    snap = tmp_path / "g.json"
    emu(scratch, "snapshot", "G", "-o", str(snap), "--routine", "copy_user_generic_unrolled")
    assert json.loads(snap.read_text())["era"] == "G"


def test_the_golden_test_covers_the_new_era(scratch: Path) -> None:
    out = run(scratch, ["-m", "pytest", "-v", "-p", "no:cacheprovider", "tests/golden"])
    assert "test_golden[G.copy_user_generic_unrolled.none]" in out

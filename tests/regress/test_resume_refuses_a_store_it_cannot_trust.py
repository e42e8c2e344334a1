"""``--resume`` refuses a results store it cannot trust, in one line, and accepts its own.

Issue 17, class 8 (what the grid check of the SQLite store left open): a file that is not an
emu store, a truncated or garbled SQLite file, a store whose grid is not JSON, rows of
another sweep's variants or kinds, duplicated or malformed runs, and a store holding more
cases than the grid.  Every store here is made by a real sweep and then damaged by hand.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from emu.cli.main import main

GRID = ["sweep", "E", "--len", "64", "--jobs", "1"]


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("store") / "good.db"
    assert main([*GRID, "--results", str(p)]) == 0
    return p


def sql(path: Path, *stmts: str) -> None:
    db = sqlite3.connect(path)
    for s in stmts:
        db.execute(s)
    db.commit()
    db.close()


def damage(kind: str, good: Path, p: Path) -> None:
    if kind == "not_sqlite":
        p.write_bytes(b"id,case\n1,2\n" * 100)
        return
    if kind == "other_sqlite":
        sql(p, "CREATE TABLE t(x)")
        return
    shutil.copy(good, p)
    data = bytearray(p.read_bytes())
    if kind == "truncated":
        p.write_bytes(data[:len(data) // 2])
    elif kind == "garbled":
        for i in range(200, len(data), 97):
            data[i] ^= 0x5A
        p.write_bytes(bytes(data))
    elif kind == "grid_not_json":
        sql(p, "UPDATE meta SET value = '{' WHERE key = 'grid'")
    elif kind == "grid_not_object":
        sql(p, "UPDATE meta SET value = '[1]' WHERE key = 'grid'")
    elif kind == "foreign_kind":
        sql(p, "UPDATE runs SET kind = 'zz' WHERE id = 0")
    elif kind == "foreign_variant":
        sql(p, "UPDATE runs SET variant = 'Q' WHERE id = 0")
    elif kind == "bad_poison":
        sql(p, "UPDATE runs SET poison = 'x,y' WHERE id = 0")
    elif kind == "cases_not_offsets":
        sql(p, "UPDATE runs SET cases = cases + 1 WHERE id = 0")
    elif kind == "duplicated_runs":
        sql(p, "INSERT INTO runs SELECT id + 1000, variant, era, routine, cpu, direction, "
               "length, src_align, dst_align, kind, poison, unmapped, cases, class, state, "
               "return_value, exact, error, bytes_copied, mc, pf, tail_retry, message FROM runs",
               "INSERT INTO offsets SELECT run + 1000, lo, hi, step FROM offsets")
    elif kind == "no_runs_table":
        sql(p, "DROP VIEW cases", "DROP TABLE runs")


KINDS = ["not_sqlite", "other_sqlite", "truncated", "garbled", "grid_not_json",
         "grid_not_object", "foreign_kind", "foreign_variant", "bad_poison",
         "cases_not_offsets", "duplicated_runs", "no_runs_table"]


@pytest.mark.parametrize("kind", KINDS)
def test_resume_refuses_a_damaged_store(good: Path, tmp_path: Path, kind: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "s.db"
    damage(kind, good, p)
    before = p.read_bytes()
    capsys.readouterr()
    assert main([*GRID, "--results", str(p), "--resume"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"emu: error: {p}"), err
    assert p.read_bytes() == before          # nothing of the user's is changed


def test_resume_accepts_its_own_store(good: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "s.db"
    shutil.copy(good, p)
    assert main([*GRID, "--results", str(p), "--resume", "--json"]) == 0
    assert '"pending": 0' in capsys.readouterr().out

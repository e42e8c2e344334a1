"""The SQLite results store: size, determinism, grid check, sqlite3 queries, JSON-lines export,
and progress lines for sweeps without a terminal."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from emu.render.report import SweepProgress
from emu.runs.store import expand, spans

from sweep_helpers import ROOT, emu, emu_proc, query, read_jsonl, read_results

SEED = ["A", "B", "C", "D", "E", "F", "--len", "4096", "--src-align", "0x7e0", "--cpu", "none"]


@given(st.sets(st.integers(0, 5000), max_size=200))
@example(set())
@example({0, 1, 2, 3, 64, 128, 192, 193})
def test_spans_round_trip(offs: set[int]) -> None:
    sp = spans(sorted(offs))
    assert expand(sp) == sorted(offs)
    assert all(lo <= hi and step >= 1 for lo, hi, step in sp)


def test_seed_sweep_store_is_small_and_holds_every_case(tmp_path: Path) -> None:
    db = tmp_path / "seed.db"
    rc, out = emu("sweep", *SEED, "--results", str(db), "--json", "--jobs", "2")
    assert rc == 0 and json.loads(out)["cases"] == 24576
    size = db.stat().st_size
    assert size <= 2_000_000, size
    assert not Path(f"{db}-wal").exists()                    # closed cleanly
    # each distinct run once (65 poisoned lines per era), with the offsets it stands for
    assert query(db, "SELECT COUNT(*), SUM(cases) FROM runs") == [(6 * 65, 24576)]
    assert query(db, "SELECT COUNT(*) FROM cases") == [(24576,)]
    assert query(db, "SELECT variant, SUM(cases) FROM runs WHERE class = 'panic' "
                 "GROUP BY variant") == [("A", 4096)]
    # the poisoned line of the seed scenario (src+0x1140, line-aligned): 0x960..0x99f, one run
    assert query(db, "SELECT lo, hi, step FROM offsets JOIN runs ON runs.id = offsets.run "
                 "WHERE variant = 'E' AND lo <= 2400 AND 2400 <= hi") == [(0x960, 0x99F, 1)]
    assert query(db, "SELECT return_value FROM cases WHERE variant = 'E' AND offset = 2400") \
        == [(1728,)]


def _dump(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return list(db.iterdump())
    finally:
        db.close()


def test_same_sweep_same_store(tmp_path: Path) -> None:
    """One worker or two, the same rows (run ids follow the grid, not the finishing order)."""
    argv = ["sweep", "C", "E", "F", "--len", "64..320/64", "--src-align", "0x7e0", "--step", "4",
            "--faults", "mc,pf", "--json"]
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    assert emu(*argv, "--jobs", "1", "--results", str(a))[0] == 0
    assert emu(*argv, "--jobs", "2", "--results", str(b))[0] == 0
    assert _dump(a) == _dump(b)
    assert len(_dump(a)) > 100


def test_resume_refuses_a_store_of_another_sweep(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "r.db"
    assert emu("sweep", "C", "--len", "128", "--step", "line", "--results", str(db))[0] == 0
    before = db.read_bytes()
    rc, out = emu("sweep", "C", "--len", "256", "--step", "line", "--results", str(db),
                  "--resume")
    err = capsys.readouterr().err
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert "different sweep" in err and "lengths [128] in the store, [256] here" in err
    assert db.read_bytes() == before


def test_jsonl_export_is_the_old_record_format(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    db, lines = tmp_path / "r.db", tmp_path / "r.jsonl"
    rc, _ = emu("sweep", "C", "E", "--len", "200", "--src-align", "0x7e0", "--step", "4",
                "--results", str(db), "--jsonl", str(lines))
    assert rc == 0
    recs = read_jsonl(lines)
    assert recs == read_results(db) and len(recs) == 100
    assert set(recs[0]) == {"id", "case", "class", "state", "return_value", "exact", "error",
                            "bytes_copied", "violations", "mc", "pf", "tail_retry", "message"}
    # an existing export is never overwritten; --results FILE.jsonl points to --jsonl
    text = lines.read_text()
    rc, _ = emu("sweep", "C", "--len", "8", "--jsonl", str(lines))
    assert rc == 2 and "exists" in capsys.readouterr().err and lines.read_text() == text
    rc, _ = emu("sweep", "C", "--len", "8", "--results", str(tmp_path / "x.jsonl"))
    assert rc == 2 and "--jsonl" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="the sqlite3 shell is not installed")
def test_readme_queries_run_in_the_sqlite3_shell(tmp_path: Path) -> None:
    db = tmp_path / "seed.db"
    assert emu("sweep", "E", "F", "--len", "4096", "--src-align", "0x7e0", "--results",
               str(db))[0] == 0
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- store queries -->")[1].split("```")[1].split("\n", 1)[1]
    queries = [q.strip() for q in block.split(";") if q.strip() and not q.strip().startswith("$")]
    assert len(queries) >= 3
    for q in queries:
        q = re.sub(r"^--.*$", "", q, flags=re.M).strip()
        if not q:
            continue
        r = subprocess.run(["sqlite3", str(db), q + ";"], capture_output=True, text=True)
        assert r.returncode == 0 and r.stderr == "", (q, r.stderr)
        assert r.stdout.strip(), q


def test_progress_lines_without_a_terminal() -> None:
    r = emu_proc("sweep", "C", "D", "E", "F", "--len", "64..2048/64", "--step", "line",
                 "--jobs", "2", env={"EMU_PROGRESS_INTERVAL": "0.3"})
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines, "no progress line"
    pat = re.compile(r"^sweep: (\d+)/(\d+) cases \(\d+%\), \d+ cases/s, ETA (\d+ s|-)$")
    done = [int(m[1]) for m in map(pat.match, lines) if m]
    assert len(done) == len(lines) and done == sorted(done)
    assert int(pat.match(lines[0])[2]) == 4 * sum(n // 64 for n in range(64, 2049, 64))


def test_progress_is_quiet_for_short_sweeps_and_every_interval_after() -> None:
    import io
    t = [0.0]
    out = io.StringIO()
    p = SweepProgress(out, tty=False, interval=10, clock=lambda: t[0])
    for i in range(1, 100):
        t[0] = i * 0.5                       # 49.5 s in all: lines at 10, 20, 30, 40 s
        p(i * 10, 1000)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[0] == "sweep: 200/1000 cases (20%), 20 cases/s, ETA 40 s"


class _Interrupting:
    """A store connection that raises KeyboardInterrupt (Ctrl-C) before, or just after, the
    first statement containing ``text`` — where a real SIGINT can land."""

    def __init__(self, db: sqlite3.Connection, text: str, after: bool) -> None:
        self.db, self.text, self.after = db, text, after

    def _call(self, method: str, sql: str, *args: object) -> object:
        if self.text not in sql:
            return getattr(self.db, method)(sql, *args)
        self.text = "\0"                                  # once
        if not self.after:
            raise KeyboardInterrupt
        out = getattr(self.db, method)(sql, *args)
        raise KeyboardInterrupt

    def execute(self, sql: str, *args: object) -> object:
        return self._call("execute", sql, *args)

    def executemany(self, sql: str, *args: object) -> object:
        return self._call("executemany", sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self.db, name)


@pytest.mark.parametrize("text,after", [
    ("SAVEPOINT", False), ("INSERT OR IGNORE INTO runs", False),
    ("INSERT OR IGNORE INTO runs", True), ("INSERT INTO violations", True),
    ("INSERT INTO offsets", False), ("INSERT INTO offsets", True), ("RELEASE", False),
    ("RELEASE", True)])
def test_ctrl_c_mid_insert_leaves_no_run_without_its_offsets(tmp_path: Path, text: str,
                                                              after: bool) -> None:
    """A Ctrl-C that lands between two statements of one run's insert: the store that is
    committed afterwards holds that run whole or not at all, and every earlier run whole
    (it was the cause of the Ctrl-C test's off-by-one: a run row stored without offsets)."""
    from emu.runs import store as S
    src = tmp_path / "src.db"
    rc, _ = emu("sweep", "E", "--len", "256", "--src-align", "0x7e0", "--step", "line",
                "--results", str(src), "--json", "--jobs", "1")
    assert rc == 0
    grid, _ = S.read(src)
    runs = query(src, "SELECT * FROM runs ORDER BY id")
    assert len(runs) >= 3
    out = tmp_path / "out.db"
    st_ = S.Store(str(out), grid, resume=False)

    def add(row: tuple[object, ...]) -> None:
        viol = [v for (v,) in query(src, f"SELECT name FROM violations WHERE run = {row[0]} "
                                         "ORDER BY pos")]
        sp = query(src, f"SELECT lo, hi, step FROM offsets WHERE run = {row[0]}")
        st_.add_row(row, viol, sp)

    add(runs[0])
    real = st_.db
    st_.db = _Interrupting(real, text, after)  # type: ignore[assignment]
    with pytest.raises(KeyboardInterrupt):
        add(runs[1])
    st_.db = real
    st_.commit()
    st_.close()
    stored = query(out, "SELECT id, cases FROM runs ORDER BY id")
    assert stored[0][0] == runs[0][0]
    assert len(stored) in (1, 2)
    for run, cases in stored:
        assert sum(len(range(lo, hi + 1, step)) for lo, hi, step in
                   query(out, f"SELECT lo, hi, step FROM offsets WHERE run = {run}")) == cases
    # the run whose insert finished before the interrupt is kept (it was released)
    assert (len(stored) == 2) == (text == "RELEASE" and after)

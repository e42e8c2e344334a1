"""``emu sweep``: summary, reproducers, results file, resume, worker crashes, bad input."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emu.runs.sweep import Grid, parse_variant

from sweep_helpers import ROOT, emu, emu_proc, query, read_results, runs_committed

SMALL = ["C", "D", "E", "F", "--len", "200", "--src-align", "0x7e0", "--step", "4"]


def grid_ids(*variants: str, n: int = 200, align: int = 0x7E0, step: int = 4) -> set[str]:
    g = Grid(variants=tuple(parse_variant(v, None) for v in variants), lengths=(n,),
             src_aligns=(align,), step=step)
    return {c.id for c in g.cases()}


def test_summary_counts_match_records(results: Path) -> None:
    rc, out = emu("sweep", *SMALL, "--results", str(results), "--json", "--jobs", "2")
    assert rc == 0
    s = json.loads(out)
    recs = read_results(results)
    assert len(recs) == s["cases"] == len(grid_ids("C", "D", "E", "F")) == 4 * 50
    assert {r["id"] for r in recs} == grid_ids("C", "D", "E", "F")
    for spec, v in s["variants"].items():
        mine = [r for r in recs if r["case"]["variant"] == spec]
        assert v["cases"] == len(mine)
        assert sum(c["count"] for c in v["classes"].values()) == len(mine)
        for name, slot in v["violations"].items():
            assert slot["count"] == sum(name in r["violations"] for r in mine)
            assert slot["benign_for_copy_from_user"] == (name in ("modified_past_reported",
                                                                  "garbage_past_reported"))
    # an "ok" case returns exactly len - bytes copied; other classes carry their reason
    for r in recs:
        if r["class"] == "ok":
            assert r["error"] == 0 and not r["violations"]
        elif r["class"] in ("benign", "violation"):
            assert r["violations"]
    # the eras differ as kernel-facts §3 says: C returns 0 after #MC, D retries the tail
    assert set(s["variants"]["C"]["violations"]) == {"zero_with_missing"}
    assert "poison_consumed_twice" in s["variants"]["D"]["violations"]
    assert "zero_with_missing" not in s["variants"]["E"]["violations"]


def test_printed_reproducers_reproduce() -> None:
    rc, out = emu("sweep", *SMALL, "--json", "--jobs", "1")
    assert rc == 0
    s = json.loads(out)
    checked = 0
    for v in s["variants"].values():
        for group in ("classes", "violations"):
            for name, slot in v[group].items():
                argv = shlex.split(slot["example"])
                assert argv[:2] == ["emu", "run"]
                rc, js = emu(*argv[1:], "--json")
                assert rc == 0
                o = json.loads(js)
                if group == "violations":
                    assert name in o["violations"], slot["example"]
                elif name in ("ok",):
                    assert o["violations"] == [] and o["state"] == "returned"
                elif name in ("benign", "violation"):
                    assert o["violations"]
                else:
                    assert o["state"] == name
                checked += 1
    assert checked >= 8


def test_text_summary_marks_benign_violations() -> None:
    rc, out = emu("sweep", "E", "--len", "4096", "--src-align", "0x7e0", "--step", "line",
                  "--jobs", "1")
    assert rc == 0
    assert "modified_past_reported" in out and "[benign for copy_from_user]" in out
    assert "claimed_nothing" in out and "[not benign]" in out
    assert "emu run E --len 4096 --src-align 0x7e0" in out


def test_existing_results_file_is_not_overwritten(results: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    results.write_text("precious\n")
    rc, _ = emu("sweep", "C", "--len", "8", "--results", str(results))
    assert rc == 2
    assert "exists" in capsys.readouterr().err
    assert results.read_text() == "precious\n"
    # and resuming into a file that is not a sweep store is refused too
    rc, _ = emu("sweep", "C", "--len", "8", "--results", str(results), "--resume")
    assert rc == 2
    assert "not an emu sweep store" in capsys.readouterr().err
    assert results.read_text() == "precious\n"


def test_resume_after_case_limit(results: Path) -> None:
    base = ["sweep", *SMALL, "--results", str(results), "--json", "--jobs", "2"]
    rc, out = emu(*base, "--max-cases", "77")
    first = read_results(results)
    # whole runs only: the run that reaches 77 cases is finished, nothing after it
    assert rc == 0 and 77 <= len(first) < 77 + 16
    assert json.loads(out)["pending"] == 200 - len(first)
    rc, out = emu(*base, "--resume", "--max-cases", "50")
    second = read_results(results)
    assert rc == 0 and len(first) + 50 <= len(second) < len(first) + 50 + 16
    assert json.loads(out)["pending"] == 200 - len(second)
    rc, out = emu(*base, "--resume")
    s = json.loads(out)
    assert rc == 0 and s["pending"] == 0 and s["cases"] == 200
    recs = read_results(results)
    ids = [r["id"] for r in recs]
    assert len(ids) == len(set(ids)) == 200          # zero duplicated
    assert set(ids) == grid_ids("C", "D", "E", "F")   # zero lost
    assert all(r in recs for r in first)               # nothing rewritten
    assert query(results, "SELECT SUM(cases), COUNT(*) FROM runs") == [(200, 4 * 4)]
    # the resumed records equal a fresh uninterrupted sweep, case by case
    fresh = results.with_name("fresh.db")
    rc, out = emu("sweep", *SMALL, "--json", "--jobs", "1", "--results", str(fresh))
    assert read_results(fresh) == recs
    for v, w in zip(json.loads(out)["variants"].values(), s["variants"].values()):
        assert v["classes"] == w["classes"] and v["violations"] == w["violations"]
    # resuming a finished sweep runs nothing and changes nothing
    dump = _dump(results)
    rc, _ = emu(*base, "--resume")
    assert rc == 0 and _dump(results) == dump


def _dump(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return list(db.iterdump())
    finally:
        db.close()


def test_resume_after_kill(results: Path, tmp_path: Path) -> None:
    """SIGKILL a running sweep (parent and workers go no further), then resume: every case
    once, none lost, and the store equals one from an uninterrupted sweep.

    The whole sweep takes about a second, so one worker stalls on a case in the middle of
    the grid (``EMU_SWEEP_STALL``): the sweep cannot finish before the kill lands, however
    fast the machine is (it once did, between the test's poll and its kill)."""
    argv = [sys.executable, "-m", "emu", "sweep", "C", "D", "E", "F", "--len", "2048..4096/256",
            "--src-align", "0x7e0", "--step", "line", "--faults", "mc,mc2",
            "--results", str(results), "--jobs", "2", "--json"]
    ids = _ids_mc_mc2()
    total = len(ids)
    stall = sorted(i for i in ids if i.startswith("E|"))[0]
    p = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env={**os.environ, "EMU_SWEEP_STALL": stall})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None:
            if runs_committed(results) >= 40:
                break
            time.sleep(0.02)
        assert p.poll() is None, "sweep finished before it could be interrupted"
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.wait()
    done = runs_committed(results)
    assert 40 <= done < total       # one case per run here (--step line)
    assert stall not in {x["id"] for x in read_results(results)}
    r = emu_proc(*argv[3:], "--resume")
    assert r.returncode == 0, r.stderr
    recs = read_results(results)
    ids = [x["id"] for x in recs]
    assert len(ids) == len(set(ids)) == total
    assert set(ids) == _ids_mc_mc2()
    assert all(x["class"] != "tool_error" for x in recs)
    assert query(results, "SELECT SUM(cases) FROM runs") == [(total,)]
    fresh = tmp_path / "fresh.db"
    r = emu_proc(*argv[3:-5], "--results", str(fresh), "--jobs", "1", "--json")
    assert r.returncode == 0, r.stderr
    assert _dump(fresh) == _dump(results)


def _ids_mc_mc2() -> set[str]:
    g = Grid(variants=tuple(parse_variant(v, None) for v in "CDEF"),
             lengths=tuple(range(2048, 4097, 256)), src_aligns=(0x7E0,), step=64,
             kinds=("mc", "mc2"))
    return {c.id for c in g.cases()}


def test_worker_crash_is_recorded_and_the_sweep_goes_on(results: Path) -> None:
    """A worker that dies costs the run it was running: every case of that run (the
    poisoned line's offsets) is a tool_error; a harness exception likewise."""
    ids = sorted(grid_ids("C", "E"))
    victim = next(i for i in ids if i.startswith("E|") and i.endswith("|mc|0x40"))
    raiser = next(i for i in ids if i.startswith("C|") and i.endswith("|mc|0x80"))
    r = emu_proc("sweep", "C", "E", "--len", "200", "--src-align", "0x7e0", "--step", "4",
                 "--results", str(results), "--json", "--jobs", "2",
                 env={"EMU_SWEEP_CRASH": victim, "EMU_SWEEP_RAISE": raiser})
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    recs = {x["id"]: x for x in read_results(results)}
    assert set(recs) == set(ids)                      # every case recorded, once
    # offsets 0x20..0x5c share the line at src+0x800 with the victim; 0x60..0x9c the raiser's
    killed = {i for i in ids if i.startswith("E|") and 0x20 <= int(i.split("|")[-1], 16) < 0x60}
    raised = {i for i in ids if i.startswith("C|") and 0x60 <= int(i.split("|")[-1], 16) < 0xA0}
    assert victim in killed and raiser in raised
    for i in killed:
        assert recs[i]["class"] == "tool_error" and "worker died" in recs[i]["message"]
    for i in raised:
        assert recs[i]["class"] == "tool_error" and "RuntimeError" in recs[i]["message"]
    others = [x for i, x in recs.items() if i not in killed | raised]
    assert others and all(x["class"] != "tool_error" for x in others)
    assert s["variants"]["E"]["classes"]["tool_error"]["count"] == len(killed) == 16
    assert s["variants"]["C"]["classes"]["tool_error"]["count"] == len(raised) == 16


def test_a_worker_killed_once_costs_no_run(results: Path, tmp_path: Path) -> None:
    """Workers send records a few at a time, so a worker that dies holds finished runs it
    has not sent.  When it was killed from outside (once, not by a case), those runs and the
    one it was running are run again: nothing is lost or doubled, nothing is a tool_error,
    and the store equals an undisturbed sweep's."""
    ids = sorted(grid_ids("C", "E"))
    victim = next(i for i in ids if i.startswith("E|") and i.endswith("|mc|0x40"))
    mark = tmp_path / "killed-once"
    argv = ["sweep", "C", "E", "--len", "200", "--src-align", "0x7e0", "--step", "4", "--json"]
    r = emu_proc(*argv, "--results", str(results), "--jobs", "2",
                 env={"EMU_SWEEP_CRASH": victim, "EMU_SWEEP_CRASH_ONCE": str(mark)})
    assert r.returncode == 0, r.stderr
    assert mark.exists()                      # the worker did die
    recs = read_results(results)
    assert sorted(x["id"] for x in recs) == ids
    assert all(x["class"] != "tool_error" for x in recs)
    fresh = tmp_path / "fresh.db"
    f = emu_proc(*argv, "--results", str(fresh), "--jobs", "1")
    assert f.returncode == 0, f.stderr
    assert r.stdout == f.stdout and _dump(fresh) == _dump(results)


@pytest.mark.parametrize("argv, msg", [
    (["sweep", "Q"], "neither an era"),
    (["sweep", "C", "--len", "x"], "not a list of numbers"),
    (["sweep", "C", "--faults", "mc,boom"], "unknown fault kind"),
    (["sweep", "C", "--step", "half"], "--step"),
    (["sweep", "C", "--cpu", "AVX512"], "unknown CPU feature"),
    (["sweep", "C", "--len", "65536", "--src-align", "8"], "does not fit"),
    (["sweep", "C", "--resume"], "--resume needs --results"),
    (["sweep", "no/such/file.S", "--routine", "f"], "no such file"),
])
def test_bad_input_is_one_line_and_exit_2(argv, msg, capsys) -> None:  # type: ignore[no-untyped-def]
    rc, out = emu(*argv)
    err = capsys.readouterr().err
    assert rc == 2 and out == ""
    assert msg in err and err.count("\n") == 1 and "Traceback" not in err


def test_source_file_variant(tmp_path: Path) -> None:
    """A .S variant is assembled in the workers with the --era rules it names."""
    src = ROOT / "asm" / "era-C.S"
    rc, out = emu("sweep", str(src), "--era", "C", "--routine", "copy_user_generic_unrolled",
                  "--len", "128", "--step", "line", "--json", "--jobs", "1")
    assert rc == 0
    v = json.loads(out)["variants"][str(src)]
    assert set(v["violations"]) == {"zero_with_missing"}
    assert "--era C" in v["classes"]["violation"]["example"]


def test_ctrl_c_prints_the_partial_summary_and_resume_finishes(results: Path) -> None:
    """SIGINT (Ctrl-C) mid-sweep: exit 130, the summary of the finished cases on stdout, a
    one-line hint on stderr, and --resume completes the grid with nothing lost or doubled."""
    # A grid of many distinct runs; one worker stalls on a case mid-grid, so the interrupt
    # lands mid-sweep however fast the machine is.
    argv = [sys.executable, "-m", "emu", "sweep", "C", "D", "E", "F", "--len", "64..4096/64",
            "--src-align", "0x7e0", "--step", "line", "--faults", "mc",
            "--results", str(results), "--jobs", "2", "--json"]
    g = Grid(variants=tuple(parse_variant(v, None) for v in "CDEF"),
             lengths=tuple(range(64, 4097, 64)), src_aligns=(0x7E0,), step=64, kinds=("mc",))
    ids = {c.id for c in g.cases()}
    total = len(ids)
    stall = sorted(i for i in ids if i.startswith("E|"))[0]
    # SIGINT at its default (a suite started in the background of a shell inherits it
    # ignored, and Python would then install no KeyboardInterrupt handler)
    p = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, "EMU_SWEEP_STALL": stall},
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and p.poll() is None:
        if runs_committed(results) >= 40:
            break
        time.sleep(0.02)
    assert p.poll() is None, "sweep finished before it could be interrupted"
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    summary = json.loads(out)
    assert summary["interrupted"] is True
    done = len(read_results(results))
    assert summary["pending"] == total - done and 0 < done < total
    assert err.decode().count("\n") == 1 and "--resume" in err.decode()
    r = emu_proc(*argv[3:], "--resume")
    assert r.returncode == 0, r.stderr
    ids = [x["id"] for x in read_results(results)]
    assert len(ids) == len(set(ids)) == total


def test_finished_runs_are_committed_while_the_workers_are_quiet(tmp_path: Path,
                                                                 monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The store commits every half second from ``Store.add``; when the records stop
    coming (a worker busy with a long run), the pool's parent still calls ``tick`` every
    ``TICK`` seconds, and the store commits what has finished.  (Without it, a sweep that
    had almost finished, with one long run left, kept its last half second of runs
    uncommitted: a SIGKILL lost them, and a test once waited 120 s for them.)"""
    from emu.runs import store as S
    from emu.runs.sweep import TICK, run_parallel
    g = Grid(variants=(parse_variant("E", None),), lengths=(200,), src_aligns=(0x7E0,), step=4)
    units = list(g.units())
    monkeypatch.setenv("EMU_SWEEP_STALL", units[-1].case.id)   # the last run never ends
    st_ = S.Store(str(tmp_path / "r.db"), {"grid": "test"}, resume=False)
    got: list[int] = []
    quiet: list[float] = []

    class Enough(Exception):
        pass

    def on_record(u, rec) -> None:  # type: ignore[no-untyped-def]
        st_.add(u.id, u.case, u.offsets, rec)
        got.append(u.id)
        quiet.clear()

    deadline = time.monotonic() + 60

    def tick() -> None:
        st_.tick()
        quiet.append(time.monotonic())
        if len(quiet) >= 2 and quiet[-1] - quiet[0] > S.COMMIT_EVERY + 2 * TICK:
            raise Enough                     # quiet for long enough: stop the pool
        assert quiet[-1] < deadline, "the records never stopped coming"

    with pytest.raises(Enough):
        run_parallel(iter(units), 2, on_record, tick=tick)
    assert 0 < len(got) < len(units)
    assert runs_committed(tmp_path / "r.db") == len(got)     # all it received, committed
    st_.close()

"""emu check over history: a range of commits (with resume) and a real ``git bisect run``.

The history is scripts/demo-tree's: tags v5.9 ... v6.4 (emu's own era sources) and the branch
"next" on v5.17 -- a comment, a commit that does not assemble, its fix, the extable-type-only
change (EX_TYPE_COPY -> EX_TYPE_EFAULT_REG on the unrolled loads: #MC there now panics) and
another comment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from check_helpers import ROOT

EMU = Path(sys.executable).parent / "emu"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("history") / "linux"
    subprocess.run([str(ROOT / "scripts" / "demo-tree"), str(d)], check=True,
                   capture_output=True)
    return d


def git(tree: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=tree, capture_output=True, text=True,
                          check=True).stdout.strip()


def emu(tree: Path, *args: str, cache: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, EMU_CACHE=str(cache), LC_ALL="C", COLUMNS="160")
    return subprocess.run([str(EMU), *args], cwd=tree, env=env, capture_output=True,
                          text=True, timeout=600, **kw)  # type: ignore[call-overload]


def subjects(tree: Path, rng: str) -> dict[str, str]:
    out = git(tree, "log", "--format=%H %s", rng)
    return {ln.split(" ", 1)[1]: ln.split(" ", 1)[0] for ln in out.splitlines()}


def test_range_one_row_per_commit_and_the_first_change(demo: Path, tmp_path: Path) -> None:
    r = emu(demo, "check", "--tree", ".", "v5.17..next", "--json", cache=tmp_path)
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    sub = subjects(demo, "v5.17..next")
    rows = {row["subject"]: row for row in doc["rows"]}
    assert [row["sha"] for row in doc["rows"]] == \
        git(demo, "rev-list", "--reverse", "v5.17..next").split()
    assert rows["copy_user: WIP (does not assemble)"]["verdict"] == "unbuildable"
    assert "bogus" in rows["copy_user: WIP (does not assemble)"]["message"]
    bad = rows["copy_user: EFAULT_REG fixups for the unrolled loads"]
    assert bad["regression"] and bad["regressions"] == ["new_mc_panic"]
    # compared with the commit before it that emu could build
    assert bad["old"] == sub["copy_user: fix the build"]
    for s in ("copy_user: comment the unrolled loop", "copy_user: fix the build",
              "copy_user: comment the fixups"):
        assert rows[s]["verdict"] == "same" and not rows[s]["regression"]
    assert doc["first_change"] == doc["first_regression"] == \
        sub["copy_user: EFAULT_REG fixups for the unrolled loads"]


def test_range_over_releases_judges_directions(demo: Path, tmp_path: Path) -> None:
    r = emu(demo, "check", "--tree", ".", "v5.9..v6.4", "--json", cache=tmp_path)
    doc = json.loads(r.stdout)
    eras = [row["era"] for row in doc["rows"]]
    assert eras == ["A->C", "C->D", "D->E", "E->F"]
    a_c, c_d, d_e, e_f = doc["rows"]
    # v5.10: the #MC panic is gone (better), the count returned is 0 (a new violation)
    assert a_c["classes"]["new_mc_panic"]["better"] > 0
    assert a_c["classes"]["new_violation"]["worse"] > 0
    # v5.17: E stops retrying into the poison: fewer machine checks
    assert d_e["classes"]["mc_count_changed"]["better"] > 0
    assert d_e["classes"]["mc_count_changed"]["worse"] == 0
    # v6.4 (rewrite): compared through copy_user_generic(); the rep movsq/word paths retry
    assert e_f["classes"]["mc_count_changed"]["worse"] > 0
    assert doc["first_change"] == a_c["sha"]


def test_range_resumes_after_an_interruption(demo: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = dict(os.environ, EMU_CACHE=str(cache), LC_ALL="C")
    p = subprocess.Popen([str(EMU), "check", "--tree", ".", "v5.9..v6.4"], cwd=demo, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal_dir = cache / "check-range"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        js = list(journal_dir.glob("*.jsonl")) if journal_dir.is_dir() else []
        if js and js[0].read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=120)
    [journal] = journal_dir.glob("*.jsonl")
    done = journal.read_text().count("\n")
    assert 1 <= done
    r = emu(demo, "check", "--tree", ".", "v5.9..v6.4", cache=cache)
    assert r.returncode == 1
    assert r.stdout.count("(from the journal)") == done
    if done < 4:
        assert f"resumed: {done} of 4 commit(s)" in r.stdout
    # the same rows as a run from scratch
    fresh = emu(demo, "check", "--tree", ".", "v5.9..v6.4", "--json",
                cache=tmp_path / "fresh")
    again = emu(demo, "check", "--tree", ".", "v5.9..v6.4", "--json", cache=cache)
    strip = lambda d: [{k: v for k, v in row.items() if k != "seconds"}  # noqa: E731
                       for row in json.loads(d)["rows"]]
    assert strip(fresh.stdout) == strip(again.stdout)
    assert json.loads(again.stdout)["resumed"] == 4


def test_git_bisect_run_skips_the_unbuildable_commit(demo: Path, tmp_path: Path) -> None:
    tree = tmp_path / "linux"
    subprocess.run(["git", "clone", "-q", "--no-local", str(demo), str(tree)], check=True)
    git(tree, "branch", "next", "origin/next")
    sub = subjects(tree, "v5.17..next")
    env = dict(os.environ, PATH=f"{EMU.parent}{os.pathsep}{os.environ['PATH']}", LC_ALL="C",
               EMU_CACHE=str(tmp_path / "cache"))
    git(tree, "bisect", "start", "next", "v5.17")
    r = subprocess.run(["git", "bisect", "run", "emu", "check", "--bisect", "--tree", ".",
                        "v5.17"], cwd=tree, env=env, capture_output=True, text=True,
                       timeout=600)
    log = git(tree, "bisect", "log")
    git(tree, "bisect", "reset")
    assert r.returncode == 0, r.stdout + r.stderr
    bad = sub["copy_user: EFAULT_REG fixups for the unrolled loads"]
    assert f"{bad} is the first bad commit" in r.stdout
    # the unbuildable commit was tested and skipped (exit 125), not blamed
    assert f"git bisect skip {sub['copy_user: WIP (does not assemble)']}" in log
    assert "cannot be built: skip (exit 125)" in r.stdout


def test_bisect_exit_codes(demo: Path, tmp_path: Path) -> None:
    sub = subjects(demo, "v5.17..next")
    run = lambda *a: emu(demo, "check", "--bisect", "--tree", ".", *a,  # noqa: E731
                         cache=tmp_path)
    assert run("v5.17", sub["copy_user: fix the build"]).returncode == 0
    assert run("v5.17", "next").returncode == 1
    r = run("v5.17", sub["copy_user: WIP (does not assemble)"])
    assert r.returncode == 125 and "cannot be built" in r.stdout
    # GOOD itself unusable, or bad usage: 128 stops git bisect instead of blaming a commit
    r = run("no-such-rev", "next")
    assert r.returncode == 128 and len(r.stderr.strip().splitlines()) == 1
    assert run("v5.17", "next", "--allow", "nope").returncode == 128
    assert emu(demo, "check", "--bisect", "--tree", ".", "--bogus", "v5.17",
               cache=tmp_path).returncode == 128

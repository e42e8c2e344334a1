"""``emu campaign``: a grid over every revision of a demo tree that touched the file.

The tree is scripts/demo-tree's (emu's own era sources, one commit per era, tagged with the
release that starts it), plus one commit that touches another file, which the campaign must
leave out."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from sweep_helpers import ROOT, dump, emu, query

GRID = ["--len", "4096", "--src-align", "0x7e0", "--step", "8", "--cpu", "none",
        "--cpu", "erms"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    t = tmp_path_factory.mktemp("campaign") / "linux"
    subprocess.run([str(ROOT / "scripts" / "demo-tree"), str(t)], check=True)
    (t / "README").write_text("not read by emu\n")
    env = ["-c", "user.name=emu", "-c", "user.email=emu@localhost", "-c",
           "commit.gpgsign=false"]
    subprocess.run(["git", *env, "add", "README"], cwd=t, check=True)
    subprocess.run(["git", *env, "commit", "-qm", "a README"], cwd=t, check=True)
    return t


def test_campaign_reports_per_revision_cpu_and_era(tree: Path, tmp_path: Path) -> None:
    rc, out = emu("campaign", "--tree", str(tree), "v5.9..HEAD", *GRID, "--json",
                  "--results", str(tmp_path / "c.db"))
    assert rc == 0
    rep = json.loads(out)
    assert rep["revisions"] == 5 and rep["cpus"] == ["none", "erms"]    # README left out
    rows = {(r["subject"].split()[3], r["cpu"]): r for r in rep["rows"]}
    assert [r["era"] for r in rep["rows"] if r["cpu"] == "none"] == list("ACDEF")
    assert rows[("v5.9", "none")]["classes"] == {"panic": 512}
    assert rows[("v5.16", "none")]["violations"] == {"poison_consumed_twice": 512}
    assert rows[("v6.4", "erms")]["classes"] == {"ok": 512}
    assert rows[("v6.4", "none")]["classes"] == {"violation": 512}
    first = rep["first"]["none"]
    commit = {r["subject"].split()[3]: r["revision"] for r in rep["rows"]}
    assert first["panic"] == {"went_away": commit["v5.10"]}
    assert first["zero_with_missing"] == {"appeared": commit["v5.10"],
                                          "went_away": commit["v5.16"]}
    assert first["claimed_nothing"] == {"appeared": commit["v5.17"],
                                        "went_away": commit["v6.4"]}
    # one store, one row per distinct run of every revision × CPU model
    assert query(tmp_path / "c.db", "SELECT COUNT(DISTINCT variant), COUNT(DISTINCT cpu) "
                 "FROM runs") == [(5, 2)]
    rc, text = emu("campaign", "--tree", str(tree), "v5.9..HEAD", *GRID)
    assert rc == 0
    assert "era E  512 cases: ok 4, benign 500, violation 8" in text
    assert f"{commit['v5.10']} (cpu none, after {commit['v5.9']}): +violation -panic " \
        "+zero_with_missing" in text


def test_an_interrupted_campaign_resumes(tree: Path, tmp_path: Path) -> None:
    whole, part = tmp_path / "whole.db", tmp_path / "part.db"
    rc, fresh = emu("campaign", "--tree", str(tree), "v5.10..v6.4", *GRID, "--json",
                    "--results", str(whole))
    assert rc == 0
    rc, half = emu("campaign", "--tree", str(tree), "v5.10..v6.4", *GRID, "--json",
                   "--results", str(part), "--max-cases", "1500")
    assert rc == 0 and json.loads(half)["pending"] > 0
    rc, again = emu("campaign", "--tree", str(tree), "v5.10..v6.4", *GRID, "--json",
                    "--results", str(part), "--resume")
    assert rc == 0 and again == fresh and dump(part) == dump(whole)


@pytest.mark.parametrize("argv, msg", [
    (["v5.9"], "revision range A..B"),
    (["v5.9..v9"], "unknown revision 'v9'"),
    (["v5.9..v6.4", "--era", "Z"], "era"),
    (["v5.9..v6.4", "--file", "arch/x86/lib/nope.S"], "has no arch/x86/lib/nope.S"),
])
def test_bad_campaign_input_is_one_line_and_exit_2(tree: Path, argv: list[str], msg: str,
                                                   capsys) -> None:  # type: ignore[no-untyped-def]
    rc, out = emu("campaign", "--tree", str(tree), *argv, "--len", "64")
    err = capsys.readouterr().err
    assert rc == 2 and out == "" and err.count("\n") == 1 and msg in err, err

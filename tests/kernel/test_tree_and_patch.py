"""--tree/--rev/--patch end to end, on throw-away git trees.

The tree is built by scripts/demo-tree from emu's own era sources (project-written); the
committed sample patches in fixtures/patches were written against those sources.  The real
Debian getuser.S is patched with a diff generated here at test time (never committed).
"""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pytest

from emu.cli.main import main
from emu.build.detect import detect
from emu.errors import InputError
from emu.build.sources import Source, apply_patches, read_rev

from debian_sources import debian

ROOT = Path(__file__).resolve().parents[2]
PATCHES = ROOT / "fixtures" / "patches"
SERIES = [str(PATCHES / "0001-retry-tail-after-mc.patch"),
          str(PATCHES / "0002-remove-unused-mc-exit.patch")]
SEED = ["--len", "4096", "--src-align", "0x7e0", "--poison", "0x960"]


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    t = tmp_path_factory.mktemp("linux") / "linux"
    subprocess.run([str(ROOT / "scripts" / "demo-tree"), str(t)], check=True)
    return t


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    out = io.StringIO()
    code = main(argv, out)
    return code, out.getvalue(), capsys.readouterr().err


def test_diff_across_revisions_detects_each_era(tree: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, err = cli(["diff", "--tree", str(tree), "v5.9", "v5.10", "v5.16", "v5.17",
                          "v6.4", *SEED, "--json"], capsys)
    assert (code, err) == (0, "")
    rows = json.loads(out)["rows"]
    assert [r["variant"] for r in rows] == [
        "v5.9:copy_user_64.S (A)", "v5.10:copy_user_64.S (C)", "v5.16:copy_user_64.S (D)",
        "v5.17:copy_user_64.S (E)", "v6.4:copy_user_64.S (F)"]
    assert [r["return_value"] for r in rows] == [None, 0, 4096 - 0x960, 4096 - 0x940,
                                                 4096 - 0x960]
    assert [r["state"] for r in rows][0] == "panic"
    assert [r["mc_count"] for r in rows] == [1, 1, 2, 1, 2]


def test_run_reads_the_revision(tree: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = cli(["run", "--tree", str(tree), "--rev", "v5.10", *SEED, "--json"], capsys)
    assert code == 0
    o = json.loads(out)
    assert (o["variant"], o["return_value"]) == ("v5.10:copy_user_64.S (C)", 0)


def test_mbox_series_is_applied_in_order_in_a_copy(tree: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    head = git("rev-parse", "HEAD", cwd=tree)
    code, out, err = cli(["diff", "--tree", str(tree), "v5.17", *SEED, "--json",
                          "--patch", SERIES[0], "--patch", SERIES[1]], capsys)
    assert (code, err) == (0, "")
    before, after = json.loads(out)["rows"]
    assert before["variant"] == "v5.17:copy_user_64.S (E)"
    assert after["variant"] == "v5.17:copy_user_64.S+2-patches (D)"   # no X86_TRAP_MC test
    assert (before["return_value"], before["mc_count"]) == (4096 - 0x940, 1)
    assert (after["return_value"], after["mc_count"], after["tail_retry"]) == \
        (4096 - 0x960, 2, True)
    # the user's tree is untouched
    assert git("status", "--porcelain", cwd=tree) == ""
    assert git("rev-parse", "HEAD", cwd=tree) == head


def test_series_order_matters(tree: Path) -> None:
    src = read_rev(str(tree), "v5.17")
    both = apply_patches(src, SERIES)
    assert "X86_TRAP_MC" not in both.text and "3:\tmovl %edx,%eax" not in both.text
    with pytest.raises(InputError, match="does not apply"):
        apply_patches(src, SERIES[:1] * 2)


def test_plain_diff_applies_like_git_apply(tree: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = cli(["run", "--tree", str(tree), "--rev", "v5.17", *SEED, "--json",
                        "--patch", str(PATCHES / "retry-tail-after-mc.diff")], capsys)
    assert code == 0
    o = json.loads(out)
    assert o["variant"].endswith("(D)") and o["return_value"] == 4096 - 0x960


def test_patch_applies_to_a_bundled_era_source(capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = cli(["run", "E", "--patch", SERIES[0], *SEED, "--json"], capsys)
    assert code == 0
    assert json.loads(out)["mc_count"] == 2


@pytest.mark.parametrize("argv, needle", [
    (["diff", "--tree", "{tree}", "v9.99"], "unknown revision 'v9.99'"),
    (["diff", "--tree", "{tree}", "v5.17", "--file", "arch/x86/lib/nope.S"],
     "v5.17 has no arch/x86/lib/nope.S"),
    (["diff", "--tree", "{tmp}", "v5.17"], "not a git tree"),
    (["diff", "--tree", "{tree}"], "needs revisions"),
    (["run", "--rev", "v5.17", "E"], "--rev needs --tree"),
    (["diff", "--tree", "{tree}", "v5.17", "--patch", "{p1}", "--patch", "{p1}"],
     "does not apply"),
    (["diff", "--tree", "{tree}", "v5.17", "--patch", "{tmp}/nope.mbox"], "no such patch"),
    (["run", "--tree", "{tree}", "--rev", "v5.17", "--patch", "{other}"],
     "does not apply"),
])
def test_bad_tree_input_is_one_line_and_exit_2(argv: list[str], needle: str, tree: Path,
                                               tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    other = tmp_path / "other.diff"
    other.write_text("--- a/arch/x86/lib/copy_user_64.S\n+++ b/arch/x86/lib/copy_user_64.S\n"
                     "@@ -1,2 +1,2 @@\n-no such line\n+other line\n context\n")
    argv = [a.format(tree=tree, tmp=tmp_path, p1=SERIES[0], other=other) for a in argv]
    code, out, err = cli(argv, capsys)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and err.startswith("emu: error: ") and needle in err


def test_generated_patch_turns_real_getuser_into_the_v64_regression(tmp_path: Path,
                                                                      capsys) -> None:  # type: ignore[no-untyped-def]
    """6.4-6.7 getuser.S used plain _ASM_EXTABLE (EX_TYPE_DEFAULT): an #MC there panics under
    the rules of those releases (v5.17's); Debian 6.12's own severity.c (is_copy_from_user()
    first) recovers it."""
    real = debian("6.12", "getuser.S")
    repo = tmp_path / "k"
    (repo / "arch/x86/lib").mkdir(parents=True)
    target = repo / "arch/x86/lib/getuser.S"
    target.write_text(real.read_text())
    git("init", "-q", cwd=repo)
    git("add", "-A", cwd=repo)
    text = target.read_text()
    assert "_ASM_EXTABLE_UA(1b, __get_user_handle_exception)" in text
    target.write_text(text.replace("_ASM_EXTABLE_UA(1b, __get_user_handle_exception)",
                                   "_ASM_EXTABLE(1b, __get_user_handle_exception)"))
    patch = tmp_path / "default-type.diff"
    patch.write_text(git("diff", cwd=repo))
    base = ["run", "debian:6.12", "--file", "arch/x86/lib/getuser.S", "--routine",
            "__get_user_8", "--len", "8", "--poison", "0", "--json"]
    code, out, _ = cli(base, capsys)
    assert code == 0 and json.loads(out)["err"] == -14
    code, out, _ = cli([*base, "--patch", str(patch), "--mce-rules", "v5.17"], capsys)
    assert code == 0
    o = json.loads(out)
    assert o["state"] == "panic" and o["faults"][0]["handler"] == "EX_TYPE_DEFAULT"
    code, out, _ = cli([*base, "--patch", str(patch)], capsys)
    o = json.loads(out)
    assert o["rules"]["mce"] == "2025" and o["faults"][0]["handler"] == "EX_TYPE_DEFAULT"
    assert (code, o["state"], o["err"]) == (0, "returned", -14)
    d = detect(apply_patches(Source(real.read_text(), "getuser.S", str(real)), [str(patch)]).text)
    assert "EX_TYPE_DEFAULT" in d.evidence[0]
    assert real.read_text() == text       # the cached Debian file is unchanged

"""emu check / emu snapshot end to end on project-written sources (era-E.S and variants)."""

from __future__ import annotations

import json
import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from check_helpers import ERA_E, IN_TREE, era_e, git, run_cli, without_function
from ktap import validate
from emu.runs import check
from emu.runs.check import CLASSES

Cap = pytest.CaptureFixture[str]


def check_json(argv: list[str], capsys: Cap) -> tuple[int, dict]:
    code, out, err = run_cli(["check", *argv, "--json"], capsys)
    assert err == ""
    return code, json.loads(out)


def classes(doc: dict) -> dict[str, dict]:
    return {c["class"]: c for c in doc["classes"]}


def run_json(command: str, capsys: Cap) -> dict:
    argv = shlex.split(command)
    assert argv[:2] == ["emu", "run"]
    code, out, _ = run_cli([*argv[1:], "--json"], capsys)
    assert code == 0
    return json.loads(out)


# ---- the extable-type-only change -------------------------------------------------------


def test_type_only_change_is_a_new_mc_panic(sources: dict[str, Path], capsys: Cap) -> None:
    code, doc = check_json([str(sources["base"]), str(sources["type"])], capsys)
    assert code == 1 and doc["exit"] == 1
    assert doc["regressions"] == ["new_mc_panic"]
    f = classes(doc)["new_mc_panic"]
    assert f["cases"] > 0 and f["new"] - f["old"] == f["cases"]
    # all eight loads show up in the static map diff, and the matrix reaches each of them
    assert f["map_sites"] == len(f["sites"]) == 8
    assert {s["insn"].split(",")[0] for s in f["sites"]} == {
        f"movq {d}(%rsi)" if d else "movq (%rsi)" for d in
        ("", "8", "0x10", "0x18", "0x20", "0x28", "0x30", "0x38")}
    for s in f["sites"]:
        assert "extable EX_TYPE_COPY -> EX_TYPE_EFAULT_REG" in s["what"]
        assert s["in_matrix"]
    assert doc["old"]["era"] == doc["new"]["era"] == "E"


def test_reproducers_reproduce(sources: dict[str, Path], capsys: Cap) -> None:
    _, doc = check_json([str(sources["base"]), str(sources["type"])], capsys)
    ex = classes(doc)["new_mc_panic"]["example"]
    new = run_json(ex["command"], capsys)
    old = run_json(ex["old_command"], capsys)
    assert new["state"] == "panic" and new["faults"][-1]["handler"] == "EX_TYPE_EFAULT_REG"
    assert old["state"] == "returned" and old["faults"][0]["handler"] == "EX_TYPE_COPY"
    assert ex["new"].startswith("panic") and ex["old"].startswith("returned")


def test_comment_only_change_exits_0(sources: dict[str, Path], capsys: Cap) -> None:
    code, doc = check_json([str(sources["base"]), str(sources["comment"])], capsys)
    assert code == 0 and doc["regressions"] == []
    assert not any(c["changed"] for c in doc["classes"])
    assert doc["matrix"]["cases_per_side"] > 10000


def test_allow_accepts_the_intended_change(sources: dict[str, Path], capsys: Cap) -> None:
    code, doc = check_json([str(sources["base"]), str(sources["type"]), "--allow",
                            "new_mc_panic"], capsys)
    assert code == 0
    f = classes(doc)["new_mc_panic"]
    assert f["changed"] and f["allowed"] and not f["regression"]


def test_allowing_another_class_does_not_hide_it(sources: dict[str, Path], capsys: Cap) -> None:
    code, _ = check_json([str(sources["base"]), str(sources["type"]), "--allow",
                          "return_changed,mc_count_changed"], capsys)
    assert code == 1


def test_tree_revisions(repo: tuple[Path, dict[str, str]], capsys: Cap) -> None:
    path, sha = repo
    code, doc = check_json(["--tree", str(path), sha["base"], sha["type"]], capsys)
    assert (code, doc["regressions"]) == (1, ["new_mc_panic"])
    cmd = classes(doc)["new_mc_panic"]["example"]["command"]
    assert f"--tree {path} --rev {sha['type']} {IN_TREE}" in cmd
    assert run_json(cmd, capsys)["state"] == "panic"
    code, doc = check_json(["--tree", str(path), sha["type"], sha["comment"]], capsys)
    assert (code, doc["regressions"]) == (0, [])


def test_patch_on_top_of_old(repo: tuple[Path, dict[str, str]], tmp_path: Path,
                             capsys: Cap) -> None:
    path, sha = repo
    patch = tmp_path / "type.diff"
    patch.write_text(git(path, "diff", sha["base"], sha["type"]) + "\n")
    before = patch.read_bytes()
    code, doc = check_json(["--tree", str(path), sha["base"], "--patch", str(patch)], capsys)
    assert (code, doc["regressions"]) == (1, ["new_mc_panic"])
    cmd = classes(doc)["new_mc_panic"]["example"]["command"]
    assert f"--patch {patch}" in cmd and run_json(cmd, capsys)["state"] == "panic"
    assert patch.read_bytes() == before
    # the same change as a mail (git format-patch), on a file outside any tree
    mbox = tmp_path / "0001-type.patch"
    mbox.write_text(git(path, "format-patch", "--stdout", f"{sha['base']}..{sha['type']}"))
    base = tmp_path / "copy_user_64.S"
    base.write_text(git(path, "show", f"{sha['base']}:{IN_TREE}") + "\n")
    code, doc = check_json([str(base), "--patch", str(mbox)], capsys)
    assert (code, doc["regressions"]) == (1, ["new_mc_panic"])


# ---- other classes on real behaviour ---------------------------------------------------


def test_era_d_to_e_takes_fewer_machine_checks_an_improvement(capsys: Cap) -> None:
    # kernel-facts §3/§11: D retries the tail after an #MC (touching the poison again),
    # E returns edx without a retry: fewer machine checks is better, and does not fail
    code, doc = check_json(["D", "E", "--era", "each", "--routine",
                            "copy_user_enhanced_fast_string"], capsys)
    f = classes(doc)["mc_count_changed"]
    assert f["changed"] and f["new"] < f["old"]
    assert f["better"] == f["cases"] > 0 and f["worse"] == 0 and not f["regression"]
    assert "mc_count_changed" in doc["improvements"]
    ex = f["example"]
    assert ex["direction"] == "better" and "#MC 2" in ex["old"] and "#MC 1" in ex["new"]
    assert (doc["old"]["era"], doc["new"]["era"]) == ("D", "E")
    assert code == (1 if doc["regressions"] else 0)
    assert all(c["worse"] for c in doc["classes"] if c["class"] in doc["regressions"])
    code, doc = check_json(["D", "E", "--era", "each", "--routine",
                            "copy_user_enhanced_fast_string", "--strict"], capsys)
    assert code == 1 and "mc_count_changed" in doc["regressions"]


def test_removed_routine_is_neutral_and_fails_only_strict(tmp_path: Path, capsys: Cap) -> None:
    new = tmp_path / "new.S"
    new.write_text(without_function(era_e(), "__copy_user_nocache"))
    code, doc = check_json([str(ERA_E), str(new)], capsys)
    assert code == 0 and doc["regressions"] == [] and doc["verdict"] == "neutral"
    f = classes(doc)["routine_added_or_removed"]
    assert (f["old"], f["new"]) == (4, 3) and f["changed"] and f["neutral"] == 1
    assert f["sites"][0]["routine"] == "__copy_user_nocache"
    assert f["sites"][0]["change"] == "removed"
    code, doc = check_json([str(ERA_E), str(new), "--strict"], capsys)
    assert code == 1 and doc["regressions"] == ["routine_added_or_removed"]


def test_static_map_flags_a_load_the_matrix_never_runs(tmp_path: Path, capsys: Cap) -> None:
    # a helper emu does not know how to call: only the recoverability map sees it
    helper = ("\nSYM_FUNC_START(emu_peek_user)\n\tASM_STAC\n1:\tmovq (%rsi),%rax\n"
              "2:\tASM_CLAC\n\tRET\n\t{entry}\nSYM_FUNC_END(emu_peek_user)\n")
    old, new = tmp_path / "old.S", tmp_path / "new.S"
    old.write_text(era_e() + helper.format(entry="_ASM_EXTABLE_UA(1b, 2b)"))
    new.write_text(era_e() + helper.format(
        entry="_ASM_EXTABLE_TYPE_REG(1b, 2b, EX_TYPE_EFAULT_REG, %rax)"))
    code, doc = check_json([str(old), str(new)], capsys)
    assert code == 1 and doc["regressions"] == ["new_mc_panic"]
    f = classes(doc)["new_mc_panic"]
    assert f["cases"] == 0
    [site] = f["sites"]
    assert site["function"] == "emu_peek_user" and not site["in_matrix"]
    assert site["flag"] == "#MC here now panics"


# ---- output formats ----------------------------------------------------------------------


def test_ktap(sources: dict[str, Path], capsys: Cap) -> None:
    code, out, _ = run_cli(["check", str(sources["base"]), str(sources["type"]), "--ktap"],
                           capsys)
    assert code == 1
    doc = validate(out)
    # one subtest per era x CPU preset, each with one test per class
    assert [t.name for t in doc.subtests] == [f"era E cpu {c}" for c in check.MATRIX_CPUS]
    for t in doc.subtests:
        assert [s.name for s in t.subtests] == list(CLASSES)
    failed = {(t.name, s.name) for t in doc.subtests for s in t.subtests if not s.ok}
    # the unrolled loop is what copy_user_generic() runs on cpu none; every CPU path runs the
    # per-name matrix of every routine, so each subtest sees the new panic
    assert {c for _, c in failed} == {"new_mc_panic"}
    assert all(not t.ok for t in doc.subtests)
    lines = out.splitlines()
    assert lines[-1] == "# Totals: pass:0 fail:4 xfail:0 xpass:0 skip:0 error:0"
    code, out, _ = run_cli(["check", str(sources["base"]), str(sources["type"]), "--ktap",
                            "--allow", "new_mc_panic"], capsys)
    assert code == 0
    doc = validate(out)
    n = list(CLASSES).index("new_mc_panic") + 1
    assert f"  ok {n} new_mc_panic # XFAIL allowed by --allow" in out.splitlines()
    assert all(t.ok for t in doc.subtests)


def test_junit_and_terminal(sources: dict[str, Path], tmp_path: Path, capsys: Cap) -> None:
    xml = tmp_path / "report.xml"
    code, out, err = run_cli(["check", str(sources["base"]), str(sources["type"]),
                              "--junit", str(xml)], capsys)
    assert code == 1 and err == ""
    root = ET.parse(xml).getroot()
    assert root.tag == "testsuites" and root.get("failures") == "1"
    cases = root.findall("./testsuite/testcase")
    assert [c.get("name") for c in cases] == list(CLASSES)
    [failed] = [c for c in cases if c.find("failure") is not None]
    assert failed.get("name") == "new_mc_panic"
    assert "emu run" in (failed.find("failure").text or "")
    # terminal: the class table and a reproducer line that is not wrapped
    assert "REGRESSION" in out and "result: regression (new_mc_panic); exit 1" in out
    [repro] = [ln for ln in out.splitlines() if ln.strip().startswith("reproduce: ")]
    assert repro.strip().endswith("--routine copy_user_generic_unrolled")
    # a second run may replace its own JUnit report
    assert run_cli(["check", str(sources["base"]), str(sources["comment"]), "--junit",
                    str(xml)], capsys)[0] == 0
    assert ET.parse(xml).getroot().get("failures") == "0"


# ---- snapshots ---------------------------------------------------------------------------


def test_snapshot_then_against(sources: dict[str, Path], tmp_path: Path, capsys: Cap) -> None:
    snap = tmp_path / "golden.json"
    code, out, err = run_cli(["snapshot", str(sources["base"]), "-o", str(snap)], capsys)
    assert code == 0 and err == "" and str(snap) in out
    data = json.loads(snap.read_text())
    assert data["format"] == "emu-check-snapshot" and data["era"] == "E"
    code, doc = check_json(["--against", str(snap), str(sources["type"])], capsys)
    assert (code, doc["regressions"]) == (1, ["new_mc_panic"])
    _, direct = check_json([str(sources["base"]), str(sources["type"])], capsys)
    assert classes(doc)["new_mc_panic"]["cases"] == classes(direct)["new_mc_panic"]["cases"]
    assert len(classes(doc)["new_mc_panic"]["sites"]) == 8
    code, doc = check_json(["--against", str(snap), str(sources["comment"])], capsys)
    assert code == 0
    # snapshots are deterministic
    again = tmp_path / "again.json"
    run_cli(["snapshot", str(sources["comment"]), "-o", str(again)], capsys)
    assert json.loads(again.read_text())["cases"] == data["cases"]


def test_snapshot_is_never_overwritten_without_force(sources: dict[str, Path], tmp_path: Path,
                                                     capsys: Cap) -> None:
    snap = tmp_path / "golden.json"
    snap.write_text("precious\n")
    code, _, err = run_cli(["snapshot", str(sources["base"]), "-o", str(snap)], capsys)
    assert code == 2 and "exists; use --force" in err and len(err.splitlines()) == 1
    assert snap.read_text() == "precious\n"
    code, _, _ = run_cli(["snapshot", str(sources["base"]), "-o", str(snap), "--force"], capsys)
    assert code == 0 and json.loads(snap.read_text())["format"] == "emu-check-snapshot"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["golden.json", "base.S", "type.S", "comment.S"])   # no temporary left behind


# ---- bad input: one line, exit 2, nothing overwritten ------------------------------------


@pytest.mark.parametrize("argv, needle", [
    (["check", "{base}", "{type}", "--allow", "new_panic"], "unknown class 'new_panic'"),
    (["check", "{base}", "/nonexistent.S"], "no such file"),
    (["check", "{base}"], "name NEW too"),
    (["check"], "name OLD and NEW"),
    (["check", "{base}", "{type}", "--ktap", "--json"], "choose one"),
    (["check", "--against", "{base}", "{type}"], "not an emu snapshot"),
    (["check", "--against", "{snap}", "{base}", "{type}"], "takes one source"),
    (["check", "--against", "/nonexistent.json", "{type}"], "no such snapshot"),
    (["check", "{base}", "{type}", "--junit", "{base}"], "would overwrite an input"),
    (["check", "{base}", "{type}", "--junit", "{notes}"], "not a JUnit report"),
    (["check", "{base}", "{type}", "--era", "Z"], "unknown --era"),
    (["check", "{base}", "{type}", "--routine", "nope"], "defined in neither"),
    (["check", "--tree", "{dir}", "HEAD~1", "HEAD"], "not a git tree"),
    (["check", "Q", "{type}"], "neither an era"),
    (["check", "{base}", "{broken}"], "broken.S"),
    (["check", "{empty}", "{empty}"], "nothing to compare"),
    (["snapshot", "{empty}", "-o", "{dir}/s.json"], "nothing to record"),
    (["snapshot", "{base}"], "required"),
    (["snapshot", "{base}", "-o", "{dir}/no/such/dir/snap.json"], "cannot write"),
    (["check", "--against", "{oldsnap}", "{type}"], "record it again"),
    (["check", "--against", "{badsnap}", "{type}"], "malformed"),
])
def test_bad_input(argv: list[str], needle: str, sources: dict[str, Path], tmp_path: Path,
                   capsys: Cap) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me\n")
    snap = tmp_path / "snap.json"
    snap.write_text(json.dumps({"format": "emu-check-snapshot",
                                "version": check.SNAPSHOT_VERSION}))
    broken = tmp_path / "broken.S"
    broken.write_text("SYM_FUNC_START(copy_user_generic_unrolled)\n\tmovq %rax,\n")
    d = tmp_path / "plain"
    d.mkdir()
    oldsnap = tmp_path / "old.json"
    oldsnap.write_text(json.dumps({"format": "emu-check-snapshot",
                                   "version": check.SNAPSHOT_VERSION,
                                   "matrix": ["std-0"]}))
    badsnap = tmp_path / "bad.json"
    badsnap.write_text(json.dumps({"format": "emu-check-snapshot",
                                   "version": check.SNAPSHOT_VERSION,
                                   "matrix": check.matrix_json(), "cases": {"x": 1}}))
    empty = tmp_path / "empty.S"
    empty.write_text("#include <linux/linkage.h>\nSYM_FUNC_START(nothing_here)\n\tRET\n"
                     "SYM_FUNC_END(nothing_here)\n")
    subst = {"base": sources["base"], "type": sources["type"], "notes": notes, "snap": snap,
             "dir": d, "broken": broken, "oldsnap": oldsnap, "badsnap": badsnap,
             "empty": empty}
    before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    code, out, err = run_cli([a.format(**subst) for a in argv], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert {p: p.read_bytes() for p in before} == before


def test_era_keys_use_old_rules_by_default(capsys: Cap) -> None:
    # era D's rules for both sides (OLD's detection); NEW's own era is reported
    code, doc = check_json(["D", "E", "--routine", "copy_user_enhanced_fast_string"], capsys)
    assert code == 1
    assert (doc["old"]["era"], doc["new"]["era"], doc["new"]["detected_era"]) == ("D", "D", "E")
    ex = classes(doc)["return_changed"]["example"]
    assert "era-E.S --era D" in ex["command"] and "era-D.S --era D" in ex["old_command"]
    got = run_json(ex["command"], capsys)
    assert ex["new"].startswith(f"returned {got['return_value']} ")


GET_USER = """/* SPDX-License-Identifier: MIT */
/* A __get_user_N pair written for the emu tests from kernel-facts.md section 4b. */
#include <linux/linkage.h>
#include <asm/asm.h>
#include <asm/smap.h>
#include <asm/errno.h>

SYM_FUNC_START(__get_user_1)
	ASM_STAC
1:	movzbl (%rax),%edx
	xorl %eax,%eax
	ASM_CLAC
	RET
SYM_FUNC_END(__get_user_1)

SYM_FUNC_START(__get_user_8)
	ASM_STAC
2:	movq (%rax),%rdx
	xorl %eax,%eax
	ASM_CLAC
	RET
SYM_FUNC_END(__get_user_8)

SYM_CODE_START_LOCAL(.Lget_user_fail)
	ASM_CLAC
	xorl %edx,%edx
	movq $(-EFAULT),%rax
	RET
SYM_CODE_END(.Lget_user_fail)

	{kind}(1b, .Lget_user_fail)
	{kind}(2b, .Lget_user_fail)
"""


def test_get_user_helpers_run_in_the_matrix(tmp_path: Path, capsys: Cap) -> None:
    # the 6.4-6.7 getuser.S shape (b19b74bc99b1, kernel-facts §8): UA -> plain _ASM_EXTABLE
    old, new = tmp_path / "getuser-ua.S", tmp_path / "getuser-default.S"
    old.write_text(GET_USER.replace("{kind}", "_ASM_EXTABLE_UA"))
    new.write_text(GET_USER.replace("{kind}", "_ASM_EXTABLE"))
    code, doc = check_json([str(old), str(new), "--era", "E"], capsys)
    assert code == 1 and doc["regressions"] == ["new_mc_panic"]
    assert doc["matrix"]["routines"] == ["__get_user_1", "__get_user_8"]
    f = classes(doc)["new_mc_panic"]
    assert f["cases"] > 0 and len(f["sites"]) == 2 and all(s["in_matrix"] for s in f["sites"])
    ex = f["example"]
    assert "--routine __get_user_1" in ex["command"]
    new_run, old_run = run_json(ex["command"], capsys), run_json(ex["old_command"], capsys)
    assert new_run["state"] == "panic"
    assert (old_run["state"], old_run["err"]) == ("returned", -14)
    code, doc = check_json([str(old), str(old), "--era", "E"], capsys)
    assert code == 0


def test_json_is_deterministic(sources: dict[str, Path], capsys: Cap) -> None:
    argv = ["check", str(sources["base"]), str(sources["type"]), "--json"]
    assert run_cli(argv, capsys)[1] == run_cli(argv, capsys)[1]

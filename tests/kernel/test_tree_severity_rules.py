"""#MC rules of a source come from its own tree's severity.c (issue 14).

Debian's severity.c files are run-time inputs (scripts/linux-sources extracts them); the
pre-fix shape is made here, at test time, by moving the real file's is_copy_from_user() test
into the fixup-type switch, as mainline had it from v5.16 to v6.14 (kernel-facts §6a).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from debian_sources import debian
from emu.build.rules import SEVERITY_C, read_rules
from emu.build.sources import debian_file
from emu.cli import main as cli_main
from emu.errors import InputError
from emu.kernel.severity import Severity

Cap = pytest.CaptureFixture[str]


def severity_c(version: str) -> str:
    try:
        return debian_file(version, SEVERITY_C).read_text()
    except InputError as e:
        pytest.fail(f"{e} -- run scripts/linux-sources (make test does)", pytrace=False)


def pre_fix(text: str) -> str:
    """The real file with the copy-from-user test moved into the switch (pre-2025 shape)."""
    block = re.search(r"\n[ \t]*if \((\w+)\) \{[^{}]*MCE_IN_KERNEL_COPYIN[^{}]*\}\n", text)
    assert block is not None
    out = text.replace(block.group(0), "\n", 1)
    out, n = re.subn(r"switch \((\w+)\) \{",
                     rf"switch (\1) {{\n\tcase EX_TYPE_UACCESS:\n\t\tif (!{block.group(1)})\n"
                     r"\t\t\treturn IN_KERNEL;\n\t\tfallthrough;", out, count=1)
    assert n == 1
    return out


@pytest.mark.parametrize("version", ["6.1", "6.12"])
def test_debian_severity_c_is_read(version: str) -> None:
    text = severity_c(version)
    rules, why = read_rules(text, f"debian-{version} severity.c")
    # Debian's 6.1.192 and 6.12.118 carry 1a15bb8303b6 (the issue; kernel-facts §6a)
    assert rules is not None and why == ""
    assert rules.severity is Severity.V2025
    assert rules.how.startswith(f"from debian-{version} severity.c: is_copy_from_user()")
    rules, _ = read_rules(pre_fix(text), "x")
    assert rules is not None and rules.severity is Severity.V5_17
    assert "EX_TYPE_UACCESS" in rules.how


def test_not_a_severity_c() -> None:
    assert read_rules("int main(void) { return 0; }", "x.c") == (
        None, "x.c has no error_context() emu can read")


def run_json(argv: list[str], capsys: Cap) -> dict:
    assert cli_main.main(["run", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def git(tree: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tree,
                   check=True, capture_output=True)


def test_tree_revisions_take_their_own_rules(tmp_path: Path, capsys: Cap) -> None:
    """A get_user-style EFAULT_REG load: recovered by the 2025 severity.c, fatal under the
    pre-fix one, at the same copy code; a revision without severity.c keeps the era's."""
    copy = debian("6.1").read_text()
    changed, n = re.subn(r"_ASM_EXTABLE_CPY\((1|2|3|4|9|10|11|12)b, 30b\)",
                         r"_ASM_EXTABLE_TYPE_REG(\1b, 30b, EX_TYPE_EFAULT_REG, %rax)", copy)
    assert n == 8
    tree = tmp_path / "linux"
    (tree / "arch/x86/lib").mkdir(parents=True)
    (tree / "arch/x86/lib/copy_user_64.S").write_text(changed)
    git(tree, "init", "-q")
    git(tree, "add", "-A")
    git(tree, "commit", "-qm", "bare")
    git(tree, "tag", "bare")
    sev = tree / SEVERITY_C
    sev.parent.mkdir(parents=True)
    sev.write_text(severity_c("6.1"))
    git(tree, "add", "-A")
    git(tree, "commit", "-qm", "fixed")
    git(tree, "tag", "fixed")
    sev.write_text(pre_fix(severity_c("6.1")))
    git(tree, "commit", "-qam", "pre-fix")
    git(tree, "tag", "prefix")
    case = ["--len", "64", "--poison", "0", "--cpu", "none",
            "--routine", "copy_user_generic_unrolled"]
    got = {rev: run_json(["--tree", str(tree), "--rev", rev, *case], capsys)
           for rev in ("bare", "fixed", "prefix")}
    assert got["fixed"]["rules"]["mce"] == "2025"
    assert "fixed:severity.c" in got["fixed"]["rules"]["how"]
    assert got["fixed"]["state"] == "returned"
    assert got["prefix"]["rules"]["mce"] == "v5.17"
    assert got["prefix"]["state"] == "panic"
    assert got["bare"]["rules"]["mce"] == "v5.17"
    assert got["bare"]["rules"]["how"].startswith("era E's rules")
    assert "has no " + SEVERITY_C in got["bare"]["rules"]["how"]
    # --mce-rules and --era still decide when given
    over = run_json(["--tree", str(tree), "--rev", "fixed", *case, "--mce-rules", "v5.17"],
                    capsys)
    assert (over["rules"], over["state"]) == ({"mce": "v5.17", "how": "--mce-rules"}, "panic")
    forced = run_json(["--tree", str(tree), "--rev", "fixed", *case, "--era", "E"], capsys)
    assert forced["rules"]["mce"] == "v5.17" and "(--era)" in forced["rules"]["how"]


def test_debian_and_era_key_notes(capsys: Cap) -> None:
    d = run_json(["debian:6.1", "--len", "64"], capsys)
    assert d["rules"]["how"].startswith("from debian-6.1 severity.c")
    e = run_json(["E", "--len", "64"], capsys)
    assert e["rules"] == {"mce": "v5.17", "how": "era E's rules"}

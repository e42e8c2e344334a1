"""emu check on Debian's real kernel files (run-time inputs, never copied into the project).

``make test`` extracts them with scripts/linux-sources; like tests/kernel, a missing file is a
clear failure, not a skip.  The changed side is produced here, in a temporary directory, by
rewriting extable macro names only: the same class of change as 4c132d1d844a / b19b74bc99b1
(kernel-facts.md §8).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from check_helpers import run_cli
from emu.errors import InputError
from emu.build.sources import debian_file

Cap = pytest.CaptureFixture[str]


def debian(version: str, name: str) -> Path:
    try:
        return debian_file(version, f"arch/x86/lib/{name}")
    except InputError as e:
        pytest.fail(f"{e} -- these tests need Debian's kernel sources; `make test` runs "
                    "scripts/linux-sources to install and extract them", pytrace=False)


def check(argv: list[str], capsys: Cap) -> tuple[int, dict]:
    code, out, err = run_cli(["check", *argv, "--json"], capsys)
    assert err == ""
    return code, json.loads(out)


def test_6_1_copy_user_load_type_change(tmp_path: Path, capsys: Cap) -> None:
    real = debian("6.1", "copy_user_64.S")
    text = real.read_text()
    # the unrolled block's eight loads (labels 1-4, 9-12, fixup 30b) become EFAULT_REG
    changed, n = re.subn(r"_ASM_EXTABLE_CPY\((1|2|3|4|9|10|11|12)b, 30b\)",
                         r"_ASM_EXTABLE_TYPE_REG(\1b, 30b, EX_TYPE_EFAULT_REG, %rax)", text)
    assert n == 8
    new = tmp_path / "copy_user_64.S"
    new.write_text(changed)
    # Under Debian 6.1's own #MC rules (its severity.c tests is_copy_from_user() first: the
    # 2025 rules) the EFAULT_REG loads still recover: no panic, but the fixup now reports
    # -EFAULT-style results the contract rejects.
    code, doc = check(["debian:6.1", str(new)], capsys)
    assert doc["old"]["mce_rules"]["mce"] == "2025"
    assert code == 1 and "new_mc_panic" not in doc["regressions"]
    assert {"new_violation", "mc_count_changed"} <= set(doc["regressions"])
    # Under the era's v5.17 rules (mainline 5.17-6.14, before the fix) the same change is the
    # 4c132d1d844a panic.
    code, doc = check(["debian:6.1", str(new), "--era", "E"], capsys)
    assert (code, doc["regressions"]) == (1, ["new_mc_panic"])
    assert doc["old"]["era"] == "E" and doc["old"]["mce_rules"] is None
    f = {c["class"]: c for c in doc["classes"]}["new_mc_panic"]
    assert f["cases"] > 0 and len(f["sites"]) == 8 and all(s["in_matrix"] for s in f["sites"])
    assert "copy_user_generic_unrolled" in f["example"]["command"]
    code, doc = check(["debian:6.1", str(real)], capsys)
    assert (code, doc["regressions"]) == (0, [])


def test_6_12_getuser_default_type(tmp_path: Path, capsys: Cap) -> None:
    real = debian("6.12", "getuser.S")
    changed, n = re.subn(r"_ASM_EXTABLE_UA\(", "_ASM_EXTABLE(", real.read_text())
    assert n > 0
    new = tmp_path / "getuser.S"
    new.write_text(changed)
    # Debian 6.12's own rules (2025: is_copy_from_user() first) recover a MOV load from user
    # memory whatever its extable type: the change is harmless on that kernel ...
    code, doc = check(["debian:6.12", str(new), "--file", "arch/x86/lib/getuser.S"], capsys)
    assert doc["old"]["mce_rules"]["mce"] == "2025"
    assert (code, doc["regressions"]) == (0, [])
    # ... and the v6.4-6.7 panic (b19b74bc99b1) under the era's v5.17 rules
    code, doc = check(["debian:6.12", str(new), "--file", "arch/x86/lib/getuser.S",
                       "--era", "F"], capsys)
    assert (code, doc["regressions"]) == (1, ["new_mc_panic"])
    assert any(r.startswith("__get_user_") for r in doc["matrix"]["routines"])
    f = {c["class"]: c for c in doc["classes"]}["new_mc_panic"]
    assert f["cases"] > 0 and f["sites"]


def test_6_1_to_6_12_compares_what_callers_get(capsys: Cap) -> None:
    # the v6.4 rewrite: no routine name is common to the two files, so every case is a
    # copy_user_generic() case: the unrolled / string / ERMS routine of 6.1 against
    # rep_movs_alternative of 6.12, per CPU preset
    debian("6.1", "copy_user_64.S"), debian("6.12", "copy_user_64.S")
    code, doc = check(["debian:6.1", "debian:6.12"], capsys)
    assert code == 1 and (doc["old"]["era"], doc["new"]["era"]) == ("E", "F")
    assert doc["matrix"]["routines"] == []
    assert doc["matrix"]["callers"] == {
        "none": ["copy_user_generic_unrolled", "rep_movs_alternative"],
        "rep_good": ["copy_user_generic_string", "rep_movs_alternative"],
        "erms": ["copy_user_enhanced_fast_string", "rep_movs_alternative"]}
    assert doc["matrix"]["cases_per_side"] > 2000
    f = {c["class"]: c for c in doc["classes"]}
    assert "mc_count_changed" in doc["regressions"]
    assert f["mc_count_changed"]["worse"] > 0 and f["mc_count_changed"]["new"] > \
        f["mc_count_changed"]["old"]
    assert not f["routine_added_or_removed"]["regression"]
    # the seed scenario on the non-ERMS path: one #MC in 6.1, two in 6.12
    seed = "copy_user_generic()|none|from|4096|0x7e0|0x0|mc|0x960|"
    ex = f["mc_count_changed"]["example"]
    assert ex["direction"] == "worse"
    for cmd, mc in ((ex["old_command"], 1), (ex["command"], 2)):
        argv = cmd.split()[1:]
        code, out, _ = run_cli([*argv, "--json"], capsys)
        assert code == 0 and json.loads(out)["mc_count"] == mc, cmd
    from emu.runs import check as ck
    from emu.build.resolve import parse_spec
    res = ck.run_check(parse_spec("debian:6.1"), parse_spec("debian:6.12"))
    finding = res.findings["mc_count_changed"]
    assert finding.direction[seed] == "worse"
    assert (res.old.results[seed]["mc"], res.new.results[seed]["mc"]) == (1, 2)
    assert (res.old.command(ck.MCase.from_key(seed)).split()[-1],
            res.new.command(ck.MCase.from_key(seed)).split()[-1]) == \
        ("copy_user_generic_unrolled", "rep_movs_alternative")
    # on the ERMS path 6.12 reaches rep movsb for this length: no second #MC
    erms = seed.replace("|none|", "|erms|")
    assert (res.old.results[erms]["mc"], res.new.results[erms]["mc"]) == (1, 1)

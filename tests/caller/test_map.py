"""``emu map`` and ``emu map --diff`` against kernel-facts §6a, §6b and §8.

The regression test: two project-written sources that differ only in the extable type of the
user loads (UACCESS → EFAULT_REG, the class of 4c132d1d844a / 99641e094d6c in v5.17).  Under
the 5.17 rules the load's #MC verdict flips from recovered to panic and the diff must flag it;
under the 2025 rules (1a15bb8303b6: is_copy_from_user first) it must not.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from emu.runs import map as umap
from emu.cli.main import main
from emu.kernel.eras import ERAS
from emu.kernel.severity import Severity
from emu.build.target import Settings, get_target, read_source

FIX = Path(__file__).resolve().parent.parent / "fixtures"
UA = str(FIX / "regress_4c132d1d844a_uaccess.S")
EREG = str(FIX / "regress_4c132d1d844a_efault_reg.S")
GETUSER = str(Path(__file__).resolve().parents[2] / "asm" / "getuser.S")


def cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    rc = main(list(argv), out)
    return rc, out.getvalue()


def test_regression_class_is_flagged_under_517_rules() -> None:
    rc, text = cli("map", "--diff", UA, EREG, "--era", "E", "--json")
    j = json.loads(text)
    flagged = [c for c in j["changes"] if c["flag"]]
    assert rc == 1
    assert [c["flag"] for c in flagged] == ["#MC here now panics"]
    (c,) = flagged
    assert c["before"]["insn"] == c["after"]["insn"] == "movq (%rsi), %r8"
    assert (c["before"]["extable"], c["after"]["extable"]) == ("EX_TYPE_UACCESS",
                                                               "EX_TYPE_EFAULT_REG")
    # the store changed type too, but a store does not consume source poison
    store = [x for x in j["changes"] if x["after"]["access"] == "store"]
    assert store and not store[0]["flag"]


def test_regression_class_is_not_flagged_under_2025_rules() -> None:
    rc, text = cli("map", "--diff", UA, EREG, "--era", "F", "--mce-rules", "2025")
    assert rc == 0
    assert "EX_TYPE_UACCESS -> EX_TYPE_EFAULT_REG" in text and "now panics" not in text


def test_text_diff_marks_the_flagged_line() -> None:
    rc, text = cli("map", "--diff", UA, EREG, "--era", "E")
    flagged = [ln for ln in text.splitlines() if ln.startswith("!")]
    assert rc == 1 and len(flagged) == 1 and "[#MC here now panics]" in flagged[0]


@pytest.mark.parametrize("rules, expected", [
    (Severity.V5_17, {"emu_fault_in_ua": "recovered", "emu_fault_in_default": "panic",
                      "emu_fault_in_efault_reg": "panic"}),
    (Severity.V2025, {"emu_fault_in_ua": "recovered", "emu_fault_in_default": "recovered",
                      "emu_fault_in_efault_reg": "recovered"}),
])
def test_getuser_loads_per_rules(rules: Severity, expected: dict[str, str]) -> None:
    e = ERAS["F"]
    t = get_target(read_source(GETUSER), "getuser.S", Settings(e.encoding, e.ex_layout, rules),
                   frozenset())
    got = {a.function: a.mc for a in umap.build(t.image, rules) if a.access == "load"}
    assert got == expected


@pytest.mark.parametrize("era, verdict", [("A", "panic"), ("C", "recovered"), ("D", "recovered"),
                                          ("E", "recovered"), ("F", "recovered")])
def test_copy_loads_per_era(era: str, verdict: str) -> None:
    rc, text = cli("map", era, "--json")
    rows = json.loads(text)["accesses"]
    loads = [r for r in rows if r["access"] != "store"]
    assert rc == 0 and loads
    assert {r["mc"] for r in loads} == {verdict}
    assert all(r["extable"] for r in rows)          # every user access has an entry
    assert all(r["mc"] == "store" for r in rows if r["access"] == "store")


def test_a_to_c_flags_the_510_recovery() -> None:
    rc, text = cli("map", "--diff", "A", "C", "--json")
    flags = {c["flag"] for c in json.loads(text)["changes"]}
    assert rc == 0 and flags == {"#MC here now recovered", ""}


def test_fsrm_inline_rep_movsb_is_mapped() -> None:
    rc, text = cli("map", "F", "--cpu", "fsrm", "--routine", "copy_user_generic", "--json")
    (row,) = json.loads(text)["accesses"]
    assert row["insn"].startswith("rep movsb") and row["extable"] == "EX_TYPE_UACCESS"


@pytest.mark.parametrize("argv", [
    ["map"],
    ["map", "E", "--diff", "A", "B"],
    ["map", "nosuch.S"],
    ["map", "E", "--routine", "nosuch"],
    ["map", "E", "--mce-rules", "7.0"],
])
def test_bad_map_input(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("src", [UA, EREG])
@pytest.mark.parametrize("rules", ["v5.17", "2025"])
def test_map_verdict_matches_an_emulated_mc(src: str, rules: str) -> None:
    # The static verdict for the load must be what the machine does when the load really
    # takes an #MC (word 1 of a 64-byte fetch is poisoned).
    rc, text = cli("map", src, "--era", "E", "--mce-rules", rules, "--json")
    (load,) = [r for r in json.loads(text)["accesses"] if r["access"] == "load"]
    rc2, text2 = cli("run", src, "--era", "E", "--mce-rules", rules, "--routine",
                     "emu_fetch_words", "--convention", "copy", "--len", "64", "--poison", "8",
                     "--json")
    run = json.loads(text2)
    assert rc == rc2 == 0 and run["mc_count"] == 1
    assert run["state"] == {"panic": "panic", "recovered": "returned"}[load["mc"]]

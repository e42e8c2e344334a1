"""The command line end to end: real output for good input, one line and exit 2 for bad input."""

from __future__ import annotations

import io
import json
import re

import pytest

from emu.cli.main import main
from tests.conftest import EXAMPLES


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    out = io.StringIO()
    code = main(argv, out)
    return code, out.getvalue(), capsys.readouterr().err


def test_run_json_reports_fault_fixup_and_return(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["run", str(EXAMPLES), "--routine", "demo_unrolled_copy", "--convention", "copy",
                            "--len", "4096", "--src-align", "0x7e0", "--poison", "0x960",
                            "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["state"] == "returned"
    # the line at source offset 0x960 sits in block 37: blocks 37..63 are left
    assert doc["return_value"] == 4096 - 37 * 64
    [fault] = doc["faults"]
    assert fault["kind"] == "mc" and fault["offset"] == 0x960
    # the fifth load of the block (offset 4*8) is the first to touch the line
    assert fault["where"] == "demo_unrolled_copy+0x1e"
    assert fault["fixup_where"] == "demo_unrolled_copy+0x73"
    assert fault["handler"] == "EX_TYPE_UACCESS"


def test_same_command_gives_byte_identical_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["diff", "--len", "300", "--poison", "100", "--unmapped", "250", "--json"]
    assert run_cli(argv, capsys)[1] == run_cli(argv, capsys)[1]


def test_diff_defaults_to_the_whole_catalog(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["diff", "--len", "128", "--poison", "64", "--json"], capsys)
    assert code == 0
    assert [r["variant"][0] for r in json.loads(out)["rows"]] == list("ABCDEF")


def test_table_output_names_every_era(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["diff", "--len", "4096", "--src-align", "0x7e0", "--poison",
                            "0x960", "--cpu", "erms"], capsys)
    assert code == 0
    for era in "ABCDEF":   # a table row, or the heading of a stacked row (narrow output)
        assert re.search(rf"^(│ )?{era} ", out, re.M), era
    assert "copy_user_enhanced_fast_string" in out


@pytest.mark.parametrize("argv, needle", [
    (["run", "Q"], "neither an era"),
    (["run", "/nonexistent.S", "--routine", "x"], "no such file"),
    (["run", str(EXAMPLES)], "--routine is required"),
    (["run", str(EXAMPLES), "--routine", "nope"], "no symbol 'nope'"),
    (["run", "E", "--len", "-5"], "negative"),
    (["run", "E", "--len", "100", "--poison", "100"], "outside"),
    (["run", "E", "--cpu", "AVX512"], "unknown CPU feature"),
    (["run", "E", "--routine", "rep_movs_alternative"], "era E has no routine"),
    (["run", "E", "--len", "abc"], "not a number"),
    (["diff", "--era", "Z", str(EXAMPLES)], "unknown era"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_line_and_exit_2(argv: list[str], needle: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(argv, capsys)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("emu: error: ")
    assert needle in err
    assert "Traceback" not in err


def test_malformed_assembly_names_file_and_line(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.S"
    bad.write_text("#include <asm/asm.h>\nSYM_FUNC_START(f)\n\tmovq %rax,\n\tret\n")
    code, _, err = run_cli(["run", str(bad), "--routine", "f"], capsys)
    assert code == 2
    assert "bad.S:3:" in err

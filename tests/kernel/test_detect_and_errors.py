"""Era detection on emu's own era sources, --era forcing, and errors that name the macro."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from emu.cli.main import main
from emu.build.detect import detect

from debian_sources import debian

ROOT = Path(__file__).resolve().parents[2]
SEED = ["--src-align", "0x7e0", "--poison", "0x960", "--json"]


@pytest.mark.parametrize("era, detected", [("A", "A"), ("B", "C"), ("C", "C"), ("D", "D"),
                                           ("E", "E"), ("F", "F")])
def test_bundled_era_sources_are_recognised(era: str, detected: str) -> None:
    # B and C differ only in a comment, so B's file reads as C (same rules)
    assert detect((ROOT / "asm" / f"era-{era}.S").read_text()).era.key == detected


def test_a_comment_does_not_count_but_code_does() -> None:
    text = (ROOT / "asm" / "era-D.S").read_text()
    head = "SYM_CODE_START_LOCAL(.Lcopy_user_handle_tail)"
    assert head in text and detect(text).era.key == "D"
    commented = text.replace(head, head + "\n\t/* cmp $X86_TRAP_MC,%eax ; je 3f */")
    assert detect(commented).era.key == "D"
    coded = text.replace(head, head + "\n\tcmp $X86_TRAP_MC,%eax\n\tje 2f")
    assert detect(coded).era.key == "E"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    out = io.StringIO()
    code = main(argv, out)
    return code, out.getvalue(), capsys.readouterr().err


def test_era_flag_forces_the_rules(capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run(["run", "debian:6.1", *SEED], capsys)
    assert code == 0 and json.loads(out)["variant"].endswith("(E)")
    code, out, _ = run(["run", "debian:6.1", "--era", "C", *SEED], capsys)
    o = json.loads(out)
    assert o["variant"].endswith("(C)")
    # the 6.1 handle_tail still tests eax for 18 first; the C-era handler pointer encoding
    # and ex_handler_copy give the same trap number, so the file's own code decides
    assert o["return_value"] == 4096 - 0x940 and o["faults"][0]["handler"] == "ex_handler_copy"


def test_unknown_macro_is_named_with_file_and_line(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    lines = debian("6.1").read_text().splitlines()
    n = next(i for i, ln in enumerate(lines) if "_ASM_EXTABLE_CPY(1b," in ln)
    lines[n] = lines[n].replace("_ASM_EXTABLE_CPY", "_ASM_EXTABLE_FOO")
    bad = tmp_path / "copy_user_64.S"
    bad.write_text("\n".join(lines) + "\n")
    code, out, err = run(["run", str(bad)], capsys)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert f"copy_user_64.S:{n + 1}: unknown macro '_ASM_EXTABLE_FOO'" in err


def test_unknown_gas_macro_is_named_in_its_original_case(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "m.S"
    src.write_text("#include <linux/linkage.h>\nSYM_FUNC_START(f)\n\tEMU_NO_SUCH_MACRO %rax\n"
                   "\tret\nSYM_FUNC_END(f)\n")
    code, _, err = run(["run", str(src), "--routine", "f"], capsys)
    assert code == 2 and "m.S:3: unknown macro 'EMU_NO_SUCH_MACRO'" in err


def test_missing_kernel_header_is_named(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "h.S"
    src.write_text("#include <asm/emu_no_such_header.h>\nnop\n")
    code, _, err = run(["run", str(src), "--routine", "f"], capsys)
    assert code == 2
    assert "h.S:1: kernel header <asm/emu_no_such_header.h> is not provided by emu" in err

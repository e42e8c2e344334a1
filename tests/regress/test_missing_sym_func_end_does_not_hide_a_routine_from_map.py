"""A routine without ``SYM_FUNC_END`` is mapped like one with it.

Issue 17, class 9: ``SYM_FUNC_END`` is what emits ``.type`` and ``.size``; without it the
routine's symbol is a global label of size 0, so ``emu run`` ran it but ``emu map`` read
0 bytes of it (0 accesses) and ``emu map --diff`` said "no change" for a pair that differs
in extable type.  An untyped, unsized global code label is now a function that extends to
the next function or global symbol (``Image.functions`` / ``Image.extent``).  The inputs are
the project's regress_4c132d1d844a fixtures with their ``SYM_FUNC_END`` lines removed, and a
two-routine file of ours.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emu.cli.main import main

FIX = Path(__file__).resolve().parents[1] / "fixtures"
TWO = """#include <linux/linkage.h>
#include <asm/asm.h>
#include <asm/smap.h>

SYM_FUNC_START(emu_first)
	ASM_STAC
1:	movq (%rsi),%r8
2:	movq %r8,(%rdi)
	xorl %eax,%eax
3:	ASM_CLAC
	RET
	_ASM_EXTABLE_UA(1b, 3b)
	_ASM_EXTABLE_UA(2b, 3b)

SYM_FUNC_START(emu_second)
	ASM_STAC
4:	movb (%rsi),%al
5:	movb %al,(%rdi)
	xorl %eax,%eax
6:	ASM_CLAC
	RET
	_ASM_EXTABLE_UA(4b, 6b)
	_ASM_EXTABLE_UA(5b, 6b)
"""


def without_end(name: str, tmp: Path) -> Path:
    p = tmp / name
    p.write_text("".join(ln for ln in (FIX / name).read_text().splitlines(keepends=True)
                         if "SYM_FUNC_END" not in ln))
    return p


def map_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:  # type: ignore[type-arg]
    capsys.readouterr()
    assert main(["map", *args, "--json"]) in (0, 1)
    return json.loads(capsys.readouterr().out)


def test_map_sees_the_routine_as_with_sym_func_end(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    name = "regress_4c132d1d844a_uaccess.S"
    whole = map_json(capsys, str(FIX / name), "--era", "E")
    cut = map_json(capsys, str(without_end(name, tmp_path)), "--era", "E")
    assert len(whole["accesses"]) == 2
    assert cut["accesses"] == whole["accesses"]


def test_map_diff_flags_the_extable_change(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    a = without_end("regress_4c132d1d844a_uaccess.S", tmp_path)
    b = without_end("regress_4c132d1d844a_efault_reg.S", tmp_path)
    capsys.readouterr()
    assert main(["map", "--diff", str(a), str(b), "--era", "E"]) == 1
    out = capsys.readouterr().out
    assert "EX_TYPE_UACCESS -> EX_TYPE_EFAULT_REG; #MC recovered -> panic" in out
    assert "no change" not in out


def test_each_unsized_routine_ends_where_the_next_begins(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    p = tmp_path / "two.S"
    p.write_text(TWO)
    got = map_json(capsys, str(p), "--era", "E")["accesses"]
    assert [(x["function"], x["where"]) for x in got] == [
        ("emu_first", "emu_first+0x3"), ("emu_first", "emu_first+0x6"),
        ("emu_second", "emu_second+0x3"), ("emu_second", "emu_second+0x5")]

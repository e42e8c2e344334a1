"""Calling conventions as data (emu.kernel.conventions) and the oracles of the conventions
that are not copies: a zero-fill for clear_user, the stored value for put_user.

The routines below are written for these tests (kernel style, not kernel text): a correct
clear and put_user, and wrong ones with one known defect each, so the oracles are checked
against behaviour known by construction.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from emu.build.target import Settings, Target
from emu.build.target import assemble_image
from emu.cli.main import main
from emu.core.machine import Buffers
from emu.errors import UsageError
from emu.kernel import conventions as cv
from emu.kernel.extable import Encoding
from emu.kernel.severity import Severity

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = str(ROOT / "asm" / "examples" / "test_routines.S")

SOURCE = """#include <linux/linkage.h>
#include <asm/asm.h>
#include <asm/errno.h>
#include <asm/smap.h>

/* clear: rdi = address, rcx = length, rax = 0; rcx = bytes not cleared */
SYM_FUNC_START(t_clear)
1:	rep stosb
2:	RET
	_ASM_EXTABLE_UA(1b, 2b)
SYM_FUNC_END(t_clear)

/* claims success after a fault */
SYM_FUNC_START(t_clear_lies)
1:	rep stosb
2:	xorl %ecx,%ecx
	RET
	_ASM_EXTABLE_UA(1b, 2b)
SYM_FUNC_END(t_clear_lies)

/* also clears the byte before the buffer */
SYM_FUNC_START(t_clear_before)
	movb $0,-1(%rdi)
1:	rep stosb
2:	RET
	_ASM_EXTABLE_UA(1b, 2b)
SYM_FUNC_END(t_clear_before)

/* put_user, 8 bytes: rax = value, rcx = address; ecx = 0 / -EFAULT; its own STAC */
SYM_FUNC_START(t_put8)
	ASM_STAC
1:	movq %rax,(%rcx)
	xorl %ecx,%ecx
	ASM_CLAC
	RET
2:	movl $-EFAULT,%ecx
	ASM_CLAC
	RET
	_ASM_EXTABLE_UA(1b, 2b)
SYM_FUNC_END(t_put8)

/* stores only the low half */
SYM_FUNC_START(t_put8_short)
	ASM_STAC
1:	movl %eax,(%rcx)
	xorl %ecx,%ecx
	ASM_CLAC
	RET
2:	movl $-EFAULT,%ecx
	ASM_CLAC
	RET
	_ASM_EXTABLE_UA(1b, 2b)
SYM_FUNC_END(t_put8_short)

/* returns 0 after the fault */
SYM_FUNC_START(t_put8_lies)
	ASM_STAC
1:	movq %rax,(%rcx)
2:	xorl %ecx,%ecx
	ASM_CLAC
	RET
	_ASM_EXTABLE_UA(1b, 2b)
SYM_FUNC_END(t_put8_lies)
"""


@pytest.fixture(scope="module")
def t() -> Target:
    s = Settings(Encoding.DATA, 517, Severity.V5_17)
    return Target(assemble_image(SOURCE, "conv.S", s, frozenset({"SMAP"})), s,
                  frozenset({"SMAP"}))


def test_every_known_routine_has_one_of_the_conventions() -> None:
    for name, r in cv.KNOWN.items():
        assert r.name == name and cv.CONVENTIONS[r.convention.name] is r.convention
        regs = [reg for reg, _ in r.convention.args]
        assert len(set(regs)) == len(regs)
        assert (r.size in cv.SIZES) == r.convention.sized


def test_an_unknown_routine_is_refused_with_the_conventions() -> None:
    with pytest.raises(UsageError) as e:
        cv.routine("my_copy")
    assert all(name in str(e.value) for name in cv.CONVENTIONS) and "--convention" in str(e.value)
    assert cv.routine("my_copy", "clear").convention is cv.CLEAR
    with pytest.raises(UsageError, match="takes the copy convention"):
        cv.routine("copy_user_generic_unrolled", "clear")
    assert cv.routine("clear_user_erms", "clear") is cv.KNOWN["clear_user_erms"]
    with pytest.raises(UsageError, match="unknown --convention"):
        cv.routine("x", "memcpy")


def test_clear_convention_registers_match_the_facts() -> None:
    regs = dict(cv.CLEAR.registers(dst=1, src=2, length=3, user=4))
    assert regs == {"rdi": 4, "rcx": 3, "rax": 0}
    assert cv.CLEAR.caller_stac and cv.CLEAR.result == "rcx"
    put = dict(cv.PUT_USER.registers(dst=1, src=2, length=8, user=4, value=5))
    assert put == {"rax": 5, "rcx": 4} and cv.PUT_USER.result == "ecx"


def test_clear_oracle(t: Target) -> None:
    r = t.routine_for("t_clear", convention="clear")
    ok = t.call(r, Buffers(length=300, src_align=0x7E3))
    assert (ok.return_value, ok.bytes_copied, ok.written_outside, ok.verdict) == (0, 300, 0,
                                                                                   "ok")
    pf = t.call(r, Buffers(length=300, src_align=0xF00, unmapped=(0x100,)))
    assert (pf.return_value, pf.bytes_copied, pf.verdict, pf.pf_count) == (300 - 0x100, 0x100, "ok", 1)
    mc = t.call(r, Buffers(length=300, poison=(0x40,)))
    assert (mc.return_value, mc.mc_count, mc.verdict) == (0, 0, "ok")     # stores: no #MC
    lies = t.call(t.routine_for("t_clear_lies", convention="clear"),
                  Buffers(length=300, src_align=0xF00, unmapped=(0x100,)))
    assert (lies.return_value, lies.bytes_copied, lies.verdict) == (0, 0x100,
                                                                    "zero_with_missing")
    before = t.call(t.routine_for("t_clear_before", convention="clear"),
                    Buffers(length=300, src_align=0x10))
    assert (before.written_outside, before.verdict) == (1, "write_outside_buffer")


def test_put_user_oracle(t: Target) -> None:
    r = t.routine_for("t_put8", convention="put_user")
    assert r.size is None                       # unknown by name: the size is --len's
    ok = t.call(r, Buffers(length=8, src_align=0x7E0))
    assert (ok.err, ok.value == ok.expected != ok.before, ok.verdict) == (0, True, "ok")
    straddle = t.call(r, Buffers(length=8, src_align=0xFFC, unmapped=(4,)))
    assert (straddle.err, straddle.value == straddle.before, straddle.verdict) == (
        -14, True, "ok")
    short = t.call(t.routine_for("t_put8_short", convention="put_user"), Buffers(length=8))
    assert (short.err, short.verdict) == (0, "wrong_value")
    lies = t.call(t.routine_for("t_put8_lies", convention="put_user"),
                  Buffers(length=8, unmapped=(0,)))
    assert (lies.err, lies.verdict) == (0, "wrong_value")
    with pytest.raises(UsageError, match="1, 2, 4 or 8"):
        t.call(r, Buffers(length=3))
    with pytest.raises(UsageError, match="--direction does not apply"):
        t.call(r, Buffers(length=8, direction="to"))
    with pytest.raises(UsageError, match="emu run and emu check run it"):
        t.run(r, Buffers(length=8))


def test_cli_refuses_an_unknown_routine_and_takes_a_convention(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", EXAMPLES, "--routine", "demo_movsb", "--len", "64"], io.StringIO()) == 2
    err = capsys.readouterr().err
    assert err.startswith("emu: error: ") and err.count("\n") == 1
    assert all(name in err for name in cv.CONVENTIONS)
    out = io.StringIO()
    assert main(["run", EXAMPLES, "--routine", "demo_movsb", "--convention", "copy", "--len",
                 "64", "--json"], out) == 0
    doc = json.loads(out.getvalue())
    assert (doc["convention"], doc["verdict"]) == ("copy", "ok")
    assert main(["run", "E", "--routine", "copy_user_generic_string", "--convention",
                 "put_user"], io.StringIO()) == 2
    assert "takes the copy convention" in capsys.readouterr().err
    assert main(["run", "E", "--convention", "copy"], io.StringIO()) == 2
    assert "--convention applies to a routine named with --routine" in capsys.readouterr().err


def test_the_readme_table_is_the_conventions_table() -> None:
    """README's "Calling conventions" table: one row per convention, registers as
    ``Convention.describe()`` spells them."""
    text = (ROOT / "README.md").read_text()
    table = text.split("<!-- conventions -->", 1)[1].split("\n\n", 1)[0]
    rows = [line.split(" | ") for line in table.strip().splitlines()[2:]]
    got = {r[0].strip("| `"): r[1].strip("`") for r in rows}
    assert got == {c.name: c.describe() for c in cv.CONVENTIONS.values()}

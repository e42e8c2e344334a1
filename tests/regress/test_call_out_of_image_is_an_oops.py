"""Regression: a call to a function outside the image (e.g. copy_mc_fragile_handle_tail, which
is C) ended the run with an EmulationError, because Unicorn stops with UC_ERR_INSN_INVALID on
the ud2 stub instead of raising #UD.  It is kernel behaviour to report: an oops naming the
function.  Found by the silicon differential (tests/silicon)."""

from __future__ import annotations

from emu.kernel.eras import Routine
from emu.kernel.extable import Encoding
from emu.core.machine import Buffers, State
from emu.kernel.severity import Severity
from emu.build.target import Settings, get_target

SRC = """#include <linux/linkage.h>
#include <asm/asm.h>
SYM_FUNC_START(callout)
	call some_c_helper
	RET
SYM_FUNC_END(callout)
SYM_FUNC_START(bad_opcode)
	ud2
SYM_FUNC_END(bad_opcode)
"""


def target():  # type: ignore[no-untyped-def]
    return get_target(SRC, "callout.S", Settings(Encoding.DATA, 517, Severity.V5_17),
                      frozenset())


def test_call_out_of_the_image_is_an_oops_naming_the_callee() -> None:
    o = target().run(Routine("callout"), Buffers(length=8))
    assert o.state is State.OOPS
    assert "some_c_helper" in o.message
    assert [f.kind for f in o.faults] == ["ud"]


def test_invalid_opcode_is_an_oops() -> None:
    o = target().run(Routine("bad_opcode"), Buffers(length=8))
    assert o.state is State.OOPS and "invalid opcode" in o.message

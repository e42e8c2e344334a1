"""Regression: when a hook raised (e.g. the policy meeting a fixup type emu has no model of),
the pages that run had dirtied were not restored, so the next case on the same machine started
from a modified destination buffer."""

from __future__ import annotations

import pytest

from emu.kernel.eras import Routine
from emu.errors import EmulationError
from emu.core.machine import Buffers, Call
from emu.build.target import Target


def test_next_case_is_clean_after_a_hook_error(demo: Target) -> None:
    r = Routine("demo_movsb")
    short = Buffers(length=4096, src_align=3, poison=(100,))
    before = demo.run(r, short)                    # copies 61 bytes, stops at the line

    def broken(cpu, event):  # type: ignore[no-untyped-def]
        raise EmulationError("policy failure")

    bufs = Buffers(length=4096, src_align=3, poison=(3000,))
    call = Call(demo.image.symbol("demo_movsb").addr,
                (("rdi", bufs.dst), ("rsi", bufs.src), ("rdx", bufs.length), ("rax", 0)))
    with pytest.raises(EmulationError):
        demo.machine.run(call, bufs, broken)       # ~3000 bytes stored before the #MC
    # the same short copy again: it dirties the destination's first page, so any byte the
    # broken run left there would show up as written past the copied prefix
    after = demo.run(r, short)
    assert after == before
    assert after.written_beyond == 0 and after.verdict == "ok"

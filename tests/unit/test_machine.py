"""The machine's fault semantics (unicorn-notes §1-§2), pinned on the project's test routines.

Each test states the precise architectural state the CPU must show at the fault: RIP at the
faulting instruction, rep counters for completed iterations only, nothing of the faulting
element stored, the faulting load's destination register unwritten.
"""

from __future__ import annotations

import copy

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from emu.core import layout as L
from emu.kernel.eras import Routine
from emu.errors import UsageError
from emu.core.machine import Buffers, Call, FaultKind, Halt, Redirect, State
from emu.build.target import Target


def raw_run(t: Target, name: str, bufs: Buffers, **kw):  # type: ignore[no-untyped-def]
    entry = t.image.symbol(name).addr
    call = Call(entry, (("rdi", bufs.dst), ("rsi", bufs.src), ("rdx", bufs.length), ("rax", 0)))
    return t.machine.run(call, bufs, t.kernel, **kw)


def label_addr(t: Target, name: str, mnemonic_bytes: bytes) -> int:
    """Address of the first occurrence of an instruction encoding inside a function."""
    sym = t.image.symbol(name)
    code = t.image.read(sym.addr, sym.size)
    i = code.index(mnemonic_bytes)
    return sym.addr + i


@given(off=st.integers(0, 4095), align=st.integers(0, 63))
@example(off=0, align=0).via("first byte")
@example(off=4095, align=0).via("last byte")
@example(off=0xFFF - 0x7E0, align=0x20).via("page boundary - 1")
def test_rep_movsb_stops_at_the_poisoned_byte(demo: Target, off: int, align: int) -> None:
    bufs = Buffers(length=4096, src_align=align, poison=(off,))
    raw = raw_run(demo, "demo_movsb", bufs)
    line_off = ((bufs.src + off) & ~63) - bufs.src
    first = max(line_off, 0)
    rec = raw.faults[0]
    regs = dict(rec.regs_before)
    assert rec.event.kind is FaultKind.MC
    assert rec.event.rip == label_addr(demo, "demo_movsb", b"\xf3\xa4")
    assert regs["rcx"] == 4096 - first            # iterations done = bytes before the line
    assert regs["rsi"] == bufs.src + first
    assert regs["rdi"] == bufs.dst + first
    assert raw.state is State.RETURNED
    assert dict(raw.regs)["rax"] & 0xFFFFFFFF == 4096 - first
    dst = raw.dst_window[L.PAGE:L.PAGE + 4096]
    src = raw.src_window[align:align + 4096]
    assert dst[:first] == src[:first]
    assert set(dst[first:]) == {0xFF}


@given(off=st.integers(0, 4095))
@example(off=7)
@example(off=8)
def test_rep_movsq_stops_at_the_qword_touching_the_line(demo: Target, off: int) -> None:
    bufs = Buffers(length=4096, src_align=4, poison=(off,))
    raw = raw_run(demo, "demo_movsq", bufs)
    line = (bufs.src + off) & ~63
    # the first qword (src+8k .. src+8k+7) overlapping the line
    k = max(0, (line - bufs.src - 7 + 7) // 8) if line > bufs.src else 0
    while bufs.src + 8 * k + 8 <= line:
        k += 1
    rec = raw.faults[0]
    regs = dict(rec.regs_before)
    assert rec.event.rip == label_addr(demo, "demo_movsq", b"\xf3\x48\xa5")
    assert regs["rcx"] == 512 - k
    assert regs["rsi"] == bufs.src + 8 * k
    assert dict(raw.regs)["rax"] & 0xFFFFFFFF == 4096 - 8 * k
    assert raw.dst_window[L.PAGE + 8 * k] == 0xFF        # the faulting qword was not stored


def test_eight_byte_load_straddling_into_the_line_faults(demo: Target) -> None:
    # src at page offset 60: the qword at src covers bytes 60..67, the line starts at 64.
    bufs = Buffers(length=8, src_align=60, poison=(4,))
    raw = raw_run(demo, "demo_straddle", bufs)
    rec = raw.faults[0]
    assert rec.event.kind is FaultKind.MC
    assert rec.event.address == bufs.src + 4                # the first poisoned byte
    assert dict(rec.regs_before)["r8"] == 0x1111111111111111  # the load did not complete
    assert dict(raw.regs)["rax"] & 0xFFFFFFFF == 8
    assert set(raw.dst_window[L.PAGE:L.PAGE + 8]) == {0xFF}


def test_load_ending_just_before_the_line_does_not_fault(demo: Target) -> None:
    # src at page offset 48: the load covers 48..55; the poisoned line 64..127 is not touched
    bufs = Buffers(length=24, src_align=48, poison=(16,))
    raw = raw_run(demo, "demo_straddle", bufs)
    assert raw.faults == ()
    assert raw.state is State.RETURNED
    # poison in the load's own line (byte 63 = offset 15) does fault
    raw = raw_run(demo, "demo_straddle", Buffers(length=16, src_align=48, poison=(15,)))
    assert raw.faults[0].event.kind is FaultKind.MC


def test_store_to_a_poisoned_line_does_not_fault(demo: Target) -> None:
    bufs = Buffers(length=256, poison=(0, 64, 128, 192))
    raw = raw_run(demo, "demo_store_src", bufs)
    assert raw.state is State.RETURNED
    assert raw.faults == ()


def test_page_fault_on_a_store_to_user(demo: Target) -> None:
    bufs = Buffers(direction="to", length=4096, dst_align=0x100, unmapped=(0xF00,))
    raw = raw_run(demo, "demo_movsb", bufs)
    rec = raw.faults[0]
    assert rec.event.kind is FaultKind.PF
    assert rec.event.address == (bufs.dst + 0xF00) & ~0xFFF   # CR2: first byte of the hole
    assert dict(rec.regs_before)["rcx"] == 4096 - 0xF00
    assert isinstance(rec.resolution, Redirect)
    assert dict(raw.regs)["rax"] & 0xFFFFFFFF == 4096 - 0xF00


def test_redirect_to_the_fixup_continues_the_same_run(demo: Target) -> None:
    bufs = Buffers(length=200, poison=(100,))
    raw = raw_run(demo, "demo_unrolled_copy", bufs)
    rec = raw.faults[0]
    assert isinstance(rec.resolution, Redirect)
    assert rec.resolution.rip == demo.image.extable.search(rec.event.rip).fixup
    assert raw.state is State.RETURNED
    # block 1 (64..127) holds the poison: 64 bytes of it plus the 8-byte tail are left
    assert dict(raw.regs)["rax"] & 0xFFFFFFFF == 200 - 64


def test_trap_number_is_written_by_fault_type_handlers() -> None:
    from tests.conftest import demo_target
    from emu.kernel.extable import Encoding
    from emu.kernel.severity import Severity
    t = demo_target(Encoding.HANDLER, Severity.V5_9, 516)
    raw = raw_run(t, "demo_trapnr", Buffers(length=100, poison=(50,)))
    assert raw.state is State.RETURNED              # ≤ v5.9: ex_handler_fault recovers
    assert dict(raw.regs)["rax"] == 18              # ax = X86_TRAP_MC
    raw = raw_run(t, "demo_trapnr", Buffers(length=100, unmapped=(50,)))
    assert dict(raw.regs)["rax"] == 14              # ax = X86_TRAP_PF


def test_no_entry_is_oops_for_pf_and_panic_for_mc(demo: Target) -> None:
    raw = raw_run(demo, "demo_no_entry", Buffers(length=100, unmapped=(0,)))
    assert raw.state is State.OOPS and "unable to handle page fault" in raw.message
    raw = raw_run(demo, "demo_no_entry", Buffers(length=100, poison=(50,)))
    assert raw.state is State.PANIC and "Fatal local machine check" in raw.message
    assert isinstance(raw.faults[0].resolution, Halt)


def test_runaway_loop_is_hang(demo: Target) -> None:
    raw = raw_run(demo, "demo_runaway", Buffers(length=10), budget=20_000)
    assert raw.state is State.HANG


def test_fixup_that_faults_forever_is_hang(demo: Target) -> None:
    raw = raw_run(demo, "demo_refault", Buffers(length=10, poison=(0,)))
    assert raw.state is State.HANG
    assert "faults again forever" in raw.message


def test_user_access_without_stac_is_smap_violation(demo: Target) -> None:
    raw = raw_run(demo, "demo_no_stac", Buffers(length=64))
    assert raw.state is State.SMAP_VIOLATION
    assert raw.faults[0].event.kind is FaultKind.PF


def test_cases_do_not_leak_into_each_other(demo: Target) -> None:
    """A reused machine gives the same result before and after other cases."""
    bufs = Buffers(length=512, src_align=3, poison=(200,))
    first = demo.run(Routine("demo_unrolled_copy"), bufs)
    demo.run(Routine("demo_movsb"), Buffers(length=4096, unmapped=(100,)))
    demo.run(Routine("demo_movsq"), Buffers(length=4096, poison=(1, 3000)))
    assert demo.run(Routine("demo_unrolled_copy"), bufs) == first
    clean = demo.run(Routine("demo_unrolled_copy"), Buffers(length=512, src_align=3))
    assert clean.faults == () and clean.return_value == 0 and clean.bytes_copied == 512


@pytest.mark.parametrize("kw, msg", [
    ({"length": -1}, "negative"),
    ({"length": L.MAX_SPAN + 1}, "exceeds"),
    ({"length": 100, "src_align": 4096}, "alignment"),
    ({"length": 100, "poison": (100,)}, "outside"),
    ({"length": 100, "unmapped": (-1,)}, "outside"),
    ({"direction": "sideways"}, "direction"),
])
def test_impossible_cases_are_usage_errors(kw: dict, msg: str) -> None:
    with pytest.raises(UsageError, match=msg):
        Buffers(**kw)


@pytest.mark.parametrize("compiled", [None, False], ids=["compiled-if-built", "python"])
def test_eflags_at_a_machine_check_mid_block_are_architectural(compiled: bool | None) -> None:
    """QEMU computes EFLAGS lazily and stores the pending flag operation only at some points
    of a translated block.  The instruction budget (``emu_start(count=…)``) is a code hook
    before every instruction, and Unicorn syncs the flag state there, so a register read in
    the #MC hook, mid-block, sees the flags the CPU would have.  A budget guard without it
    (a block hook) was measured to save 2.4 µs of an unrolled 4 KiB copy and was dropped:
    at this case's panic it showed EFLAGS 0x40002, the flags of an older instruction.

    Era A, unrolled copy of 9 bytes to destination alignment 5, #MC on the first source
    byte: ALIGN_DESTINATION runs ``andl $7,%ecx`` (3) and ``subl %ecx,%edx`` (9 - 3 = 6),
    then its ``movb (%rsi),%al`` consumes the poison, and era A's #MC rules panic there."""
    from emu.build.target import era_target
    from emu.core.machine import Machine
    from emu.kernel.eras import CPUS, ERAS
    t = era_target(ERAS["A"], CPUS["none"])
    if compiled is False:                  # the same target on a Python-path machine
        t = copy.copy(t)
        t.machine = Machine(t.image, smap=t.machine.smap, compiled=False)
    b = Buffers(length=9, src_align=0x7E3, dst_align=5, poison=(0,))
    raw = t.machine.run(t._call(t.routine_for("copy_user_generic_unrolled"), b), b, t.kernel)
    assert raw.state is State.PANIC and len(raw.faults) == 1
    edx = 9 - 3
    flags = 0x2 | (0x4 if bin(edx & 0xFF).count("1") % 2 == 0 else 0)   # PF; ZF, SF, CF clear
    flags |= 1 << 18                                                   # AC: the routine's STAC
    assert dict(raw.regs)["rdx"] == edx
    assert dict(raw.regs)["eflags"] == flags
    assert dict(raw.faults[0].regs_before)["eflags"] == flags

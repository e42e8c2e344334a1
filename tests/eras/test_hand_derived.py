"""Each era's behaviour against expectations derived by hand from kernel-facts.md.

Notation: P0 is the offset (from the source start) of the poisoned 64-byte line, clipped at
0; the destination is 8-aligned so ALIGN_DESTINATION does nothing and the unrolled loop's
blocks start at source offsets 64j.  Formulas: §4b (fixups), §3 and §11 (handle_tail per era).
"""

from __future__ import annotations

import pytest

from emu.kernel.eras import ERAS, CPUS
from emu.core.machine import Buffers, State
from emu.build.target import era_target

N = 4096
ALIGNS = (0, 4, 0x20, 0x7E0, 0x7E4)
OFFSETS = (1, 200, 0x960, 2500, 4000, 4095)


def line_start(align: int, off: int) -> int:
    """Offset of the poisoned line's first byte, clipped to the copy start."""
    return max(((align + off) & ~63) - align, 0)


def first_qword(align: int, off: int) -> int:
    """Index of the first 8-byte source word (at offsets 8m) that overlaps the line."""
    p0 = ((align + off) & ~63) - align
    m = 0
    while 8 * m + 8 <= p0:
        m += 1
    return m


def run(era: str, cpu: str, bufs: Buffers, routine: str | None = None):  # type: ignore[no-untyped-def]
    e = ERAS[era]
    t = era_target(e, CPUS[cpu])
    r = e.routine(routine) if routine else e.select_routine(CPUS[cpu])
    return t.run(r, bufs)


@pytest.mark.parametrize("align", ALIGNS)
@pytest.mark.parametrize("off", OFFSETS)
def test_era_e_unrolled_rounds_back_to_the_block(align: int, off: int) -> None:
    o = run("E", "none", Buffers(length=N, src_align=align, poison=(off,)))
    m = first_qword(align, off)
    if 8 * m < (N // 64) * 64:          # the fault is in the 64-byte block loop
        expected = N - 64 * (8 * m // 64)
    elif 8 * m < (N // 8) * 8:          # qword loop of the short-string part
        expected = N - 8 * m
    else:
        expected = N - line_start(align, off)
    assert o.return_value == expected
    assert (o.mc_count, o.retouched) == (1, False)


@pytest.mark.parametrize("align", ALIGNS)
@pytest.mark.parametrize("off", OFFSETS)
def test_era_e_string_counts_back_from_rcx_and_edx(align: int, off: int) -> None:
    o = run("E", "rep_good", Buffers(length=N, src_align=align, poison=(off,)))
    assert o.return_value == N - 8 * first_qword(align, off)   # leal (%rdx,%rcx,8)
    assert (o.mc_count, o.retouched) == (1, False)


@pytest.mark.parametrize("align", ALIGNS)
@pytest.mark.parametrize("off", OFFSETS)
def test_era_e_erms_is_exact(align: int, off: int) -> None:
    o = run("E", "erms", Buffers(length=N, src_align=align, poison=(off,)))
    assert o.return_value == N - line_start(align, off)
    assert o.bytes_copied == line_start(align, off)
    assert o.verdict == "ok"


@pytest.mark.parametrize("cpu", ["none", "rep_good", "erms"])
@pytest.mark.parametrize("era", ["B", "C"])
def test_eras_b_and_c_pretend_success(era: str, cpu: str) -> None:
    o = run(era, cpu, Buffers(length=N, src_align=0x7E0, poison=(0x960,)))
    assert o.return_value == 0
    assert o.bytes_copied < N and "zero_with_missing" in o.violations
    assert (o.mc_count, o.retouched) == (1, False)


@pytest.mark.parametrize("cpu", ["none", "rep_good", "erms"])
@pytest.mark.parametrize("align, off", [(0x7E0, 0x960), (4, 1000), (0, 4000)])
def test_era_d_retries_into_the_poison_and_returns_exact(cpu: str, align: int, off: int) -> None:
    o = run("D", cpu, Buffers(length=N, src_align=align, poison=(off,)))
    assert o.return_value == N - line_start(align, off)
    assert o.mc_count == 2 and o.retouched
    assert "poison_consumed_twice" in o.violations


@pytest.mark.parametrize("cpu", ["none", "rep_good", "erms"])
def test_era_a_mc_in_copy_user_panics(cpu: str) -> None:
    o = run("A", cpu, Buffers(length=N, src_align=0x7E0, poison=(0x960,)))
    assert o.state is State.PANIC and o.return_value is None
    assert o.mc_count == 1


@pytest.mark.parametrize("era", list(ERAS))
@pytest.mark.parametrize("cpu", ["none", "rep_good", "erms", "fsrm"])
def test_page_fault_gives_the_exact_remainder_in_every_era(era: str, cpu: str) -> None:
    # the user page after the source's first page is not present: fault at offset 0x820
    o = run(era, cpu, Buffers(length=N, src_align=0x7E0, unmapped=(0x820,)))
    assert o.state is State.RETURNED
    assert o.return_value == N - 0x820
    assert o.bytes_copied == 0x820


@pytest.mark.parametrize("cpu, mcs", [("none", 2), ("rep_good", 2), ("erms", 1), ("fsrm", 1)])
def test_era_f_cannot_tell_mc_from_pf(cpu: str, mcs: int) -> None:
    o = run("F", cpu, Buffers(length=N, src_align=0x7E0, poison=(0x960,)))
    assert o.return_value == N - 0x960
    assert o.mc_count == mcs and o.retouched == (mcs == 2)


def test_era_f_word_loop_retries_bytewise() -> None:
    # 48 bytes: the word loop; the line starting at source offset 32 holds word 4
    o = run("F", "none", Buffers(length=48, src_align=32, poison=(40,)),
            routine="rep_movs_alternative")
    assert o.return_value == 16
    assert o.mc_count == 2 and o.retouched


def test_rep_movs_alternative_needs_the_callers_stac() -> None:
    o = run("F", "none", Buffers(length=100), routine="rep_movs_alternative")
    assert o.state is State.RETURNED and o.return_value == 0
    assert o.ac_at_return            # the inlined caller's clac comes after the call

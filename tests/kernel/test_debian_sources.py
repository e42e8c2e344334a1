"""Debian's real kernel files through the bundled eras' scenarios (kernel-facts §3, §4b, §11).

linux-source-6.1 is era E (v5.17 - v6.3) and linux-source-6.12 is era F (v6.4+).  The files
are read from the cache scripts/linux-sources fills; nothing from them is in the repository.
Expectations are derived by hand from kernel-facts.md, and the real 6.1 file is also checked
case by case against the project's own era E source.
"""

from __future__ import annotations

import pytest

from emu.build.detect import detect
from emu.kernel.eras import CPUS, ERAS
from emu.core.machine import Buffers, State
from emu.build.target import era_target

from debian_sources import debian_source, debian_target

N = 4096
ALIGNS = (0, 4, 0x20, 0x7E0, 0x7E4)
OFFSETS = (1, 200, 0x960, 2500, 4000, 4095)
LEGACY = ("copy_user_generic_unrolled", "copy_user_generic_string",
          "copy_user_enhanced_fast_string", "__copy_user_nocache")


def line_start(align: int, off: int) -> int:
    """Offset of the poisoned line's first byte, clipped to the copy start."""
    return max(((align + off) & ~63) - align, 0)


def first_qword(align: int, off: int) -> int:
    """Index of the first 8-byte source word (at offsets 8m) that overlaps the line."""
    return max(((align + off) & ~63) - align, 0) // 8


# ---- era detection ------------------------------------------------------------------------

@pytest.mark.parametrize("version, name, kind, era", [
    ("6.1", "copy_user_64.S", "copy_user", "E"),
    ("6.12", "copy_user_64.S", "copy_user", "F"),
    ("6.1", "copy_mc_64.S", "copy_mc", "E"),
    ("6.12", "copy_mc_64.S", "copy_mc", "E"),
    ("6.1", "getuser.S", "getuser", "E"),
    ("6.12", "getuser.S", "getuser", "F"),
])
def test_era_is_detected_from_the_file(version: str, name: str, kind: str, era: str) -> None:
    d = detect(debian_source(version, name).text)
    assert (d.kind, d.era.key) == (kind, era)
    assert any(e.startswith("RET macro") for e in d.evidence)


def test_routines_are_the_ones_the_file_defines() -> None:
    assert [r.name for r in detect(debian_source("6.1").text).routines] == list(LEGACY)
    modern = detect(debian_source("6.12").text).routines
    assert [(r.name, r.len_reg, r.ret_reg, r.caller_stac) for r in modern] == [
        ("rep_movs_alternative", "rcx", "rcx", True)]


# ---- 6.1 = era E --------------------------------------------------------------------------

def run61(routine: str, bufs: Buffers):  # type: ignore[no-untyped-def]
    t = debian_target("6.1")
    return t.run(t.routine_for(routine, frozenset()), bufs)


@pytest.mark.parametrize("align", ALIGNS)
@pytest.mark.parametrize("off", OFFSETS)
def test_61_unrolled_mc_returns_edx_rounded_back_to_the_block(align: int, off: int) -> None:
    o = run61("copy_user_generic_unrolled", Buffers(length=N, src_align=align, poison=(off,)))
    m = first_qword(align, off)
    if 8 * m < (N // 64) * 64:
        expected = N - 64 * (8 * m // 64)
    elif 8 * m < (N // 8) * 8:
        expected = N - 8 * m
    else:
        expected = N - line_start(align, off)
    assert o.return_value == expected
    assert (o.mc_count, o.retouched) == (1, False)      # no tail retry in era E


@pytest.mark.parametrize("align", ALIGNS)
@pytest.mark.parametrize("off", OFFSETS)
def test_61_string_mc_rounds_back_to_the_qword(align: int, off: int) -> None:
    o = run61("copy_user_generic_string", Buffers(length=N, src_align=align, poison=(off,)))
    assert o.return_value == N - 8 * first_qword(align, off)
    assert (o.mc_count, o.retouched) == (1, False)


@pytest.mark.parametrize("align", ALIGNS)
@pytest.mark.parametrize("off", OFFSETS)
def test_61_erms_mc_is_exact(align: int, off: int) -> None:
    o = run61("copy_user_enhanced_fast_string",
              Buffers(length=N, src_align=align, poison=(off,)))
    assert o.return_value == N - line_start(align, off)
    assert o.bytes_copied == line_start(align, off) and o.verdict == "ok"
    assert (o.mc_count, o.retouched) == (1, False)


@pytest.mark.parametrize("routine", LEGACY)
def test_61_page_fault_gives_the_exact_remainder(routine: str) -> None:
    o = run61(routine, Buffers(length=N, src_align=0x7E0, unmapped=(0x820,)))
    assert o.state is State.RETURNED
    assert (o.return_value, o.bytes_copied) == (N - 0x820, 0x820)


def _behaviour(o):  # type: ignore[no-untyped-def]
    return (o.state, o.return_value, o.bytes_copied, o.written_beyond, o.mc_count,
            o.pf_count, o.retouched, o.violations)


@pytest.mark.parametrize("routine", LEGACY)
@pytest.mark.parametrize("direction", ["from", "to"])
def test_61_behaves_like_the_bundled_era_e(routine: str, direction: str) -> None:
    bundled = era_target(ERAS["E"], CPUS["none"])
    r = ERAS["E"].routine(routine)
    cases = [Buffers(direction=direction, length=n, src_align=a, poison=(p,))
             for n in (N, 100, 7) for a in (0, 5, 0x7E4) for p in {0, n // 2, n - 1}]
    cases += [Buffers(direction=direction, length=N, src_align=0x7E0, dst_align=3,
                      unmapped=(0x820,)), Buffers(direction=direction, length=N)]
    for b in cases:
        if direction == "to" and b.poison:
            b = Buffers(direction="to", length=b.length, src_align=b.src_align,
                        poison=b.poison)
        assert _behaviour(run61(routine, b)) == _behaviour(bundled.run(r, b)), b


# ---- 6.12 = era F -------------------------------------------------------------------------

def run612(cpu: str, bufs: Buffers):  # type: ignore[no-untyped-def]
    t = debian_target("6.12", cpu=CPUS[cpu])
    return t.run(t.routine_for(None, CPUS[cpu]), bufs)


@pytest.mark.parametrize("align", ALIGNS)
@pytest.mark.parametrize("off", OFFSETS)
def test_612_movsq_path_retries_into_the_poison_and_returns_exact_rcx(align: int,
                                                                       off: int) -> None:
    o = run612("none", Buffers(length=N, src_align=align, poison=(off,)))
    assert o.return_value == N - line_start(align, off)
    assert o.bytes_copied == line_start(align, off)
    assert o.mc_count == 2 and o.retouched            # #MC looks like #PF: byte tail retried


@pytest.mark.parametrize("align", ALIGNS)
@pytest.mark.parametrize("off", OFFSETS)
def test_612_erms_rep_movsb_is_exact_without_retry(align: int, off: int) -> None:
    o = run612("erms", Buffers(length=N, src_align=align, poison=(off,)))
    assert o.return_value == N - line_start(align, off)
    assert (o.mc_count, o.retouched, o.verdict) == (1, False, "ok")


def test_612_word_loop_retries_bytewise() -> None:
    o = run612("none", Buffers(length=48, src_align=32, poison=(40,)))
    assert o.return_value == 16
    assert o.mc_count == 2 and o.retouched


def test_612_byte_loop_is_exact_without_retry() -> None:
    o = run612("none", Buffers(length=7, src_align=60, poison=(5,)))
    assert o.return_value == 3
    assert (o.mc_count, o.retouched) == (1, False)


@pytest.mark.parametrize("cpu", ["none", "erms"])
def test_612_page_fault_gives_the_exact_remainder(cpu: str) -> None:
    o = run612(cpu, Buffers(length=N, src_align=0x7E0, unmapped=(0x820,)))
    assert (o.state, o.return_value, o.bytes_copied) == (State.RETURNED, N - 0x820, 0x820)


def test_612_rep_movs_alternative_needs_the_callers_stac() -> None:
    o = run612("none", Buffers(length=100))
    assert o.state is State.RETURNED and o.return_value == 0 and o.ac_at_return


@pytest.mark.parametrize("cpu", ["none", "erms"])
def test_612_returns_what_the_bundled_era_f_returns(cpu: str) -> None:
    bundled = era_target(ERAS["F"], CPUS[cpu])
    r = ERAS["F"].routine("rep_movs_alternative")
    for n in (N, 200, 40, 5):
        for a in (0, 3, 0x7E4):
            for p in sorted({0, n // 3, n - 1}):
                b = Buffers(length=n, src_align=a, poison=(p,))
                mine, theirs = run612(cpu, b), bundled.run(r, b)
                assert (mine.return_value, mine.bytes_copied) == \
                    (theirs.return_value, theirs.bytes_copied), b


# ---- copy_mc_64.S and getuser.S ---------------------------------------------------------

@pytest.mark.parametrize("version", ["6.1", "6.12"])
@pytest.mark.parametrize("routine", ["copy_mc_fragile", "copy_mc_enhanced_fast_string"])
@pytest.mark.parametrize("align, off", [(0, 0x100), (3, 0x100), (5, 17), (0, 511)])
def test_copy_mc_returns_the_exact_remainder(version: str, routine: str, align: int,
                                             off: int) -> None:
    t = debian_target(version, "copy_mc_64.S")
    o = t.run(t.routine_for(routine, frozenset()),
              Buffers(length=512, src_align=align, poison=(off,)))
    assert o.state is State.RETURNED
    assert o.return_value == 512 - line_start(align, off)
    assert (o.mc_count, o.verdict) == (1, "ok")
    assert o.faults[0].handler == "EX_TYPE_DEFAULT_MCE_SAFE"


@pytest.mark.parametrize("version", ["6.1", "6.12"])
@pytest.mark.parametrize("name, size", [("__get_user_1", 1), ("__get_user_2", 2),
                                        ("__get_user_4", 4), ("__get_user_8", 8),
                                        ("__get_user_nocheck_8", 8)])
def test_get_user_reads_or_returns_efault(version: str, name: str, size: int) -> None:
    t = debian_target(version, "getuser.S")
    g = t.routine_for(name)
    assert (g.convention.name, g.size) == ("get_user", size)
    ok = t.call(g, Buffers(length=size, src_align=0x7E0))
    assert (ok.err, ok.verdict) == (0, "ok") and ok.value == ok.expected != 0
    mc = t.call(g, Buffers(length=size, src_align=0x7E0, poison=(0,)))
    assert (mc.state, mc.err, mc.value) == (State.RETURNED, -14, 0)
    assert [f.handler for f in mc.faults] == ["EX_TYPE_UACCESS"]
    pf = t.call(g, Buffers(length=size, src_align=0, unmapped=(0,)))
    assert (pf.err, pf.value, pf.verdict) == (-14, 0, "ok")


# ---- clear_user and put_user (clear_page_64.S, putuser.S) -----------------------------------

@pytest.mark.parametrize("version, era", [("6.1", "E"), ("6.12", "F")])
def test_clear_and_putuser_files_are_detected(version: str, era: str) -> None:
    for name, kind, conv in (("clear_page_64.S", "clear_user", "clear"),
                             ("putuser.S", "putuser", "put_user")):
        d = detect(debian_source(version, name).text)
        assert (d.kind, d.era.key) == (kind, era)
        assert d.routines and {r.convention.name for r in d.routines} == {conv}


def clear_expected(routine: str, n: int, edge: int) -> int:
    """What a clear_user routine returns when the page at buffer offset ``edge`` is absent,
    read from its code: 6.1's routines clear the first 8 * (n / 8) bytes by qwords from the
    start (clear_user_original's movq loop, clear_user_rep_good's rep stosq; below 64 bytes
    both go to clear_user_original) and report a fault there as whole qwords left, then the
    rest byte by byte (exact); clear_user_erms from 64 bytes is one rep stosb, and
    rep_stos_alternative retries a faulting word byte by byte: both exact."""
    if routine == "rep_stos_alternative" or (routine == "clear_user_erms" and n >= 64):
        return n - edge
    return n - 8 * (edge // 8) if edge < 8 * (n // 8) else n - edge


@pytest.mark.parametrize("version, routine", [
    ("6.1", "clear_user_original"), ("6.1", "clear_user_rep_good"), ("6.1", "clear_user_erms"),
    ("6.12", "rep_stos_alternative")])
@pytest.mark.parametrize("n, align", [(4096, 0x7E0), (4096, 0x7E3), (100, 0xFC1), (40, 0xFF0),
                                      (7, 0xFFD)])
def test_clear_user_stops_at_an_absent_page(version: str, routine: str, n: int,
                                            align: int) -> None:
    t = debian_target(version, "clear_page_64.S")
    r = t.routine_for(routine)
    edge = 0x1000 - align                      # the buffer offset where the absent page starts
    o = t.call(r, Buffers(length=n, src_align=align, unmapped=(edge,)))
    assert o.return_value == clear_expected(routine, n, edge)
    assert (o.bytes_copied, o.written_outside, o.verdict) == (n - o.return_value, 0, "ok")
    assert o.pf_count in (1, 2) and o.retouched == (o.pf_count == 2)
    if routine != "rep_stos_alternative":
        assert o.pf_count == 1                 # 6.1's routines do not retry


@pytest.mark.parametrize("version", ["6.1", "6.12"])
def test_clear_user_poison_is_not_consumed(version: str) -> None:
    t = debian_target(version, "clear_page_64.S")
    for r in t.detection.routines:
        o = t.call(r, Buffers(length=4096, src_align=0x7E0, poison=(0x960,)))
        assert (o.return_value, o.bytes_copied, o.mc_count, o.verdict) == (0, 4096, 0, "ok")


@pytest.mark.parametrize("version", ["6.1", "6.12"])
@pytest.mark.parametrize("size", [1, 2, 4, 8])
def test_put_user_stores_or_returns_efault(version: str, size: int) -> None:
    t = debian_target(version, "putuser.S")
    r = t.routine_for(f"__put_user_{size}")
    assert (r.convention.name, r.size) == ("put_user", size)
    ok = t.call(r, Buffers(length=size, src_align=0x7E0))
    assert (ok.err, ok.value, ok.verdict) == (0, ok.expected, "ok") and ok.value != ok.before
    pf = t.call(r, Buffers(length=size, src_align=0x10, unmapped=(0,)))
    assert (pf.err, pf.value, pf.verdict) == (-14, pf.before, "ok")
    assert [f.handler for f in pf.faults] == ["EX_TYPE_UACCESS"]


def test_map_reads_rep_stos_as_a_store() -> None:
    """capstone marks (rep) stos's (%rdi) operand as read; the map must not call it a load."""
    import io
    import json
    from emu.cli.main import main
    out = io.StringIO()
    assert main(["map", "debian:6.1", "--file", "arch/x86/lib/clear_page_64.S", "--json"],
                out) == 0
    acc = json.loads(out.getvalue())["accesses"]
    stos = [a for a in acc if "stos" in a["insn"]]
    assert len(stos) >= 5 and {(a["access"], a["mc"]) for a in stos} == {("store", "store")}

"""make bench: emu's harness against a bare Unicorn loop on the same machine code.

For each routine, a 4096-byte copy_from_user with one poisoned line (the seed scenario) is run
N times through ``Target.run`` (the harness: reset, fault policy, outcome and oracle) and N
times through a bare loop on a second Unicorn instance built for the same image, with the same
hook set (INTR + one read hook on the poisoned line that redirects to the fixup) and only the
work Unicorn itself needs (context restore, destination reset, argument registers, emu_start,
read the result).  The ratio harness/bare is the overhead emu adds; the target is ≤ 1.3.
"""

from __future__ import annotations

import argparse
import statistics
import struct
import sys
import time

from unicorn import UC_HOOK_INTR, UC_HOOK_MEM_READ
from unicorn import x86_const as X

from emu import layout as L
from emu.eras import CPUS, ERAS
from emu.machine import DST_FILL, Buffers, Machine
from emu.target import era_target

CASES = [("unrolled", "E", "none", "copy_user_generic_unrolled"),
         ("string (rep movsq)", "E", "rep_good", "copy_user_generic_string"),
         ("ERMS (rep movsb)", "E", "erms", "copy_user_enhanced_fast_string"),
         ("rep_movs_alternative", "F", "none", "rep_movs_alternative")]
BUFS = Buffers(length=4096, src_align=0x7E0, poison=(0x960,))


def bare_loop(target, routine, n: int) -> float:  # type: ignore[no-untyped-def]
    m = Machine(target.image)            # same image, same page tables, fresh Uc
    uc = m.uc
    ext = {e.insn: e for e in target.image.extable}
    trapnr_types = {"COPY", "FAULT", "FAULT_MCE_SAFE"}
    src_pa = m.pa(BUFS.src & ~0xFFF)
    line = m.pa((BUFS.src + 0x960) & ~63)

    def fixup(trapnr: int) -> None:
        e = ext[uc.reg_read(X.UC_X86_REG_RIP)]
        if e.type.value in trapnr_types:
            uc.reg_write(X.UC_X86_REG_RAX, trapnr)
        uc.reg_write(X.UC_X86_REG_RIP, e.fixup)

    def on_read(uc_, access, addr, size, value, ud):  # type: ignore[no-untyped-def]
        if addr < line + 64 and addr + size > line:
            fixup(18)

    uc.hook_add(UC_HOOK_INTR, lambda uc_, intno, ud: fixup(14))
    uc.hook_add(UC_HOOK_MEM_READ, on_read, None, line - 7, line + 63)
    uc.ctl_flush_tb()
    from emu.machine import source_pattern
    uc.mem_write(src_pa, source_pattern(0x1000 + 0x1000)[:0x2000])
    ctx = uc.context_save()
    entry = target.image.symbol(routine.name).addr
    dst_pa = m.pa(BUFS.dst)
    fill = bytes([DST_FILL]) * 4096
    ret = struct.pack("<Q", L.SENTINEL)
    rsp = L.STACK_TOP - 8
    len_reg = X.UC_X86_REG_RDX if routine.len_reg == "rdx" else X.UC_X86_REG_RCX
    eflags = 0x2 | ((1 << 18) if routine.caller_stac else 0)
    t0 = time.perf_counter()
    for _ in range(n):
        uc.context_restore(ctx)
        uc.mem_write(dst_pa, fill)
        uc.mem_write(m.pa(rsp), ret)
        uc.reg_write(X.UC_X86_REG_RSP, rsp)
        uc.reg_write(X.UC_X86_REG_RDI, BUFS.dst)
        uc.reg_write(X.UC_X86_REG_RSI, BUFS.src)
        uc.reg_write(len_reg, 4096)
        uc.reg_write(X.UC_X86_REG_EFLAGS, eflags)
        uc.emu_start(entry, L.SENTINEL, count=5_000_000)
        uc.reg_read(X.UC_X86_REG_RAX)
    dt = time.perf_counter() - t0
    m.close()
    return dt / n


def harness_loop(target, routine, n: int) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    for _ in range(n):
        target.run(routine, BUFS)
    return (time.perf_counter() - t0) / n


def sweep_loop(target, routine, fast_forward: bool) -> float:  # type: ignore[no-untyped-def]
    """Seconds per case of an offset sweep: one #MC on each line of a 4096-byte copy."""
    cases = [Buffers(length=4096, src_align=0x7E0, poison=(off,)) for off in range(0, 4096, 64)]
    t0 = time.perf_counter()
    for b in cases:
        target.run(routine, b, fast_forward=fast_forward)
    return (time.perf_counter() - t0) / len(cases)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=400, help="cases per measurement")
    ap.add_argument("-r", type=int, default=5, help="repetitions (median is reported)")
    a = ap.parse_args()
    print(f"{'routine':<22} {'harness cases/s':>16} {'bare cases/s':>13} {'ratio':>6}")
    worst = 0.0
    for label, era_key, cpu, name in CASES:
        era = ERAS[era_key]
        t = era_target(era, CPUS[cpu])
        r = era.routine(name)
        harness_loop(t, r, 20)
        bare_loop(t, r, 20)
        h = statistics.median(harness_loop(t, r, a.n) for _ in range(a.r))
        b = statistics.median(bare_loop(t, r, a.n) for _ in range(a.r))
        worst = max(worst, h / b)
        print(f"{label:<22} {1 / h:16.0f} {1 / b:13.0f} {h / b:6.2f}")
    print(f"worst ratio {worst:.2f} (target <= 1.3)")
    print()
    print("offset sweep: one #MC on each of the 64 lines of a 4096-byte copy")
    print(f"{'routine':<22} {'full cases/s':>13} {'fast-forward':>13} {'speedup':>8}")
    for label, era_key, cpu, name in CASES:
        era = ERAS[era_key]
        t = era_target(era, CPUS[cpu])
        r = era.routine(name)
        sweep_loop(t, r, True)
        full = statistics.median(sweep_loop(t, r, False) for _ in range(a.r))
        ff = statistics.median(sweep_loop(t, r, True) for _ in range(a.r))
        print(f"{label:<22} {1 / full:13.0f} {1 / ff:13.0f} {full / ff:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""make bench: emu's harness against a bare Unicorn loop on the same machine code.

For each routine, a 4096-byte copy_from_user with one poisoned line (the seed scenario) is run
N times through ``Target.run`` (the harness: reset, fault policy, outcome and oracle) and N
times through bare loops on a second Unicorn instance built for the same image, with the same
hook set (INTR + one read hook on the poisoned line that redirects to the fixup) and only the
work Unicorn itself needs (context restore, destination reset, argument registers, emu_start,
read the result).  Two bare loops: one through the Python binding's methods (``bare_loop``),
one through Unicorn's C API called directly (``BareSweep``), which is how emu itself calls
Unicorn.  The ratio harness/bare is the overhead emu adds; the target is ≤ 1.3.

Then offset sweeps (one #MC per 64-byte line) of 4, 16, 32 and 60 KiB copies, full re-execution
against fast-forward, through the harness and through the C-API bare loop: the bare loop's
speedup is what fast-forward can give at best on Unicorn, whatever the harness does.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import struct
import sys
import time

from unicorn import UC_HOOK_INTR, UC_HOOK_MEM_READ
from unicorn import x86_const as X

from emu.core import layout as L
from emu.kernel.eras import CPUS, ERAS
from emu.core.machine import DST_FILL, Buffers, Machine
from emu.build.target import era_target

CASES = [("unrolled", "E", "none", "copy_user_generic_unrolled"),
         ("string (rep movsq)", "E", "rep_good", "copy_user_generic_string"),
         ("ERMS (rep movsb)", "E", "erms", "copy_user_enhanced_fast_string"),
         ("rep_movs_alternative", "F", "none", "rep_movs_alternative")]
BUFS = Buffers(length=4096, src_align=0x7E0, poison=(0x960,))


def fixups(target) -> dict[int, tuple[int, bool]]:  # type: ignore[no-untyped-def]
    """The bare loops' whole fault policy: faulting insn → (fixup, writes the trap number
    to %rax), from the image's extable."""
    return {e.insn: (e.fixup, e.type.value in ("COPY", "FAULT", "FAULT_MCE_SAFE"))
            for e in target.image.extable}


def entry_regs(routine, b: Buffers) -> list[tuple[int, int]]:  # type: ignore[no-untyped-def]
    """The registers a call of ``routine`` on ``b`` starts with (return address aside)."""
    return [(X.UC_X86_REG_RSP, L.STACK_TOP - 8), (X.UC_X86_REG_RDI, b.dst),
            (X.UC_X86_REG_RSI, b.src),
            (X.UC_X86_REG_RDX if routine.len_reg == "rdx" else X.UC_X86_REG_RCX, b.length),
            (X.UC_X86_REG_EFLAGS, 0x2 | ((1 << 18) if routine.caller_stac else 0))]


def bare_loop(target, routine, n: int) -> float:  # type: ignore[no-untyped-def]
    # Same image and page tables, fresh Uc.
    m = Machine(target.image, bulk_strings=False, smap=target.machine.smap,
                smep=target.machine.smep)
    uc = m.uc
    ext = fixups(target)
    src_pa = m.pa(BUFS.src & ~0xFFF)
    line = m.pa((BUFS.src + 0x960) & ~63)

    def fixup(trapnr: int) -> None:
        rip, writes_trapnr = ext[uc.reg_read(X.UC_X86_REG_RIP)]
        if writes_trapnr:
            uc.reg_write(X.UC_X86_REG_RAX, trapnr)
        uc.reg_write(X.UC_X86_REG_RIP, rip)

    def on_read(uc_, access, addr, size, value, ud):  # type: ignore[no-untyped-def]
        if addr < line + 64 and addr + size > line:
            fixup(18)

    uc.hook_add(UC_HOOK_INTR, lambda uc_, intno, ud: fixup(14))
    uc.hook_add(UC_HOOK_MEM_READ, on_read, None, line - 7, line + 63)
    uc.ctl_flush_tb()
    from emu.core.machine import source_pattern
    uc.mem_write(src_pa, source_pattern(0x1000 + 0x1000)[:0x2000])
    ctx = uc.context_save()
    entry = target.image.symbol(routine.name).addr
    dst_pa = m.pa(BUFS.dst)
    fill = bytes([DST_FILL]) * 4096
    ret = struct.pack("<Q", L.SENTINEL)
    ret_pa = m.pa(L.STACK_TOP - 8)
    regs = entry_regs(routine, BUFS)
    t0 = clock()
    for _ in range(n):
        uc.context_restore(ctx)
        uc.mem_write(dst_pa, fill)
        uc.mem_write(ret_pa, ret)
        for reg, value in regs:
            uc.reg_write(reg, value)
        uc.emu_start(entry, L.SENTINEL, count=5_000_000)
        uc.reg_read(X.UC_X86_REG_RAX)
    dt = clock() - t0
    m.close()
    return dt / n


def harness_loop(target, routine, n: int) -> float:  # type: ignore[no-untyped-def]
    t0 = clock()
    for _ in range(n):
        target.run(routine, BUFS)
    return (clock() - t0) / n


def sweep_cases(length: int) -> list[Buffers]:
    """An offset sweep: one #MC on each 64-byte line of a ``length``-byte copy."""
    return [Buffers(length=length, src_align=0x7E0, poison=(off,)) for off in range(0, length, 64)]


def sweep_loop(target, routine, cases: list[Buffers], fast_forward: bool) -> float:  # type: ignore[no-untyped-def]
    """Seconds per case of an offset sweep through the harness."""
    t0 = clock()
    for b in cases:
        target.run(routine, b, fast_forward=fast_forward)
    return (clock() - t0) / len(cases)


class BareSweep:
    """The same offset sweep on a bare Unicorn loop: the C API, one Python hook, no policy.

    Full re-execution resets the context, the destination and the argument registers and
    runs from the entry point; fast-forward restores the harness's own checkpoint (context,
    stack page, destination pages written so far) and runs from its RIP.  Either way one
    read hook on the poisoned line redirects to the extable fixup, as in ``bare_loop``.  This
    is the ceiling of fast-forward for Unicorn itself, whatever the harness around it does.
    """

    def __init__(self, target, routine, cases: list[Buffers]) -> None:  # type: ignore[no-untyped-def]
        from unicorn.unicorn_py3.unicorn import HOOK_MEM_ACCESS_CFUNC

        from emu.core.engine import Engine
        self.m = m = Machine(target.image, bulk_strings=False, smap=target.machine.smap,
                smep=target.machine.smep)
        assert (m._user_pa, m._kern_pa) == (target.machine._user_pa, target.machine._kern_pa)
        uc = m.uc
        self.eng = eng = Engine(uc, 8)
        ext = fixups(target)

        def fixup(trapnr: int) -> None:
            rip, writes_trapnr = ext[eng.read(X.UC_X86_REG_RIP)]
            if writes_trapnr:
                eng.write(X.UC_X86_REG_RAX, trapnr)
            eng.write(X.UC_X86_REG_RIP, rip)

        def on_read(_uc, _access, addr, size, _value, line):  # type: ignore[no-untyped-def]
            if addr < line + 64 and addr + size > line:
                fixup(18)

        self.cb = HOOK_MEM_ACCESS_CFUNC(on_read)
        uc.hook_add(UC_HOOK_INTR, lambda uc_, intno, ud: fixup(14))
        uc.hook_add(UC_HOOK_MEM_READ, lambda *a: None, None, 1 << 40, 1 << 40)  # instrumented
        uc.ctl_flush_tb()
        from emu.core.machine import source_pattern
        n = cases[0].length
        uc.mem_write(m.pa(cases[0].src & ~0xFFF), source_pattern(n + 0x2000))
        self.ctx = uc.context_save()
        self.entry = target.image.symbol(routine.name).addr
        self.dst_pa = m.pa(cases[0].dst)
        self.fill = bytes([DST_FILL]) * n
        self.regs = entry_regs(routine, cases[0])
        self.stack = m.pa((L.STACK_TOP - 8) & ~0xFFF)
        self.lines = [m.pa((b.src + b.poison[0]) & ~63) for b in cases]
        self.cps = [target.checkpoint(routine, b, every=True) for b in cases]

    def full(self) -> float:
        eng, cb = self.eng, self.cb
        ret = struct.pack("<Q", L.SENTINEL)
        t0 = clock()
        for line in self.lines:
            h = eng.hook_add(UC_HOOK_MEM_READ, cb, line, line - 7, line + 63)
            eng.context_restore(self.ctx)
            eng.mem_write(self.dst_pa, self.fill)
            eng.mem_write(self.stack + ((L.STACK_TOP - 8) & 0xFFF), ret)
            for reg, value in self.regs:
                eng.write(reg, value)
            eng.emu_start(self.entry, L.SENTINEL, 5_000_000)
            eng.read(X.UC_X86_REG_RAX)
            eng.hook_del(h)
        return (clock() - t0) / len(self.lines)

    def fast_forward(self) -> float:
        eng, cb, pml4 = self.eng, self.cb, self.m._pml4
        t0 = clock()
        for line, cp in zip(self.lines, self.cps):
            h = eng.hook_add(UC_HOOK_MEM_READ, cb, line, line - 7, line + 63)
            eng.context_restore(cp.ctx)
            eng.mem_write(self.dst_pa, self.fill)
            eng.mem_write(self.stack, cp.stack)
            for wpa, i, data in cp.pages:
                eng.mem_write(wpa + i * L.PAGE, data)
            eng.write(X.UC_X86_REG_CR3, pml4)
            eng.emu_start(cp.rip, L.SENTINEL, 5_000_000)
            eng.read(X.UC_X86_REG_RAX)
            eng.hook_del(h)
        return (clock() - t0) / len(self.lines)

    def close(self) -> None:
        self.m.close()


def iterating(target):  # type: ignore[no-untyped-def]
    """The same target with rep strings run iteration by iteration (``bulk_strings=False``):
    the harness's own overhead, against bare loops that iterate too."""
    t = copy.copy(target)
    t.machine = Machine(target.image, bulk_strings=False, smap=target.machine.smap,
                smep=target.machine.smep)
    t._calls = {}              # its own calls; recordings are keyed by target already
    return t


def clock() -> float:
    """CPU seconds of this process: other work on the machine does not count."""
    return time.process_time()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=400, help="cases per measurement")
    ap.add_argument("-r", type=int, default=5, help="repetitions (median is reported)")
    ap.add_argument("--lengths", type=lambda v: [int(x) for x in v.split(",")],
                    default=[4096, 16384, 32768, 61440],
                    help="copy lengths of the offset sweep (default 4096,16384,32768,61440)")
    a = ap.parse_args()
    print("one case: 4096-byte copy_from_user, #MC on the line at offset 0x960; cases/s (CPU time)")
    print("of the harness (rep strings in bulk, as emu runs), of the harness iterating rep strings")
    print("one by one, and of two bare loops (iterating): the Python binding's calls, and")
    print("Unicorn's C API called through ctypes as emu does.  ratio = harness / bare C API;")
    print("overhead = harness iterating / bare C API (same machine code, same work)")
    print(f"{'routine':<22} {'harness':>8} {'iterating':>9} {'bare binding':>12}"
          f" {'bare C API':>10} {'ratio':>6} {'overhead':>8}")
    worst = worst_o = 0.0
    rates: dict[str, float] = {}
    for label, era_key, cpu, name in CASES:
        era = ERAS[era_key]
        t = era_target(era, CPUS[cpu])
        ti = iterating(t)
        r = era.routine(name)
        capi = BareSweep(t, r, [BUFS] * a.n)
        harness_loop(t, r, 20)
        harness_loop(ti, r, 20)
        bare_loop(t, r, 20)
        capi.full()
        hs, his, bs, cs = [], [], [], []
        for _ in range(a.r):             # interleaved, so that load changes hit all four
            hs.append(harness_loop(t, r, a.n))
            his.append(harness_loop(ti, r, a.n))
            bs.append(bare_loop(t, r, a.n))
            cs.append(capi.full())
        h, hi, b, c = (statistics.median(x) for x in (hs, his, bs, cs))
        capi.close()
        ti.machine.close()
        rates[label] = 1 / h
        worst, worst_o = max(worst, h / c), max(worst_o, hi / c)
        print(f"{label:<22} {1 / h:8.0f} {1 / hi:9.0f} {1 / b:12.0f} {1 / c:10.0f}"
              f" {h / c:6.2f} {hi / c:8.2f}")
    print(f"worst ratio {worst:.2f}, worst overhead {worst_o:.2f} (target <= 1.3); ERMS / string "
          f"{rates['ERMS (rep movsb)'] / rates['string (rep movsq)']:.2f} (target >= 1)")
    print()
    print("offset sweep: one #MC on each 64-byte line of the copy; cases/s, full re-execution vs")
    print("fast-forward, through the harness and through the bare C API loop (iterating)")
    print(f"{'routine':<22} {'bytes':>6} {'full':>7} {'fast-fwd':>8} {'speedup':>7}"
          f" {'bare full':>9} {'bare ff':>8} {'speedup':>7}")
    ff4k: dict[str, float] = {}
    for label, era_key, cpu, name in CASES:
        era = ERAS[era_key]
        t = era_target(era, CPUS[cpu])
        r = era.routine(name)
        for length in a.lengths:
            cases = sweep_cases(length)
            sweep_loop(t, r, cases, True)
            bare = BareSweep(t, r, cases)
            bare.full(), bare.fast_forward()
            fs, ffs, bfs, bffs = [], [], [], []
            for _ in range(a.r):
                fs.append(sweep_loop(t, r, cases, False))
                ffs.append(sweep_loop(t, r, cases, True))
                bfs.append(bare.full())
                bffs.append(bare.fast_forward())
            full, ff, bfull, bff = (statistics.median(x) for x in (fs, ffs, bfs, bffs))
            bare.close()
            if length == 4096:
                ff4k[label] = full / ff
            print(f"{label:<22} {length:>6} {1 / full:7.0f} {1 / ff:8.0f} {full / ff:7.2f}"
                  f" {1 / bfull:9.0f} {1 / bff:8.0f} {bfull / bff:7.2f}")
    if ff4k:
        print("4 KiB fast-forward speedup: " + ", ".join(f"{k} {v:.2f}" for k, v in ff4k.items())
              + " (target >= 5)")
    print()
    print("rep movsb (ERMS): offset sweep (one #MC on each line), full re-execution, cases/s,")
    print("rep strings in bulk against iterating (every 4th line), and the string routine in bulk")
    print(f"{'bytes':>6} {'ERMS bulk':>9} {'iterating':>9} {'speedup':>7} {'string':>7}"
          f" {'ERMS/string':>11}")
    era = ERAS["E"]
    t = era_target(era, CPUS["erms"])
    ts = era_target(era, CPUS["rep_good"])
    ti = iterating(t)
    r = era.routine("copy_user_enhanced_fast_string")
    rs = era.routine("copy_user_generic_string")
    for length in (4096, 61440):
        cases = sweep_cases(length)
        for tt, rr in ((t, r), (ti, r), (ts, rs)):
            sweep_loop(tt, rr, cases[:8], False)
        bs, its, ss = [], [], []
        for _ in range(a.r):
            bs.append(sweep_loop(t, r, cases, False))
            its.append(sweep_loop(ti, r, cases[::4], False))
            ss.append(sweep_loop(ts, rs, cases, False))
        bulk, it, st = (statistics.median(x) for x in (bs, its, ss))
        print(f"{length:>6} {1 / bulk:9.0f} {1 / it:9.0f} {it / bulk:7.2f} {1 / st:7.0f}"
              f" {st / bulk:11.2f}")
    ti.machine.close()
    if era_target(ERAS["E"], CPUS["none"]).machine._fast is not None:
        print()
        where_the_time_goes(a.r)
    return 0


class CompiledTimer:
    """Wraps a machine's compiled per-case call (``emu_run_case``: Unicorn and the C harness
    around it) and adds up the CPU time spent inside it."""

    def __init__(self, machine) -> None:  # type: ignore[no-untyped-def]
        self.m, self.f, self.total = machine, machine._fast_run_case, 0.0

    def __call__(self, *args):  # type: ignore[no-untyped-def]
        t0 = clock()
        try:
            return self.f(*args)
        finally:
            self.total += clock() - t0

    def __enter__(self) -> CompiledTimer:
        self.m._fast_run_case = self
        return self

    def __exit__(self, *exc) -> None:  # type: ignore[no-untyped-def]
        self.m._fast_run_case = self.f


def where_the_time_goes(reps: int) -> None:
    """µs (CPU) per case of the 4 KiB offset sweep: in all, inside the compiled call
    (Unicorn and the C harness) and in Python around it; the compiled parts' ratio full/ff is
    what fast-forward could give with no Python at all."""
    print("4 KiB offset sweep, µs (CPU) per case: all, inside the compiled call (Unicorn + the C")
    print("harness), Python around it; ceiling = compiled full / compiled fast-forward (no Python)")
    print(f"{'routine':<22} {'full':>6} {'C':>6} {'Python':>6}  {'ff':>6} {'C':>6} {'Python':>6}"
          f" {'ceiling':>7}")
    for label, era_key, cpu, name in CASES:
        era = ERAS[era_key]
        t = era_target(era, CPUS[cpu])
        r = era.routine(name)
        cases = sweep_cases(4096)
        sweep_loop(t, r, cases, True)
        rows: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for _ in range(reps):
            for ff in (False, True):
                with CompiledTimer(t.machine) as ct:
                    per = sweep_loop(t, r, cases, ff)
                rows[ff].append((per, ct.total / len(cases)))
        (full, cfull), (ffw, cff) = ((statistics.median(x[0] for x in rows[k]),
                                      statistics.median(x[1] for x in rows[k])) for k in (False, True))
        print(f"{label:<22} {full * 1e6:6.1f} {cfull * 1e6:6.1f} {(full - cfull) * 1e6:6.1f}"
              f"  {ffw * 1e6:6.1f} {cff * 1e6:6.1f} {(ffw - cff) * 1e6:6.1f} {cfull / cff:7.2f}")


if __name__ == "__main__":
    sys.exit(main())

"""The emulated CPU: Unicorn x86-64 with real 4-level paging and precise #PF / #MC.

The machine knows nothing of ELF, eras or the command line.  It is given a ``Code`` image (code
bytes at kernel addresses), a ``Call`` (entry point and argument registers), a ``Buffers``
description (where the source and destination live, which user pages are not present, which
source lines are poisoned) and a ``FaultHandler`` — the kernel policy — which decides what
each fault does.  See unicorn-notes.md for the mechanisms:

* #PF: the page's PTE has P=0; the CPU raises vector 14 with CR2 set and ``UC_HOOK_INTR``
  sees the precise state (§1, §2).
* #MC: one ``UC_HOOK_MEM_READ`` per poisoned 64-byte line over the *physical* range
  [line-7, line+63] with a real-overlap test (§1, "Recommended hook").  The hook fires before
  the load completes: the destination register and the rep counters are architectural.
* SMAP: when the CPU has it (``smap=True``), CR4.SMAP is set and user pages have U=1, so a
  user access with EFLAGS.AC clear raises a #PF on a present page, which is reported as
  ``State.SMAP_VIOLATION``.  Without it CR4.SMAP is clear and AC does not matter.
* Page protections (``layout``): kernel text is read-only (CR0.WP), rodata read-only and
  NX, data, the stack and the direct map NX (EFER.NXE), user pages executable unless the
  CPU has SMEP (``smep=True``: CR4.SMEP).  A write to a read-only page or an instruction
  fetch the protections refuse is a #PF on a present page; the machine works out its error
  code (``FaultEvent.error``) and the handler decides as for any #PF: a fixup, or, with no
  __ex_table entry, ``State.PROTECTION_FAULT``.
* System instructions (``sysinsn.py``): each one at an instruction start of the image's code
  is a Unicorn exit, so the run stops before it executes, in ``State.SYSTEM_INSTRUCTION``;
  one that traps or faults (``int3``, #UD, #GP) is named in the interrupt hook.  No hook
  runs per instruction.

Invariants the hooks keep: a hook either redirects (writes registers and RIP, emulation goes
on in the same ``emu_start``) or halts (records the state and calls ``emu_stop``); it never
returns leaving the faulting instruction to re-execute unchanged.  One ``Uc`` is created per
image and reset between cases (``context_restore`` + buffer rewrite + PTE restore).
"""

from __future__ import annotations

import ctypes
import struct
from typing import Any

from unicorn import (UC_ARCH_X86, UC_ERR_INSN_INVALID, UC_HOOK_BLOCK, UC_HOOK_INTR,
                     UC_HOOK_MEM_READ, UC_MODE_64, Uc, UcError)
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import HOOK_CODE_CFUNC, HOOK_INTR_CFUNC, HOOK_MEM_ACCESS_CFUNC

from emu.caching import Bounded
from emu.core import layout as L
from emu.core import native, strings, sysinsn
from emu.errors import EmulationError
from emu.core.engine import Engine, RegBatch
from emu.core.fastforward import DEFAULT_BUDGET, Checkpoint, FastForward, Recorder, Recording
from emu.core.fastpath import Compiled
from emu.core.records import (DST_FILL, PF_INSTR, PF_PROT, PF_WRITE, TRAPNR, VECTORS, WINDOW_PAGES,
                      WINDOW_SPAN, Buffers, Call, Code, CpuView, FaultEvent, FaultHandler,
                      FaultKind, FaultRecord, Halt, RawRun, Redirect, Resolution, SNAPSHOT_REGS,
                      State, fast_init, source_pattern)
from emu.core.records import DST_PAGES, DST_WINDOW_BYTES, SENTINEL_BYTES, SRC_PAGES, SRC_WINDOW_BYTES

__all__ = ["DST_FILL", "PF_INSTR", "PF_PROT", "PF_WRITE", "TRAPNR", "VECTORS", "WINDOW_PAGES",
           "WINDOW_SPAN", "Buffers", "Call", "Checkpoint", "CpuView", "FastForward", "FaultEvent", "FaultHandler", "FaultKind",
           "FaultRecord", "Halt", "Machine", "RawRun", "Redirect", "Resolution", "State",
           "fast_init", "source_pattern"]

#: Exceptions QEMU tracks for double-fault promotion (#PF and the contributory ones).
_CONTRIBUTORY = frozenset({FaultKind.PF, FaultKind.GP})
_OLD_EXCEPTION_OFFSET: int | None = None

# ---- the machine --------------------------------------------------------------------------

REGS: dict[str, int] = {n: getattr(X, f"UC_X86_REG_{n.upper()}") for n in (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12",
    "r13", "r14", "r15", "rip", "eflags", "cr2")}
RESULT_REGS = ("rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "rsp", "rip",
               "eflags")
_RESULT_RIP, _RESULT_EFLAGS = RESULT_REGS.index("rip"), RESULT_REGS.index("eflags")
#: What a hook reads when a fault is taken, in one batch: RIP, CR2, then the snapshot.
FAULT_REGS = ("rip", "cr2", *SNAPSHOT_REGS)
_SNAPSHOT_INDEX = {name: i for i, name in enumerate(SNAPSHOT_REGS)}
EFLAGS_AC = 1 << 18
_NO_PAGES: frozenset[int] = frozenset()
PHYS_SIZE = 8 << 20
PTE_P, PTE_W, PTE_U, PTE_A, PTE_D, PTE_NX = 1, 2, 4, 0x20, 0x40, 1 << 63
EFER_LME, EFER_LMA, EFER_NXE = 1 << 8, 1 << 10, 1 << 11
CR4_PAE, CR4_SMEP, CR4_SMAP = 1 << 5, 1 << 20, 1 << 21
#: The dirty bit of every PTE of a window, as a mask over its PTE array read as one
#: little-endian integer.
_DIRTY_MASK = sum(PTE_D << (64 * i) for i in range(WINDOW_PAGES))
MAX_FAULTS = 256
#: The longest destination buffer (in pages) whose dirty bits stay set between runs.
KEEP_PAGES = 2


class Machine(Recorder, Compiled):
    """A reusable Unicorn x86-64 machine holding one image.

    Args:
        image: the code to run.
        count_insns: count executed instructions with a block hook (slower; ``emu run``).
        smap: the CPU has SMAP: CR4.SMAP is set (user accesses need EFLAGS.AC).
        smep: the CPU has SMEP: CR4.SMEP is set (user pages cannot be executed).
        bulk_strings: run the unwatched iterations of ``rep movs``/``rep stos`` in one step
            (``strings.py``); off, every iteration is a pass through Unicorn.  Instruction
            counting needs the iterations, so ``count_insns`` turns it off.
        compiled: run the bulk step and the per-case harness (``fastpath``) in the compiled
            helper (``_fast.c``) rather than in Python; None (default): when it is available
            and ``EMU_PURE`` is not set.  The results are the same either way.
    """

    def __init__(self, image: Code, *, count_insns: bool = False, smap: bool = True,
                 smep: bool = False, bulk_strings: bool = True,
                 compiled: bool | None = None) -> None:
        self.image = image
        self.count_insns = count_insns
        self.smap = smap
        self.smep = smep
        self.bulk_strings = bulk_strings and not count_insns
        try:
            self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
            # Skylake-Server so that stac/clac execute (unicorn-notes §4).
            self.uc.ctl_set_cpu_model(X.UC_CPU_X86_SKYLAKE_SERVER)
            self.uc.ctl_set_tcg_buffer_size(32 << 20)
            self.uc.mem_map(0, PHYS_SIZE)
        except UcError as e:
            raise EmulationError(f"cannot create the Unicorn machine: {e}", errno=e.errno) from e
        self._next_phys = 0x1000
        self._pml4 = self._alloc()
        self._pages: dict[int, tuple[int, int, int]] = {}  # va page → (pa, pte address, flags)
        self._prot: dict[int, L.Protection] = {}             # va page → its protection
        self._build()
        # System instructions at the image's instruction starts: each is an exit (with the
        # sentinel), set before anything is translated.  Without any, the sentinel stays
        # emu_start's ``until`` (Unicorn revisits every exit at each emu_start).
        self._system = sysinsn.find((s.addr, s.data) for s in image.sections if s.executable)
        if self._system:
            self.uc.ctl_exits_enabled(True)
            self.uc.ctl_set_exits([L.SENTINEL, *self._system])
        self._ctx = self.uc.context_save()
        self._exc_ctx = self.uc.context_save()    # scratch context for _end_exception
        self._eng = Engine(self.uc, 8 * WINDOW_PAGES)
        self._fault_regs = self._eng.batch(tuple(REGS[n] for n in FAULT_REGS))
        self._result_regs = self._eng.batch(tuple(REGS[n] for n in RESULT_REGS))
        # Entry register writes by (argument registers, STAC): the batch and its values.
        self._entry_regs: Bounded[tuple[object, ...], tuple[RegBatch, list[int]]] = Bounded(
            64, "machine.entry_regs")
        # The same by id(call) (the Call is kept so that its id is not reused).
        self._entry_by_call: Bounded[int, tuple[RegBatch, list[int], Call]] = Bounded(
            64, "machine.entry_by_call")
        self._layout: str | None = None
        self._pte_cache: Bounded[tuple[object, ...], list[bytes]] = Bounded(
            256, "machine.pte_tables")
        self._keeps: Bounded[tuple[object, ...], Any] = Bounded(256, "machine.keep_pages")
        # Window pages that may not hold their initial contents, with the contents they do
        # hold: (window physical base, page index) → bytes.  Every other window page holds
        # its initial contents.  A run leaves the pages it dirtied here, and the next run
        # puts back only what it needs (``_settle``): a fast-forwarded sweep whose
        # checkpoints carry the same destination pages rewrites none of them.
        self._resident: dict[tuple[int, int], bytes] = {}
        self._stack_page = self.pa((L.STACK_TOP - 8) & ~0xFFF)
        self._recording: Recording | None = None
        # PTE arrays of the two windows (each window's pages share one page table).
        self._window_ptes = [(L.USER_WINDOW - L.PAGE, self._pages[L.USER_WINDOW - L.PAGE][1]),
                             (L.KERNEL_WINDOW - L.PAGE, self._pages[L.KERNEL_WINDOW - L.PAGE][1])]
        for base, ptes in self._window_ptes:
            last = self._pages[base + (WINDOW_PAGES - 1) * L.PAGE][1]
            assert last == ptes + 8 * (WINDOW_PAGES - 1), "window PTEs must be contiguous"
        # Per window (user, kernel): the (absent pages, kept-dirty pages) its PTE array is
        # known to hold exactly, or None (``run`` step 2).
        self._pte_ok: list[tuple[object, ...] | None] = [None, None]
        self._poison_hooks: list[int] = []
        self._poison_key: tuple[int, ...] = ()
        self._instrumented = False
        self._recordings = 0
        self._hook_lines: dict[int, int] = {}
        # (direction, source alignment, poison offsets) → (lines' physical addresses, sorted;
        # physical line → virtual line).  The dicts are only read once built.
        self._poison_lines: Bounded[tuple[object, ...], tuple[tuple[int, ...], dict[int, int]]] \
            = Bounded(4096, "machine.poison_lines")
        # INTR and poison hooks are added through the C API with callbacks built once
        # (``Engine``); an exception in them is kept here and raised after emu_start, as the
        # binding does for its own hooks.
        self._hook_error: BaseException | None = None
        self._intr_cb = HOOK_INTR_CFUNC(self._intr_entry)
        self._read_cb = HOOK_MEM_ACCESS_CFUNC(self._read_entry)
        self._record_cb = HOOK_MEM_ACCESS_CFUNC(self._record_entry)
        self._intr_hook = self._eng.hook_add(UC_HOOK_INTR, self._intr_cb, 0, 1, 0)
        self._insn_cache: Bounded[tuple[int, int], int] = Bounded(4096, "machine.block_sizes")
        # Registers a redirect writes → their batch register write and values.
        self._redirects: Bounded[tuple[object, ...], tuple[RegBatch, list[int]]] = Bounded(
            256, "machine.redirects")
        self._insns = 0
        if count_insns:
            self.uc.hook_add(UC_HOOK_BLOCK, self._on_block)
        # rep movs / rep stos: one block hook per place one could start (added before any
        # block is translated: hooks are not retroactive, unicorn-notes §3).  A block hook,
        # not a code hook: any UC_HOOK_CODE, even one whose range no executed instruction
        # meets, cost the unrolled copy ~10% (measured with make bench's harness loop),
        # while QEMU's rep loop re-enters a block at the instruction at every iteration
        # after the first, which is all the bulk step needs (the first iteration runs in
        # the block that reached the instruction).
        self._string_ops: dict[int, strings.StringOp] = {}   # the image's rep strings (not a cache)
        self._string_cb = HOOK_CODE_CFUNC(self._string_entry)
        self._string_regs = self._eng.batch((X.UC_X86_REG_RCX, X.UC_X86_REG_RSI,
                                             X.UC_X86_REG_RDI, X.UC_X86_REG_RAX,
                                             X.UC_X86_REG_EFLAGS))
        self._string_out = self._eng.batch((X.UC_X86_REG_RCX, X.UC_X86_REG_RSI,
                                            X.UC_X86_REG_RDI))
        # Window pages: virtual page → (physical page, PTE address, needs EFLAGS.AC: a user
        # page on a CPU with SMAP).
        self._bulk_pages: dict[int, tuple[int, int, bool]] = {}
        for base in (L.USER_WINDOW - L.PAGE, L.KERNEL_WINDOW - L.PAGE):
            for i in range(WINDOW_PAGES):
                va = base + i * L.PAGE
                pa, pte, flags = self._pages[va]
                self._bulk_pages[va] = (pa, pte, bool(flags & PTE_U) and smap)
        self._native: native.EmuStrings | None = None
        self._native_lines: object = None
        self._native_absent: object = None
        self._native_rec = False
        self._native_absent_over = False    # more absent pages / watched ranges than the
        self._native_watch_over = False     # compiled hook's record holds: iterate instead
        if self.bulk_strings:
            found = strings.find((s.addr, s.data) for s in image.sections if s.executable)
            hook = native.string_hook() if compiled is not False else None
            if compiled and hook is None:
                raise EmulationError("the compiled helper is not available (gcc, EMU_PURE?)")
            if hook is not None and len(found) <= native.MAX_OPS:
                self._native = self._native_state(found)
                cb, ud = ctypes.c_void_p(hook), ctypes.addressof(self._native)
            else:
                cb, ud = self._string_cb, 0
            for op in found:
                self._string_ops[op.addr] = op
                self._eng.hook_add(UC_HOOK_BLOCK, cb, ud, op.addr, op.addr)
        self._run: _RunState | None = None
        self._snap: tuple[int, ...] | None = None   # the snapshot of the fault being decided
        self._fast_setup(compiled, REGS, FAULT_REGS, RESULT_REGS, _RunState)

    # -- construction -------------------------------------------------------------------

    def _alloc(self, pages: int = 1) -> int:
        pa = self._next_phys
        self._next_phys += pages * L.PAGE
        if self._next_phys > PHYS_SIZE:
            raise EmulationError("emulated physical memory exhausted")
        return pa

    def _map(self, va: int, pa: int, prot: L.Protection, *, present: bool = True) -> None:
        table = self._pml4
        for shift in (39, 30, 21):
            slot = table + ((va >> shift) & 511) * 8
            e = struct.unpack("<Q", self.uc.mem_read(slot, 8))[0]
            if not e & PTE_P:
                e = self._alloc() | PTE_P | PTE_W | PTE_U
                self.uc.mem_write(slot, struct.pack("<Q", e))
            table = e & 0x000FFFFFFFFFF000
        pte = table + ((va >> 12) & 511) * 8
        flags = ((PTE_W if prot.writable else 0) | (PTE_U if prot.user else 0)
                 | (0 if prot.executable else PTE_NX))
        self.uc.mem_write(pte, struct.pack("<Q", pa | flags | (PTE_P if present else 0)))
        self._pages[va & ~0xFFF] = (pa, pte, flags)
        self._prot[va & ~0xFFF] = prot

    def _map_range(self, va: int, size: int, prot: L.Protection) -> int:
        pages = (size + L.PAGE - 1) // L.PAGE
        pa0 = self._alloc(pages)
        for i in range(pages):
            self._map(va + i * L.PAGE, pa0 + i * L.PAGE, prot)
        return pa0

    def _build(self) -> None:
        img = self.image
        # The image: each page gets the protection of the sections on it (what any of them
        # allows, when several share it); a page no section touches is read-only and NX.
        end = max((s.end for s in img.sections), default=L.TEXT_BASE)
        pages = max((end - L.TEXT_BASE + L.PAGE - 1) // L.PAGE, 1)
        prot: dict[int, L.Protection] = {}
        for s in img.sections:
            p = L.section_protection(s.executable, s.writable)
            for page in range(s.addr & ~0xFFF, s.end, L.PAGE):
                prot[page] = prot[page].union(p) if page in prot else p
        self._text_pa = self._alloc(pages)
        for i in range(pages):
            va = L.TEXT_BASE + i * L.PAGE
            self._map(va, self._text_pa + i * L.PAGE, prot.get(va, L.RODATA))
        for s in img.sections:
            self.uc.mem_write(self._text_pa + (s.addr - L.TEXT_BASE), s.data)
        stub_pa = self._map_range(L.STUB_BASE, 2 * L.PAGE, L.TEXT)
        self.uc.mem_write(stub_pa, b"\x0f\x0b" * L.PAGE)          # ud2: a call out of the image
        sent_pa = self._map_range(L.SENTINEL, L.PAGE, L.TEXT)
        self.uc.mem_write(sent_pa, b"\xcc" * L.PAGE)
        self._map_range(L.STACK_BASE, L.STACK_PAGES * L.PAGE, L.STACK)
        self._user_pa = self._map_range(L.USER_WINDOW - L.PAGE, WINDOW_SPAN, L.USER_BUFFER)
        self._kern_pa = self._map_range(L.KERNEL_WINDOW - L.PAGE, WINDOW_SPAN, L.KERNEL_BUFFER)
        uc = self.uc
        uc.reg_write(X.UC_X86_REG_CR3, self._pml4)
        uc.msr_write(0xC0000080, EFER_LME | EFER_LMA | EFER_NXE)
        uc.reg_write(X.UC_X86_REG_CR4, CR4_PAE | (CR4_SMAP if self.smap else 0)
                     | (CR4_SMEP if self.smep else 0))
        uc.reg_write(X.UC_X86_REG_CR0, (1 << 31) | (1 << 16) | 1)  # PG | WP | PE
        uc.reg_write(X.UC_X86_REG_EFLAGS, 0x2)

    # -- address helpers ------------------------------------------------------------------

    def pa(self, va: int) -> int:
        """Physical address of a mapped virtual address."""
        pa, _, _ = self._pages[va & ~0xFFF]
        return pa + (va & 0xFFF)

    def read(self, va: int, size: int) -> bytes:
        return bytes(self.uc.mem_read(self.pa(va), size))

    # -- running ------------------------------------------------------------------------------

    def run(self, call: Call, bufs: Buffers, handler: FaultHandler, *,
            budget: int = DEFAULT_BUDGET, start: Checkpoint | None = None) -> RawRun:
        """Run one case from a clean state and report what happened.

        Args:
            call: entry point and argument registers.
            bufs: buffer placement and the faults to inject.
            handler: the kernel policy deciding each fault.
            budget: instruction limit; running out gives ``State.HANG``.
            start: resume from this checkpoint of the same call's clean run instead of the
                entry point (``record``); the case must differ from the clean run only in
                faults that the clean run first touches at or after the checkpoint.

        Raises:
            EmulationError: Unicorn failed for a reason that is not kernel behaviour.
        """
        if self._fast is not None:           # the compiled path (fastpath.py), if it takes it
            raw = self._fast_run(call, bufs, handler, budget, start)
            if raw is not None:
                return raw
        uc = self.uc
        eng = self._eng
        eng.context_restore(self._ctx if start is None else start.ctx)
        # 1. Buffer windows: source pattern in the source window, 0xFF in the destination
        #    window.  They are rewritten only when the direction changes; pages an earlier
        #    run left changed are put back in step 4 (``_settle``).
        if bufs.direction != self._layout:
            src_pa, dst_pa = self._window_pa(bufs.direction)
            uc.mem_write(src_pa, SRC_WINDOW_BYTES)
            uc.mem_write(dst_pa, DST_WINDOW_BYTES)
            self._layout = bufs.direction
            self._resident = {}
        # 2. Page tables of both windows: present bits for this case; dirty bits set on the
        #    destination buffer's pages (``keep``: the run will most likely write them, and
        #    they are read back whatever it does) and clear elsewhere, so that the CPU marks
        #    any other page it writes.  A window whose PTEs already say exactly that needs no
        #    write (accessed bits may stay set); after a write, the CR3 write in step 4
        #    flushes the TLB so that the CPU walks the new entries.  Without one, the TLB
        #    stays warm from the last run: a sweep's cases usually rewrite nothing.
        absent = (frozenset((bufs.user + off) & ~0xFFF for off in bufs.unmapped)
                  if bufs.unmapped else _NO_PAGES)
        keep = self._keep(bufs)
        pte_ok = self._pte_ok
        flush = False
        for w, table in enumerate(self._pte_tables(absent, keep)):
            key = (absent, keep[w])
            if pte_ok[w] != key:
                eng.mem_write(self._window_ptes[w][1], table)
                pte_ok[w] = key
                flush = True
        # 3. Poisoned lines: one read hook per line over [line-7, line+63] (physical),
        #    on translated blocks that call read hooks (``_instrument``).
        if bufs.poison:
            pkey = (bufs.direction, bufs.src_align, bufs.poison)
            hit = self._poison_lines.get(pkey)
            if hit is None:
                src = bufs.src
                lv = {self.pa(va): va for va in {(src + off) & ~(L.LINE - 1)
                                                for off in bufs.poison}}
                hit = self._poison_lines[pkey] = (tuple(sorted(lv)), lv)
            lines, line_va = hit
        else:
            lines, line_va = (), {}
        if lines != self._poison_key:
            for h in self._poison_hooks:
                eng.hook_del(h)
            if lines:
                self._instrument()
            self._poison_hooks = [eng.hook_add(UC_HOOK_MEM_READ, self._read_cb, line,
                                               line - 7, line + L.LINE - 1) for line in lines]
            self._poison_key = lines
        self._hook_lines = line_va
        # 4. Window pages as the start needs them (initial contents, or the checkpoint's),
        #    CR3 if step 2 wrote PTEs (the TLB flush), the registers (one batch write) and
        #    the return address, or the checkpoint's stack.
        if self._resident or start is not None:
            self._settle(start.page_map if start is not None else {})
        if flush:
            eng.write(X.UC_X86_REG_CR3, self._pml4)
        if start is None:
            rsp = L.STACK_TOP - 8
            eng.mem_write(self._stack_page + (rsp & 0xFFF), SENTINEL_BYTES)
            # By the Call object first (callers reuse them), else by its registers.
            entry = self._entry_by_call.get(id(call))
            if entry is None or entry[2] is not call:
                key = (call.regs, call.stac)
                regs = self._entry_regs.get(key)
                if regs is None:
                    regs = self._entry_regs[key] = (
                        eng.batch((X.UC_X86_REG_RSP, *(REGS[n] for n, _ in call.regs),
                                   X.UC_X86_REG_EFLAGS)),
                        [rsp, *(value & 0xFFFFFFFFFFFFFFFF for _, value in call.regs),
                         0x2 | (EFLAGS_AC if call.stac else 0)])
                entry = self._entry_by_call[id(call)] = (*regs, call)
            entry[0].write(entry[1])
            begin = call.entry
        else:
            eng.mem_write(self._stack_page, start.stack)
            begin = start.rip
        self._run = _RunState(handler, absent)
        self._insns = 0
        self._hook_error = None
        if self._native is not None:
            self._native_sync(absent)
        # 5. Run.
        try:
            # Uc.emu_start, called directly; a binding hook (count_insns) that raised left
            # its exception in the binding's _hook_exception.
            uc._hook_exception = None  # noqa: SLF001
            try:
                status = eng.emu_start(begin, L.SENTINEL, budget)
            finally:
                self._native_off()
            if status:
                raise UcError(status)
            if uc._hook_exception is not None:  # noqa: SLF001
                raise uc._hook_exception  # noqa: SLF001
            if self._hook_error is not None:
                raise self._hook_error
        except UcError as e:
            rip = eng.read(X.UC_X86_REG_RIP)
            if e.errno != UC_ERR_INSN_INVALID or self._run is None:
                self._run = None
                self._reset_windows()
                raise EmulationError(f"unicorn stopped at {self.image.symbolize(rip)}: {e}",
                                     pc=rip, errno=e.errno) from e
            # ud2 or an undefined opcode: Unicorn stops instead of raising #UD (vector 6).
            # In the kernel that is an oops; a call out of the image lands on a ud2 stub.
            self._invalid_opcode(rip)
        except BaseException:
            # A hook raised (e.g. a fixup type emu has no model of): leave the machine clean
            # for the next case before the error goes up.
            self._run = None
            self._reset_windows()
            raise
        run, self._run = self._run, None
        assert run is not None
        # 6. How it ended: halted by a hook, at the sentinel (returned), at a system
        #    instruction's exit, or out of budget.
        values = self._result_regs.read()
        regs = tuple(zip(RESULT_REGS, values))
        rip, eflags = values[_RESULT_RIP], values[_RESULT_EFLAGS]
        state, message = self._ending(run.halt, rip, budget)
        # 7. What was written: only pages the CPU marked dirty are read back; with the
        #    pages the start carried they are the run's changes, and stay resident for the
        #    next run to settle.
        resident = self._resident
        dirty = self._dirty_pages()
        for key in dirty:
            resident[key] = eng.mem_read(key[0] + key[1] * L.PAGE, L.PAGE)
        #    A window where the CPU dirtied a page outside ``keep`` needs its PTEs
        #    rewritten before the next run.
        for w, (wpa, lo_hi) in enumerate(zip((self._user_pa, self._kern_pa), keep)):
            lo, hi = lo_hi
            if any(d_wpa == wpa and not lo <= i < hi for d_wpa, i in dirty):
                pte_ok[w] = None
        src_pa, _ = self._window_pa(bufs.direction)
        src_pages, dst_pages = [], []
        for (wpa, i), data in sorted(resident.items()):
            (src_pages if wpa == src_pa else dst_pages).append((i, data))
        return RawRun(
            state=state, message=message, regs=regs, faults=tuple(run.faults),
            src_pages=tuple(src_pages), dst_pages=tuple(dst_pages),
            ac_at_return=bool(eflags & EFLAGS_AC),
            insns=self._insns if self.count_insns else None,
        )

    def _ending(self, halt: Halt | None, rip: int, budget: int) -> tuple[State, str]:
        """How a run ended (``run`` step 6, both paths): halted by a hook, stopped at the
        Unicorn exit of a system instruction, returned to the sentinel, or out of budget."""
        if halt is None and rip != L.SENTINEL and rip in self._system:
            halt = self._system_halt(rip, self._system[rip])     # stopped at its exit
        if halt is not None:
            return halt.state, halt.message
        if rip == L.SENTINEL:
            return State.RETURNED, ""
        return State.HANG, (f"no return after {budget} instructions; stopped at "
                            f"{self.image.symbolize(rip)}")

    def _instrument(self) -> None:
        """Make every translated block call the read hooks, from now on.

        Blocks translated while no read hook exists never call read hooks, and blocks
        translated while one exists look the hook list up at run time (unicorn-notes §3).
        The first time a read hook is needed, a hook that never matches (a range above
        physical memory) is added for good and the TB cache flushed once.  Adding and
        removing poison or recording hooks then needs no flush, which a sweep would
        otherwise pay (with a re-translation) at every switch between a case with poison
        and one without; the price is the read-hook path on the loads of runs without
        poison.
        """
        if not self._instrumented:
            self._eng.hook_add(UC_HOOK_MEM_READ, self._read_cb, PHYS_SIZE, PHYS_SIZE,
                               PHYS_SIZE)
            self.uc.ctl_flush_tb()
            self._instrumented = True

    def _keep(self, bufs: Buffers) -> tuple[tuple[int, int], tuple[int, int]]:
        """Per window (user, kernel): the [first, last+1) page indices (0: the lower guard
        page) whose PTEs keep the dirty bit set across runs: the destination buffer's, when
        it spans at most ``KEEP_PAGES`` pages (a page kept dirty is read back after every
        run, so for a long buffer the TLB flush costs less than the reads)."""
        key = (bufs.direction, bufs.dst_align, bufs.length)
        got = self._keeps.get(key)
        if got is None:
            lo = L.PAGE + bufs.dst_align
            rng = (lo // L.PAGE, (lo + bufs.length + L.PAGE - 1) // L.PAGE) if bufs.length \
                else (0, 0)
            if rng[1] - rng[0] > KEEP_PAGES:
                rng = (0, 0)
            got = self._keeps[key] = ((0, 0), rng) if bufs.direction == "from" else \
                (rng, (0, 0))
        return got

    def _pte_tables(self, absent: frozenset[int],
                    keep: tuple[tuple[int, int], tuple[int, int]]) -> list[bytes]:
        """PTE arrays of both windows: ``absent`` pages not present, accessed and dirty bits
        set on the ``keep`` pages and clear elsewhere."""
        cached = self._pte_cache.get((absent, keep))
        if cached is None:
            cached = [b"".join(struct.pack("<Q", self._pages[base + i * L.PAGE][0]
                                           | self._pages[base][2]
                                           | (0 if base + i * L.PAGE in absent else PTE_P)
                                           | (PTE_A | PTE_D if lo <= i < hi else 0))
                               for i in range(WINDOW_PAGES))
                      for (base, _), (lo, hi) in zip(self._window_ptes, keep)]
            self._pte_cache[absent, keep] = cached
        return cached

    def _window_pa(self, direction: str) -> tuple[int, int]:
        """Physical bases (guard page included) of the (source, destination) windows."""
        return ((self._user_pa, self._kern_pa) if direction == "from"
                else (self._kern_pa, self._user_pa))

    def _dirty_pages(self) -> list[tuple[int, int]]:
        """(window physical base, page index) of every window page written by the last run."""
        out = []
        pte_array = self._eng.pte_array
        for (_, ptes), wpa in zip(self._window_ptes, (self._user_pa, self._kern_pa)):
            # The dirty bits of all the window's PTEs as one integer (bit 6 of each
            # little-endian 64-bit entry); usually zero for one of the two windows.
            dirty = int.from_bytes(pte_array(ptes), "little") & _DIRTY_MASK
            while dirty:
                low = dirty & -dirty
                out.append((wpa, low.bit_length() >> 6))
                dirty ^= low
        return out

    def _initial_page(self, wpa: int, i: int) -> bytes:
        src_pa, _ = self._window_pa(self._layout or "from")
        return SRC_PAGES[i] if wpa == src_pa else DST_PAGES[i]

    def _settle(self, want: dict[tuple[int, int], bytes]) -> None:
        """Make the window pages hold their initial contents except ``want`` ((window base,
        page index) → contents), writing only the pages that differ."""
        eng = self._eng
        old = self._resident
        for key in old:
            if key not in want:
                eng.mem_write(key[0] + key[1] * L.PAGE, self._initial_page(*key))
        for key, data in want.items():
            cur = old.get(key)
            if cur is not data and cur != data:
                eng.mem_write(key[0] + key[1] * L.PAGE, data)
        self._resident = dict(want)      # run() adds the pages it dirties

    def _reset_windows(self) -> None:
        """After a failed run: every window page back to its initial contents."""
        for key in set(self._dirty_pages()) | self._resident.keys():
            self._eng.mem_write(key[0] + key[1] * L.PAGE, self._initial_page(*key))
        self._resident = {}
        self._pte_ok = [None, None]

    # -- hooks ----------------------------------------------------------------------------------

    def reg(self, name: str) -> int:
        """A register's value (``CpuView``); while a handler decides a fault, the registers
        of the fault's snapshot come from it instead of from Unicorn (they are the same)."""
        snap = self._snap
        if snap is not None:
            i = _SNAPSHOT_INDEX.get(name)
            if i is not None:
                return snap[i]
        return self._eng.read(REGS[name])

    def _fault_state(self) -> tuple[int, int, tuple[int, ...]]:
        """RIP, CR2 and the values of the registers a FaultRecord keeps (``SNAPSHOT_REGS``)."""
        values = self._fault_regs.read()
        return values[0], values[1], tuple(values[2:])

    def _snapshot(self) -> tuple[int, ...]:
        return self._fault_state()[2]

    def _dispatch(self, event: FaultEvent, before: tuple[int, ...]) -> None:
        """Ask the handler about ``event`` and apply its resolution; ``before`` is the
        register snapshot (``SNAPSHOT_REGS``) taken when the fault was raised."""
        run = self._run
        assert run is not None
        if len(run.faults) >= MAX_FAULTS:
            res: Resolution = Halt(State.HANG, f"{MAX_FAULTS} faults taken: the fixup faults "
                                   f"again forever (last at {self.image.symbolize(event.rip)})")
        else:
            self._snap = before
            try:
                res = run.handler(self, event)
            finally:
                self._snap = None
        run.faults.append(FaultRecord(event, res, before))
        if isinstance(res, Halt):
            run.halt = res
            self._native_off()
            self._eng.emu_stop()
            return
        if res.regs:
            # One batch write per distinct set of registers, built once.
            writes = self._redirects.get(res.regs)
            if writes is None:
                writes = self._redirects[res.regs] = (
                    self._eng.batch(tuple(REGS[n] for n, _ in res.regs)),
                    [v & 0xFFFFFFFFFFFFFFFF for _, v in res.regs])
            writes[0].write(writes[1])
        # RIP on its own: only uc_reg_write ends the translated block at a new PC
        # (uc_reg_write_batch does not, and the load would run again).
        self._eng.write(X.UC_X86_REG_RIP, res.rip)
        kind = event.kind
        if kind is FaultKind.PF or kind is FaultKind.GP:     # _CONTRIBUTORY (Enum hashing is slow)
            self._end_exception(TRAPNR[kind])

    def _end_exception(self, vector: int) -> None:
        """Mark a redirected exception as delivered.

        QEMU remembers the vector of an exception in flight (``env->old_exception``) and
        clears it only when the exception is delivered through the IDT, which never happens
        when ``UC_HOOK_INTR`` handles it.  Without this, the next #PF of the same run (a
        handle_tail retry faulting again) would be promoted to a double fault (vector 8).
        The field is located once per process by comparing a context saved inside the hook
        with the initial context (-1 there, the vector here) and is reset through a
        context save / patch / restore (into a context allocated once).
        """
        global _OLD_EXCEPTION_OFFSET
        ctx = self._exc_ctx
        self.uc.context_update(ctx)
        if _OLD_EXCEPTION_OFFSET is None:
            raw, init = bytes(ctx), bytes(self._ctx)
            hits = [off for off in range(0, min(len(raw), len(init)) - 3, 4)
                    if init[off:off + 4] == b"\xff\xff\xff\xff"
                    and raw[off:off + 4] == struct.pack("<i", vector)]
            if len(hits) != 1:
                raise EmulationError("cannot locate QEMU's old_exception field in the Unicorn "
                                     f"context ({len(hits)} candidates); unicorn version?")
            _OLD_EXCEPTION_OFFSET = hits[0]
        base = ctypes.cast(ctx.context, ctypes.c_void_p).value
        assert base is not None
        ctypes.memmove(base + _OLD_EXCEPTION_OFFSET, b"\xff\xff\xff\xff", 4)
        self.uc.context_restore(ctx)

    def _intr_entry(self, _uch: object, intno: int, _ud: object) -> None:
        """UC_HOOK_INTR callback (C API)."""
        try:
            self._on_intr(intno)
        except BaseException as e:  # noqa: BLE001 - re-raised by run() after emu_start
            self._hook_failed(e)

    def _read_entry(self, _uch: object, _access: int, addr: int, size: int, _value: int,
                    line: int) -> None:
        """UC_HOOK_MEM_READ callback of a poisoned line (C API; user data: the line's
        physical address).  The range starts 7 bytes early, so test for real overlap."""
        if addr < line + L.LINE and addr + size > line:
            try:
                self._on_read(addr, size, line)
            except BaseException as e:  # noqa: BLE001 - re-raised by run() after emu_start
                self._hook_failed(e)

    def _hook_failed(self, e: BaseException) -> None:
        """Keep the first exception a hook raised and stop, as the binding's hooks do."""
        if self._hook_error is None:
            self._hook_error = e
        self._eng.emu_stop()

    def _on_intr(self, intno: int) -> None:
        run = self._run
        if run is None or run.halt is not None:
            self._eng.emu_stop()
            return
        rip, addr, before = self._fault_state()
        kind = VECTORS.get(intno, FaultKind.TRAP)
        if kind is FaultKind.PF:
            page = addr & ~0xFFF
            user = addr < L.TASK_SIZE_MAX
            prot = self._prot.get(page)
            if prot is None or page in run.absent:             # not present
                self._dispatch(FaultEvent(kind, rip, addr, user), before)
                return
            # A present page: the access broke its protection.  A fetch, a write to a
            # read-only page, or (a user page) a data access SMAP refuses.
            if self._fetch_fault(rip, addr, prot):
                error = PF_PROT | PF_INSTR
            elif not prot.writable:
                error = PF_PROT | PF_WRITE
            elif user and self.smap and not before[-1] & EFLAGS_AC:   # before[-1]: eflags
                event = FaultEvent(kind, rip, addr, user, PF_PROT)
                res = Halt(State.SMAP_VIOLATION,
                           f"SMAP violation: user access to {addr:#x} with EFLAGS.AC clear at "
                           f"{self.image.symbolize(rip)}")
                run.faults.append(FaultRecord(event, res, before))
                run.halt = res
                self._native_off()
                self._eng.emu_stop()
                return
            else:
                raise EmulationError(f"unexplained #PF on the present page {page:#x} at "
                                     f"{self.image.symbolize(rip)}")
            self._dispatch(FaultEvent(kind, rip, addr, user, error), before)
            return
        if kind is FaultKind.UD:
            for name, stub in self.image.stubs.items():
                if stub <= rip < stub + 16:
                    event = FaultEvent(kind, rip, rip, False)
                    res = Halt(State.OOPS, f"call to '{name}', which is not in the image")
                    run.faults.append(FaultRecord(event, res, before))
                    run.halt = res
                    self._native_off()
                    self._eng.emu_stop()
                    return
        # A system instruction that traps (int3, int n: RIP is past it) or that Unicorn
        # refuses (#GP, #UD: RIP is at it) and that no exit stopped (sysinsn.py).
        if kind is FaultKind.TRAP:
            page = (rip - 2) & ~0xFFF
            if page in self._pages and ((rip - 1) & ~0xFFF) in self._pages:
                hit = sysinsn.trapped(intno, self.read(rip - 2, 2))
                if hit is not None:
                    self._halt_now(self._system_halt(rip - hit[0], hit[1]))
                    return
        elif kind is FaultKind.GP or kind is FaultKind.UD:
            name = self._system_at(rip)
            if name is not None:
                self._halt_now(self._system_halt(rip, name))
                return
        self._dispatch(FaultEvent(kind, rip, 0, False), before)

    def _system_at(self, rip: int) -> str | None:
        """The system instruction at ``rip`` (``sysinsn.decode``), if any."""
        if (rip & ~0xFFF) not in self._pages:
            return None
        code = self.read(rip, min(15, L.PAGE - (rip & 0xFFF)))
        if len(code) < 15 and ((rip + 15) & ~0xFFF) in self._pages:
            code += self.read((rip + 15) & ~0xFFF, 15 - len(code))
        return sysinsn.decode(code)

    def _system_halt(self, rip: int, name: str) -> Halt:
        return Halt(State.SYSTEM_INSTRUCTION,
                    f"system instruction '{name}' at {self.image.symbolize(rip)}: a copy "
                    "routine never executes it, and emu does not model it")

    def _halt_now(self, res: Halt) -> None:
        """End the run in ``res`` from inside a hook."""
        run = self._run
        assert run is not None
        run.halt = res
        self._native_off()
        self._eng.emu_stop()

    def _fetch_fault(self, rip: int, addr: int, prot: L.Protection) -> bool:
        """Was the #PF at ``addr`` (a present page of protection ``prot``) raised by fetching
        the instruction at ``rip``, rather than by its data access?

        Only a page the kernel may not execute (NX, or a user page under SMEP) refuses a
        fetch, and only a read-only page (or a user page under SMAP) a data access.  When
        the page could refuse either, the fetch it was if the instruction lies on that page,
        or starts before it and runs into it (decoded to know).
        """
        if prot.executable and not (prot.user and self.smep):
            return False
        if prot.writable and not (prot.user and self.smap):
            return True
        page = addr & ~0xFFF
        if rip & ~0xFFF == page:
            return True
        if addr != page or not 0 < page - rip < 15 or (rip & ~0xFFF) not in self._pages:
            return False
        from capstone import CS_ARCH_X86, CS_MODE_64, Cs
        code = self.read(rip, page - rip) + self.read(page, 15 - (page - rip))
        size = next((i[1] for i in Cs(CS_ARCH_X86, CS_MODE_64).disasm_lite(code, rip, 1)), 15)
        return rip + size > page

    def where(self, addr: int) -> str:
        """The address's place in the memory map (``CpuView``): the region's name, and for
        the image where in it, e.g. "kernel text (f+0x4)"."""
        prot = self._prot.get(addr & ~0xFFF)
        if prot is None:
            return "an unmapped address"
        if L.TEXT_BASE <= addr < L.STUB_BASE:
            return f"{prot.name} ({self.image.symbolize(addr)})"
        return prot.name

    def _invalid_opcode(self, rip: int) -> None:
        run = self._run
        assert run is not None
        event = FaultEvent(FaultKind.UD, rip, rip, False)
        name = next((n for n, stub in self.image.stubs.items() if stub <= rip < stub + 16), None)
        system = self._system_at(rip) if name is None else None
        if system is not None:
            run.halt = self._system_halt(rip, system)
            self._native_off()
            return
        if name is not None:
            res = Halt(State.OOPS, f"call to '{name}', which is not in the image")
        else:
            res = Halt(State.OOPS, f"invalid opcode at {self.image.symbolize(rip)}")
        run.faults.append(FaultRecord(event, res, self._snapshot()))
        run.halt = res
        self._native_off()

    def _on_read(self, addr: int, size: int, line: int) -> None:
        run = self._run
        if run is None or run.halt is not None:
            return
        # An access that spans two poisoned lines reaches both lines' hooks; only the hook
        # of the lower line reports it, so one access is one machine check.
        first = addr & ~(L.LINE - 1)
        if first not in self._hook_lines:
            first += L.LINE
        if line != first:
            return
        values = self._fault_regs.read()            # _fault_state, inlined
        rip, before = values[0], tuple(values[2:])
        va = self._hook_lines[line] + max(addr - line, 0)
        self._dispatch(FaultEvent(FaultKind.MC, rip, va, va < L.TASK_SIZE_MAX), before)

    # -- rep movs / rep stos in bulk (strings.py) -------------------------------------------

    def _native_state(self, ops: list[strings.StringOp]) -> native.EmuStrings:
        """The compiled hook's record: Unicorn's entry points, the windows, the instructions."""
        from unicorn.unicorn_py3.unicorn import uclib
        st = native.EmuStrings()
        addr = lambda f: ctypes.cast(f, ctypes.c_void_p).value  # noqa: E731
        st.f_reg_read_batch = addr(uclib.uc_reg_read_batch)
        st.f_reg_write_batch = addr(uclib.uc_reg_write_batch)
        st.f_mem_read = addr(uclib.uc_mem_read)
        st.f_mem_write = addr(uclib.uc_mem_write)
        st.reg_ids[:] = [X.UC_X86_REG_RCX, X.UC_X86_REG_RSI, X.UC_X86_REG_RDI,
                         X.UC_X86_REG_RAX, X.UC_X86_REG_EFLAGS]
        for w, ((base, ptes), wpa) in enumerate(zip(self._window_ptes,
                                                    (self._user_pa, self._kern_pa))):
            for i in range(WINDOW_PAGES):        # the C code takes each window as one run
                assert self._bulk_pages[base + i * L.PAGE][:2] == (wpa + i * L.PAGE,
                                                                   ptes + 8 * i)
            st.win_va[w], st.win_pa[w], st.win_pte[w] = base, wpa, ptes
            st.win_user[w], st.win_pages[w] = int(w == 0 and self.smap), WINDOW_PAGES
        st.nops = len(ops)
        for i, op in enumerate(ops):
            st.op_addr[i], st.op_size[i] = op.addr, op.size
            st.op_kind[i] = 0 if op.op == "movs" else 1
        self._native_buf = ctypes.create_string_buffer(WINDOW_SPAN)
        st.buf, st.buf_size = ctypes.addressof(self._native_buf), WINDOW_SPAN
        return st

    def _native_sync(self, absent: frozenset[int]) -> None:
        """Give the compiled hook this run's absent pages and watched ranges (poisoned
        lines, the recording's unseen lines) and switch it on."""
        st = self._native
        assert st is not None
        if absent is not self._native_absent:
            pages = sorted(absent)
            self._native_absent_over = len(pages) > native.MAX_ABSENT
            st.nabsent = min(len(pages), native.MAX_ABSENT)
            st.absent[:st.nabsent] = pages[:st.nabsent]
            self._native_absent = absent
        if (self._hook_lines is not self._native_lines or self._native_rec
                or self._recording is not None):
            self._native_watch()
        st.active = int(not (self._native_absent_over or self._native_watch_over))

    def _native_watch(self) -> None:
        st = self._native
        assert st is not None
        rec = self._recording
        lines = self._hook_lines
        if rec is None and len(lines) <= 1:        # a sweep's usual case: no or one line
            for va in lines.values():
                st.watch_lo[0], st.watch_hi[0] = va, va + L.LINE
            st.nwatch = len(lines)
            self._native_watch_over = False
            self._native_lines, self._native_rec = lines, False
            return
        ranges = [(va, va + L.LINE) for va in lines.values()]
        if rec is not None and rec.low < rec.hi:
            ranges.append((rec.va + max(rec.low, rec.lo) - rec.lo, rec.va + rec.hi - rec.lo))
        self._native_watch_over = len(ranges) > native.MAX_WATCH
        if self._native_watch_over:                # more than the record holds: iterate
            st.active = 0
            ranges = []
        st.nwatch = len(ranges)
        for i, (a, b) in enumerate(ranges):
            st.watch_lo[i], st.watch_hi[i] = a, b
        self._native_lines = self._hook_lines
        self._native_rec = rec is not None

    def _native_off(self) -> None:
        """The run halted: the compiled hook does nothing more in it."""
        if self._native is not None:
            self._native.active = 0

    def _string_entry(self, _uch: object, address: int, _size: int, _ud: object) -> None:
        """UC_HOOK_BLOCK callback of a block starting at a rep string instruction (C API)."""
        try:
            self._on_string(address)
        except BaseException as e:  # noqa: BLE001 - re-raised by run() after emu_start
            self._hook_failed(e)

    def _on_string(self, addr: int) -> None:
        """Before an iteration of a rep string instruction: run the iterations nothing
        watches in one step and leave the rest (from the first watched one) to Unicorn.

        1. Read RCX, RSI, RDI, RAX, EFLAGS; nothing to do when RCX is 0.
        2. ``strings.plan``: iterations whose pages are window pages, present and (for user
           pages) accessible under SMAP, and whose reads meet no poisoned line and no line
           the fast-forward recording has still to see.
        3. Copy (or store) them, set the accessed/dirty bits the CPU would have set, and
           advance RCX, RSI, RDI (the string instructions change no other register or flag).
        """
        run = self._run
        if run is None or run.halt is not None:
            return
        op = self._string_ops[addr]
        rcx, rsi, rdi, rax, eflags = self._string_regs.read()
        if rcx == 0:
            return
        pages, absent, ac = self._bulk_pages, run.absent, eflags & EFLAGS_AC

        def allowed(page: int) -> bool:
            p = pages.get(page)
            return p is not None and page not in absent and bool(ac or not p[2])

        watched = [(va, va + L.LINE) for va in self._hook_lines.values()]
        rec = self._recording
        if rec is not None and rec.low < rec.hi:
            watched.append((rec.va + max(rec.low, rec.lo) - rec.lo, rec.va + rec.hi - rec.lo))
        k = strings.plan(op, rcx, rsi, rdi, eflags, allowed, allowed, watched)
        if not k:
            return
        down = bool(eflags & strings.EFLAGS_DF)
        size = op.size
        wlo, whi = strings.span(rdi, size, down, k)
        if op.op == "stos":
            self._vwrite(wlo, strings.stos_bytes(rax, size, k))
        else:
            rlo, rhi = strings.span(rsi, size, down, k)
            if rhi <= wlo or whi <= rlo:
                self._vwrite(wlo, self._vread(rlo, rhi))
            else:                                          # overlapping: element order matters
                ulo, uhi = min(rlo, wlo), max(rhi, whi)
                mem = bytearray(self._vread(ulo, uhi))
                strings.sequential_copy(mem, rsi - ulo, rdi - ulo, k, size, down)
                self._vwrite(wlo, bytes(mem[wlo - ulo:whi - ulo]))
            self._touch(rlo, rhi, PTE_A)
        self._touch(wlo, whi, PTE_A | PTE_D)
        step = -k * size if down else k * size
        mask = 0xFFFFFFFFFFFFFFFF
        self._string_out.write([rcx - k, (rsi + step) & mask if op.op == "movs" else rsi,
                                (rdi + step) & mask])

    def _runs(self, lo: int, hi: int) -> list[tuple[int, int, int, int]]:
        """[lo, hi) (virtual, window pages) as runs of physically contiguous pages:
        (physical address, bytes, first PTE address, PTE count).  A window's pages, and
        their PTEs, are contiguous, so a copy within one window is one run."""
        out: list[list[int]] = []
        pages = self._bulk_pages
        while lo < hi:
            page = lo & ~0xFFF
            n = min(hi, page + L.PAGE) - lo
            pa, pte, _ = pages[page]
            pa += lo & 0xFFF
            last = out[-1] if out else None
            if last is not None and last[0] + last[1] == pa and last[2] + 8 * last[3] == pte:
                last[1] += n
                last[3] += 1
            else:
                out.append([pa, n, pte, 1])
            lo += n
        return [(a, b, c, d) for a, b, c, d in out]

    def _vread(self, lo: int, hi: int) -> bytes:
        """Bytes [lo, hi) of window pages (virtual addresses)."""
        read = self._eng.mem_read_span
        parts = [read(pa, n) for pa, n, _, _ in self._runs(lo, hi)]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _vwrite(self, lo: int, data: bytes) -> None:
        """Write ``data`` at ``lo`` (virtual, window pages)."""
        write = self._eng.mem_write
        pos = 0
        for pa, n, _, _ in self._runs(lo, lo + len(data)):
            write(pa, data if n == len(data) else data[pos:pos + n])
            pos += n

    def _touch(self, lo: int, hi: int, bits: int) -> None:
        """Set ``bits`` (accessed, dirty) in the PTEs of the window pages [lo, hi) covers."""
        eng = self._eng
        for _, _, pte, count in self._runs(lo, hi):
            old = int.from_bytes(eng.mem_read_span(pte, 8 * count), "little")
            new = old | (bits * ((1 << (64 * count)) - 1) // 0xFFFFFFFFFFFFFFFF)
            if new != old:
                eng.mem_write(pte, new.to_bytes(8 * count, "little"))

    def _on_block(self, uc: Uc, address: int, size: int, _ud: object) -> None:
        key = (address, size)
        n = self._insn_cache.get(key)
        if n is None:
            from capstone import CS_ARCH_X86, CS_MODE_64, Cs
            code = bytes(uc.mem_read(self.pa(address), size))
            n = sum(1 for _ in Cs(CS_ARCH_X86, CS_MODE_64).disasm_lite(code, address))
            self._insn_cache[key] = n
        self._insns += n

    def close(self) -> None:
        """Release the Unicorn instance now (hooks keep it alive until the GC otherwise)."""
        uc = getattr(self, "uc", None)
        if uc is not None:
            try:
                uc._Uc__finalizer()  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 - best effort at teardown
                pass
            self.uc = None  # type: ignore[assignment]


class _RunState:
    """The case being run, as the hooks see it."""

    __slots__ = ("handler", "absent", "faults", "halt")

    def __init__(self, handler: FaultHandler, absent: frozenset[int]) -> None:
        self.handler = handler
        self.absent = absent
        self.faults: list[FaultRecord] = []
        self.halt: Halt | None = None

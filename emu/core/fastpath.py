"""The per-case harness in C: ``Machine.run`` around ``emu_start``, and the fault hooks.

``Machine.run`` in Python costs about as much as the Unicorn run it wraps (resetting the
context, the page tables and the window pages, the entry registers, reading the results and
the pages written back), and every fault costs a Python callback into the kernel policy.
``Compiled`` (a mixin of the machine, like ``Recorder``) runs the common case through
``emu_run_case`` in the compiled helper (``_fast.c``) instead:

* steps 2-7 of ``Machine.run`` in one call: context restore, the windows' PTE arrays (written
  only when they change), the poison hooks, the window pages a start needs, CR3, the entry
  registers and return address (or the checkpoint's stack), the bulk-string hook's state,
  ``emu_start``, the result registers, and the read-back of the pages the CPU dirtied;
* the #MC read hook and the #PF interrupt hook in C, with a memo of the fault policy: a
  handler that offers ``reuse(kind, rip)`` (``records.Reuse``; the kernel policy does) has
  its resolution of a fault kept in a table keyed by (rip, kind) and, when the resolution
  depends on it, by whether the faulting load's source is a user address.  A hit is applied
  in C (registers, RIP, QEMU's exception state, or a halt) and recorded; a miss, and any
  fault the C hooks do not model (SMAP, #GP, #UD, a #PF outside the case's absent pages, the
  256th fault), is handed to the machine's Python hooks, which decide it exactly as in the
  Python path and may fill the table.

The Python path stays the reference: it runs under ``EMU_PURE=1``, without gcc, with
``compiled=False``, and for the runs the C path does not model (recordings, instruction
counting, more poisoned lines or absent pages than its records hold).  Both leave the same
``RawRun``; tests/unit/test_fastpath.py compares them case by case.  Switching from one path
to the other hands over what each keeps about the machine (poison hooks, the PTE arrays it
wrote, the pages left changed).
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any

from emu.caching import Bounded
from emu.core import layout as L
from emu.core import native
from emu.core.records import (SRC_WINDOW_BYTES, DST_WINDOW_BYTES, SNAPSHOT_REGS, Buffers, Call,
                              FaultEvent, FaultHandler, FaultKind, FaultRecord, Halt, RawRun,
                              Redirect, Reuse, State)
from emu.errors import EmulationError

_U64 = ctypes.c_uint64
WMAX, MAX_LINES, MAX_ENTRY, NSNAP, NRESULT = 32, 16, 16, 10, 12
NFAULT = 2 + NSNAP
MAX_FAULTS, REC_W, MAX_MEMO, MEMO_REGS = 256, 16, 512, 8
MAX_ABSENT = native.MAX_ABSENT
#: Fault kinds by their code in ``_fast.c``.
KINDS = (FaultKind.PF, FaultKind.MC, FaultKind.GP, FaultKind.UD, FaultKind.TRAP)
_CODE = {k: i for i, k in enumerate(KINDS)}
_DEFER_READ = 0
_MASK = 0xFFFFFFFFFFFFFFFF


class Memo(ctypes.Structure):
    _fields_ = [("used", _U64), ("rip", _U64), ("kind", _U64), ("op_type", _U64),
                ("op_base", _U64), ("op_index", _U64), ("op_scale", _U64), ("op_disp", _U64),
                ("valid", _U64 * 2), ("halt", _U64 * 2), ("res", _U64 * 2),
                ("new_rip", _U64 * 2), ("nregs", _U64 * 2),
                ("ids", (_U64 * MEMO_REGS) * 2), ("vals", (_U64 * MEMO_REGS) * 2)]


class EmuCall(ctypes.Structure):
    _fields_ = [("begin", _U64), ("nregs", _U64), ("ids", _U64 * MAX_ENTRY),
                ("vals", _U64 * MAX_ENTRY)]


class EmuLayout(ctypes.Structure):
    _fields_ = [("src_win", _U64), ("nabsent", _U64), ("absent", _U64 * MAX_ABSENT),
                ("keep_lo", _U64 * 2), ("keep_hi", _U64 * 2)]


class EmuLines(ctypes.Structure):
    _fields_ = [("nlines", _U64), ("pa", _U64 * MAX_LINES), ("va", _U64 * MAX_LINES)]


class EmuStart(ctypes.Structure):
    _fields_ = [("ctx", _U64), ("rip", _U64), ("stack", _U64), ("npages", _U64),
                ("win", _U64 * (2 * WMAX)), ("idx", _U64 * (2 * WMAX)),
                ("ptr", _U64 * (2 * WMAX))]


class EmuRun(ctypes.Structure):
    """The ``EmuRun`` record of ``_fast.c`` (same fields, same order)."""

    _fields_ = [
        ("uc", _U64),
        *((f"f_{n}", _U64) for n in ("reg_read", "reg_write", "reg_read_batch",
                                     "reg_write_batch", "mem_read", "mem_write", "emu_start",
                                     "emu_stop", "ctx_save", "ctx_restore", "hook_add",
                                     "hook_del")),
        ("py_defer", _U64), ("strings", _U64),
        ("fault_ids", _U64 * NFAULT), ("result_ids", _U64 * NRESULT),
        ("rip_id", _U64), ("cr3_id", _U64), ("pml4", _U64), ("hook_read", _U64),
        ("task_size", _U64),
        ("ctx0", _U64), ("exc_ctx", _U64), ("ctx_size", _U64), ("exc_off", _U64),
        ("win_va", _U64 * 2), ("win_pa", _U64 * 2), ("win_pte", _U64 * 2),
        ("win_flags", _U64 * 2), ("npages", _U64),
        ("init_src", _U64), ("init_dst", _U64),
        ("stack_pa", _U64), ("ret_pa", _U64), ("sentinel", _U64),
        ("cbuf", _U64),
        ("res_state", (_U64 * WMAX) * 2), ("res_ptr", (_U64 * WMAX) * 2),
        ("pte_known", _U64 * 2), ("pte_last", (_U64 * WMAX) * 2),
        ("nhooks", _U64), ("hook_h", _U64 * MAX_LINES), ("hook_pa", _U64 * MAX_LINES),
        ("line_ud", (_U64 * 3) * MAX_LINES),
        ("lines", _U64), ("layout", _U64),
        ("active", _U64), ("halted", _U64), ("halt_res", _U64), ("ntotal", _U64),
        ("nrec", _U64), ("deferred", _U64),
        ("status", _U64), ("result", _U64 * NRESULT), ("ndirty", _U64),
        ("dirty", _U64 * (2 * WMAX)),
        ("rec", _U64 * ((MAX_FAULTS + 1) * REC_W)),
        ("memo", Memo * MAX_MEMO),
        ("memo_hits", _U64), ("memo_misses", _U64),
    ]


#: Word indices into an ``EmuRun`` read as 64-bit words.
_W = {name: getattr(EmuRun, name).offset // 8
      for name in ("status", "result", "ndirty", "dirty", "rec", "nrec", "halted", "halt_res",
                   "deferred")}
_RESULT, _NREC, _HALTED, _HALT_RES, _NDIRTY, _DIRTY, _REC = (
    _W["result"], _W["nrec"], _W["halted"], _W["halt_res"], _W["ndirty"], _W["dirty"], _W["rec"])
_EFLAGS_AC = 1 << 18
_RETURNED = State.RETURNED          # an Enum member is slow to look up
#: The registers a run reads at its end (``machine.RESULT_REGS``), and where RIP and EFLAGS
#: are among them.
_RESULT_NAMES = ("rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "rsp", "rip",
                 "eflags")
_RIP_AT, _EFLAGS_AT = _RESULT_NAMES.index("rip"), _RESULT_NAMES.index("eflags")
_DEFER_CFUNC = ctypes.CFUNCTYPE(None, _U64, _U64, _U64, _U64)
_NULL = ctypes.c_void_p(0)


def _addr(obj: object) -> int:
    """Address of a ctypes function pointer, ctypes pointer or bytes object's contents."""
    if isinstance(obj, bytes):
        obj = ctypes.c_char_p(obj)       # shares the bytes' buffer
    v = ctypes.cast(obj, ctypes.c_void_p).value  # type: ignore[arg-type]
    assert v is not None
    return v


def _bytes_offset() -> int:
    """Where a bytes object's contents start, from its id (CPython keeps them inline, after
    the header); checked against ctypes' view of a few objects."""
    probes = [b"\x01" * n for n in (1, 100, 4096)]
    offs = {_addr(b) - id(b) for b in probes}
    if len(offs) != 1:
        raise EmulationError("cannot locate the contents of a bytes object (not CPython?)")
    return offs.pop()


#: ``_addr(b) == id(b) + _BYTES_AT`` for bytes ``b`` (a page's address in a few ns).
_BYTES_AT = _bytes_offset()


def load() -> ctypes.CDLL | None:
    """The compiled helper with the harness's entry points typed, or None (``native.load``)."""
    lib = native.load()
    if lib is None:
        return None
    if not getattr(lib, "_emu_harness_typed", False):
        lib.emu_memo_slot.restype = ctypes.c_void_p
        lib.emu_memo_slot.argtypes = [ctypes.c_void_p, _U64, _U64]
        lib.emu_memo_clear.argtypes = [ctypes.c_void_p]
        lib.emu_drop_hooks.argtypes = [ctypes.c_void_p]
        lib.emu_reset_windows.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.emu_run_case.restype = ctypes.c_int
        lib.emu_run_sizes.restype = _U64
        lib.emu_run_sizes.argtypes = [_U64]
        sizes = [lib.emu_run_sizes(i) for i in range(6)]
        want = [ctypes.sizeof(c) for c in (EmuRun, EmuCall, EmuLayout, EmuLines, EmuStart, Memo)]
        if sizes != want:
            raise EmulationError(f"the compiled helper's records differ from fastpath.py's "
                                 f"({sizes} != {want}); rebuild it")
        lib._emu_harness_typed = True
    return lib


def operand_is_user(operand: tuple[str, str, int, int], reg: Any) -> bool:
    """Is the address of ``operand`` ((base, index, scale, disp), "" for no register) below
    TASK_SIZE_MAX, with register values from ``reg(name)``?"""
    base, index, scale, disp = operand
    addr = disp
    if base:
        addr += reg(base)
    if index:
        addr += reg(index) * scale
    return (addr & _MASK) < L.TASK_SIZE_MAX


class Compiled:
    """The compiled path of ``Machine.run`` (mixed into ``Machine``)."""

    if TYPE_CHECKING:       # the machine's state this path uses and keeps consistent
        uc: Any
        image: Any
        count_insns: bool
        _eng: Any
        _ctx: Any
        _exc_ctx: Any
        _pml4: int
        _user_pa: int
        _kern_pa: int
        _pages: dict[int, tuple[int, int, int]]
        _window_ptes: list[tuple[int, int]]
        _stack_page: int
        _layout: str | None
        _resident: dict[tuple[int, int], bytes]
        _pte_ok: list[tuple[object, ...] | None]
        _poison_hooks: list[int]
        _poison_key: tuple[int, ...]
        _poison_lines: Any
        _hook_lines: dict[int, int]
        _instrumented: bool
        _recording: Any
        _native: Any
        _native_absent: object
        _native_lines: object
        _string_ops: dict[int, Any]
        _run: Any
        _hook_error: BaseException | None
        _intr_hook: int

        def pa(self, va: int) -> int: ...
        def _keep(self, bufs: Buffers) -> tuple[tuple[int, int], tuple[int, int]]: ...
        def _instrument(self) -> None: ...
        def _window_pa(self, direction: str) -> tuple[int, int]: ...
        def _on_read(self, addr: int, size: int, line: int) -> None: ...
        def _on_intr(self, intno: int) -> None: ...
        def _intr_entry(self, _uch: object, intno: int, _ud: object) -> None: ...
        def _hook_failed(self, e: BaseException) -> None: ...
        def _invalid_opcode(self, rip: int) -> None: ...
        def _ending(self, halt: Any, rip: int, budget: int) -> tuple[State, str]: ...

    def _fast_setup(self, compiled: bool | None, regs: dict[str, int],
                    fault_regs: tuple[str, ...], result_regs: tuple[str, ...],
                    run_state: Any) -> None:
        """Switch the compiled path on (``compiled`` None: when the helper loads; False:
        never), replacing the machine's Python interrupt hook by the C one."""
        self._fast: EmuRun | None = None
        if compiled is False or self.count_insns:
            return
        lib = load()
        if lib is None:
            if compiled:
                raise EmulationError("the compiled helper is not available (gcc, EMU_PURE?)")
            return
        if self._string_ops and self._native is None:
            return               # rep strings in the Python hook, which needs the Python path
        from unicorn import UC_HOOK_INTR, UC_HOOK_MEM_READ
        from unicorn import x86_const as X
        from unicorn.unicorn_py3.unicorn import uclib
        self._fast_lib = lib
        self._fast_regs = regs
        self._fast_result_regs = result_regs
        self._fast_run_state = run_state
        r = self._fast = EmuRun()
        self._fast_ref = ctypes.c_void_p(ctypes.addressof(r))
        self._fast_words = memoryview(r).cast("B").cast("Q")   # type: ignore[arg-type]
        r.uc = _addr(self._eng._h)  # noqa: SLF001 - the engine's handle, as for the string hook
        for n in ("reg_read", "reg_write", "reg_read_batch", "reg_write_batch", "mem_read",
                  "mem_write", "emu_start", "emu_stop", "context_save", "context_restore",
                  "hook_add", "hook_del"):
            setattr(r, "f_" + n.replace("context_", "ctx_"), _addr(getattr(uclib, "uc_" + n)))
        self._fast_defer_cb = _DEFER_CFUNC(self._fast_defer)
        r.py_defer = _addr(self._fast_defer_cb)
        r.strings = ctypes.addressof(self._native) if self._native is not None else 0
        r.fault_ids[:] = [regs[n] for n in fault_regs]
        r.result_ids[:] = [regs[n] for n in result_regs]
        r.rip_id, r.cr3_id, r.pml4 = X.UC_X86_REG_RIP, X.UC_X86_REG_CR3, self._pml4
        r.hook_read, r.task_size = UC_HOOK_MEM_READ, L.TASK_SIZE_MAX
        r.ctx0, r.exc_ctx = _addr(self._ctx.context), _addr(self._exc_ctx.context)
        r.ctx_size = self._ctx.size
        for w, ((base, ptes), wpa) in enumerate(zip(self._window_ptes,
                                                    (self._user_pa, self._kern_pa))):
            r.win_va[w], r.win_pa[w], r.win_pte[w] = base, wpa, ptes
            r.win_flags[w] = self._pages[base][2]
        r.npages = len(SRC_WINDOW_BYTES) // L.PAGE
        assert r.npages <= WMAX
        r.init_src, r.init_dst = _addr(SRC_WINDOW_BYTES), _addr(DST_WINDOW_BYTES)
        r.stack_pa = self._stack_page
        r.ret_pa = self._stack_page + ((L.STACK_TOP - 8) & 0xFFF)
        r.sentinel = L.SENTINEL
        self._fast_cbuf = ctypes.create_string_buffer(2 * WMAX * L.PAGE)
        r.cbuf = ctypes.addressof(self._fast_cbuf)
        self._fast_cbuf_view = memoryview(self._fast_cbuf).cast("B")
        self._fast_wpa = (self._user_pa, self._kern_pa)
        self._fast_wva = (L.USER_WINDOW - L.PAGE, L.KERNEL_WINDOW - L.PAGE)
        assert all(self.pa(va) == pa for va, pa in zip(self._fast_wva, self._fast_wpa))
        self._fast_calls: Bounded[int, tuple[EmuCall, ctypes.c_void_p, Call]] = Bounded(
            64, "fastpath.calls")
        self._fast_layouts: Bounded[tuple[object, ...], tuple[ctypes.c_void_p, EmuLayout,
                                                              frozenset[int]]] = Bounded(
            256, "fastpath.layouts")
        # The lines and start records are rewritten when a case's differ from the last's
        # (a sweep's cases differ in them), the others are cached.
        self._fast_ls = EmuLines()
        self._fast_ls_ref = ctypes.c_void_p(ctypes.addressof(self._fast_ls))
        self._fast_lines_key: tuple[object, ...] | None = None
        self._fast_st = EmuStart()
        self._fast_start_ref = ctypes.c_void_p(ctypes.addressof(self._fast_st))
        self._fast_start_cp: Any = None       # the checkpoint in the start record (kept)
        assert result_regs == _RESULT_NAMES
        self._fast_run_case = lib.emu_run_case
        self._fast_budgets: Bounded[int, ctypes.c_uint64] = Bounded(16, "fastpath.budgets")
        self._fast_handler: object = None
        self._fast_res: list[Any] = []          # resolutions the memo refers to, by index
        self._fast_stale = False                # the Python path ran since the last C run
        self._fast_case: tuple[FaultHandler, frozenset[int]] | None = None
        self._fast_drained = 0
        # The C interrupt hook replaces the Python one (it hands the Python path's faults on).
        self._eng.hook_del(self._intr_hook)
        self._intr_hook = self._eng.hook_add(UC_HOOK_INTR, ctypes.c_void_p(
            _addr(lib.emu_intr_hook)), ctypes.addressof(r), 1, 0)

    # -- a case ---------------------------------------------------------------------------

    def _fast_run(self, call: Call, bufs: Buffers, handler: FaultHandler, budget: int,
                  start: Any) -> RawRun | None:
        """``Machine.run`` in C; None when the case needs the Python path (which then runs)."""
        direction = bufs.direction
        key = (direction, bufs.src_align, bufs.poison) if bufs.poison else ()
        if (self._recording is not None or len(bufs.unmapped) > MAX_ABSENT
                or (key != self._fast_lines_key and not self._fast_set_lines(bufs, key))):
            self._fast_hand_over()
            return None
        if self._fast_stale:
            self._fast_take_back()
        # 1. The windows' contents, when the direction changes (as Machine.run).
        if direction != self._layout:
            self._fast_set_direction(direction)
        lay = self._fast_layouts.get((direction, bufs.length, bufs.src_align, bufs.dst_align,
                                      bufs.unmapped))
        if lay is None:
            lay = self._fast_layout(bufs)
        c = self._fast_calls.get(id(call))
        if c is None or c[2] is not call:
            c = self._fast_call(call)
        if start is None:
            start_ref = _NULL
        else:
            if start is not self._fast_start_cp:
                self._fast_set_start(start)
            start_ref = self._fast_start_ref
        if handler is not self._fast_handler:
            self._fast_lib.emu_memo_clear(self._fast_ref)
            self._fast_res = []
            self._fast_handler = handler
        self._fast_case = (handler, lay[2])
        self._fast_drained = 0
        self._hook_error = None
        b = self._fast_budgets.get(budget)
        if b is None:
            b = self._fast_budgets[budget] = ctypes.c_uint64(budget)
        uc = self.uc
        uc._hook_exception = None  # noqa: SLF001 - a binding hook (trace) that raised
        prev = self._resident      # holds the bytes C's page states may point to
        self._resident = resident = {} if start is None else dict(start.page_map)
        status = self._fast_run_case(self._fast_ref, c[1], lay[0], self._fast_ls_ref, start_ref,
                                     b)
        del prev
        words = self._fast_words
        values = words[_RESULT:_RESULT + NRESULT].tolist()
        run = self._run
        if status or uc._hook_exception is not None or self._hook_error is not None:  # noqa: SLF001
            run = self._fast_failed(status, values, lay)
        self._fast_case = None
        # 6. How it ended.
        if run is None:
            nrec = words[_NREC]
            if nrec == 1:
                v = words[_REC:_REC + 5 + NSNAP].tolist()
                faults: tuple[FaultRecord, ...] = (FaultRecord(
                    FaultEvent(KINDS[v[0]], v[1], v[2], v[3] != 0), self._fast_res[v[4]],
                    tuple(v[5:])),)
            else:
                faults = self._fast_records(0, nrec) if nrec else ()
            halt = self._fast_res[words[_HALT_RES]] if words[_HALTED] else None
        else:
            self._fast_drain(run)
            self._run = None
            faults = tuple(run.faults)
            halt = run.halt
            if halt is None and words[_HALTED]:
                halt = self._fast_res[words[_HALT_RES]]
        if halt is None and values[_RIP_AT] == L.SENTINEL:
            state, message = _RETURNED, ""
        else:                                  # the machine's own rules (both paths')
            state, message = self._ending(halt, values[_RIP_AT], budget)
        # 7. What was written: the pages the CPU dirtied (read back by C) over the pages
        #    the start carried.
        ndirty = words[_NDIRTY]
        one = False
        if ndirty == 1:
            d = words[_DIRTY]
            w, i = divmod(d, WMAX)
            key = (self._fast_wpa[w], i)
            one = not resident or (len(resident) == 1 and key in resident)
        if one:         # the usual case: the run's pages are the one page it dirtied
            page = (i, self._fast_cbuf_view[d * L.PAGE:(d + 1) * L.PAGE].tobytes())
            resident[key] = page[1]
            if w == (0 if direction == "from" else 1):
                src_pages, dst_pages = (page,), ()
            else:
                src_pages, dst_pages = (), (page,)
        else:
            src_pages, dst_pages = self._fast_pages(resident, ndirty, direction)
        return RawRun(state, message, tuple(zip(_RESULT_NAMES, values)), faults, src_pages,
                      dst_pages, values[_EFLAGS_AT] & _EFLAGS_AC != 0, None)

    def _fast_pages(self, resident: dict[tuple[int, int], bytes], ndirty: int,
                    direction: str) -> tuple[tuple[tuple[int, bytes], ...], ...]:
        """(source pages, destination pages) of a run: the dirtied ones over ``resident``."""
        view, wpa = self._fast_cbuf_view, self._fast_wpa
        if ndirty:
            for d in self._fast_words[_DIRTY:_DIRTY + ndirty].tolist():
                w = d // WMAX
                resident[(wpa[w], d - w * WMAX)] = view[d * L.PAGE:(d + 1) * L.PAGE].tobytes()
        src_pa = wpa[0] if direction == "from" else wpa[1]
        sp, dp = [], []
        for (pa, i), data in (sorted(resident.items()) if len(resident) > 1
                              else resident.items()):
            (sp if pa == src_pa else dp).append((i, data))
        return tuple(sp), tuple(dp)

    def _fast_set_direction(self, direction: str) -> None:
        """Both windows rewritten for the direction (Machine.run, step 1); C forgets the
        pages the last run left changed."""
        src_pa, dst_pa = self._window_pa(direction)
        self.uc.mem_write(src_pa, SRC_WINDOW_BYTES)
        self.uc.mem_write(dst_pa, DST_WINDOW_BYTES)
        self._layout = direction
        r = self._fast
        assert r is not None
        ctypes.memset(ctypes.addressof(r.res_state), 0, ctypes.sizeof(r.res_state))

    def _fast_failed(self, status: int, values: list[int], lay: Any) -> Any:
        """After a C run that stopped with an error or whose hooks raised (Machine.run,
        step 5): an invalid opcode is an oops; anything else puts the windows back and
        raises.  Returns the run's Python state."""
        uc = self.uc
        try:
            if status:
                from unicorn import UC_ERR_INSN_INVALID, UcError
                err = UcError(status)
                rip = values[_RIP_AT]
                if status != UC_ERR_INSN_INVALID:
                    raise EmulationError(f"unicorn stopped at {self.image.symbolize(rip)}: "
                                         f"{err}", pc=rip, errno=status) from err
                # ud2 or an undefined opcode: Unicorn stops instead of raising #UD
                run = self._fast_state()
                self._invalid_opcode(rip)
                return run
            if uc._hook_exception is not None:  # noqa: SLF001
                raise uc._hook_exception  # noqa: SLF001
            assert self._hook_error is not None
            raise self._hook_error
        except BaseException:
            self._run = None
            self._fast_case = None
            self._fast_lib.emu_reset_windows(self._fast_ref, lay[0])
            self._resident = {}
            self._pte_ok = [None, None]
            raise

    # -- the records C reads ----------------------------------------------------------------

    def _fast_call(self, call: Call) -> tuple[EmuCall, ctypes.c_void_p, Call]:
        regs = self._fast_regs
        ids = [regs["rsp"], *(regs[n] for n, _ in call.regs), regs["eflags"]]
        vals = [L.STACK_TOP - 8, *(v & _MASK for _, v in call.regs),
                0x2 | (_EFLAGS_AC if call.stac else 0)]
        if len(ids) > MAX_ENTRY:
            raise EmulationError(f"a call with {len(call.regs)} argument registers")
        c = EmuCall()
        c.begin, c.nregs = call.entry, len(ids)
        c.ids[:len(ids)], c.vals[:len(vals)] = ids, vals
        got = self._fast_calls[id(call)] = (c, ctypes.c_void_p(ctypes.addressof(c)), call)
        return got

    def _fast_layout(self, bufs: Buffers) -> tuple[ctypes.c_void_p, EmuLayout, frozenset[int]]:
        absent = frozenset((bufs.user + off) & ~0xFFF for off in bufs.unmapped)
        lay = EmuLayout()
        lay.src_win = 0 if bufs.direction == "from" else 1
        pages = sorted(absent)
        lay.nabsent = len(pages)
        lay.absent[:len(pages)] = pages
        for w, (lo, hi) in enumerate(self._keep(bufs)):
            lay.keep_lo[w], lay.keep_hi[w] = lo, hi
        got = self._fast_layouts[(bufs.direction, bufs.length, bufs.src_align, bufs.dst_align,
                                  bufs.unmapped)] = (ctypes.c_void_p(ctypes.addressof(lay)),
                                                     lay, absent)
        return got

    def _fast_set_lines(self, bufs: Buffers, key: tuple[object, ...]) -> bool:
        """The poisoned lines of ``bufs`` (``key``: direction, source alignment, offsets)
        into the lines record; False if there are more than it holds."""
        if key and len(key[2]) == 1:            # one poisoned line: a sweep's usual case
            w = 0 if key[0] == "from" else 1
            va = (self._fast_wva[w] + L.PAGE + key[1] + key[2][0]) & ~(L.LINE - 1)
            pa = self._fast_wpa[w] + va - self._fast_wva[w]
            ls = self._fast_ls
            ls.nlines, ls.pa[0], ls.va[0] = 1, pa, va
            self._hook_lines = {pa: va}
            self._fast_lines_key = key
            if not self._instrumented:
                self._instrument()
            return True
        if key:
            hit = self._poison_lines.get(key)
            if hit is None:
                src = bufs.src
                lv = {self.pa(va): va for va in {(src + off) & ~(L.LINE - 1)
                                                 for off in bufs.poison}}
                hit = self._poison_lines[key] = (tuple(sorted(lv)), lv)
            pas, line_va = hit
            if len(pas) > MAX_LINES:
                return False
            if not self._instrumented:
                self._instrument()
        else:
            pas, line_va = (), {}
        ls = self._fast_ls
        ls.nlines = len(pas)
        for j, pa in enumerate(pas):
            ls.pa[j], ls.va[j] = pa, line_va[pa]
        self._hook_lines = line_va
        self._fast_lines_key = key
        return True

    def _fast_set_start(self, start: Any) -> None:
        """A checkpoint into the start record (its context, RIP, stack page and pages; the
        bytes are the checkpoint's, which the record keeps alive)."""
        s = self._fast_st
        pages = start.pages
        n = len(pages)
        if n > 2 * WMAX:
            raise EmulationError(f"a checkpoint of {n} pages")
        s.ctx, s.rip, s.stack = start.ctx.context.value, start.rip, id(start.stack) + _BYTES_AT
        s.npages = n
        user = self._fast_wpa[0]
        if n == 1:                   # a short copy's usual case: one destination page
            pa, i, data = pages[0]
            s.win[0], s.idx[0], s.ptr[0] = 0 if pa == user else 1, i, id(data) + _BYTES_AT
        elif n:
            s.win[:n] = [0 if pa == user else 1 for pa, _, _ in pages]
            s.idx[:n] = [i for _, i, _ in pages]
            s.ptr[:n] = [id(data) + _BYTES_AT for _, _, data in pages]
        self._fast_start_cp = start

    # -- faults -----------------------------------------------------------------------------

    def _fast_records(self, lo: int, hi: int) -> tuple[FaultRecord, ...]:
        """The C hooks' fault records lo..hi-1 as ``FaultRecord``s."""
        res = self._fast_res
        flat = self._fast_words[_REC + lo * REC_W:_REC + hi * REC_W].tolist()
        return tuple([FaultRecord(FaultEvent(KINDS[flat[at]], flat[at + 1], flat[at + 2],
                                             flat[at + 3] != 0), res[flat[at + 4]],
                                  tuple(flat[at + 5:at + 5 + NSNAP]))
                      for at in range(0, len(flat), REC_W)])

    def _fast_drain(self, run: Any) -> None:
        """Append the C records not yet in ``run.faults`` (the order faults were taken)."""
        n = self._fast_words[_NREC]
        if n > self._fast_drained:
            run.faults.extend(self._fast_records(self._fast_drained, n))
            self._fast_drained = n

    def _fast_state(self) -> Any:
        """The run's Python state (made on the first fault Python handles), up to date."""
        run = self._run
        if run is None:
            assert self._fast_case is not None
            run = self._run = self._fast_run_state(*self._fast_case)
            if self._fast_words[_HALTED]:
                run.halt = self._fast_res[self._fast_words[_HALT_RES]]
        self._fast_drain(run)
        return run

    def _fast_defer(self, what: int, a: int, b: int, c: int) -> None:
        """A fault the C hooks hand on: decided by the Python hooks; the memo learns it."""
        r = self._fast
        assert r is not None
        if not r.active:                    # the Python path is running: its own hook
            self._intr_entry(None, a, None)
            return
        try:
            run = self._fast_state()
            handler = run.handler
            reuse = getattr(handler, "reuse", None)
            seen: list[tuple[FaultEvent, Any, Reuse | None, bool]] = []

            def learn(cpu: Any, event: FaultEvent) -> Any:
                rule = reuse(event.kind, event.rip) if reuse is not None else None
                bit = (rule is not None and rule.operand is not None
                       and operand_is_user(rule.operand, cpu.reg))
                res = handler(cpu, event)
                seen.append((event, res, rule, bit))
                return res

            n0 = len(run.faults)
            run.handler = learn
            try:
                if what == _DEFER_READ:
                    self._on_read(a, b, c)
                else:
                    self._on_intr(a)
            finally:
                run.handler = handler
            if (len(seen) == 1 and seen[0][2] is not None and len(run.faults) == n0 + 1
                    and run.faults[-1].resolution is seen[0][1]):
                self._fast_learn(*seen[0])
            r.ntotal = len(run.faults)
            if run.halt is not None:
                r.halted = 1
        except BaseException as e:  # noqa: BLE001 - re-raised by run() after emu_start
            self._hook_failed(e)

    def _fast_learn(self, event: FaultEvent, res: Any, rule: Reuse, bit: bool) -> None:
        """Put ``res`` in the memo for faults like ``event`` (``rule``: the handler's promise)."""
        if event.kind not in (FaultKind.MC, FaultKind.PF) or len(self._fast_res) >= 2 * MAX_MEMO:
            return
        if isinstance(res, Redirect):
            regs = res.regs
            if len(regs) > MEMO_REGS or any(n not in self._fast_regs for n, _ in regs):
                return
        elif not isinstance(res, Halt):
            return
        op = rule.operand
        if op is not None and any(n and n not in self._fast_regs for n in op[:2]):
            return                                   # a register C is not given: Python
        at = self._fast_lib.emu_memo_slot(self._fast_ref, event.rip, _CODE[event.kind])
        if not at:
            return                                   # the table is full: Python decides
        m = Memo.from_address(at)
        if not (m.valid[0] or m.valid[1]):
            m.op_type = int(op is not None)
            if op is not None:
                base, index, scale, disp = op
                m.op_base = self._fast_regs[base] if base else 0
                m.op_index = self._fast_regs[index] if index else 0
                m.op_scale, m.op_disp = scale, disp & _MASK
        elif m.op_type != int(op is not None):
            return
        k = int(bit)
        if isinstance(res, Halt):
            m.halt[k] = 1
        else:
            m.halt[k] = 0
            m.new_rip[k] = res.rip
            m.nregs[k] = len(res.regs)
            for j, (n, v) in enumerate(res.regs):
                m.ids[k][j], m.vals[k][j] = self._fast_regs[n], v & _MASK
        m.res[k] = len(self._fast_res)
        self._fast_res.append(res)
        m.valid[k] = 1

    # -- handing the machine between the two paths ----------------------------------------

    def _fast_hand_over(self) -> None:
        """Before the Python path runs: drop the C poison hooks and what the Python path
        caches about state the C path changed."""
        if self._fast is None:
            return
        self._fast_lib.emu_drop_hooks(self._fast_ref)
        self._pte_ok = [None, None]
        self._native_absent = None
        self._native_lines = None
        self._fast_lines_key = None      # the Python path sets _hook_lines its own way
        self._fast_stale = True

    def _fast_take_back(self) -> None:
        """Before a C run after the Python path: its poison hooks go, and C learns the pages
        it left changed and that the PTE arrays are unknown."""
        r = self._fast
        assert r is not None
        for h in self._poison_hooks:
            self._eng.hook_del(h)
        self._poison_hooks, self._poison_key = [], ()
        ctypes.memset(ctypes.addressof(r.res_state), 0, ctypes.sizeof(r.res_state))
        wpa = self._fast_wpa
        for (pa, i), data in self._resident.items():
            w = wpa.index(pa)
            r.res_state[w][i] = 1
            r.res_ptr[w][i] = id(data) + _BYTES_AT
        r.pte_known[0] = r.pte_known[1] = 0
        self._fast_stale = False



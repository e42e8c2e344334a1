"""Fast-forward: record a clean run's checkpoints, start faulting cases from them.

A case that poisons line L (or unmaps source page P) behaves exactly like the clean run until
the first load touching L (or P): nothing before it can see the fault.  ``Recorder.record``
runs the clean case once with a read hook over the source and saves, at the first load of
each line and page, the CPU context and the memory the run had changed by then
(``Checkpoint``); ``FastForward.start_for`` picks the checkpoint a faulting case starts from.
The machine (``emu.core.machine.Machine``) is a ``Recorder``: the recording methods run on
its Unicorn instance and hooks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from unicorn import UC_HOOK_MEM_READ
from unicorn import x86_const as X

from emu.core import layout as L
from emu.core import strings
from emu.core.records import Buffers, Call, FaultHandler, State
from emu.errors import UsageError

#: Instructions a case may run before it is a hang.
DEFAULT_BUDGET = 5_000_000
#: Recordings between translation-block cache flushes (a sweep worker's RSS stays flat).
RECORDINGS_PER_FLUSH = 8
_EFLAGS_DF = 1 << 10


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """CPU and memory state of a clean run just before one load (see ``Machine.record``)."""

    seq: int
    rip: int
    ctx: object = field(repr=False, compare=False)
    pages: tuple[tuple[int, int, bytes], ...] = field(repr=False, compare=False)
    stack: bytes = field(repr=False, compare=False)
    #: ``pages`` as (window base, page index) → contents, the form ``_settle`` takes.
    page_map: dict[tuple[int, int], bytes] = field(repr=False, compare=False,
                                                   default_factory=dict)
    #: The load is an iteration of a ``rep movs``/``rep stos`` the machine runs in bulk: a
    #: run from the entry reaches it in one bulk step too, so starting here saves nothing
    #: (``FastForward.start_for`` skips it unless asked for every checkpoint).
    at_bulk_string: bool = False


@dataclass(frozen=True)
class FastForward:
    """The checkpoints of one clean run, by source line and (for copies from user) page."""

    lines: dict[int, Checkpoint]
    pages: dict[int, Checkpoint]

    def nbytes(self) -> int:
        """Roughly the memory the checkpoints hold: each distinct checkpoint's CPU context
        and its maps, and each distinct page and stack copy once (checkpoints share the
        bytes of pages that did not change between them)."""
        cps = {id(cp): cp for cp in (*self.lines.values(), *self.pages.values())}
        held = {id(b): len(b) for cp in cps.values()
                for b in (cp.stack, *(data for _, _, data in cp.pages))}
        return (sum(held.values())
                + sum(getattr(cp.ctx, "size", 0) + 200 + 150 * len(cp.pages)
                      for cp in cps.values())
                + 100 * (len(self.lines) + len(self.pages)))

    def start_for(self, bufs: Buffers, every: bool = False) -> Checkpoint | None:
        """The earliest checkpoint among the case's faults; None if the run never meets one,
        or (unless ``every``) if that checkpoint saves nothing (``at_bulk_string``).

        Only source-side faults are covered: poisoned source lines, and for copies from
        user the non-present source pages.  A non-present destination page (copy to user)
        is met by a store, which the recording does not watch, so it returns None.
        """
        if bufs.unmapped and bufs.direction != "from":
            return None
        if not bufs.unmapped and len(bufs.poison) == 1:      # a sweep's usual case
            cp = self.lines.get((bufs.src + bufs.poison[0]) & ~(L.LINE - 1))
        else:
            cps = [self.lines.get((bufs.src + off) & ~(L.LINE - 1)) for off in bufs.poison]
            cps += [self.pages.get((bufs.src + off) & ~(L.PAGE - 1)) for off in bufs.unmapped]
            met = [cp for cp in cps if cp is not None]
            cp = min(met, key=lambda cp: cp.seq) if met else None
        if cp is not None and cp.at_bulk_string and not every:
            return None
        return cp


@dataclass
class Recording:
    lo: int           # physical [lo, hi) of the source
    hi: int
    va: int           # virtual address of lo
    by_page: bool
    lines: dict[int, Checkpoint] = field(default_factory=dict)
    pages: dict[int, Checkpoint] = field(default_factory=dict)
    spoiled: bool = False
    last: dict[tuple[int, int], bytes] = field(default_factory=dict)  # latest page contents
    low: int = 0                  # physical address of the lowest line not yet recorded
    hook: int | None = None       # the recording hook's handle
    stack: bytes = b""                                                  # latest stack page


class Recorder:
    """The recording half of the machine (mixed into ``Machine``)."""

    if TYPE_CHECKING:       # the machine's state the recording uses
        uc: Any
        _eng: Any
        _poison_hooks: list[int]
        _poison_key: tuple[object, ...]
        _recordings: int
        _recording: Recording | None
        _record_cb: Any
        _native: Any
        _run: Any
        _layout: str | None
        _resident: dict[tuple[int, int], bytes]
        _stack_page: int
        _string_ops: dict[int, Any]

        def pa(self, va: int) -> int: ...
        def run(self, call: Call, bufs: Buffers, handler: FaultHandler, *,
                budget: int = DEFAULT_BUDGET) -> Any: ...
        def _instrument(self) -> None: ...
        def _native_watch(self) -> None: ...
        def _hook_failed(self, e: BaseException) -> None: ...
        def _window_pa(self, direction: str) -> tuple[int, int]: ...
        def _dirty_pages(self) -> list[tuple[int, int]]: ...

    def record(self, call: Call, bufs: Buffers, handler: FaultHandler, *,
               budget: int = DEFAULT_BUDGET) -> FastForward | None:
        """Run the clean case once and checkpoint the first load that touches each line/page.

        A case that poisons line L (or unmaps source page P) behaves exactly like the clean
        run until the first load touching L (or P): nothing before it can see the fault.
        Each checkpoint holds the CPU context saved in a read hook at that load (RIP at the
        load, rep counters architectural, unicorn-notes §1) and the memory the run had
        changed by then (dirty destination pages and the stack page).

        Returns:
            The checkpoints, or None when the clean run itself faulted or did not return
            (then there is nothing to fast-forward through).
        """
        if bufs.poison or bufs.unmapped or bufs.length == 0:
            raise UsageError("record() takes the clean case: no poison, no unmapped page")
        lo = self.pa(bufs.src)
        rec = Recording(lo, lo + bufs.length, bufs.src, bufs.direction == "from")
        uc = self.uc
        # The recording hook replaces any poison hooks.
        for h in self._poison_hooks:
            self._eng.hook_del(h)
        self._poison_hooks, self._poison_key = [], ()
        self._instrument()
        # The runs fast-forwarded from a recording start at its checkpoints' RIPs, each a
        # new translated block; emptying the TB cache every RECORDINGS_PER_FLUSH recordings
        # keeps it (and a sweep worker's RSS) from growing with each clean run recorded.
        self._recordings += 1
        if self._recordings % RECORDINGS_PER_FLUSH == 0:
            uc.ctl_flush_tb()
        # One read hook over the source from its lowest line not yet recorded on: a load
        # below it touches only recorded lines and calls nothing, so a forward copy calls
        # the hook about once per line instead of at every load (``_on_record`` moves it).
        rec.low = lo & ~(L.LINE - 1)
        self._recording = rec
        self._move_record_hook()
        try:
            raw = self.run(call, bufs, handler, budget=budget)
        finally:
            self._recording = None
            if rec.hook is not None:
                self._eng.hook_del(rec.hook)
        if raw.state is not State.RETURNED or raw.faults or rec.spoiled:
            return None
        return FastForward(dict(rec.lines), dict(rec.pages))

    def _move_record_hook(self) -> None:
        """(Re)place the recording hook at the lowest unrecorded line (none once all are)."""
        rec = self._recording
        assert rec is not None
        if rec.hook is not None:
            self._eng.hook_del(rec.hook)
            rec.hook = None
        if rec.low < rec.hi:
            rec.hook = self._eng.hook_add(UC_HOOK_MEM_READ, self._record_cb, 0,
                                          max(rec.low, rec.lo) - 7, rec.hi - 1)
        if self._native is not None and self._run is not None:
            self._native_watch()

    def _record_entry(self, _uch: object, _access: int, addr: int, size: int, _value: int,
                      _ud: object) -> None:
        """UC_HOOK_MEM_READ callback of the recording (C API)."""
        try:
            self._on_record(addr, size)
        except BaseException as e:  # noqa: BLE001 - re-raised by run() after emu_start
            self._hook_failed(e)

    def _on_record(self, addr: int, size: int) -> None:
        rec = self._recording
        if rec is None:
            return
        uc = self.uc
        lo, hi = addr, addr + size
        rip = self._eng.read(X.UC_X86_REG_RIP)
        op = self._string_ops.get(rip)
        if op is not None and op.op == "movs":
            # The first iteration of a rep movs that reaches unrecorded source: the rest of
            # the instruction reads span(rsi, size, DF, rcx) without anything in between,
            # so this point is before the first load of every line (and page) of the span,
            # and one checkpoint here serves them all.  The bulk step then copies through
            # instead of stopping at each line to be recorded (a checkpoint inside a bulk
            # string saves nothing: ``Checkpoint.at_bulk_string``).
            rcx = self._eng.read(X.UC_X86_REG_RCX)
            down = bool(self._eng.read(X.UC_X86_REG_EFLAGS) & _EFLAGS_DF)
            s_lo, s_hi = strings.span(addr, op.size, down, rcx)
            lo, hi = min(lo, s_lo), max(hi, s_hi)
        a, b = max(lo, rec.lo), min(hi, rec.hi)
        if a >= b:
            return
        lines = range((a - rec.lo + rec.va) & ~(L.LINE - 1), b - rec.lo + rec.va, L.LINE)
        pages = range((a - rec.lo + rec.va) & ~(L.PAGE - 1), b - rec.lo + rec.va, L.PAGE)
        new_lines = [ln for ln in lines if ln not in rec.lines]
        new_pages = [pg for pg in pages if rec.by_page and pg not in rec.pages]
        if not new_lines and not new_pages:
            return
        src_pa, _ = self._window_pa(self._layout or "from")
        dirty = self._dirty_pages()
        if any(wpa == src_pa for wpa, _ in dirty):
            rec.spoiled = True  # the routine wrote its own source: do not fast-forward
        pages = []
        for wpa, i in sorted(set(dirty) | self._resident.keys()):
            data = self._eng.mem_read(wpa + i * L.PAGE, L.PAGE)
            # Checkpoints share the bytes of a page that did not change between them, so
            # that ``_settle`` sees the page already in place by identity.
            if rec.last.get((wpa, i)) == data:
                data = rec.last[(wpa, i)]
            else:
                rec.last[(wpa, i)] = data
            pages.append((wpa, i, data))
        stack = self._eng.mem_read(self._stack_page, L.PAGE)
        if stack == rec.stack:
            stack = rec.stack            # usually the same page all along: keep one copy
        rec.stack = stack
        cp = Checkpoint(
            seq=len(rec.lines) + len(rec.pages),
            rip=rip,
            ctx=uc.context_save(),
            pages=tuple(pages),
            stack=stack,
            page_map={(wpa, i): data for wpa, i, data in pages},
            at_bulk_string=rip in self._string_ops,
        )
        for ln in new_lines:
            rec.lines[ln] = cp
        for pg in new_pages:
            rec.pages[pg] = cp
        low = rec.low
        while low < rec.hi and low - rec.lo + rec.va in rec.lines:
            low += L.LINE
        if low != rec.low:
            rec.low = low
            self._move_record_hook()

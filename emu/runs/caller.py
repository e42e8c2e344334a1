"""The caller's side: write(2) copying from a poisoned user buffer, per era.

Follows kernel-facts.md §7 (generic_perform_write() and the fault-in retry), §6a/§6b (severity
and is_copy_from_user), §6d (queue_task_work, kill_me_maybe / kill_me_never, mce_count) and
§8 (the extable-type regressions of the get_user family).  The chain modelled is the ras-tools
"copyin" test: ``write(fd, buf, len)`` to a file, through ->write_iter and
generic_perform_write(), per page-sized chunk:

1. fault in the user range readable: a get_user style load on the touched bytes, emulated by
   ``asm/getuser.S`` with the era's extable type (a poisoned touch takes a real #MC that the
   era's severity grades);
2. the atomic copy (page faults disabled): the era's copy routine on the selected CPU path,
   emulated;
3. ->write_end accepts what was copied; iov_iter advances by it;
4. nothing copied → back to step 1 with the same chunk; a short copy → the next chunk starts
   where the copy stopped;
5. at the return to user the queued task_work runs: kill_me_maybe (SIGBUS BUS_MCEERR_AR at
   mce_vaddr) in 5.10–5.15, kill_me_never from 5.16.

Every recoverable COPYIN #MC goes through queue_task_work(): with mce_count (5.15, backported
to 5.10.68) the first one queues, later ones on the same page return, more than ten panic, and
one on another page panics; without it (before 81065b35e248) a second one re-adds the same
callback_head and the task_work list loops forever.

Each era's assumptions, including the choices made where kernel-facts says UNVERIFIED, are in
its record's ``write`` model (``emu.kernel.eras``) and are printed with every result.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from emu.core import layout as L
from emu.runs import trace
from emu.paths import ASM_DIR
from emu.kernel.conventions import KNOWN, Routine
from emu.kernel.eras import Era, cpu_name
from emu.errors import UsageError
from emu.kernel.extable import Encoding
from emu.core.machine import Buffers, Halt, State
from emu.kernel.severity import Severity
from emu.kernel.writemodel import FaultIn, TaskWork, Touch, WriteModel
from emu.build.resolve import Spec, resolve
from emu.build.target import Settings, Target, get_target, read_source

GETUSER = ASM_DIR / "getuser.S"
EFAULT = 14
#: Steps after which a write that makes no progress is called a livelock.
MAX_ROUNDS = 200

PANIC_TOO_MANY = "Kernel panic - not syncing: Too many consecutive machine checks while accessing user data"
PANIC_OTHER_PAGE = "Kernel panic - not syncing: Consecutive machine checks to different user pages"


def model_for(era: Era, *, mce_rules: Severity | None = None, fault_in: FaultIn | None = None,
              mce_count: bool | None = None) -> WriteModel:
    """The era's write(2) model, with the user's overrides (each one noted as an assumption).

    Raises:
        UsageError: an override the era cannot express (EFAULT_REG before v5.17).
    """
    m = era.write
    notes: list[str] = []
    if fault_in is not None and fault_in is not m.fault_in:
        if fault_in is FaultIn.EFAULT_REG and era.encoding is not Encoding.DATA:
            raise UsageError(f"--fault-in efault_reg: EX_TYPE_EFAULT_REG exists only in the "
                             f"v5.17+ extable format (eras E, F), not in era {era.key}")
        m = replace(m, fault_in=fault_in)
        notes.append(f"OVERRIDE: the fault-in load carries {fault_in.value}.")
    if mce_rules is not None and mce_rules is not m.severity:
        m = replace(m, severity=mce_rules)
        notes.append(f"OVERRIDE: #MC severity rules of {mce_rules.value} (copy and fault-in).")
    if mce_count is not None and mce_count is not m.mce_count:
        m = replace(m, mce_count=mce_count)
        notes.append("OVERRIDE: " + ("mce_count present (81065b35e248)." if mce_count else
                                     "no mce_count (before 81065b35e248)."))
    return replace(m, assumptions=m.assumptions + tuple(notes)) if notes else m


# ---- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One thing the kernel did, in order.  ``detail`` is the emulated call, if any."""

    kind: str   # fault_in, copy, *_result, write_end, mce, syscall_return, return_to_user,
    #             or the end state (panic, hang, oops)
    text: str
    data: dict[str, Any] = field(default_factory=dict)
    detail: trace.Traced | None = field(default=None, repr=False, compare=False)
    target: Target | None = field(default=None, repr=False, compare=False)
    shift: int = 0
    bufs: Buffers | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text, **self.data}


@dataclass(frozen=True)
class McSite:
    """One machine check taken during the write."""

    stage: str           # "copy" or "fault_in"
    where: str
    address: int
    offset: int          # from the start of the user buffer
    recovered: bool
    copyin: bool

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "where": self.where, "address": hex(self.address),
                "offset": self.offset, "recovered": self.recovered, "copyin": self.copyin}


@dataclass(frozen=True)
class WriteResult:
    """What write(2) did, and what the user sees."""

    era: str
    cpu: str
    routine: str
    length: int
    state: str                   # returned, killed, panic, hang
    bytes_written: int | None    # bytes committed to the file
    return_value: int | None     # the syscall result (bytes, or -errno)
    errno: str | None
    signal: str | None
    si_code: str | None
    si_addr: int | None
    panic: str | None
    uncopied_committed: int      # committed bytes that did not come from the user buffer
    mcs: tuple[McSite, ...]
    steps: tuple[Step, ...]
    model: WriteModel = field(compare=False)
    #: The copy routine's source when it is not the era's bundled one (a real kernel file).
    source: str = ""

    @property
    def mc_count(self) -> int:
        return len(self.mcs)

    @property
    def user_sees(self) -> str:
        if self.state == "panic":
            return f"nothing: the kernel panics ({self.panic})"
        if self.state == "hang":
            return "nothing: the task never returns to user mode"
        if self.state == "killed":
            return (f"killed by {self.signal} ({self.si_code}) at {self.si_addr:#x}; "
                    f"write() had committed {self.bytes_written} bytes")
        if self.state != "returned":
            return f"nothing: the kernel stops ({self.state})"
        if self.errno:
            return f"write() = -1, errno {self.errno}"
        return f"write() = {self.return_value}"

    def to_json(self) -> dict[str, Any]:
        return {
            "era": self.era, "cpu": self.cpu, "routine": self.routine, "length": self.length,
            "state": self.state, "bytes_written": self.bytes_written,
            "return_value": self.return_value, "errno": self.errno, "signal": self.signal,
            "si_code": self.si_code,
            "si_addr": None if self.si_addr is None else hex(self.si_addr),
            "panic": self.panic, "user_sees": self.user_sees,
            "uncopied_committed": self.uncopied_committed,
            "mc_count": self.mc_count,
            "mc_in_copy": sum(1 for m in self.mcs if m.stage == "copy"),
            "mc_in_fault_in": sum(1 for m in self.mcs if m.stage == "fault_in"),
            "mcs": [m.to_json() for m in self.mcs],
            "steps": [s.to_json() for s in self.steps],
            "model": self.model.to_json(),
            **({"source": self.source} if self.source else {}),
        }


# ---- the simulation ---------------------------------------------------------------------------


class _Stop(Exception):
    """Internal: the write ended in a panic or a hang (carried as data, not raised out)."""

    def __init__(self, state: str, message: str) -> None:
        super().__init__(message)
        self.state = state
        self.message = message


@dataclass
class _Task:
    """current->mce_* and the task_work list."""

    count: int = 0
    page: int | None = None
    queued: int = 0
    vaddr: int | None = None
    first_addr: int | None = None


class WriteSim:
    """Runs the write(2) model for one era, CPU and case.

    Args:
        era: the era (source, encoding, default rules).
        cpu: CPU features for the copy routine's ALTERNATIVEs.
        model: the caller-level facts (``model_for``).
        routine: the copy routine (default: what copy_user_generic() picks for ``cpu``).
        trace_code: record instruction paths for ``explain``.
    """

    def __init__(self, era: Era, cpu: frozenset[str], model: WriteModel,
                 routine: Routine | None = None, *, trace_code: bool = False,
                 source: Spec | None = None) -> None:
        self.era, self.cpu, self.model = era, cpu, model
        settings = Settings(era.encoding, era.ex_layout, model.severity)
        if source is None:
            source = Spec("era", era.key)
        self.copy_t = resolve(source, cpu, severity=model.severity)
        self.source = "" if source.kind == "era" and not source.patches else self.copy_t.name
        self.routine = routine or self.copy_t.routine_for(None, cpu)
        if not self.routine.convention.two_buffers:
            raise UsageError(f"--caller write copies with a copy routine; {self.routine.name} "
                             f"takes the {self.routine.convention.name} convention")
        self.gu_t = get_target(read_source(str(GETUSER)), GETUSER.name, settings, frozenset())
        self.gu = KNOWN[model.fault_in.routine]
        self.trace_code = trace_code

    def run(self, length: int, src_align: int, file_off: int, poison: tuple[int, ...],
            unmapped: tuple[int, ...]) -> WriteResult:
        """write(fd, buf, length) with buf at ``src_align`` in the user window.

        ``poison`` and ``unmapped`` are offsets from buf, as in ``emu run``.
        """
        Buffers(length=length, src_align=src_align, dst_align=file_off, poison=poison,
                unmapped=unmapped)   # validates the case once, with the usual messages
        self.base = src_align
        self.lines = sorted({(src_align + p) & ~(L.LINE - 1) for p in poison})
        self.holes = sorted({(src_align + u) & ~(L.PAGE - 1) for u in unmapped})
        self.steps: list[Step] = []
        self.mcs: list[McSite] = []
        self.task = _Task()
        written = uncopied = 0
        status = 0
        cur, fpos, left = src_align, file_off, length
        state, panic = "returned", None
        try:
            rounds = 0
            while left > 0:
                offset = fpos & (L.PAGE - 1)
                nbytes = min(L.PAGE - offset, left)
                while True:   # the "again" label
                    rounds += 1
                    if rounds > MAX_ROUNDS:
                        raise _Stop("hang", f"no progress after {MAX_ROUNDS} rounds of "
                                    "fault-in and copy (livelock)")
                    missing = self._fault_in(cur, nbytes)
                    failed = missing > 0 if self.model.efault_if_any_missing else missing == nbytes
                    if failed:
                        status = -EFAULT
                        break
                    ret, real = self._copy(cur, offset, nbytes)
                    copied = nbytes - ret
                    uncopied += max(copied - real, 0)
                    self._step("write_end", f"->write_end commits {copied} bytes at file "
                               f"offset {fpos:#x}" + (", nothing copied: retry the chunk"
                                                      if copied == 0 else ""),
                               committed=copied)
                    if copied:
                        break
                if status < 0:
                    break
                cur += copied
                fpos += copied
                left -= copied
                written += copied
        except _Stop as stop:
            state, panic = stop.state, stop.message
            self._step(state, stop.message)
        ret_value: int | None = None
        errno = signal = si_code = None
        si_addr = None
        if state == "returned":
            ret_value = written if written else status
            errno = "EFAULT" if ret_value < 0 else None
            self._step("syscall_return", f"generic_perform_write() returns {ret_value}"
                       + (" (-EFAULT)" if errno else ""), return_value=ret_value)
            state, signal, si_code, si_addr = self._return_to_user(state)
            if state == "hang":
                panic = None
        return WriteResult(
            era=self.era.key, cpu=cpu_name(self.cpu), routine=self.routine.name, length=length,
            state=state, bytes_written=written if state in ("returned", "killed") else None,
            return_value=ret_value if state in ("returned", "killed") else None,
            errno=errno if state == "returned" else None, signal=signal, si_code=si_code,
            si_addr=si_addr, panic=panic if state == "panic" else None,
            uncopied_committed=uncopied, mcs=tuple(self.mcs), steps=tuple(self.steps),
            model=self.model, source=self.source)

    # -- the pieces ---------------------------------------------------------------------------

    def _step(self, kind: str, text: str, detail: trace.Traced | None = None,
              target: Target | None = None, shift: int = 0, bufs: Buffers | None = None,
              **data: Any) -> None:
        self.steps.append(Step(kind, text, data, detail, target, shift, bufs))

    def _call_steps(self, kind: str, call: str, res_text: str, t: trace.Traced, target: Target,
                    shift: int, bufs: Buffers, **data: Any) -> None:
        """Log an emulated call: one line, or call / its machine checks / its result."""
        if not any(m is not None for m in t.mc):
            self._step(kind, f"{call} {res_text}", t, target, shift, bufs, **data)
            return
        self._step(kind, call, t, target, shift, bufs, **data)
        self._machine_checks(t, kind, shift)
        self._step(kind + "_result", "  " + res_text)

    def _frame(self, start: int, n: int) -> tuple[int, Buffers]:
        """Place a user access of ``n`` bytes at window offset ``start`` in a ``Buffers``.

        Buffers want the source within the first page of the window; moving it back by whole
        pages keeps every alignment and every relative position of poison and holes.
        """
        shift = start & ~(L.PAGE - 1)
        align = start - shift
        span = max(n, 1)
        poison = tuple(sorted({max(line - start, 0) for line in self.lines
                               if line + L.LINE > start and line < start + span}))
        holes = tuple(sorted({max(page - start, 0) for page in self.holes
                              if page + L.PAGE > start and page < start + span}))
        return shift, Buffers(length=n, src_align=align, poison=poison, unmapped=holes)

    def _fault_in(self, start: int, n: int) -> int:
        """Touch the range like fault_in_*readable(); return the bytes not faulted in."""
        touches = [start]
        page = (start & ~(L.PAGE - 1)) + L.PAGE
        while page < start + n:
            touches.append(page)
            page += L.PAGE
        if self.model.touch is Touch.FIRST_PAGES_LAST and start + n - 1 not in touches:
            touches.append(start + n - 1)
        for addr in touches:
            shift, bufs = self._frame(addr, 1)
            t = trace.run(self.gu_t, self.gu, bufs, (("rax", bufs.src),), trace=self.trace_code)
            o = t.outcome
            ok = o.state is State.RETURNED and o.return_value == 0
            what = ("ok" if ok else "-EFAULT" if o.state is State.RETURNED else o.state.value)
            self._call_steps("fault_in", f"fault-in: {self.gu.name} loads buf+{addr - self.base:#x}",
                             f"→ {what}", t, self.gu_t, shift, bufs,
                             address=hex(L.USER_WINDOW + addr), offset=addr - self.base,
                             result=what)
            if not ok:
                return n - (addr - start) if self.model.touch is Touch.FIRST_PAGES else n
        return 0

    def _copy(self, start: int, file_off: int, n: int) -> tuple[int, int]:
        """The atomic copy of one chunk.  Returns (bytes not copied, bytes really copied)."""
        shift, bufs = self._frame(start, n)
        bufs = replace(bufs, dst_align=file_off)
        r = self.routine
        t = trace.run(self.copy_t, r, bufs, self.copy_t.registers(r, bufs),
                      trace=self.trace_code)
        o = t.outcome
        ret = o.return_value
        result = (f"→ {r.ret_reg} = {ret} ({n - ret if 0 <= ret <= n else '?'} of {n} bytes "
                  "reported copied)" if ret is not None else f"→ {o.state.value}")
        self._call_steps("copy", f"copy: {r.name}(page+{file_off:#x}, buf+{start - self.base:#x}, "
                         f"{n})", result, t, self.copy_t, shift, bufs, src_offset=start - self.base,
                         length=n, returned=ret, bytes_copied=o.bytes_copied,
                         faults=[f.kind for f in o.faults])
        if o.state is not State.RETURNED:
            raise _Stop("panic" if o.state is State.PANIC else o.state.value,
                        o.message or o.state.value)
        assert ret is not None
        return min(max(ret, 0), n), o.bytes_copied

    def _machine_checks(self, t: trace.Traced, stage: str, shift: int) -> None:
        """Feed each #MC of a call through do_machine_check()'s follow-up, in order."""
        target = self.copy_t if stage == "copy" else self.gu_t
        for rec, info in zip(t.records, t.mc):
            if info is None:
                continue
            addr = rec.event.address + shift
            recovered = not isinstance(rec.resolution, Halt)
            site = McSite(stage, target.image.symbolize(rec.event.rip), addr,
                          addr - L.USER_WINDOW - self.base, recovered, info.copyin)
            self.mcs.append(site)
            note = getattr(rec.resolution, "note", "")
            if not recovered:
                self._step("mce", f"  #MC #{len(self.mcs)} at {site.where} (buf+{site.offset:#x}): "
                           f"not recoverable — {note}", stage=stage, where=site.where,
                           offset=site.offset, recovered=False)
                raise _Stop("panic", rec.resolution.message)  # type: ignore[union-attr]
            text = f"#MC #{len(self.mcs)} at {site.where} (buf+{site.offset:#x}): recovered ({note})"
            if info.copyin:
                vaddr = None if info.vaddr is None else info.vaddr + shift
                try:
                    text += "; " + self._queue(site.address, vaddr)
                except _Stop as stop:
                    self._step("mce", "  " + text.replace("): recovered (", "): graded "
                                                            "recoverable (")
                               + f"; mce_count = {self.task.count}: mce_panic()",
                               stage=stage, where=site.where, offset=site.offset,
                               recovered=True, copyin=True)
                    raise stop
            self._step("mce", "  " + text, stage=stage, where=site.where, offset=site.offset,
                       recovered=True, copyin=info.copyin)

    def _queue(self, addr: int, vaddr: int | None) -> str:
        """queue_task_work() for a COPYIN #MC (kernel-facts §6d)."""
        task, m = self.task, self.model
        if vaddr is not None:
            task.vaddr = vaddr       # is_copy_from_user() sets current->mce_vaddr each time
        page = addr & ~(L.PAGE - 1)
        work = m.task_work.value
        if not m.mce_count:
            task.queued += 1
            if task.first_addr is None:
                task.first_addr = addr
            if task.queued == 1:
                return f"task_work_add({work})"
            return (f"task_work_add({work}) again: the same callback_head is queued twice "
                    "(no mce_count)")
        task.count += 1
        if task.count == 1:
            task.page, task.first_addr = page, addr
            task.queued = 1
            return f"mce_count = 1, task_work_add({work})"
        if task.count > 10:
            raise _Stop("panic", PANIC_TOO_MANY)
        if page != task.page:
            raise _Stop("panic", PANIC_OTHER_PAGE)
        return f"mce_count = {task.count}, same page: not queued again"

    def _return_to_user(self, state: str) -> tuple[str, str | None, str | None, int | None]:
        task, m = self.task, self.model
        if not task.queued:
            self._step("return_to_user", "return to user: no task_work pending")
            return state, None, None, None
        if not m.mce_count and task.queued > 1:
            self._step("return_to_user", "return to user: task_work_run() loops on the "
                       "callback_head that was added twice — the task never gets back to user "
                       "mode (the infinite loop fixed by 81065b35e248)")
            return "hang", None, None, None
        vaddr = self._vaddr()
        if m.task_work is TaskWork.KILL_ME_MAYBE:
            self._step("return_to_user", "return to user: kill_me_maybe: memory_failure(pfn, "
                       "MF_ACTION_REQUIRED), COPYIN → force_sig_mceerr(BUS_MCEERR_AR, "
                       f"mce_vaddr = {vaddr:#x})", signal="SIGBUS", si_code="BUS_MCEERR_AR",
                       si_addr=hex(vaddr))
            return "killed", "SIGBUS", "BUS_MCEERR_AR", vaddr
        self._step("return_to_user", "return to user: kill_me_never: mce_count = 0, "
                   f"\"Kernel accessed poison in user space at {self._paddr():#x}\", "
                   "memory_failure(pfn, 0); no signal")
        return state, None, None, None

    def _vaddr(self) -> int:
        """current->mce_vaddr: the address the last is_copy_from_user() decoded."""
        if self.task.vaddr is not None:
            return self.task.vaddr
        return self.task.first_addr or 0

    def _paddr(self) -> int:
        """Emulated physical address of the first poisoned access (what %llx prints)."""
        return self.copy_t.machine.pa(self.task.first_addr or L.USER_WINDOW)


def simulate(era: Era, cpu: frozenset[str], bufs: Buffers, *, routine: Routine | None = None,
             mce_rules: Severity | None = None, fault_in: FaultIn | None = None,
             mce_count: bool | None = None, trace_code: bool = False,
             source: Spec | None = None) -> WriteResult:
    """write(2) of ``bufs.length`` bytes from a user buffer at ``bufs.src_align``.

    ``bufs.dst_align`` is the file position's offset in its page; ``bufs.poison`` and
    ``bufs.unmapped`` are offsets from the user buffer.  The copy routine comes from
    ``source`` (any source spec: a real kernel file, a revision, a built object) when given,
    else from the era's bundled source; ``era`` — the source's detected era — supplies the
    caller-level semantics (its ``write`` model).

    Raises:
        UsageError: a to-user case, or an override the era cannot express.
    """
    if bufs.direction != "from":
        raise UsageError("--caller write copies from user memory; --direction to is not a "
                         "write(2)")
    if bufs.length == 0:
        raise UsageError("--caller write needs --len > 0")
    model = model_for(era, mce_rules=mce_rules, fault_in=fault_in, mce_count=mce_count)
    sim = WriteSim(era, cpu, model, routine, trace_code=trace_code, source=source)
    return sim.run(bufs.length, bufs.src_align, bufs.dst_align, bufs.poison, bufs.unmapped)



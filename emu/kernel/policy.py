"""Kernel policy per era: fixup_exception() handler semantics and #MC severity.

Follows kernel-facts.md §5c (what each handler / EX_TYPE does to the registers, as in
arch/x86/mm/extable.c of each version) and §6a–6b (arch/x86/kernel/cpu/mce/severity.c: when a
kernel-mode machine check is recoverable, and the is_copy_from_user() decode).

A ``Kernel`` is the ``FaultHandler`` the machine calls on every fault.  Every #MC is modelled
as a precise SRAR event (RIPV and EIPV set, so mc_recoverable() holds, kernel-facts §11); the
decision is then the era's severity rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from emu.caching import Bounded
from emu.errors import EmulationError
from emu.kernel.extable import EX_FLAG_CLEAR_AX, EX_FLAG_CLEAR_DX, REG_NAMES, Extable, ExtableEntry, ExType
from emu.core.machine import (PF_INSTR, PF_PROT, PF_WRITE, TRAPNR, CpuView, FaultEvent, FaultKind,
                              Halt, Redirect, Resolution, State)
from emu.core.records import Reuse
from emu.kernel.decode import decode, source_of
from emu.kernel.severity import Severity


PANIC_MC = ("Kernel panic - not syncing: Fatal local machine check "
            "(mce: [Hardware Error]: Machine check: Data load in unrecoverable area of kernel)")
PANIC_NO_FIXUP = "Kernel panic - not syncing: Failed kernel mode recovery"

#: Fixup types whose register changes depend on the registers at the fault (``Kernel.apply``).
_READS_REGISTERS = frozenset({ExType.POP_REG, ExType.UCOPY_LEN})

_UNDECODED = object()
_SAME = Reuse()


def grade(severity: Severity, entry: ExtableEntry | None, copyin: bool) -> tuple[bool, str]:
    """severity.c's verdict on a kernel-mode #MC (kernel-facts §6a), without the CPU.

    Args:
        severity: which era's rules.
        entry: the __ex_table entry at the faulting IP, or None.
        copyin: what is_copy_from_user() said about the faulting instruction.

    Returns:
        (recoverable, why).  Recoverable with no entry still panics ("Failed kernel mode
        recovery"); that is the caller's business, as in do_machine_check().
    """
    t = entry.type if entry is not None else None
    if severity is Severity.V5_9:
        if t is ExType.FAULT:
            return True, "ex_handler_fault entry"
        return False, "only ex_handler_fault entries recover"
    if severity is Severity.V5_10:
        if t is ExType.FAULT:
            return True, "EX_HANDLER_FAULT"
        if t in (ExType.UACCESS, ExType.COPY):
            if copyin:
                return True, "EX_HANDLER_UACCESS + is_copy_from_user: COPYIN"
            return False, "uaccess entry, but not a copy from user"
        return False, (f"{entry.type_name} is not recoverable in this era" if entry else
                       "no __ex_table entry")
    if severity in (Severity.V5_16, Severity.V5_17):
        if t in (ExType.UACCESS, ExType.COPY) and copyin:
            return True, f"EX_TYPE_{t.value} + is_copy_from_user: COPYIN"
        if t in (ExType.FAULT_MCE_SAFE, ExType.DEFAULT_MCE_SAFE):
            return True, f"EX_TYPE_{t.value}"
        if t in (ExType.UACCESS, ExType.COPY):
            return False, f"EX_TYPE_{t.value}, but not a copy from user"
        return False, (f"{entry.type_name} is not recoverable in this era" if entry else
                       "no __ex_table entry")
    # Severity.V2025
    if copyin:
        return True, "is_copy_from_user: COPYIN"
    if t in (ExType.FAULT_MCE_SAFE, ExType.DEFAULT_MCE_SAFE):
        return True, f"EX_TYPE_{t.value}"
    return False, "not a copy from user and not an MCE-safe fixup"


class Kernel:
    """The kernel side of one era: its exception table, handler semantics and severity.

    The three inputs never change after construction; the two memos below grow as faults are
    handled (each bounded, ``emu.caching.Bounded``), so a ``Kernel`` is mutable and unhashable.

    Args:
        extable: the image's exception table.
        severity: which severity rules apply to a kernel-mode #MC.
        code: reads instruction bytes (for is_copy_from_user).
    """

    __slots__ = ("extable", "severity", "code", "_done", "_sites")

    def __init__(self, extable: Extable, severity: Severity,
                 code: Callable[[int, int], bytes]) -> None:
        self.extable = extable
        self.severity = severity
        self.code = code
        #: Resolutions that depend only on the faulting instruction (and, for #MC, on the
        #: is_copy_from_user verdict): (rip, kind value, copyin) → Resolution.  The handlers are
        #: pure functions of those except for fixup types that read registers (_READS_REGISTERS).
        self._done: Bounded[tuple[int, str, bool], Resolution] = Bounded(4096, "policy.resolutions")
        #: Per faulting instruction: its extable entry and its decoded load (``decode.decode``).
        self._sites: Bounded[int, list[Any]] = Bounded(4096, "policy.sites")

    def __repr__(self) -> str:
        return f"Kernel(severity={self.severity.value}, {len(self.extable)} extable entries)"

    def __call__(self, cpu: CpuView, event: FaultEvent) -> Resolution:
        rip = event.rip
        site = self._sites.get(rip)
        if site is None:
            site = self._sites[rip] = [self.extable.search(rip), _UNDECODED]
        entry = site[0]
        copyin = False
        if event.kind is FaultKind.MC:
            if site[1] is _UNDECODED:          # decoded on the first #MC only
                site[1] = decode(self.code(rip, 16), rip)
            copyin = source_of(site[1], cpu)[0]
        elif entry is None:
            return self._no_entry(cpu, event)
        key = (rip, event.kind._value_, copyin)     # the value: an Enum hashes slowly
        res = self._done.get(key)
        if res is None:
            if event.kind is FaultKind.MC:
                res = self._machine_check(cpu, entry, copyin)
            else:
                assert entry is not None
                res = self.apply(cpu, entry, TRAPNR.get(event.kind, 0))
            if entry is None or entry.type not in _READS_REGISTERS:
                self._done[key] = res
        return res

    def reuse(self, kind: FaultKind, rip: int) -> Reuse | None:
        """Which faults of ``kind`` at ``rip`` this policy resolves alike (``Reuse``): the
        ones ``__call__`` memoises.  For a #MC, the resolution depends on the
        is_copy_from_user() verdict, i.e. on whether the decoded load's source is a user
        address; a #PF or #GP with no entry, and fixup types that read registers, are
        resolved afresh each time (None)."""
        site = self._sites.get(rip)
        if site is None:
            site = self._sites[rip] = [self.extable.search(rip), _UNDECODED]
        entry = site[0]
        if entry is not None and entry.type in _READS_REGISTERS:
            return None
        if kind is not FaultKind.MC:
            return None if entry is None else _SAME
        if site[1] is _UNDECODED:
            site[1] = decode(self.code(rip, 16), rip)
        shape = site[1]
        if shape is None:
            return _SAME
        return Reuse(("rsi", "", 1, 0) if shape == "movs" else shape)  # type: ignore[arg-type]

    @staticmethod
    def _no_entry(cpu: CpuView, event: FaultEvent) -> Halt:
        """A fault at an instruction without an __ex_table entry (other than #MC).

        A #PF on a present page is the oops the kernel prints as a permissions violation
        (arch/x86/mm/fault.c, page_fault_oops()); emu names it ``protection_fault`` and
        says which protection: a write to read-only memory, or an instruction fetch from a
        page that is NX or, with SMEP, a user page.
        """
        if event.kind is FaultKind.PF and event.error & PF_PROT:
            err, addr = event.error, event.address
            if err & PF_WRITE:
                what, why = "write to", "the page is read-only"
            elif err & PF_INSTR and event.user:
                what, why = "instruction fetch from", "a user page, and the CPU has SMEP"
            elif err & PF_INSTR:
                what, why = "instruction fetch from", "the page is not executable (NX)"
            else:
                what, why = "access to", "the page refuses it"
            return Halt(State.PROTECTION_FAULT,
                        f"protection fault: {what} {cpu.where(addr)} at {addr:#x}: {why}; "
                        f"#PF error code {err:#x}, no __ex_table entry")
        if event.kind is FaultKind.PF:
            return Halt(State.OOPS, f"BUG: unable to handle page fault for address: "
                                    f"{event.address:#018x} (no __ex_table entry)")
        if event.kind is FaultKind.GP:
            return Halt(State.OOPS, "general protection fault (no __ex_table entry)")
        if event.kind is FaultKind.UD:
            return Halt(State.OOPS, "invalid opcode (ud2 or undefined instruction)")
        return Halt(State.OOPS, "unexpected trap in kernel mode")

    # -- #MC ---------------------------------------------------------------------------------

    def _machine_check(self, cpu: CpuView, entry: ExtableEntry | None,
                       copyin: bool) -> Resolution:
        sev = self.severity
        recov, why = grade(sev, entry, copyin)
        if not recov:
            return Halt(State.PANIC, PANIC_MC, entry, f"severity {sev.value}: {why}")
        if entry is None:
            return Halt(State.PANIC, PANIC_NO_FIXUP, None, f"severity {sev.value}: {why}")
        res = self.apply(cpu, entry, TRAPNR[FaultKind.MC])
        if isinstance(res, Redirect):
            return Redirect(res.rip, res.regs, entry, f"severity {sev.value}: {why}"
                            + (f"; {res.note}" if res.note else ""))
        return res

    # -- fixup_exception() -------------------------------------------------------------------

    def apply(self, cpu: CpuView, e: ExtableEntry, trapnr: int) -> Resolution:
        """Apply one entry's handler the way that era's extable.c did."""
        t = e.type
        regs: list[tuple[str, int]] = []
        if t in (ExType.DEFAULT, ExType.DEFAULT_MCE_SAFE):
            regs += _clear_flags(e)
        elif t in (ExType.FAULT, ExType.FAULT_MCE_SAFE, ExType.COPY):
            regs.append(("rax", trapnr))
        elif t is ExType.UACCESS:
            pass  # ip = fixup; ax untouched (the WARN on #GP is not modelled)
        elif t is ExType.IMM_REG:
            regs.append((REG_NAMES[e.reg], e.imm))
            regs += _clear_flags(e)
        elif t is ExType.POP_REG:
            regs.append(("rsp", cpu.reg("rsp") + 8))
            regs.append((REG_NAMES[e.reg], e.imm))
            regs += _clear_flags(e)
        elif t is ExType.UCOPY_LEN:
            regs.append(("rcx", e.imm * cpu.reg("rcx") + cpu.reg(REG_NAMES[e.reg])))
        else:
            raise EmulationError(f"emu has no model of fixup type {e.type_name} "
                                 f"(entry for {e.insn:#x})")
        return Redirect(e.fixup, tuple(regs), e)


def _clear_flags(e: ExtableEntry) -> list[tuple[str, int]]:
    out = []
    if e.flags & EX_FLAG_CLEAR_AX:
        out.append(("rax", 0))
    if e.flags & EX_FLAG_CLEAR_DX:
        out.append(("rdx", 0))
    return out

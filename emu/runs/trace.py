"""One routine call with everything the policy reports need: faults, #MC context, fixup paths.

``Target.run`` gives an ``Outcome``; the caller model and ``emu explain`` need more about each
fault: the registers before the handler ran (``FaultRecord.regs_before``), what
is_copy_from_user() decoded for a machine check (kernel-facts §6b: the COPYIN verdict and the
address that becomes ``current->mce_vaddr``), and, for ``explain``, the instructions the CPU
executed from the fixup to the next fault or the return.  The last one needs a
``UC_HOOK_CODE`` hook, which is added for that one run and removed afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from emu.kernel import outcome
from emu.kernel.conventions import Oracle, Routine
from emu.core.machine import Buffers, Call, CpuView, FaultEvent, FaultKind, FaultRecord, Resolution
from emu.kernel.outcome import Outcome
from emu.kernel.decode import is_copy_from_user
from emu.build.target import Target

#: Longest instruction trace kept per fault for ``explain`` (rep iterations collapse to one).
PATH_LIMIT = 60


@dataclass(frozen=True, slots=True)
class McInfo:
    """What severity.c decoded for one machine check."""

    copyin: bool
    vaddr: int | None


@dataclass(frozen=True, slots=True)
class Traced:
    """An ``Outcome`` plus the raw per-fault detail.

    ``mc`` and ``paths`` are parallel to ``records``: ``mc[i]`` is None for a fault that is
    not a machine check; ``paths[i]`` are the instruction addresses run after fault i (empty
    unless the run was traced).
    """

    outcome: Outcome
    records: tuple[FaultRecord, ...] = field(repr=False)
    mc: tuple[McInfo | None, ...] = ()
    paths: tuple[tuple[int, ...], ...] = ()
    entry_count: int = 0


def run(target: Target, routine: Routine, bufs: Buffers, regs: tuple[tuple[str, int], ...],
        *, trace: bool = False, ret_reg: str | None = None) -> Traced:
    """Call ``routine`` with ``regs`` on the case ``bufs`` and keep the fault detail.

    Args:
        target: the assembled source.
        routine: which function, and its stac convention.
        bufs: the buffers and injected faults.
        regs: argument registers (the caller decides: a copy routine or a get_user load).
        trace: record executed instructions (for ``explain``; slower).
        ret_reg: the register judged as the result (default: the routine's).
    """
    mcs: list[McInfo | None] = []
    marks: list[int] = []
    executed: list[int] = []

    def handler(cpu: CpuView, event: FaultEvent) -> Resolution:
        if event.kind is FaultKind.MC:
            ok, addr = is_copy_from_user(target.image.read(event.rip, 16), event.rip, cpu)
            mcs.append(McInfo(ok, addr))
        else:
            mcs.append(None)
        marks.append(len(executed))
        return target.kernel(cpu, event)

    entry = target.image.symbol(routine.name).addr
    call = Call(entry, regs, stac=routine.caller_stac)
    uc = target.machine.uc
    hook = None
    if trace:
        from unicorn import UC_HOOK_CODE

        def on_code(_uc: object, address: int, _size: int, _ud: object) -> None:
            if not executed or executed[-1] != address:   # one entry per rep instruction
                executed.append(address)

        hook = uc.hook_add(UC_HOOK_CODE, on_code)
        uc.ctl_flush_tb()
    try:
        raw = target.machine.run(call, bufs, handler)
    finally:
        if hook is not None:
            uc.hook_del(hook)
            uc.ctl_flush_tb()
    if routine.convention.oracle is Oracle.CLEAR and ret_reg is None:
        o = outcome.build_clear(raw, bufs, routine.ret_reg, target.image.symbolize)
    else:
        o = outcome.build(raw, bufs, ret_reg or routine.ret_reg, target.image.symbolize)
    paths: list[tuple[int, ...]] = []
    for i, m in enumerate(marks):
        end = marks[i + 1] if i + 1 < len(marks) else len(executed)
        paths.append(tuple(executed[m:end][:PATH_LIMIT + 1]))
    entry_count = marks[0] if marks else len(executed)
    return Traced(o, raw.faults, tuple(mcs), tuple(paths), entry_count)

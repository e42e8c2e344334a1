"""Readable traces: ``emu explain`` for one copy or one write(2), and the text of ``emu map``.

This is a rendering module, like ``report.py``: it formats what ``trace``, ``caller`` and
``map`` measured and decides nothing.  Around each fault it shows (kernel-facts §5c, §6a, §6b):
the faulting instruction disassembled with capstone, the fault kind and address, what
is_copy_from_user() decoded for an #MC, the ``__ex_table`` entry and its handler type, the
severity verdict, the registers the handler changed (``FaultRecord.regs_before`` against the
``Redirect``), the instructions run from the fixup to the next fault or the return, and the
final result.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import IO

from emu.core import layout as L
from emu.runs.caller import WriteResult
from emu.kernel.extable import ExtableEntry
from emu.kernel.image import Image
from emu.core.machine import TRAPNR, Buffers, Halt, Redirect
from emu.runs.map import Access, Change
from emu.runs.trace import PATH_LIMIT, Traced

INDENT = "    "


@lru_cache(maxsize=1)
def _cs():  # type: ignore[no-untyped-def]
    from capstone import CS_ARCH_X86, CS_MODE_64, CS_OPT_SYNTAX_ATT, Cs
    md = Cs(CS_ARCH_X86, CS_MODE_64)
    md.syntax = CS_OPT_SYNTAX_ATT
    return md


def disasm(image: Image, addr: int) -> str:
    """One instruction at ``addr`` in AT&T syntax, or '(no code)'."""
    code = image.read(addr, 16)
    for _a, _s, mnem, ops in _cs().disasm_lite(code, addr, 1):
        return f"{mnem} {ops}".strip()
    return "(no code)"


def _line(image: Image, addr: int) -> str:
    return f"{addr:#x} <{image.symbolize(addr)}>: {disasm(image, addr)}"


def _where(addr: int, bufs: Buffers, shift: int) -> str:
    """A fault address with its offset in the user buffer or the kernel buffer."""
    true = addr + shift
    if bufs.src <= addr < bufs.src + max(bufs.length, 1):
        return f"{true:#x} (source +{addr - bufs.src:#x}, {_space(addr)})"
    if bufs.dst <= addr < bufs.dst + max(bufs.length, 1):
        return f"{true:#x} (destination +{addr - bufs.dst:#x}, {_space(addr)})"
    return f"{true:#x} ({_space(addr)})"


def _space(addr: int) -> str:
    return "user" if addr < L.TASK_SIZE_MAX else "kernel"


def _entry(image: Image, e: ExtableEntry) -> str:
    extra = ""
    if e.type.value == "IMM_REG":
        extra = f", reg {e.reg_name} := {e.imm}"
    if e.flags:
        extra += f", flags {e.flags:#x}"
    return (f"__ex_table: {image.symbolize(e.insn)} -> fixup {e.fixup:#x} "
            f"<{image.symbolize(e.fixup)}>, {e.type_name}{extra}")


def faults(t: Traced, image: Image, bufs: Buffers, out: IO[str], *, shift: int = 0,
           indent: str = "") -> None:
    """Every fault of one traced call, with its fixup path."""
    if t.entry_count and t.records:
        out.write(f"{indent}{t.entry_count} instructions from the entry to the first fault\n")
    for i, rec in enumerate(t.records, 1):
        ev, res = rec.event, rec.resolution
        out.write(f"{indent}fault {i}: #{ev.kind.value.upper()} at {_line(image, ev.rip)}\n")
        ind = indent + INDENT
        out.write(f"{ind}address {_where(ev.address, bufs, shift)}\n")
        mc = t.mc[i - 1] if i - 1 < len(t.mc) else None
        if mc is not None:
            if mc.vaddr is None:
                out.write(f"{ind}is_copy_from_user: no (not a MOV/MOVZX load or MOVS)\n")
            else:
                out.write(f"{ind}is_copy_from_user: {'yes' if mc.copyin else 'no'} (decoded "
                          f"source {mc.vaddr + shift:#x}, {_space(mc.vaddr)})\n")
        entry = res.entry if isinstance(res.entry, ExtableEntry) else None
        out.write(f"{ind}{_entry(image, entry) if entry else '__ex_table: no entry'}\n")
        if res.note:
            out.write(f"{ind}{res.note}\n")
        if isinstance(res, Halt):
            out.write(f"{ind}=> {res.state.value}: {res.message}\n")
            continue
        assert isinstance(res, Redirect)
        before = dict(rec.regs_before)
        changes = [f"rip {ev.rip:#x} -> {res.rip:#x}"]
        for name, value in res.regs:
            value &= 0xFFFFFFFFFFFFFFFF
            old = before.get(name)
            note = ""
            if name == "rax" and ev.kind in TRAPNR and value == TRAPNR[ev.kind]:
                note = f" (trap number {value})"
            elif value >= 1 << 63:
                note = f" ({value - (1 << 64)})"
            changes.append(f"{name} {old:#x} -> {value:#x}{note}" if old is not None else
                           f"{name} -> {value:#x}{note}")
        if len(changes) == 1:
            changes.append("no register besides rip")
        out.write(f"{ind}handler changed: {'; '.join(changes)}\n")
        path = t.paths[i - 1] if i - 1 < len(t.paths) else ()
        if path:
            out.write(f"{ind}fixup path:\n")
            for a in path[:PATH_LIMIT]:
                out.write(f"{ind}{INDENT}{_line(image, a)}\n")
            if len(path) > PATH_LIMIT:
                out.write(f"{ind}{INDENT}... (more)\n")
            nxt = "faults again (next fault)" if i < len(t.records) else "returns to the caller"
            out.write(f"{ind}{INDENT}-> {nxt}\n")


def copy(t: Traced, image: Image, bufs: Buffers, title: str, ret_reg: str,
         out: IO[str], *, noun: str = "copied") -> None:
    """``emu explain`` for one copy routine call (``noun`` "cleared": a clear_user one)."""
    o = t.outcome
    out.write(f"{title}\n")
    if noun == "copied":
        out.write(f"case: copy_{bufs.direction}_user len={bufs.length} src={bufs.src:#x} "
                  f"dst={bufs.dst:#x} poison={_offs(bufs.poison)} "
                  f"unmapped={_offs(bufs.unmapped)}\n\n")
    else:
        out.write(f"case: clear_user len={bufs.length} addr={bufs.src:#x} "
                  f"poison={_offs(bufs.poison)} unmapped={_offs(bufs.unmapped)}\n\n")
    if not t.records:
        out.write("no fault was taken\n")
    faults(t, image, bufs, out)
    out.write("\nresult: ")
    if o.return_value is None:
        out.write(f"{o.state.value}: {o.message}\n")
    else:
        out.write(f"{ret_reg} = {o.return_value} (bytes not {noun}); {o.bytes_copied} of "
                  f"{o.length} bytes really {noun}; contract: {o.verdict}\n")
    out.write(f"machine checks: {o.mc_count}, page faults: {o.pf_count}, tail retry "
              f"touched a faulted address again: {'yes' if o.retouched else 'no'}\n")


def write(r: WriteResult, out: IO[str], *, detail: bool = True) -> None:
    """``emu run --caller write`` (detail=False) and ``emu explain --caller write``."""
    src = f" ({r.source})" if r.source else ""
    out.write(f"write(fd, buf, {r.length}) in era {r.era}{src}, cpu {r.cpu}, copy routine "
              f"{r.routine}, #MC rules {r.model.severity.value}, fault-in load "
              f"{r.model.fault_in.value}\n\n")
    out.write("steps:\n")
    for n, s in enumerate(r.steps, 1):
        out.write(f"{n:3d}. {s.text}\n")
        if (detail and s.detail is not None and s.detail.records and s.target is not None
                and s.bufs is not None):
            faults(s.detail, s.target.image, s.bufs, out, shift=s.shift, indent="       ")
    out.write("\n")
    out.write(f"user sees: {r.user_sees}\n")
    out.write(f"state: {r.state}; bytes written: {_none(r.bytes_written)}; errno: "
              f"{r.errno or '-'}; signal: "
              + (f"{r.signal} {r.si_code} addr {r.si_addr:#x}" if r.signal and r.si_addr is not None
                 else "-") + "\n")
    if r.panic:
        out.write(f"panic: {r.panic}\n")
    inc = sum(1 for m in r.mcs if m.stage == "copy")
    out.write(f"machine checks: {r.mc_count} ({inc} in the copy, {r.mc_count - inc} in the "
              "fault-in)" + (": " + ", ".join(f"{m.where} buf+{m.offset:#x}" for m in r.mcs)
                             if r.mcs else "") + "\n")
    if r.uncopied_committed:
        out.write(f"committed to the file but never copied from buf: {r.uncopied_committed} "
                  "bytes\n")
    out.write("\nmodel assumptions:\n")
    for a in r.model.assumptions:
        out.write(f"  - {a}\n")


def write_table(rows: Sequence[WriteResult], title: str, out: IO[str]) -> None:
    """``emu diff --caller write``: one line per era."""
    out.write(f"{title}\n")
    head = ("era", "routine", "1st copy", "written", "errno", "signal", "#MC copy/fault-in",
            "state")
    table = [head]
    for r in rows:
        first = next((s.data.get("returned") for s in r.steps if s.kind == "copy"), None)
        inc = sum(1 for m in r.mcs if m.stage == "copy")
        table.append((f"{r.era} {r.source}" if r.source else r.era, r.routine, _none(first), _none(r.bytes_written), r.errno or "-",
                      f"{r.signal} {r.si_code}" if r.signal else "-",
                      f"{inc}/{r.mc_count - inc}",
                      r.state + (f": {_short(r.panic)}" if r.panic else "")))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    for row in table:
        out.write("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() + "\n")


def _short(panic: str) -> str:
    return panic.replace("Kernel panic - not syncing: ", "").split(" (mce:")[0]


def map_table(rows: Sequence[Access], title: str, out: IO[str]) -> None:
    """``emu map``: one line per user-memory access."""
    out.write(f"{title}\n")
    fn = None
    for a in rows:
        if a.function != fn:
            fn = a.function
            out.write(f"\n{fn}:\n")
        ent = f"{a.entry_type} -> {a.fixup}" if a.entry_type else "NO __ex_table ENTRY"
        mc = {"recovered": "#MC recovered", "panic": "#MC PANICS", "store": "store"}[a.mc]
        out.write(f"  {a.where:<36} {a.text:<34} {a.access:<10} {ent:<64} {mc}\n")
    loads = [a for a in rows if a.mc != "store"]
    out.write(f"\n{len(rows)} accesses, {len(loads)} loads: "
              f"{sum(1 for a in loads if a.mc == 'recovered')} recover an #MC, "
              f"{sum(1 for a in loads if a.mc == 'panic')} panic; "
              f"{sum(1 for a in rows if a.entry_type is None)} without an entry\n")


def map_diff(changes: Sequence[Change], title: str, out: IO[str]) -> None:
    """``emu map --diff``: the changes, flagged ones first marked with '!'."""
    out.write(f"{title}\n")
    if not changes:
        out.write("no change in user accesses, extable entries or #MC verdicts\n")
        return
    for c in changes:
        x = c.after or c.before
        assert x is not None
        mark = "!" if c.flag else " "
        out.write(f"{mark} {c.kind:<8} {x.where:<36} {x.text:<34} {'; '.join(c.what)}"
                  + (f"  [{c.flag}]" if c.flag else "") + "\n")
    flagged = [c for c in changes if c.flag]
    out.write(f"\n{len(changes)} changes, {len(flagged)} flagged\n")


def _offs(offs: tuple[int, ...]) -> str:
    return ",".join(f"{o:#x}" for o in offs) or "-"


def _none(v: object) -> str:
    return "-" if v is None else str(v)



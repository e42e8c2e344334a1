"""The recoverability map: every instruction of a routine that can touch user memory.

Follows kernel-facts.md §8 ("a per-instruction map of 'extable entry? type? recoverable under
this era's severity rules?' and its diff between versions would have flagged this change"),
§6a/§6b (severity and the is_copy_from_user() decode) and §5 (entry types).

An instruction "can touch user memory" when capstone shows a memory operand addressed through a
general register other than rsp/rbp (the copy routines' user pointer is rsi for copy_from_user,
rdi for copy_to_user; get_user style loads use rax or rcx), with no fs/gs override and no
rip-relative base; string instructions (movs, stos, lods, ...) are included through their
rsi/rdi operands.  lea, nop and prefetch forms do not access memory and are skipped.

The #MC column assumes the copy is *from* user memory: a load whose operand is the user
pointer.  Its verdict is what that era's severity.c says for the load (``policy.grade``) with
is_copy_from_user() decoded statically (MOV/MOVZX loads and MOVS count, kernel-facts §6b);
stores do not consume source poison and are marked "store".
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from emu.kernel.extable import ExtableEntry
from emu.kernel.image import Image
from emu.kernel.decode import LOADS, MOVS, att_disassembler, opcode_value
from emu.kernel.policy import grade
from emu.kernel.severity import Severity

_SKIP_PREFIXES = ("lea", "nop", "prefetch", "clflush", "clwb", "clde")


@dataclass(frozen=True, slots=True)
class Access:
    """One instruction that can touch user memory, and what each fault there would do."""

    function: str
    addr: int
    where: str
    text: str
    access: str               # load, store, load+store
    pointer: str              # the register the address is formed from
    entry_type: str | None    # EX_TYPE_* / ex_handler_* name, None = no entry
    fixup: str | None         # symbolized fixup target
    copyin: bool              # is_copy_from_user() would decode a load from the pointer
    mc: str                   # recovered, panic, store
    why: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.function, self.text)

    def to_json(self) -> dict[str, Any]:
        return {"function": self.function, "address": hex(self.addr), "where": self.where,
                "insn": self.text, "access": self.access, "pointer": self.pointer,
                "extable": self.entry_type, "fixup": self.fixup, "copyin": self.copyin,
                "mc": self.mc, "why": self.why}


def build(image: Image, severity: Severity, functions: list[str] | None = None
          ) -> tuple[Access, ...]:
    """Map the user-memory accesses of ``functions`` (default: every function in the image).

    Args:
        image: the assembled source.
        severity: whose rules grade an #MC.
        functions: function names to map.

    Raises:
        ImageError: a named function does not exist.
    """
    from capstone import CS_AC_READ, CS_AC_WRITE
    from capstone import x86_const as C
    md = att_disassembler()
    syms = ([image.symbol(f) for f in functions] if functions else image.functions())
    out: list[Access] = []
    for sym in syms:
        code = image.read(sym.addr, image.extent(sym))   # a missing .size: its extent
        for insn in md.disasm(code, sym.addr):
            if insn.mnemonic.startswith(_SKIP_PREFIXES):
                continue
            mems = [op for op in insn.operands if op.type == C.X86_OP_MEM]
            reads = writes = False
            pointer = ""
            for op in mems:
                m = op.mem
                if m.segment in (C.X86_REG_FS, C.X86_REG_GS):
                    continue
                if m.base in (C.X86_REG_RSP, C.X86_REG_RBP, C.X86_REG_RIP):
                    continue
                if not m.base and not m.index:
                    continue
                reg = insn.reg_name(m.base) if m.base else insn.reg_name(m.index)
                pointer = pointer or reg
                reads |= bool(op.access & CS_AC_READ)
                writes |= bool(op.access & CS_AC_WRITE)
            if not pointer:
                continue
            if insn.mnemonic.startswith("movnti") or "stos" in insn.mnemonic:
                # capstone 5 marks the operand of movnti and of (rep) stos as read; both only
                # store (stos: AL/AX/EAX/RAX to (%rdi))
                reads, writes = False, True
            access = "load+store" if reads and writes else "load" if reads else "store"
            entry = image.extable.search(insn.address)
            value = opcode_value(insn)
            copyin = reads and (value in MOVS or (value in LOADS and not writes))
            if reads:
                recov, why = grade(severity, entry, copyin)
                if recov and entry is None:
                    recov, why = False, why + ", but no __ex_table entry: Failed kernel mode recovery"
                mc = "recovered" if recov else "panic"
            else:
                mc, why = "store", "a store does not consume source poison"
            out.append(Access(sym.name, insn.address, image.symbolize(insn.address),
                              f"{insn.mnemonic} {insn.op_str}".strip(), access, pointer,
                              _type_name(entry), image.symbolize(entry.fixup) if entry else None,
                              copyin, mc, why))
    return tuple(out)


def _type_name(entry: ExtableEntry | None) -> str | None:
    return entry.type_name if entry is not None else None


@dataclass(frozen=True, slots=True)
class Change:
    """One difference between two maps."""

    kind: str                 # added, removed, changed
    before: Access | None
    after: Access | None
    what: tuple[str, ...]     # e.g. "extable EX_TYPE_UACCESS -> EX_TYPE_EFAULT_REG"
    flag: str = ""            # "#MC here now panics", "#MC here now recovered", ...

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "flag": self.flag, "what": list(self.what),
                "before": self.before.to_json() if self.before else None,
                "after": self.after.to_json() if self.after else None}


def diff(a: tuple[Access, ...], b: tuple[Access, ...]) -> tuple[Change, ...]:
    """Align two maps by (function, instruction text) and list what changed.

    Flags: "#MC here now panics" when a load that recovered now panics, "#MC here now
    recovered" for the reverse, "no entry now: #PF here oopses" when an entry disappeared,
    and for added accesses "new load: #MC here panics" / "new access without __ex_table
    entry".  Removed accesses are listed but not flagged.
    """
    sm = difflib.SequenceMatcher(a=[x.key for x in a], b=[x.key for x in b], autojunk=False)
    out: list[Change] = []
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        if op == "equal" or (op == "replace" and i2 - i1 == j2 - j1):
            for x, y in zip(a[i1:i2], b[j1:j2]):
                c = _compare(x, y)
                if c is not None:
                    out.append(c)
            continue
        for x in a[i1:i2]:
            out.append(Change("removed", x, None, (f"{x.access} {x.text} gone",)))
        for y in b[j1:j2]:
            flag = "new load: #MC here panics" if y.mc == "panic" else ""
            if y.entry_type is None:
                flag = flag or "new access without __ex_table entry"
            out.append(Change("added", None, y, (f"{y.access} {y.text} new",), flag))
    return tuple(out)


def _compare(x: Access, y: Access) -> Change | None:
    what: list[str] = []
    if x.text != y.text:
        what.append(f"insn {x.text} -> {y.text}")
    if x.entry_type != y.entry_type:
        what.append(f"extable {x.entry_type or 'none'} -> {y.entry_type or 'none'}")
    if x.fixup != y.fixup:
        what.append(f"fixup {x.fixup or '-'} -> {y.fixup or '-'}")
    if x.mc != y.mc:
        what.append(f"#MC {x.mc} -> {y.mc}")
    if not what:
        return None
    flag = ""
    if x.mc == "recovered" and y.mc == "panic":
        flag = "#MC here now panics"
    elif x.mc == "panic" and y.mc == "recovered":
        flag = "#MC here now recovered"
    elif x.entry_type is not None and y.entry_type is None:
        flag = "no entry now: #PF here oopses"
    return Change("changed", x, y, tuple(what), flag)

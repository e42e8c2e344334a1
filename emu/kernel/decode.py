"""Instruction decoding for #MC severity: the kernel's is_copy_from_user().

Follows kernel-facts.md §6b (arch/x86/kernel/cpu/mce/severity.c, is_copy_from_user(): the
faulting instruction is decoded; a MOV or MOVZX load, or a MOVS, whose source address is below
TASK_SIZE_MAX is a copy from user).  ``emu.kernel.policy`` decodes at run time, on the first #MC
at an instruction; ``emu.runs.map`` decodes statically, for every instruction of a routine.

Capstone is imported on first use only, so importing this module costs nothing.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from emu.core import layout as L
from emu.core.records import CpuView
from emu.kernel.extable import REG_NAMES

#: MOV loads and MOVZX opcodes (``opcode_value`` packing, kernel opcode order), kernel-facts §6b.
LOADS = (0x8A, 0x8B, 0xB60F, 0xB70F)
#: MOVSB, and MOVS{W,L,Q} (one opcode, sized by prefixes).
MOVS = (0xA4, 0xA5)

#: What ``decode`` makes of one instruction: "movs", the (base, index, scale, disp) of a
#: MOV/MOVZX load's memory operand, or None (not a load is_copy_from_user() recognises).
Shape = str | tuple[str, str, int, int] | None


@lru_cache(maxsize=1)
def disassembler():  # type: ignore[no-untyped-def]
    """The capstone handle (x86-64, operand details on), built once."""
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs
    md = Cs(CS_ARCH_X86, CS_MODE_64)
    md.detail = True
    return md


@lru_cache(maxsize=1)
def att_disassembler():  # type: ignore[no-untyped-def]
    """The capstone handle in AT&T syntax (as the kernel's sources spell instructions)."""
    from capstone import CS_ARCH_X86, CS_MODE_64, CS_OPT_SYNTAX_ATT, Cs
    md = Cs(CS_ARCH_X86, CS_MODE_64)
    md.detail = True
    md.syntax = CS_OPT_SYNTAX_ATT
    return md


def opcode_value(insn: Any) -> int:
    """The opcode bytes of a capstone instruction packed little-endian, zero bytes skipped."""
    value = 0
    for i, b in enumerate(x for x in insn.opcode if x):
        value |= b << (8 * i)
    return value


def is_copy_from_user(code: bytes, rip: int, cpu: CpuView) -> tuple[bool, int | None]:
    """The kernel's is_copy_from_user(): is the instruction at ``rip`` a load from user memory?

    Args:
        code: the instruction bytes at ``rip`` (16 are always enough).
        rip: the instruction's address.
        cpu: the registers at the fault.

    Returns:
        (verdict, source address or None if the instruction is not a MOV/MOVZX/MOVS load).
    """
    return source_of(decode(code, rip), cpu)


def source_of(shape: Shape, cpu: CpuView) -> tuple[bool, int | None]:
    """``is_copy_from_user`` for an instruction already decoded by ``decode``."""
    if shape is None:
        return False, None
    if shape == "movs":
        addr = cpu.reg("rsi")
    else:
        base, index, scale, disp = shape
        addr = disp
        if base:
            addr += cpu.reg(base)
        if index:
            addr += cpu.reg(index) * scale
    addr &= 0xFFFFFFFFFFFFFFFF
    return addr < L.TASK_SIZE_MAX, addr


@lru_cache(maxsize=4096)
def decode(code: bytes, rip: int) -> Shape:
    """Decode once per instruction: "movs", (base, index, scale, disp) of a load, or None."""
    from capstone import x86_const as C
    insn = next(disassembler().disasm(code, rip, 1), None)
    if insn is None:
        return None
    value = opcode_value(insn)
    if value in MOVS:
        return "movs"
    if value not in LOADS:
        return None
    mems = [op for op in insn.operands if op.type == C.X86_OP_MEM]
    if not mems:
        return None
    m = mems[0].mem
    if m.segment in (C.X86_REG_GS, C.X86_REG_FS):
        return None  # per-CPU data: a kernel address
    disp = m.disp
    base = ""
    if m.base == C.X86_REG_RIP:
        disp += insn.address + insn.size
    elif m.base:
        base = reg64(insn.reg_name(m.base))
    index = reg64(insn.reg_name(m.index)) if m.index else ""
    return base, index, m.scale, disp


def reg64(name: str) -> str:
    """The 64-bit register holding capstone register ``name`` (``esi`` → ``rsi``, ``r8d`` → ``r8``)."""
    name = name.lower()
    if name in REG_NAMES:
        return name
    if name.startswith("e"):
        return "r" + name[1:]
    if name.startswith("r") and name[-1] in "dwb":
        return name[:-1]
    return name

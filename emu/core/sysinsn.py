"""System instructions: the ones a copy routine never executes, found in the image's code.

In kernel mode the CPU executes ``wrmsr``, ``hlt``, ``lgdt``, ``mov %rax,%cr0``, ``out`` or
``syscall`` like any other instruction; Unicorn runs most of them as no-ops (``wrmsr``,
``in``/``out`` and ``syscall`` without a hook), stops without saying why (``hlt``) or changes
state emu does not model (``mov %rax,%cr0`` can switch paging off).  None of them belongs in
a user-copy routine, so the machine ends the case in ``State.SYSTEM_INSTRUCTION`` before one
runs.

The set is the Intel SDM's system instructions (vol. 3A §2.8: descriptor tables, control and
debug registers, MSRs, TLB and cache control, ``hlt``, ``swapgs``, ``sys*``, VMX/SVM) plus
what leaves the routine for the kernel (``int n``, ``int3``, ``int1``, ``iret``) and port I/O,
less what copy routines do execute: ``stac``/``clac`` (SMAP) and the fences.  ``ud2`` is not
here: it is BUG(), which the machine already reports as an oops (invalid opcode);
``cpuid``/``rdtsc``/``rdtscp`` are not privileged and Unicorn models them.

How the machine stops them, at no cost per instruction:

1. Unicorn exits (``ctl_set_exits``) at the instruction starts of the image's executable
   sections (a linear sweep, ``find``) where one decodes: the run stops before it executes.
   Exits are looked up when a block is translated, but Unicorn also revisits every exit at
   each ``emu_start`` (about 0.1 µs each, measured) and retranslates a block holding one, so
   only real instruction starts are exits, and not ``int3``, which the kernel's images hold
   by the hundred (padding after every ``ret``, against straight-line speculation) and
   which traps anyway;
2. what traps or faults is named where the fault is taken: ``int3`` and ``int n`` reach the
   interrupt hook with RIP after them (``trapped``), and what Unicorn refuses (``sysret``,
   ``iretq``, ``rdpmc``, ``int1``, ... raise #UD or #GP here) is decoded at RIP.

So a system instruction reached by jumping into the middle of another instruction, or run
from a page outside the image (a user page, on a CPU without SMEP), is stopped only if it
traps or faults; one Unicorn runs silently there (``wrmsr``, ``hlt``, ``out``) runs.
Encodings: Intel SDM vol. 2 (opcode map, appendix A); the decoder is checked against
capstone in tests/unit/test_sysinsn.py and against capstone's decoding of Debian's kernel
text in tests/kernel/test_real_vmlinux.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: One-byte opcodes: the byte is the whole instruction (``int`` takes an immediate).
ONE_BYTE: dict[int, str] = {
    0xF4: "hlt", 0xFA: "cli", 0xFB: "sti", 0xCC: "int3", 0xCD: "int", 0xF1: "int1",
    0xCF: "iret", 0xE4: "in", 0xE5: "in", 0xEC: "in", 0xED: "in", 0xE6: "out", 0xE7: "out",
    0xEE: "out", 0xEF: "out", 0x6C: "insb", 0x6D: "insd", 0x6E: "outsb", 0x6F: "outsd",
}
#: 0F xx opcodes whatever follows (those taking a ModRM need one).
TWO_BYTE: dict[int, str] = {
    0x05: "syscall", 0x06: "clts", 0x07: "sysret", 0x08: "invd", 0x09: "wbinvd",
    0x30: "wrmsr", 0x32: "rdmsr", 0x33: "rdpmc", 0x34: "sysenter", 0x35: "sysexit",
    0xAA: "rsm", 0x02: "lar", 0x03: "lsl",
}
_MODRM_TWO_BYTE = frozenset({0x02, 0x03})
#: 0F 00 /r (group 6), by the ModRM reg field.
GROUP6 = ("sldt", "str", "lldt", "ltr", "verr", "verw")
#: 0F 01 /r (group 7) with a memory operand, by the reg field (/5 is not one of them).
GROUP7_MEM = {0: "sgdt", 1: "sidt", 2: "lgdt", 3: "lidt", 4: "smsw", 6: "lmsw", 7: "invlpg"}
#: 0F 01 with a register ModRM byte (no F2/F3 prefix), by the whole byte.  Not here:
#: CA clac, CB stac (copy routines use them), D0 xgetbv, D5 xend, D6 xtest, E8 serialize,
#: EE rdpkru, EF wrpkru, F9 rdtscp, FA/FB monitorx/mwaitx, FC clzero.
GROUP7_REG = {
    0xC1: "vmcall", 0xC2: "vmlaunch", 0xC3: "vmresume", 0xC4: "vmxoff", 0xC6: "wrmsrns",
    0xC8: "monitor", 0xC9: "mwait", 0xD1: "xsetbv", 0xD8: "vmrun", 0xD9: "vmmcall",
    0xDA: "vmload", 0xDB: "vmsave", 0xDC: "stgi", 0xDD: "clgi", 0xDE: "skinit",
    0xDF: "invlpga", 0xF8: "swapgs", 0xFE: "invlpgb", 0xFF: "tlbsync",
    **{0xE0 + r: "smsw" for r in range(8)}, **{0xF0 + r: "lmsw" for r in range(8)},
}
#: 0F C7 /r with a memory operand: XRSTORS, XSAVES and the VMCS pointer instructions.
GROUP9_MEM = {3: "xrstors", 5: "xsaves", 7: "vmptrst"}
#: 66 0F 38 xx: the TLB invalidations.
_THREE_BYTE_66 = {0x80: "invept", 0x81: "invvpid", 0x82: "invpcid"}

#: Reported by the interrupt hook after it traps, so not an exit (see the module docstring).
TRAPS = frozenset({"int3"})

_LEGACY = frozenset({0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF2, 0xF3})
_LOCK = 0xF0
_MAX_INSN = 15

#: A position where, after prefixes, an opcode of the tables starts (a fast filter; ``decode``
#: decides).  A lookahead, so that overlapping positions (inside a prefix run) all match.
_CANDIDATE = re.compile(
    rb"(?=[\x26\x2e\x36\x3e\x40-\x4f\x64-\x67\xf2\xf3]{0,14}"
    rb"(?:[\x6c-\x6f\xcc\xcd\xcf\xe4-\xe7\xec-\xef\xf1\xf4\xfa\xfb]"
    rb"|\x0f[\x00-\x03\x05-\x09\x20-\x23\x30\x32-\x35\x38\x78\x79\xaa\xae\xc7]))", re.DOTALL)


def decode(code: bytes) -> str | None:
    """The system instruction ``code`` starts with, by name, or None.

    Legacy prefixes and REX are skipped; a LOCK prefix makes any of these #UD, so it gives
    None, as do more than 14 prefix bytes and an instruction cut short by the end of
    ``code``.
    """
    i, rex, prefixes, rep = 0, 0, set(), 0
    while i < len(code) and i < _MAX_INSN - 1:
        b = code[i]
        if b in _LEGACY:
            prefixes.add(b)
            rex = 0                      # a REX counts only right before the opcode
            if b in (0xF2, 0xF3):
                rep = b                  # the last of F2/F3 is the mandatory prefix
        elif 0x40 <= b <= 0x4F:
            rex = b
        elif b == _LOCK:
            return None
        else:
            break
        i += 1
    if i >= len(code):
        return None
    op = code[i]
    if op != 0x0F:
        name = ONE_BYTE.get(op)
        if name == "int" and i + 1 >= len(code):
            return None
        if name == "iret" and rex & 8:
            return "iretq"
        if name in ("insd", "outsd") and 0x66 in prefixes:
            return name[:-1] + "w"
        return name
    if i + 1 >= len(code):
        return None
    op2 = code[i + 1]
    rest = code[i + 2:]
    if op2 in TWO_BYTE:
        if op2 in _MODRM_TWO_BYTE and not rest:
            return None
        return "wbnoinvd" if op2 == 0x09 and rep == 0xF3 else TWO_BYTE[op2]
    if not rest:
        return None
    modrm = rest[0]
    mod, reg = modrm >> 6, (modrm >> 3) & 7
    if 0x20 <= op2 <= 0x23:
        what = "cr" if op2 in (0x20, 0x22) else "db"
        n = reg | (8 if rex & 4 else 0)
        return f"mov {'to' if op2 in (0x22, 0x23) else 'from'} %{what}{n}"
    if op2 == 0x00:
        return GROUP6[reg] if reg < len(GROUP6) else None
    if op2 == 0x01:
        if mod != 3:
            return GROUP7_MEM.get(reg)
        if rep == 0xF3 and modrm == 0xD9:
            return "vmgexit"             # AMD SEV-ES: rep; vmmcall
        if rep and reg not in (4, 6):    # F2/F3 0F 01 with other register forms: CET, ...
            return None
        return GROUP7_REG.get(modrm)
    if op2 == 0xC7:
        if mod == 3 or rep == 0xF2:
            return None
        if reg == 6:
            return "vmxon" if rep else "vmclear" if 0x66 in prefixes else "vmptrld"
        return None if 0x66 in prefixes else GROUP9_MEM.get(reg)      # no prefix allowed
    if op2 in (0x78, 0x79):
        return None if prefixes & {0x66, 0xF2, 0xF3} else ("vmread", "vmwrite")[op2 - 0x78]
    if op2 == 0xAE:
        return ("wrfsbase" if reg == 2 else "wrgsbase" if reg == 3 else None) \
            if rep == 0xF3 and mod == 3 else None
    if op2 == 0x38:
        if 0x66 not in prefixes or len(rest) < 2 or rest[1] >> 6 == 3:
            return None
        return _THREE_BYTE_66.get(rest[0])
    return None


def candidates(data: bytes) -> dict[int, str]:
    """Every offset of ``data`` where a system instruction would decode, with its name."""
    out: dict[int, str] = {}
    for m in _CANDIDATE.finditer(data):
        i = m.start()
        name = decode(data[i:i + _MAX_INSN])
        if name is not None:
            out[i] = name
    return out


def find(sections: Iterable[tuple[int, bytes]]) -> dict[int, str]:
    """The system instructions of the code ``sections`` ((address, bytes)) that the machine
    makes exits: the instruction starts of a linear sweep (capstone; bytes it cannot decode
    are stepped over one at a time) where one decodes, ``TRAPS`` excepted.

    Returns:
        address → name.
    """
    out: dict[int, str] = {}
    for base, data in sections:
        found = {i: n for i, n in candidates(data).items() if n not in TRAPS}
        if not found:
            continue
        from capstone import CS_ARCH_X86, CS_MODE_64, Cs
        md = Cs(CS_ARCH_X86, CS_MODE_64)
        md.skipdata = True
        for addr, _size, _mn, _ops in md.disasm_lite(data, base):
            name = found.get(addr - base)
            if name is not None:
                out[addr] = name
    return out


def trapped(intno: int, before: bytes) -> tuple[int, str] | None:
    """The instruction that raised software interrupt ``intno``, from the bytes ``before``
    the RIP it left: (its length, name) for ``int3`` (CC) and ``int n`` (CD n), else None."""
    if intno == 3 and before[-1:] == b"\xcc":
        return 1, "int3"
    if before[-2:] == bytes([0xCD, intno & 0xFF]):
        return 2, "int"
    return None

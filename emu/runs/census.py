"""The whole-kernel #MC census: every ``__ex_table`` entry of a vmlinux, and its #MC verdict.

Follows kernel-facts.md §5 (entry encodings), §6a/§6b (severity.c's error_context() and the
is_copy_from_user() decode) and §8 (the per-instruction map that would have caught
4c132d1d844a).  For each entry: the function and offset (symbols), the instruction (capstone),
what it touches, the entry type in the image's own encoding, the fixup, and what an #MC on
that instruction does under the image's own severity rules.

The rules come, in order of preference, from:

1. **the image's own code**: its ``error_context()`` is run under the emulator with a
   synthetic ``struct mce`` (UAPI layout: mcgstatus at 0x18, ip 0x20, cs 0x40, kflags 0x78;
   RIPV|EIPV set, kernel CS) and its two calls replaced by their answers
   (``ex_get_fixup_type()`` → the entry's raw type, ``is_copy_from_user()`` → emu's decode),
   so the order of the tests and the types it accepts are the image's;
2. ``--mce-rules``: a named rule set (``policy.grade``), to ask "what would rules X say";
3. a documented table by version when the image has no standalone ``error_context``:
   v6.15+ and the stable backports of 1a15bb8303b6 (6.1.y, 6.6.y, 6.12.y: UNVERIFIED which
   point releases) use the 2025 rules, earlier releases those of their era.

What an instruction touches: a memory operand whose entry type is a user-access type
(UACCESS, COPY, IMM_REG such as EX_TYPE_EFAULT_REG, UCOPY_LEN, FAULT_SGX) is a user access,
a load, store or both by capstone's operand access flags; MSR, FPU-restore, segment and
MCE-safe kernel copies are named as such; other types are kernel probes.
is_copy_from_user() accepts MOV/MOVZX loads and MOVS only, so an atomic read-modify-write
(xchg, lock cmpxchg/xadd) on user memory is not a copy-in in the image's own code.
"""

from __future__ import annotations

import bisect
import struct
from collections import Counter
from dataclasses import dataclass
from typing import Any

from emu.build import boot
from emu.build.elf import LinkedFile, linked_extable, load_linked
from emu.core import layout
from emu.core.machine import Buffers, Call, Machine, State
from emu.errors import ImageError
from emu.kernel.cpus import KernelVersion
from emu.kernel.severity import release_rules
from emu.kernel.extable import Encoding, Extable, ExType, decode
from emu.kernel.image import Section
from emu.kernel.decode import LOADS as _LOADS, MOVS as _MOVS, att_disassembler
from emu.kernel.policy import Kernel, grade
from emu.kernel.severity import Severity

USER_TYPES = frozenset({ExType.UACCESS, ExType.COPY, ExType.IMM_REG, ExType.UCOPY_LEN,
                        ExType.FAULT_SGX})
_KIND = {ExType.RDMSR: "msr", ExType.WRMSR: "msr", ExType.RDMSR_SAFE: "msr",
         ExType.WRMSR_SAFE: "msr", ExType.RDMSR_IN_MCE: "msr", ExType.WRMSR_IN_MCE: "msr",
         ExType.FPU_RESTORE: "fpu restore", ExType.CLEAR_FS: "segment load",
         ExType.POP_REG: "segment/iret", ExType.ERETU: "segment/iret",
         ExType.DEFAULT_MCE_SAFE: "mce-safe kernel copy",
         ExType.FAULT_MCE_SAFE: "mce-safe kernel copy", ExType.BPF: "bpf probe",
         ExType.ZEROPAD: "kernel load (zeropad)"}
#: UAPI struct mce offsets (arch/x86/include/uapi/asm/mce.h; the layout is ABI).
MCE_MCGSTATUS, MCE_IP, MCE_CS, MCE_KFLAGS, MCE_SIZE = 0x18, 0x20, 0x40, 0x78, 0x80
IN_KERNEL_RECOV = 3


@dataclass(frozen=True, slots=True)
class Site:
    """One ``__ex_table`` entry, decoded and judged."""

    function: str
    where: str
    address: int
    insn: str
    touches: str        # user load / user store / user load+store / msr / ... / kernel probe
    copyin: bool        # is_copy_from_user() would accept it (MOV/MOVZX load or MOVS)
    type: str           # the entry type in the image's encoding
    fixup: str
    mc: str             # recovers / panics
    why: str

    @property
    def user(self) -> bool:
        return self.touches.startswith("user")

    @property
    def key(self) -> tuple[str, str]:
        return (self.function, self.insn)

    def to_json(self) -> dict[str, Any]:
        return {"function": self.function, "where": self.where, "address": hex(self.address),
                "insn": self.insn, "touches": self.touches, "copyin": self.copyin,
                "type": self.type, "fixup": self.fixup, "mc": self.mc, "why": self.why}


@dataclass(frozen=True, slots=True)
class Rules:
    """Which severity rules judged the census and how emu knew."""

    name: str
    how: str


def _encoding(version: KernelVersion | None) -> tuple[Encoding, int]:
    if version is None:
        raise ImageError("cannot tell the image's kernel version (no linux_banner), so not "
                         "its __ex_table encoding")
    v = version.version
    if v <= (5, 15):
        return Encoding.HANDLER, 516
    if v == (5, 16):
        return Encoding.TYPE, 516
    return Encoding.DATA, 517 if v < (6, 10) else 610


class _ImageRules:
    """error_context() of the image, run under the emulator (see the module docstring)."""

    def __init__(self, lf: LinkedFile, version: KernelVersion | None) -> None:
        from emu.build.boot import capstone_x86
        from capstone import x86_const as C
        syms = {n: a for n, a, *_ in lf.symbols()
                if n in ("error_context", "ex_get_fixup_type", "is_copy_from_user")}
        if len(syms) != 3:
            raise LookupError("no standalone error_context/ex_get_fixup_type/is_copy_from_user")
        enc, lay = _encoding(version)
        img = load_linked(lf, encoding=enc, layout_id=lay, name=lf.name, keep=("error_context",))
        img, _ = boot.patch(img, lf, version, frozenset())
        fn = img.symbol("error_context")
        delta = layout.TEXT_BASE - img.origin
        self.calls: dict[str, int] = {}
        for insn in capstone_x86().disasm(img.read(fn.addr, fn.size), fn.addr):
            if insn.bytes[0] == 0xE8 and insn.size == 5:
                target = (insn.operands[0].imm & 0xFFFFFFFFFFFFFFFF) - delta
                for n in ("ex_get_fixup_type", "is_copy_from_user"):
                    if target == syms[n]:
                        self.calls[n] = insn.address
            elif insn.group(C.X86_GRP_CALL):
                raise LookupError(f"error_context makes a call emu cannot stub: {insn.op_str}")
        if set(self.calls) != {"ex_get_fixup_type", "is_copy_from_user"}:
            raise LookupError("error_context does not call ex_get_fixup_type and "
                              "is_copy_from_user out of line")
        end = max(s.end for s in img.sections)
        self.mce = (end + layout.PAGE - 1) & ~(layout.PAGE - 1)    # a data page of its own
        self.img = img
        self.entry = fn.addr
        self._cache: dict[tuple[int, bool], bool] = {}

    def recovers(self, raw_type: int, copyin: bool) -> bool:
        key = (raw_type, copyin)
        if key not in self._cache:
            self._cache[key] = self._run(raw_type, copyin)
        return self._cache[key]

    def _run(self, raw_type: int, copyin: bool) -> bool:
        from dataclasses import replace
        secs = []
        for s in self.img.sections:
            data = bytearray(s.data)
            for n, at in self.calls.items():
                if s.addr <= at < s.end:
                    value = raw_type if n == "ex_get_fixup_type" else int(copyin)
                    data[at - s.addr:at - s.addr + 5] = b"\xb8" + struct.pack("<I", value)
            secs.append(replace(s, data=bytes(data)))
        mce = bytearray(MCE_SIZE)
        struct.pack_into("<Q", mce, MCE_MCGSTATUS, 0x7)          # RIPV | EIPV | MCIP
        struct.pack_into("<Q", mce, MCE_IP, self.entry)
        secs.append(Section(".emu.mce", self.mce, bytes(mce), False, writable=True))
        img = replace(self.img, sections=tuple(secs))
        m = Machine(img, smap=False)
        raw = m.run(Call(self.entry, (("rdi", self.mce), ("rsi", 0))), Buffers(length=1),
                    Kernel(Extable([]), Severity.V5_17, img.read))
        if raw.state is not State.RETURNED:
            raise ImageError(f"{img.name}: error_context() did not return under the emulator "
                             f"({raw.state.value}: {raw.message})")
        return (dict(raw.regs)["rax"] & 0xFFFFFFFF) == IN_KERNEL_RECOV


def census(lf: LinkedFile, version: KernelVersion | None,
           mce_rules: Severity | None = None) -> tuple[list[Site], Rules]:
    """Decode and judge every ``__ex_table`` entry of ``lf``.

    Raises:
        ImageError: the version (hence the encoding) cannot be told, or the table is bad.
    """
    from capstone import CS_AC_READ, CS_AC_WRITE
    from capstone import x86_const as C
    enc, lay = _encoding(version)
    raw = linked_extable(lf, enc)
    funcs = sorted((a, n, size) for n, a, size, k, _ in lf.symbols() if k == "func" or
                   (k == "notype" and size))
    starts = [f[0] for f in funcs]

    def symbolize(addr: int) -> tuple[str, str]:
        i = bisect.bisect_right(starts, addr) - 1
        while i >= 0:
            a, n, size = funcs[i]
            if a <= addr < a + max(size, 1):
                return n, n if addr == a else f"{n}+{addr - a:#x}"
            if addr - a > 0x100000:
                break
            i -= 1
        return "?", f"{addr:#x}"

    image_rules: _ImageRules | None = None
    if mce_rules is not None:
        rules = Rules(mce_rules.value, "--mce-rules")
    else:
        try:
            image_rules = _ImageRules(lf, version)
            rules = Rules("image", "ran the image's own error_context() under the emulator "
                          "(ex_get_fixup_type and is_copy_from_user answered by emu)")
        except LookupError as e:
            sev = release_rules(version)
            rules = Rules(sev.value, f"documented version table ({e})")
            mce_rules = sev
    md = att_disassembler()
    sites: list[Site] = []
    for insn_addr, fixup, third, handler in raw:
        entry = decode(enc, lay, insn_addr, fixup, third, handler=handler)
        fn, where = symbolize(insn_addr)
        code = lf.read(insn_addr, 16) if _readable(lf, insn_addr) else b""
        insn = next(md.disasm(code, insn_addr, 1), None)
        text = f"{insn.mnemonic} {insn.op_str}".strip() if insn else "(undecodable)"
        reads = writes = False
        copyin = False
        if insn is not None:
            for op in insn.operands:
                if op.type == C.X86_OP_MEM and op.mem.segment not in (C.X86_REG_FS,
                                                                       C.X86_REG_GS):
                    reads |= bool(op.access & CS_AC_READ)
                    writes |= bool(op.access & CS_AC_WRITE)
            value = 0
            for i, b in enumerate(x for x in insn.opcode if x):
                value |= b << (8 * i)
            string = insn.mnemonic.startswith(("rep", "movs", "stos", "lods"))
            if string:
                reads |= value in _MOVS or insn.mnemonic.startswith(("lods", "rep movs"))
                writes |= not insn.mnemonic.startswith("lods")
                if "stos" in insn.mnemonic:
                    # capstone marks stos's (%rdi) operand as read; stos only stores
                    # AL/AX/EAX/RAX there (an inline clear_user(): not a user load)
                    reads = False
            copyin = value in _MOVS or (value in _LOADS and reads and not writes)
        if entry.type in USER_TYPES and (reads or writes):
            touches = "user " + ("load+store" if reads and writes else
                                 "load" if reads else "store")
        elif entry.type in _KIND:
            touches = _KIND[entry.type]
        else:
            touches = "kernel probe" if reads or writes else "no memory operand"
        user_copyin = copyin and entry.type in USER_TYPES
        if image_rules is not None:
            recov = image_rules.recovers(entry.raw_type if entry.raw_type is not None else 0,
                                         user_copyin)
            why = ("image's error_context(): IN_KERNEL_RECOV" if recov else
                   "image's error_context(): IN_KERNEL")
        else:
            assert mce_rules is not None
            recov, why = grade(mce_rules, entry, user_copyin)
        sites.append(Site(fn, where, insn_addr, text, touches, user_copyin, entry.type_name,
                          symbolize(fixup)[1], "recovers" if recov else "panics", why))
    return sites, rules


def _readable(lf: LinkedFile, addr: int) -> bool:
    try:
        lf.read(addr, 16)
        return True
    except ImageError:
        return False


def summary(sites: list[Site]) -> dict[str, Any]:
    """Totals, and per function / per type: sites, user loads, #MC recovers, #MC panics."""
    def row(group: list[Site]) -> dict[str, int]:
        return {"sites": len(group), "user_loads": sum(s.touches in ("user load",
                                                                     "user load+store")
                                                       for s in group),
                "recovers": sum(s.mc == "recovers" for s in group),
                "panics": sum(s.mc == "panics" for s in group)}
    by_fn: dict[str, list[Site]] = {}
    by_type: dict[str, list[Site]] = {}
    for s in sites:
        by_fn.setdefault(s.function, []).append(s)
        by_type.setdefault(s.type, []).append(s)
    return {"total": row(sites), "touches": dict(Counter(s.touches for s in sites)),
            "by_type": {k: row(v) for k, v in sorted(by_type.items())},
            "by_function": {k: row(v) for k, v in sorted(by_fn.items())}}


@dataclass(frozen=True, slots=True)
class Change:
    kind: str           # added, removed, changed
    before: Site | None
    after: Site | None
    flag: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "flag": self.flag,
                "before": self.before.to_json() if self.before else None,
                "after": self.after.to_json() if self.after else None}


def diff(a: list[Site], b: list[Site]) -> list[Change]:
    """Match sites by (function, instruction) and flag what changed for an #MC."""
    def index(sites: list[Site]) -> dict[tuple[str, str], list[Site]]:
        out: dict[tuple[str, str], list[Site]] = {}
        for s in sites:
            out.setdefault(s.key, []).append(s)
        return out
    ia, ib = index(a), index(b)
    out: list[Change] = []
    for key in sorted(set(ia) | set(ib)):
        xs, ys = ia.get(key, []), ib.get(key, [])
        for x, y in zip(xs, ys):
            if x.mc != y.mc:
                out.append(Change("changed", x, y, "#MC here now panics" if y.mc == "panics"
                                  else "#MC here now recovers"))
            elif x.type != y.type:
                out.append(Change("changed", x, y, f"type {x.type} -> {y.type}"))
        for x in xs[len(ys):]:
            out.append(Change("removed", x, None, "site removed"))
        for y in ys[len(xs):]:
            out.append(Change("added", None, y, "new site" + (": #MC here panics"
                                                              if y.mc == "panics" else "")))
    return out

"""Boot-time code patching of a linked kernel window, as arch/x86/kernel/alternative.c does it.

A vmlinux is not what runs: at boot the kernel rewrites its own text for the CPU it found.
Three passes matter to a user-access routine, and each reads a table of the image:

1. ``apply_alternatives()`` over ``.altinstructions``: a site gets its replacement (from
   ``.altinstr_replacement``) when the CPU has the record's feature (or lacks it, for the
   inverted form), the rest of the site is NOP-filled, and a relative call/jmp in the
   replacement whose target lies outside it is re-aimed.  Records are applied in table order,
   so a later match overrides an earlier one (ALTERNATIVE_2).  The record is 12 bytes up to
   v6.2 (u16 cpuid with the inverted flag in bit 15) and 14 bytes from v6.3 (u32 feature |
   flags << 16; flag bit 0 = not, bit 1 = direct call).
2. ``apply_returns()`` over ``.return_sites``: each ``jmp __x86_return_thunk`` becomes
   ``ret; int3...`` unless the CPU uses a return thunk (X86_FEATURE_RETHUNK), when it jumps
   to the mitigation's thunk (srso / retbleed untraining).
3. ``apply_retpolines()`` over ``.retpoline_sites``: ``call/jmp __x86_indirect_thunk_REG``
   becomes ``call/jmp *%REG`` unless the CPU uses retpolines (X86_FEATURE_RETPOLINE).

Feature numbers differ between releases (``emu.kernel.cpus.FEATURE_BITS``), so the kernel
version comes from the image's ``linux_banner``; without a version, or a version emu has no
table for, patching is refused rather than guessed.

What emu does differently, and says so in the evidence: a mitigation thunk that lies outside
the window (the RETHUNK return thunk, a retpoline thunk) is not run; the site is given the
thunk's architectural effect (``ret``, ``call *%reg``).  Neither thunk touches user memory.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace
from functools import lru_cache

from emu.core import layout
from emu.errors import ImageError
from emu.kernel.cpus import KernelVersion, feature_bits, known_versions
from emu.kernel.image import Image

NOP = b"\x90"
INT3 = b"\xcc"
_REGS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


@dataclass
class BootReport:
    """What the passes did to the window (one line each for ``Detection.evidence``)."""

    alternatives: int = 0
    alt_records: int = 0
    returns: int = 0
    retpolines: int = 0
    notes: list[str] = field(default_factory=list)

    def evidence(self) -> list[str]:
        out = [f"{self.alternatives} of {self.alt_records} ALTERNATIVE record(s) in the window "
               "patched for this CPU",
               f"{self.returns} return site(s), {self.retpolines} retpoline site(s) patched"]
        return out + self.notes


@lru_cache(maxsize=1)
def capstone_x86():  # type: ignore[no-untyped-def]
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs
    md = Cs(CS_ARCH_X86, CS_MODE_64)
    md.detail = True
    return md


class _Window:
    """The window's bytes, writable, addressed by original (file) addresses."""

    def __init__(self, img: Image) -> None:
        self.img = img
        self.delta = layout.TEXT_BASE - img.origin
        self.code = {s.name: bytearray(s.data) for s in img.sections}
        lo = min((s.addr for s in img.sections), default=layout.TEXT_BASE)
        hi = max((s.end for s in img.sections), default=layout.TEXT_BASE)
        self.lo, self.hi = lo - self.delta, hi - self.delta

    def inside(self, addr: int, size: int) -> bool:
        return self.lo <= addr and addr + size <= self.hi

    def _where(self, addr: int, size: int) -> tuple[str, int] | None:
        a = addr + self.delta
        for s in self.img.sections:
            if s.addr <= a and a + size <= s.end:
                return s.name, a - s.addr
        return None

    def get(self, addr: int, size: int) -> bytes | None:
        w = self._where(addr, size)
        return None if w is None else bytes(self.code[w[0]][w[1]:w[1] + size])

    def put(self, addr: int, data: bytes) -> None:
        w = self._where(addr, len(data))
        if w is None:
            raise ImageError(f"{self.img.name}: cannot patch {addr:#x}: not in the window")
        self.code[w[0]][w[1]:w[1] + len(data)] = data

    def image(self) -> Image:
        return replace(self.img, sections=tuple(replace(s, data=bytes(self.code[s.name]))
                                                for s in self.img.sections))


def _relocate(repl: bytes, src: int, dst: int, name: str) -> bytes:
    """Re-aim the relative branches of ``repl`` (copied from ``src`` to ``dst``) whose target
    lies outside the replacement (apply_relocation(), v6.5+; v6.1 did it for a leading
    call / jmp only, and the kernel's replacements obey that)."""
    from capstone import x86_const as C
    out = bytearray(repl)
    for insn in capstone_x86().disasm(repl, src):
        imms = [op.imm for op in insn.operands if op.type == C.X86_OP_IMM]
        if not (insn.group(C.X86_GRP_JUMP) or insn.group(C.X86_GRP_CALL)) or not imms:
            continue
        target = imms[0] & 0xFFFFFFFFFFFFFFFF
        if src <= target < src + len(repl):
            continue
        off = insn.address - src
        size = insn.size
        disp_size = 4 if size >= 5 else 1
        new = target - (dst + off + size)
        lim = 1 << (8 * disp_size - 1)
        if not -lim <= new < lim:
            raise ImageError(f"{name}: ALTERNATIVE replacement branch at {insn.address:#x} "
                             "cannot be re-aimed (displacement out of range)")
        struct.pack_into("<i" if disp_size == 4 else "<b", out, off + size - disp_size, new)
    return bytes(out)


@dataclass(frozen=True, slots=True)
class AltRecord:
    """One ``struct alt_instr`` of ``.altinstructions`` (addresses resolved)."""

    addr: int
    site: int
    repl: int
    feature: int
    inverted: bool
    direct: bool
    ilen: int
    rlen: int


def alt_record_size(version: KernelVersion | None) -> int:
    """12 bytes up to v6.2, 14 from v6.3 (see the module docstring)."""
    return 14 if version is not None and version.version >= (6, 3) else 12


def alt_records(lf, version: KernelVersion | None, lo: int, hi: int  # type: ignore[no-untyped-def]
                ) -> list[AltRecord]:
    """The ``.altinstructions`` records whose site lies in ``[lo, hi)``, in table order.

    Raises:
        ImageError: the table is not a whole number of records of the version's size.
    """
    alt = lf.section(".altinstructions")
    if alt is None or not alt.size:
        return []
    rec = alt_record_size(version)
    if alt.size % rec:
        v = version.version if version is not None else (0, 0)
        raise ImageError(f"{lf.name}: .altinstructions is {alt.size} bytes, not a multiple "
                         f"of the {rec}-byte record of v{v[0]}.{v[1]}")
    out = []
    for a, raw in lf.records(alt, rec):
        site = a + struct.unpack_from("<i", raw, 0)[0]
        if not lo <= site < hi:
            continue
        repl = a + 4 + struct.unpack_from("<i", raw, 4)[0]
        if rec == 12:
            cpuid, ilen, rlen = struct.unpack_from("<HBB", raw, 8)
            feat, inv, direct = cpuid & 0x7FFF, bool(cpuid & 0x8000), False
        else:
            ft, ilen, rlen = struct.unpack_from("<IBB", raw, 8)
            feat, inv, direct = ft & 0xFFFF, bool((ft >> 16) & 1), bool((ft >> 16) & 2)
        out.append(AltRecord(a, site, repl, feat, inv, direct, ilen, rlen))
    return out


def site_records(lf, name: str, lo: int, hi: int) -> list[tuple[int, int]]:  # type: ignore[no-untyped-def]
    """(record address, site) of the ``.return_sites`` / ``.retpoline_sites`` entries (s32
    offsets to the site) whose site lies in ``[lo, hi)``, in table order."""
    sec = lf.section(name)
    if sec is None or not sec.size:
        return []
    out = []
    for a, raw in lf.records(sec, 4):
        site = a + struct.unpack_from("<i", raw, 0)[0]
        if lo <= site < hi:
            out.append((a, site))
    return out


def thunk_symbol(name: str) -> bool:
    """The symbols the return and retpoline passes look up by name."""
    return name == "__x86_return_thunk" or name.startswith("__x86_indirect_thunk_")


def reads(lf, version: KernelVersion | None, lo: int, hi: int  # type: ignore[no-untyped-def]
          ) -> list[tuple[int, int]]:
    """(address, size) of every byte ``patch`` reads from the file for a window within
    ``[lo, hi)`` (besides the window itself): the table records whose site lies there, and
    each alternative's replacement.  A table ``patch`` would refuse adds nothing (``patch``
    raises the same error from the section sizes)."""
    out: list[tuple[int, int]] = []
    try:
        recs = alt_records(lf, version, lo, hi) if version is not None else []
    except ImageError:
        recs = []
    rec = alt_record_size(version)
    for r in recs:
        out += [(r.addr, rec)] + ([(r.repl, r.rlen)] if r.rlen else [])
    for name in (".return_sites", ".retpoline_sites"):
        out += [(a, 4) for a, _site in site_records(lf, name, lo, hi)]
    return out


def patch(img: Image, lf, version: KernelVersion | None, cpu: frozenset[str]  # type: ignore[no-untyped-def]
          ) -> tuple[Image, BootReport]:
    """Run the three boot passes over the records whose site lies in ``img``'s window.

    Args:
        img: a window of a linked image (``elf.load_linked``; ``img.origin`` set).
        lf: the ``elf.LinkedFile`` it came from (tables and replacement bytes are read there).
        version: the image's kernel version (``linux_banner``), or None.
        cpu: the CPU's features.

    Raises:
        ImageError: a site needs patching but the kernel version is unknown or has no
            feature table, a record size that does not fit the version, or a site emu cannot
            patch faithfully (paravirt direct calls, an odd return site).
    """
    w = _Window(img)
    rep = BootReport()
    alt = lf.section(".altinstructions")
    ret = lf.section(".return_sites")
    rpl = lf.section(".retpoline_sites")
    if alt is None and ret is None and rpl is None:
        return img, rep

    def need_version() -> tuple[dict[str, int], str]:
        if version is None:
            raise ImageError(f"{img.name}: the window has boot-patched sites, but the image "
                             "has no linux_banner to tell its kernel version (feature bit "
                             "numbers differ between releases)")
        fb = feature_bits(version.version)
        if fb is None:
            raise ImageError(f"{img.name}: kernel {version.release}: emu has no X86_FEATURE "
                             f"table for v{version.version[0]}.{version.version[1]} (known: "
                             f"{known_versions()})")
        return fb

    # 1. Alternatives.
    if alt is not None and alt.size:
        bits, provenance = need_version()
        have = {bits[f] for f in cpu if f in bits} | {bits["ALWAYS"]}
        names = {v: k for k, v in bits.items()}
        unknown: set[int] = set()
        for r in alt_records(lf, version, w.lo, w.hi):
            site, repl, feat, inv, direct = r.site, r.repl, r.feature, r.inverted, r.direct
            ilen, rlen = r.ilen, r.rlen
            rep.alt_records += 1
            if feat not in names:
                unknown.add(feat)
            on = (feat in have) != inv
            if not on:
                continue
            if direct:      # a pv_ops call made direct: left as the indirect call
                rep.notes.append(f"paravirt direct call at {img.symbolize(site + w.delta)} "
                                 "left unpatched (emu does not run pv_ops calls)")
                continue
            if rlen > ilen or not w.inside(site, ilen):
                raise ImageError(f"{img.name}: ALTERNATIVE at {site:#x}: replacement "
                                 f"({rlen} bytes) does not fit the site ({ilen})")
            body = _relocate(lf.read(repl, rlen), repl, site, img.name) if rlen else b""
            w.put(site, body + NOP * (ilen - rlen))
            rep.alternatives += 1
        rep.notes.append(f"kernel {version.describe()}: {provenance}")  # type: ignore[union-attr]
        if unknown:
            rep.notes.append("feature bit(s) " + ", ".join(
                f"{b // 32}*32+{b % 32}" for b in sorted(unknown)) + " in the window are not "
                "modelled: taken as absent")

    # 2. Return sites.
    syms = {n: a for n, a, *_ in lf.symbols() if thunk_symbol(n)}
    thunk = syms.get("__x86_return_thunk")
    if ret is not None and ret.size and thunk is not None:
        for _a, site in site_records(lf, ".return_sites", w.lo, w.hi):
            if not w.inside(site, 5):
                continue
            code = w.get(site, 5)
            assert code is not None
            if code[0] != 0xE9 or site + 5 + struct.unpack_from("<i", code, 1)[0] != thunk:
                raise ImageError(f"{img.name}: return site at {img.symbolize(site + w.delta)} "
                                 f"is not a jmp __x86_return_thunk ({code.hex()})")
            w.put(site, b"\xc3" + INT3 * 4)
            rep.returns += 1
        if rep.returns and "RETHUNK" in cpu:
            rep.notes.append("RETHUNK CPU: returns go through the return thunk on hardware; "
                             "emu runs them as ret (the thunk does not touch user memory)")

    # 3. Retpoline sites.
    if rpl is not None and rpl.size:
        by_addr = {a: n for n, a in syms.items()}
        for _a, site in site_records(lf, ".retpoline_sites", w.lo, w.hi):
            if not w.inside(site, 5):
                continue
            code = w.get(site, 6)
            assert code is not None
            if code[0] in (0xE8, 0xE9):
                size, op = 5, code[0]
            elif code[0] == 0x0F and 0x80 <= code[1] <= 0x8F:
                raise ImageError(f"{img.name}: conditional retpoline jump at "
                                 f"{img.symbolize(site + w.delta)}: not modelled")
            else:
                continue
            target = site + size + struct.unpack_from("<i", code, size - 4)[0]
            reg = by_addr.get(target, "").removeprefix("__x86_indirect_thunk_")
            if reg not in _REGS:
                continue
            r = _REGS.index(reg)
            ins = (b"\x41" if r >= 8 else b"") + bytes(
                (0xFF, (0xD0 if op == 0xE8 else 0xE0) + (r & 7)))
            w.put(site, ins + NOP * (size - len(ins)))
            rep.retpolines += 1
        if rep.retpolines and "RETPOLINE" in cpu:
            rep.notes.append("RETPOLINE CPU: indirect branches go through the retpoline thunk "
                             "on hardware; emu runs them as the indirect branch itself")
    return w.image(), rep

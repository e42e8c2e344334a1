"""Relocatable object → ``Image``: code at kernel addresses, symbols, and ``__ex_table``.

This is the only module that imports pyelftools.  Allocated sections of a kbuild-style ``.o``
are laid out from ``layout.TEXT_BASE`` in file order; relocations are applied by emu itself
(unicorn-notes §7: pyelftools' RelocationHandler ignores load addresses).  ``__ex_table``
fields are resolved as S + A (the P of PC32 cancels), and the third word is either a handler
symbol (≤ v5.15) or data (v5.16+), see ``extable.py``.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field

from elftools.common.exceptions import ELFError
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from . import layout
from .errors import ImageError
from .extable import Encoding, Extable, ExtableEntry, decode

# psABI relocation numbers (x86-64).
R_X86_64_64 = 1
R_X86_64_PC32 = 2
R_X86_64_PLT32 = 4
R_X86_64_32 = 10
R_X86_64_32S = 11
R_X86_64_PC64 = 24

EXTABLE = "__ex_table"


@dataclass(frozen=True, slots=True)
class Section:
    """One allocated section placed in the kernel address space."""

    name: str
    addr: int
    data: bytes = field(repr=False)
    executable: bool

    @property
    def end(self) -> int:
        return self.addr + len(self.data)


@dataclass(frozen=True, slots=True)
class Symbol:
    name: str
    addr: int
    size: int
    kind: str  # "func", "object", "notype"
    is_global: bool


@dataclass(frozen=True)
class Image:
    """Code, symbols and exception table of one assembled source, at kernel addresses.

    Invariants: sections do not overlap and lie in [TEXT_BASE, STUB_BASE); ``stubs`` maps
    every undefined symbol referenced by code to a ud2 slot at STUB_BASE.
    """

    name: str
    sections: tuple[Section, ...]
    symbols: dict[str, Symbol] = field(repr=False)
    extable: Extable = field(repr=False)
    encoding: Encoding
    stubs: dict[str, int] = field(default_factory=dict, repr=False)
    _names: dict[int, str] = field(default_factory=dict, repr=False, compare=False)

    def symbol(self, name: str) -> Symbol:
        """Look up a symbol by name.

        Raises:
            ImageError: no such symbol (the message lists the functions that exist).
        """
        sym = self.symbols.get(name)
        if sym is None:
            funcs = sorted(s.name for s in self.symbols.values() if s.kind == "func")
            raise ImageError(f"{self.name}: no symbol '{name}' (functions: "
                             f"{', '.join(funcs) or 'none'})")
        return sym

    def functions(self) -> list[Symbol]:
        return sorted((s for s in self.symbols.values() if s.kind == "func"),
                      key=lambda s: s.addr)

    def symbolize(self, addr: int) -> str:
        """``name+0xoff`` for an address: the innermost sized symbol (function or SYM_CODE
        block, local ``.L`` ones included) that contains it, else ``section+0xoff``."""
        name = self._names.get(addr)
        if name is None:
            name = self._names[addr] = self._symbolize(addr)
        return name

    def _symbolize(self, addr: int) -> str:
        for name, stub in self.stubs.items():
            if stub == addr:
                return name
        best: Symbol | None = None
        for s in self.symbols.values():
            if s.size and s.addr <= addr < s.addr + s.size:
                if best is None or s.addr > best.addr or (s.addr == best.addr and s.kind == "func"):
                    best = s
        if best is not None:
            off = addr - best.addr
            return best.name if off == 0 else f"{best.name}+{off:#x}"
        sec = self._section_of(addr)
        if sec is None:
            return f"{addr:#x}"
        return f"{sec.name}+{addr - sec.addr:#x}"

    def _section_of(self, addr: int) -> Section | None:
        for s in self.sections:
            if s.addr <= addr < s.end:
                return s
        return None

    def read(self, addr: int, size: int) -> bytes:
        sec = self._section_of(addr)
        if sec is None:
            return b""
        off = addr - sec.addr
        return sec.data[off:off + size]


def load_object(data: bytes, *, encoding: Encoding, layout_id: int, name: str = "object",
                base: int = layout.TEXT_BASE) -> Image:
    """Lay out a relocatable x86-64 ELF object and decode its exception table.

    Args:
        data: the object file's bytes.
        encoding: the extable encoding the object was built with.
        layout_id: EX_TYPE numbering (516, 517, 610).
        name: used in error messages.
        base: load address of the first section.

    Raises:
        ImageError: not an x86-64 relocatable ELF, an unsupported relocation, or a
            malformed ``__ex_table``.
    """
    try:
        elf = ELFFile(io.BytesIO(data))
        return _load(elf, encoding, layout_id, name, base)
    except ELFError as e:
        raise ImageError(f"{name}: not a valid ELF object: {e}") from e
    except (struct.error, ValueError, KeyError, IndexError) as e:
        raise ImageError(f"{name}: corrupt ELF object: {e}") from e


def _load(elf: ELFFile, encoding: Encoding, layout_id: int, name: str, base: int) -> Image:
    if elf.header["e_machine"] != "EM_X86_64" or elf.elfclass != 64:
        raise ImageError(f"{name}: ELF for {elf.header['e_machine']}, not x86-64")
    if elf.header["e_type"] != "ET_REL":
        raise ImageError(f"{name}: {elf.header['e_type']} is not a relocatable object (.o)")

    # 1. Place allocated sections (except the exception table) from `base`.
    placed: dict[int, tuple[str, int, bytearray, bool]] = {}
    addr = base
    ex_index: int | None = None
    for index, sec in enumerate(elf.iter_sections()):
        if sec.name == EXTABLE:
            ex_index = index
            continue
        if not sec["sh_flags"] & SH_FLAGS.SHF_ALLOC or sec["sh_size"] == 0:
            continue
        align = max(int(sec["sh_addralign"]), 16)
        addr = (addr + align - 1) & ~(align - 1)
        body = bytearray(sec["sh_size"]) if sec["sh_type"] == "SHT_NOBITS" else bytearray(sec.data())
        placed[index] = (sec.name, addr, body, bool(sec["sh_flags"] & SH_FLAGS.SHF_EXECINSTR))
        addr += len(body)
    if addr - base > layout.TEXT_LIMIT:
        raise ImageError(f"{name}: {addr - base} bytes of sections do not fit the text area")

    # 2. Symbols: defined ones get addresses, undefined ones get ud2 stubs.
    symtab = elf.get_section_by_name(".symtab")
    if not isinstance(symtab, SymbolTableSection):
        raise ImageError(f"{name}: no symbol table")
    sym_addr: list[int | None] = []
    sym_name: list[str] = []
    symbols: dict[str, Symbol] = {}
    stubs: dict[str, int] = {}
    for sym in symtab.iter_symbols():
        shndx = sym["st_shndx"]
        kind = sym["st_info"]["type"]
        sym_name.append(sym.name)
        if shndx == "SHN_UNDEF":
            if sym.name and sym.name not in stubs:
                stubs[sym.name] = layout.STUB_BASE + 16 * len(stubs)
            sym_addr.append(stubs.get(sym.name))
            continue
        if shndx == "SHN_ABS":
            sym_addr.append(int(sym["st_value"]))
            continue
        if not isinstance(shndx, int) or shndx not in placed:
            sym_addr.append(None)
            continue
        a = placed[shndx][1] + int(sym["st_value"])
        sym_addr.append(a)
        if kind == "STT_SECTION" or not sym.name or _internal(sym.name):
            continue
        k = {"STT_FUNC": "func", "STT_OBJECT": "object"}.get(kind, "notype")
        old = symbols.get(sym.name)
        if old is None or (old.kind != "func" and k == "func"):
            symbols[sym.name] = Symbol(sym.name, a, int(sym["st_size"]), k,
                                       sym["st_info"]["bind"] != "STB_LOCAL")
    if len(stubs) * 16 > layout.SENTINEL - layout.STUB_BASE:
        raise ImageError(f"{name}: too many undefined symbols")

    # 3. Relocations: applied to placed sections, collected for __ex_table.
    ex_relocs: dict[int, tuple[int, int, str]] = {}
    for rsec in elf.iter_sections():
        if not isinstance(rsec, RelocationSection):
            continue
        target = rsec["sh_info"]
        if target == ex_index:
            for rel in rsec.iter_relocations():
                s = sym_addr[rel["r_info_sym"]]
                if s is None:
                    raise ImageError(f"{name}: __ex_table+{rel['r_offset']:#x} refers to a "
                                     "symbol outside the loaded sections")
                ex_relocs[rel["r_offset"]] = (s, _addend(rel), sym_name[rel["r_info_sym"]])
            continue
        if target not in placed:
            continue
        sname, saddr, body, _ = placed[target]
        for rel in rsec.iter_relocations():
            _apply(rel, body, saddr, sym_addr, sym_name, f"{name}:{sname}")

    # 4. The exception table.
    entries: list[ExtableEntry] = []
    if ex_index is not None:
        ex = elf.get_section(ex_index)
        raw = ex.data()
        if len(raw) % 12:
            raise ImageError(f"{name}: __ex_table size {len(raw)} is not a multiple of 12")
        for off in range(0, len(raw), 12):
            entries.append(_entry(raw, off, ex_relocs, encoding, layout_id, name))

    sections = tuple(Section(n, a, bytes(b), x) for n, a, b, x in placed.values())
    return Image(name, sections, symbols, Extable(entries), encoding, stubs)


def _internal(name: str) -> bool:
    """Assembler-internal names kept by ``as -L``: numeric local labels and size helpers."""
    return "\x01" in name or "\x02" in name or name.startswith(".L__sym_size_")


def _addend(rel) -> int:  # type: ignore[no-untyped-def]
    return int(rel["r_addend"]) if "r_addend" in rel.entry else 0


def _apply(rel, body: bytearray, saddr: int, sym_addr: list[int | None],  # type: ignore[no-untyped-def]
           sym_name: list[str], where: str) -> None:
    off = rel["r_offset"]
    s = sym_addr[rel["r_info_sym"]]
    if s is None:
        raise ImageError(f"{where}+{off:#x}: relocation against '{sym_name[rel['r_info_sym']]}', "
                         "which is in a section emu does not load")
    a = _addend(rel)
    p = saddr + off
    t = rel["r_info_type"]
    if t in (R_X86_64_PC32, R_X86_64_PLT32):
        v = s + a - p
        if not -(1 << 31) <= v < (1 << 31):
            raise ImageError(f"{where}+{off:#x}: PC32 relocation out of range")
        struct.pack_into("<i", body, off, v)
    elif t == R_X86_64_64:
        struct.pack_into("<Q", body, off, (s + a) & 0xFFFFFFFFFFFFFFFF)
    elif t == R_X86_64_PC64:
        struct.pack_into("<q", body, off, s + a - p)
    elif t == R_X86_64_32S:
        v = s + a
        v = v - (1 << 64) if v >= (1 << 63) else v
        if not -(1 << 31) <= v < (1 << 31):
            raise ImageError(f"{where}+{off:#x}: R_X86_64_32S value {s + a:#x} out of range")
        struct.pack_into("<i", body, off, v)
    elif t == R_X86_64_32:
        struct.pack_into("<I", body, off, (s + a) & 0xFFFFFFFF)
    else:
        raise ImageError(f"{where}+{off:#x}: unsupported relocation type {t}")


def _entry(raw: bytes, off: int, relocs: dict[int, tuple[int, int, str]], encoding: Encoding,
           layout_id: int, name: str) -> ExtableEntry:
    fields: list[int] = []
    for i in range(2):
        r = relocs.get(off + 4 * i)
        if r is None:
            raise ImageError(f"{name}: __ex_table entry {off // 12} has no relocation for its "
                             f"{'insn' if i == 0 else 'fixup'} field")
        fields.append(r[0] + r[1])
    third = relocs.get(off + 8)
    word = struct.unpack_from("<I", raw, off + 8)[0]
    if encoding is Encoding.HANDLER:
        if third is None:
            raise ImageError(f"{name}: __ex_table entry {off // 12} has data {word:#x} where the "
                             "handler-pointer encoding (≤ v5.15) needs a handler symbol")
        return decode(encoding, layout_id, fields[0], fields[1], 0, handler=third[2])
    if third is not None:
        raise ImageError(f"{name}: __ex_table entry {off // 12} points at '{third[2]}' where the "
                         "type/data encoding (≥ v5.16) needs a number")
    return decode(encoding, layout_id, fields[0], fields[1], word)

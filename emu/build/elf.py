"""Relocatable object → ``Image``: code at kernel addresses, symbols, and ``__ex_table``.

This is the only module that imports pyelftools.  Allocated sections of a kbuild-style ``.o``
are laid out from ``layout.TEXT_BASE`` in file order; relocations are applied by emu itself
(unicorn-notes §7: pyelftools' RelocationHandler ignores load addresses).  ``__ex_table``
fields are resolved as S + A (the P of PC32 cancels), and the third word is either a handler
symbol (≤ v5.15) or data (v5.16+), see ``extable.py``.
"""

from __future__ import annotations

import bisect
import io
import mmap
import os
import pickle
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from emu.core import layout
from emu.errors import ImageError, InputError
from emu.kernel.extable import Encoding, Extable, ExtableEntry, decode
from emu.kernel.image import Image, Section, Symbol

# psABI relocation numbers (x86-64).
R_X86_64_64 = 1
R_X86_64_PC32 = 2
R_X86_64_PLT32 = 4
R_X86_64_32 = 10
R_X86_64_32S = 11
R_X86_64_PC64 = 24

EXTABLE = "__ex_table"


# ---- the section header table, checked before anything is read or allocated -------------

_SHDR = struct.Struct("<IIQQQQIIQQ")
SHT_NULL, SHT_SYMTAB, SHT_RELA, SHT_NOBITS, SHT_REL = 0, 2, 4, 8, 9
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 0x1, 0x2, 0x4
#: Entry sizes the gABI fixes for the tables emu reads.
_ENTSIZE = {SHT_SYMTAB: 24, SHT_RELA: 24, SHT_REL: 16}
#: Largest alignment a section of a relocatable object may ask for (2 MiB: a huge page).
MAX_ALIGN = 1 << 21
#: Largest section emu reads into memory whole (a debug vmlinux's .symtab is ~10 MB).
MAX_READ = 256 << 20


def section_table(buf: bytes | mmap.mmap, name: str) -> list[tuple[int, ...]]:
    """The raw Elf64_Shdr tuples of an ELF64 file, every size and offset checked against the
    file first, so that no later step reads, loops over or allocates what a corrupt header
    claims (a 2^63-byte section, a table past the end of the file).

    Raises:
        ImageError: not a little-endian ELF64 file, or a header that does not fit the file.
    """
    n = len(buf)
    if n < 64 or buf[:4] != b"\x7fELF":
        raise ImageError(f"{name}: not a valid ELF file: bad magic")
    if buf[4] != 2 or buf[5] != 1:
        raise ImageError(f"{name}: not a little-endian ELF64 file")
    shoff, = struct.unpack_from("<Q", buf, 40)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", buf, 58)
    if shnum == 0 or shentsize != _SHDR.size:
        raise ImageError(f"{name}: corrupt ELF file: no section header table (e_shnum "
                         f"{shnum}, e_shentsize {shentsize})")
    if shoff + shnum * shentsize > n:
        raise ImageError(f"{name}: corrupt ELF file: the section header table ({shnum} "
                         f"entries at {shoff:#x}) lies past the end of the file ({n} bytes)")
    if shstrndx >= shnum:
        raise ImageError(f"{name}: corrupt ELF file: e_shstrndx {shstrndx} is not a section")
    raw = [_SHDR.unpack_from(buf, shoff + i * shentsize) for i in range(shnum)]
    for i, (_nm, typ, _fl, _addr, off, size, link, _info, align, entsize) in enumerate(raw):
        what = f"{name}: corrupt ELF file: section {i}"
        if typ == SHT_NULL:
            continue
        if typ != SHT_NOBITS and off + size > n:
            raise ImageError(f"{what}: {size:#x} bytes at offset {off:#x} lie past the end "
                             f"of the file ({n} bytes; truncated?)")
        if align > 1 << 32 or (align & (align - 1)):
            raise ImageError(f"{what}: alignment {align:#x} is not a power of two")
        if link >= shnum:
            raise ImageError(f"{what}: sh_link {link} is not a section")
        want = _ENTSIZE.get(typ)
        if want is not None and (entsize != want or size % want):
            raise ImageError(f"{what}: a table of {size} bytes with entries of {entsize} "
                             f"bytes (the ELF64 entry is {want})")
    strtab = raw[shstrndx]
    if strtab[1] == SHT_NOBITS:
        raise ImageError(f"{name}: corrupt ELF file: the section name table has no bytes")
    for i, r in enumerate(raw):
        if r[1] != SHT_NULL and r[0] >= max(strtab[5], 1):
            raise ImageError(f"{name}: corrupt ELF file: section {i}'s name lies outside "
                             "the section name table")
    return raw


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
    raw = section_table(data, name)
    # 0. Where each allocated section goes, from the headers alone: nothing is allocated
    #    before the whole layout is known to fit the text area.  Executable sections come
    #    first, then read-only, then writable ones (file order within each class), each class
    #    from a page of its own, so that every page has one protection
    #    (``layout.section_protection``).
    plan: dict[int, int] = {}
    addr = base
    loaded = [(index, size, align, layout.section_protection(bool(flags & SHF_EXECINSTR),
                                                             bool(flags & SHF_WRITE)))
              for index, (_nm, _typ, flags, _a, _off, size, _l, _i, align, _e) in enumerate(raw)
              if flags & SHF_ALLOC and size and _shname(data, raw, index) != EXTABLE]
    loaded.sort(key=lambda t: layout.SECTION_CLASSES.index(t[3]))
    previous = None
    for index, size, align, prot in loaded:
        if align > MAX_ALIGN:
            raise ImageError(f"{name}: corrupt ELF object: section {index} asks for "
                             f"{align:#x}-byte alignment")
        align = max(align, 16)
        if previous is not None and prot is not previous:
            align = max(align, layout.PAGE)
        previous = prot
        addr = (addr + align - 1) & ~(align - 1)
        plan[index] = addr
        addr += size
        if addr - base > layout.TEXT_LIMIT:
            sname = _shname(data, raw, index)
            raise ImageError(f"{name}: section {sname} ({size} bytes) does not fit the "
                             f"{layout.TEXT_LIMIT}-byte text area ({addr - base} bytes of "
                             "sections)")
    return _parse(data, name, "object",
                  lambda elf: _load(elf, encoding, layout_id, name, base, plan))


def _shname(data: bytes, raw: list[tuple[int, ...]], index: int) -> str:
    """A section's name, read from a checked table (``section_table``)."""
    shstr = raw[struct.unpack_from("<H", data, 62)[0]]
    start = shstr[4] + raw[index][0]
    end = data.find(b"\0", start, shstr[4] + shstr[5])
    return data[start:end if end >= 0 else start].decode("latin-1") or f"#{index}"


def _load(elf: ELFFile, encoding: Encoding, layout_id: int, name: str, base: int,
          plan: dict[int, int]) -> Image:
    if elf.header["e_machine"] != "EM_X86_64" or elf.elfclass != 64:
        raise ImageError(f"{name}: ELF for {elf.header['e_machine']}, not x86-64")
    if elf.header["e_type"] != "ET_REL":
        raise ImageError(f"{name}: {elf.header['e_type']} is not a relocatable object (.o)")

    # 1. Place allocated sections (except the exception table) where ``plan`` says.
    placed: dict[int, tuple[str, int, bytearray, bool, bool]] = {}
    ex_index: int | None = None
    for index, sec in enumerate(elf.iter_sections()):
        if sec.name == EXTABLE:
            ex_index = index
            continue
        if index not in plan:
            continue
        body = bytearray(sec["sh_size"]) if sec["sh_type"] == "SHT_NOBITS" else bytearray(sec.data())
        placed[index] = (sec.name, plan[index], body,
                         bool(sec["sh_flags"] & SH_FLAGS.SHF_EXECINSTR),
                         bool(sec["sh_flags"] & SH_FLAGS.SHF_WRITE))

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
        value, size = int(sym["st_value"]), int(sym["st_size"])
        if value > len(placed[shndx][2]) or value + size > len(placed[shndx][2]):
            raise ImageError(f"{name}: corrupt ELF object: symbol '{sym.name}' "
                             f"({value:#x}+{size:#x}) lies outside its section "
                             f"{placed[shndx][0]} ({len(placed[shndx][2])} bytes)")
        a = placed[shndx][1] + value
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
                if rel["r_info_sym"] >= len(sym_addr):
                    raise ImageError(f"{name}: __ex_table+{rel['r_offset']:#x}: relocation "
                                     f"against symbol {rel['r_info_sym']}, which does not exist")
                s = sym_addr[rel["r_info_sym"]]
                if s is None:
                    raise ImageError(f"{name}: __ex_table+{rel['r_offset']:#x} refers to a "
                                     "symbol outside the loaded sections")
                ex_relocs[rel["r_offset"]] = (s, _addend(rel), sym_name[rel["r_info_sym"]])
            continue
        if target not in placed:
            continue
        sname, saddr, body, _, _ = placed[target]
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

    sections = tuple(Section(n, a, bytes(b), x, w) for n, a, b, x, w in placed.values())
    return Image(name, sections, symbols, Extable(entries), encoding, stubs)


def _internal(name: str) -> bool:
    """Assembler-internal names kept by ``as -L``: numeric local labels and size helpers."""
    return "\x01" in name or "\x02" in name or name.startswith(".L__sym_size_")


def _addend(rel) -> int:  # type: ignore[no-untyped-def]
    return int(rel["r_addend"]) if "r_addend" in rel.entry else 0


#: Bytes a relocation of each type writes.
_WIDTH = {R_X86_64_64: 8, R_X86_64_PC64: 8, R_X86_64_PC32: 4, R_X86_64_PLT32: 4,
          R_X86_64_32: 4, R_X86_64_32S: 4}


def _apply(rel, body: bytearray, saddr: int, sym_addr: list[int | None],  # type: ignore[no-untyped-def]
           sym_name: list[str], where: str) -> None:
    off = rel["r_offset"]
    t = rel["r_info_type"]
    if t not in _WIDTH:
        raise ImageError(f"{where}+{off:#x}: unsupported relocation type {t}")
    if off + _WIDTH[t] > len(body):
        raise ImageError(f"{where}+{off:#x}: relocation past the end of the section "
                         f"({len(body)} bytes)")
    if rel["r_info_sym"] >= len(sym_addr):
        raise ImageError(f"{where}+{off:#x}: relocation against symbol {rel['r_info_sym']}, "
                         "which does not exist")
    s = sym_addr[rel["r_info_sym"]]
    if s is None:
        raise ImageError(f"{where}+{off:#x}: relocation against '{sym_name[rel['r_info_sym']]}', "
                         "which is in a section emu does not load")
    a = _addend(rel)
    p = saddr + off
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


# ---- linked kernels (vmlinux) ------------------------------------------------------------

def load_linked(data: bytes | LinkedFile, *, encoding: Encoding, layout_id: int,
                name: str = "vmlinux", keep: tuple[str, ...] = ()) -> Image:
    """Load a linked x86-64 kernel image (ET_EXEC with a symbol table, e.g. ``vmlinux``).

    In a linked image the ``__ex_table`` words are already resolved, each relative to its own
    address (unicorn-notes §7); in the handler-pointer encoding (≤ v5.15) the third word
    points at a handler function, whose symbol name (ex_handler_*) gives the type.

    Only a window of the image is loaded: the symbols named in ``keep`` that the image
    defines, plus the fixups of the extable entries whose faulting instruction lies inside
    them ("selected by address range").  With ``keep`` empty, every allocated section is
    loaded.  The window is moved to ``layout.TEXT_BASE`` as a whole (one offset for code,
    symbols and entries), which keeps every relative reference inside it valid.  The image's
    ``origin`` is the window's original address (``Image.origin``), so callers can map
    addresses back to the file.

    Args:
        data: the file's bytes, or an open ``LinkedFile`` (mmap; only the window is read).

    Raises:
        ImageError: not an x86-64 ET_EXEC with symbols, none of ``keep`` is defined, or the
            window does not fit the emulated text area.
    """
    lf = data if isinstance(data, LinkedFile) else LinkedFile(data, name)
    try:
        return _load_linked(lf, encoding, layout_id, name, keep)
    except (struct.error, ValueError, KeyError, IndexError, OverflowError) as e:
        raise ImageError(f"{name}: corrupt ELF file: {e}") from e


def _parse(data: bytes, name: str, what: str, load: Callable[[ELFFile], Image]) -> Image:
    """Open ``data`` as ELF and ``load`` it, turning pyelftools' errors into ImageError."""
    try:
        return load(ELFFile(io.BytesIO(data)))
    except ELFError as e:
        raise ImageError(f"{name}: not a valid ELF {what}: {e}") from e
    except (struct.error, ValueError, KeyError, IndexError, OverflowError) as e:
        raise ImageError(f"{name}: corrupt ELF {what}: {e}") from e


def linked_extable(lf: LinkedFile, encoding: Encoding) -> list[tuple[int, int, int, str | None]]:
    """The raw ``__ex_table`` of a linked image: (insn, fixup, third word, handler name).

    Raises:
        ImageError: a size that is not a multiple of 12, an unsorted table, or (handler
            encoding) a third word that points at no symbol.
    """
    name = lf.name
    ex = lf.section(EXTABLE)
    out: list[tuple[int, int, int, str | None]] = []
    if ex is None or not ex.size:
        return out
    raw = lf.data(ex)
    base = ex.addr
    if len(raw) % 12:
        raise ImageError(f"{name}: __ex_table size {len(raw)} is not a multiple of 12")
    by_addr: dict[int, list[str]] | None = None
    if encoding is Encoding.HANDLER:
        by_addr = {}
        for n, a, *_ in lf.symbols():
            by_addr.setdefault(a, []).append(n)
    for off in range(0, len(raw), 12):
        i, f, third = struct.unpack_from("<iiI", raw, off)
        insn, fixup = base + off + i, base + off + 4 + f
        handler = None
        if by_addr is not None:
            target = base + off + 8 + struct.unpack_from("<i", raw, off + 8)[0]
            names = by_addr.get(target, [])
            handler = next((n for n in names if n.startswith("ex_handler_")),
                           names[0] if names else None)
            if handler is None:
                raise ImageError(f"{name}: __ex_table entry {off // 12} (insn {insn:#x}) "
                                 f"points at {target:#x}, which no symbol names; is this "
                                 "image really in the handler-pointer encoding (<= v5.15)?")
            third = 0
        if out and insn < out[-1][0]:
            raise ImageError(f"{name}: __ex_table is not sorted: entry {off // 12} (insn "
                             f"{insn:#x}) comes after {out[-1][0]:#x}; the "
                             "kernel's binary search would miss entries")
        out.append((insn, fixup, third, handler))
    return out


def _extent(syms: list[LinkedSymbol], a: int, size: int) -> tuple[int, int]:
    """[start, end) of a symbol to keep: its own size, or for a sizeless label inside a
    function (SYM_INNER_LABEL, e.g. 6.1's __put_user_nocheck_8) the enclosing function's."""
    if size:
        return a, a + size
    for _n, fa, fs, k, _g in syms:
        if k == "func" and fs and fa <= a < fa + fs:
            return fa, fa + fs
    return a, a + 1


def linked_window(lf: LinkedFile, keep: tuple[str, ...],
                  raw_entries: list[tuple[int, int, int, str | None]]) -> tuple[int, int]:
    """The address range ``load_linked`` loads for ``keep``: the symbols so named, and the
    fixups (plus 256 bytes) of the entries whose instruction lies in them, from a page
    boundary; with ``keep`` empty, every allocated section.

    Raises:
        ImageError: none of ``keep`` is defined, or the range is larger than emu maps.
    """
    name = lf.name
    if keep:
        syms = lf.symbols()
        ranges = [_extent(syms, a, size) for n, a, size, k, _ in syms if n in keep]
        if not ranges:
            funcs = sorted(n for n, _, _, k, _ in lf.symbols() if k == "func")
            raise ImageError(f"{name}: defines none of {', '.join(keep)} (functions: "
                             f"{', '.join(funcs[:20]) or 'none'}{' ...' if len(funcs) > 20 else ''})")
        inside = [e for e in raw_entries if any(lo <= e[0] < hi for lo, hi in ranges)]
        lo = min([r[0] for r in ranges] + [e[1] for e in inside])
        hi = max([r[1] for r in ranges] + [e[1] + 256 for e in inside])
    else:
        secs = loadable_sections(lf)
        lo = min(s.addr for s in secs)
        hi = max(s.addr + s.size for s in secs)
    lo &= ~(layout.PAGE - 1)
    if hi - lo > layout.TEXT_LIMIT:
        raise ImageError(f"{name}: the code to load spans {hi - lo} bytes ({lo:#x}..{hi:#x}); "
                         f"emu maps at most {layout.TEXT_LIMIT} (name one routine with "
                         "--routine)")
    return lo, hi


def loadable_sections(lf: LinkedFile) -> list[SectionHeader]:
    """The allocated sections a window is cut from (``__ex_table`` is read as entries)."""
    return [s for s in lf.sections if s.alloc and s.size and s.name != EXTABLE]


def _load_linked(lf: LinkedFile, encoding: Encoding, layout_id: int, name: str,
                 keep: tuple[str, ...]) -> Image:
    syms = lf.symbols()
    # 1. The exception table, resolved field by field.
    raw_entries = linked_extable(lf, encoding)

    # 2. The window to load.
    lo, hi = linked_window(lf, keep, raw_entries)
    delta = layout.TEXT_BASE - lo

    sections: list[Section] = []
    for s in loadable_sections(lf):
        a0, a1 = max(s.addr, lo), min(s.addr + s.size, hi)
        if a0 >= a1:
            continue
        if s.type == SHT_NOBITS:
            body = bytes(a1 - a0)
        else:
            body = lf.bytes_at(s.offset + a0 - s.addr, a1 - a0)
        sections.append(Section(s.name, a0 + delta, body, s.executable, s.writable))
    symbols: dict[str, Symbol] = {}
    for n, a, size, k, glob in syms:
        if lo <= a < hi:
            old = symbols.get(n)
            if old is None or (old.kind != "func" and k == "func"):
                symbols[n] = Symbol(n, a + delta, size, k, glob)
    entries = [decode(encoding, layout_id, i + delta, f + delta, third, handler=h)
               for i, f, third, h in raw_entries if lo <= i < hi and lo <= f < hi]
    return Image(name, tuple(sections), symbols, Extable(entries), encoding, {}, origin=lo)


# ---- linked kernels read through mmap (a real distribution vmlinux) ----------------------
#
# A debug vmlinux is 350-650 MB, nearly all DWARF.  Everything emu needs lives in a few
# allocated sections (a window of .text, __ex_table, .altinstructions, .altinstr_replacement,
# .return_sites, .retpoline_sites, .notes, .rodata for linux_banner) and in .symtab/.strtab.
# ``LinkedFile`` maps the file and reads only those byte ranges (the page cache brings in what
# is touched, nothing else); the parsed symbol table is cached on disk keyed by the GNU
# build-id (``.notes``, NT_GNU_BUILD_ID), so a second run does not read .symtab at all.
# The ELF64 layouts are those of the System V gABI (Elf64_Ehdr, Elf64_Shdr, Elf64_Sym,
# Elf64_Nhdr); pyelftools is not used here because it reads whole sections into memory.

_SYM = struct.Struct("<IBBHQQ")
STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE = 1, 2, 3, 4
STB_LOCAL = 0
NT_GNU_BUILD_ID = 3
#: Bump when the cached symbol format changes.
SYMCACHE_FORMAT = 1


@dataclass(frozen=True, slots=True)
class SectionHeader:
    """One Elf64_Shdr, with its name resolved."""

    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int

    @property
    def alloc(self) -> bool:
        return bool(self.flags & SHF_ALLOC)

    @property
    def executable(self) -> bool:
        return bool(self.flags & SHF_EXECINSTR)

    @property
    def writable(self) -> bool:
        return bool(self.flags & SHF_WRITE)


#: (name, address, size, kind, global) — kind "func", "object" or "notype".
LinkedSymbol = tuple[str, int, int, str, bool]


class LinkedFile:
    """A linked x86-64 kernel image (ET_EXEC) read lazily through mmap.

    Args:
        source: a path (mapped read-only) or the file's bytes.
        name: used in error messages.
        cache_dir: where parsed symbol tables are kept by build-id (None: no cache).

    Raises:
        InputError: the path cannot be opened.
        ImageError: not an x86-64 ET_EXEC ELF64, or a malformed header / section table.
    """

    def __init__(self, source: str | bytes, name: str, cache_dir: Path | None = None) -> None:
        self.name = name
        self.cache_dir = cache_dir
        self._file = None
        if isinstance(source, (bytes, bytearray, memoryview)):
            self.buf: mmap.mmap | bytes = bytes(source)
        else:
            try:
                self._file = open(source, "rb")  # noqa: SIM115 - closed in close()
                self.buf = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            except FileNotFoundError:
                raise InputError(f"{source}: no such file (--vmlinux)") from None
            except (OSError, ValueError) as e:
                raise InputError(f"{source}: cannot read (--vmlinux): {e}") from None
        self.size = len(self.buf)
        self._symbols: list[LinkedSymbol] | None = None
        try:
            self._header()
        except struct.error as e:
            raise ImageError(f"{name}: corrupt ELF file: {e}") from None

    def close(self) -> None:
        if isinstance(self.buf, mmap.mmap):
            self.buf.close()
        if self._file is not None:
            self._file.close()

    # -- headers ---------------------------------------------------------------------------

    def _header(self) -> None:
        b = self.buf
        if len(b) < 64 or b[:4] != b"\x7fELF":
            raise ImageError(f"{self.name}: not a valid ELF file: bad magic")
        if b[4] != 2 or b[5] != 1:
            raise ImageError(f"{self.name}: not a little-endian ELF64 file")
        e_type, e_machine = struct.unpack_from("<HH", b, 16)
        if e_machine != 62:
            raise ImageError(f"{self.name}: ELF for machine {e_machine}, not x86-64")
        if e_type != 2:
            kind = {1: "ET_REL", 3: "ET_DYN", 4: "ET_CORE"}.get(e_type, f"type {e_type}")
            raise ImageError(f"{self.name}: {kind} is not a linked kernel image "
                             "(use --object for a .o)")
        raw = section_table(b, self.name)
        shstrndx, = struct.unpack_from("<H", b, 62)
        strtab = raw[shstrndx]
        names = bytes(b[strtab[4]:strtab[4] + strtab[5]])
        self.sections: list[SectionHeader] = []
        for (nm, typ, flags, addr, off, size, *_rest) in raw:
            end = names.find(b"\0", nm)
            self.sections.append(SectionHeader(names[nm:end].decode("latin-1"), typ, flags,
                                               addr, off, size))
        self._links = [r[6] for r in raw]
        self._by_name = {s.name: s for s in self.sections}

    def section(self, name: str) -> SectionHeader | None:
        return self._by_name.get(name)

    def data(self, sec: SectionHeader) -> bytes:
        """A section's bytes (zeros for NOBITS)."""
        if sec.size > MAX_READ:
            raise ImageError(f"{self.name}: section {sec.name} claims {sec.size} bytes; emu "
                             f"reads at most {MAX_READ} of one section")
        if sec.type == SHT_NOBITS:
            return bytes(sec.size)
        if sec.offset + sec.size > self.size:
            raise ImageError(f"{self.name}: section {sec.name} lies past the end of the file "
                             "(truncated?)")
        return self.bytes_at(sec.offset, sec.size)

    def records(self, sec: SectionHeader, size: int) -> Iterator[tuple[int, bytes]]:
        """A table section as (address, bytes) of each ``size``-byte record, in order."""
        raw = self.data(sec)
        for off in range(0, len(raw) - size + 1, size):
            yield sec.addr + off, raw[off:off + size]

    def bytes_at(self, offset: int, size: int) -> bytes:
        """``size`` bytes of the file at ``offset`` (every read of the contents goes here)."""
        return bytes(self.buf[offset:offset + size])

    def read(self, addr: int, size: int) -> bytes:
        """``size`` bytes at a kernel address, from the allocated section holding them."""
        if not 0 <= size <= MAX_READ:
            raise ImageError(f"{self.name}: cannot read {size} bytes at {addr:#x}")
        s = self.section_at(addr, size)
        if s is None:
            raise ImageError(f"{self.name}: {addr:#x}+{size} is not inside one allocated "
                             "section")
        if s.type == SHT_NOBITS:
            return bytes(size)
        return self.bytes_at(s.offset + addr - s.addr, size)

    def section_at(self, addr: int, size: int) -> SectionHeader | None:
        """The first allocated section holding ``[addr, addr + size)`` (what ``read`` reads)."""
        for s in self.sections:
            if s.alloc and s.addr <= addr and addr + size <= s.addr + s.size:
                return s
        return None

    def build_id(self) -> str | None:
        """The GNU build-id (hex) from the allocated note sections, or None."""
        for s in self.sections:
            if s.type != 7 or not s.size:      # SHT_NOTE
                continue
            d = self.data(s)
            off = 0
            while off + 12 <= len(d):
                namesz, descsz, ntype = struct.unpack_from("<III", d, off)
                nm_end = off + 12 + ((namesz + 3) & ~3)
                desc = d[nm_end:nm_end + descsz]
                if ntype == NT_GNU_BUILD_ID and d[off + 12:off + 12 + namesz].rstrip(b"\0") == b"GNU":
                    return desc.hex()
                off = nm_end + ((descsz + 3) & ~3)
        return None

    # -- symbols ---------------------------------------------------------------------------

    def symbols(self) -> list[LinkedSymbol]:
        """Defined, named function/object/notype symbols (cached by build-id).

        Raises:
            ImageError: no .symtab (a stripped image cannot be used).
        """
        if self._symbols is not None:
            return self._symbols
        cached = self._cache_path()
        if cached is not None and cached.is_file():
            try:
                with cached.open("rb") as f:
                    fmt, syms = pickle.load(f)
                if fmt == SYMCACHE_FORMAT:
                    self._symbols = syms
                    return syms
            except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError):
                pass                                 # a torn or foreign file: parse again
        self._symbols = self._parse_symbols()
        if cached is not None:
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_suffix(f".{os.getpid()}.tmp")
                with tmp.open("wb") as f:
                    pickle.dump((SYMCACHE_FORMAT, self._symbols), f, protocol=5)
                os.replace(tmp, cached)
            except OSError:
                pass                                 # a read-only cache only costs time
        return self._symbols

    def _cache_path(self) -> Path | None:
        if self.cache_dir is None:
            return None
        bid = self.build_id()
        return None if bid is None else self.cache_dir / f"{bid}.symbols"

    def _parse_symbols(self) -> list[LinkedSymbol]:
        symtab = self.section(".symtab")
        if symtab is None:
            raise ImageError(f"{self.name}: no symbol table (a stripped image cannot be used)")
        link = self._links[self.sections.index(symtab)]
        if link >= len(self.sections):
            raise ImageError(f"{self.name}: .symtab links to no string table")
        strtab = self.data(self.sections[link])
        raw = self.data(symtab)
        if len(raw) % _SYM.size:
            raise ImageError(f"{self.name}: .symtab size is not a multiple of {_SYM.size}")
        kinds = {STT_FUNC: "func", STT_OBJECT: "object"}
        out: list[LinkedSymbol] = []
        find = strtab.find
        for nm, info, _other, shndx, value, size in _SYM.iter_unpack(raw):
            typ = info & 0xF
            if not nm or shndx == 0 or shndx >= 0xFF00 or typ in (STT_SECTION, STT_FILE):
                continue
            end = find(b"\0", nm)
            out.append((strtab[nm:end].decode("latin-1"), value, size, kinds.get(typ, "notype"),
                        (info >> 4) != STB_LOCAL))
        return out


class LinkedSlice(LinkedFile):
    """Parts of a linked image: all its section headers, some byte ranges of the file and
    some of its symbols.  Plain data: it pickles (to a cluster worker, ``emu.build.shipping``
    decides what it holds) and reads like the whole file.

    Invariant: every read goes through ``bytes_at``, which serves only the kept ranges and
    raises ``ImageError`` for any other, so a slice that lacks something fails loudly and
    never reads zeros; ``records`` yields only the table records that were kept.

    Args:
        whole: the image to cut from.
        ranges: (file offset, size) of the bytes to keep.
        symbols: the symbols to keep (a sub-list of ``whole.symbols()``, in its order).
    """

    def __init__(self, whole: LinkedFile, ranges: Iterable[tuple[int, int]],
                 symbols: list[LinkedSymbol]) -> None:
        self.name = whole.name
        self.cache_dir = None
        self._file = None
        self.buf = b""
        self.size = whole.size
        self.sections = list(whole.sections)
        self._links = list(whole._links)
        self._by_name = dict(whole._by_name)
        self._symbols = list(symbols)
        self._build_id = whole.build_id()
        merged: list[list[int]] = []
        for off, size in sorted(r for r in ranges if r[1] > 0):
            if merged and off <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], off + size)
            else:
                merged.append([off, off + size])
        self.chunks: tuple[tuple[int, bytes], ...] = tuple(
            (lo, whole.bytes_at(lo, hi - lo)) for lo, hi in merged)
        self._starts = [c[0] for c in self.chunks]

    def __getstate__(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if k != "_starts"}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._starts = [c[0] for c in self.chunks]

    def close(self) -> None:
        pass

    def build_id(self) -> str | None:
        return self._build_id

    def kept(self) -> int:
        """How many bytes of the file the slice holds."""
        return sum(len(b) for _, b in self.chunks)

    def __sizeof__(self) -> int:
        # What Dask accounts for it (its default ``sizeof`` is ``sys.getsizeof``): the
        # bytes held, and a rough 100 bytes a header and a symbol.
        return object.__sizeof__(self) + self.kept() + 100 * (len(self.sections)
                                                              + len(self._symbols or ()))

    def _chunk(self, offset: int, size: int) -> tuple[int, bytes] | None:
        i = bisect.bisect_right(self._starts, offset) - 1
        if i >= 0:
            lo, body = self.chunks[i]
            if offset + size <= lo + len(body):
                return lo, body
        return None

    def bytes_at(self, offset: int, size: int) -> bytes:
        got = self._chunk(offset, size)
        if got is None:
            raise ImageError(f"{self.name}: bytes {offset:#x}+{size} of the file are not in "
                             "the slice that was sent (only the named routines' windows are)")
        lo, body = got
        return body[offset - lo:offset - lo + size]

    def records(self, sec: SectionHeader, size: int) -> Iterator[tuple[int, bytes]]:
        end = sec.offset + sec.size - size + 1
        for lo, body in self.chunks:
            first = max(lo, sec.offset)
            first += (sec.offset - first) % size       # the next record boundary
            for off in range(first, min(lo + len(body) - size + 1, end), size):
                yield sec.addr + off - sec.offset, body[off - lo:off - lo + size]


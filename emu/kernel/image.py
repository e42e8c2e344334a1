"""A kernel image in memory: allocated sections at kernel addresses, symbols, ``__ex_table``.

Pure data, built by ``emu.build.elf`` from an object or a linked vmlinux (and by the keystone
backend); the machine runs its sections and the kernel policy searches its exception table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from emu.caching import Bounded
from emu.errors import ImageError
from emu.kernel.extable import Encoding, Extable


@dataclass(frozen=True, slots=True)
class Section:
    """One allocated section placed in the kernel address space.

    ``executable`` and ``writable`` are the ELF flags SHF_EXECINSTR and SHF_WRITE; the
    machine maps the section's pages by them (``layout.section_protection``).
    """

    name: str
    addr: int
    data: bytes = field(repr=False)
    executable: bool
    writable: bool = False

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
    #: For a window of a linked image: the original address that sits at the first loaded
    #: byte's page (``layout.TEXT_BASE``); 0 for an assembled or relocatable input.
    origin: int = 0
    #: ``symbolize`` memo: address → name.  The only state that changes after construction;
    #: it never changes what any method returns.
    _names: Bounded[int, str] = field(default_factory=lambda: Bounded(4096, "image.names"),
                                      init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Every entry must point into loaded code, and no instruction may have two entries."""
        seen: set[int] = set()
        for i, e in enumerate(self.extable):
            for what, addr in (("insn", e.insn), ("fixup", e.fixup)):
                sec = self._section_of(addr)
                if sec is None or not sec.executable:
                    where = f"{sec.name}+{addr - sec.addr:#x}" if sec else f"{addr:#x}"
                    raise ImageError(f"{self.name}: __ex_table entry {i}: {what} {where} is "
                                     "outside the loaded code")
            if e.insn in seen:
                raise ImageError(f"{self.name}: two __ex_table entries for the instruction at "
                                 f"{self.symbolize(e.insn)}")
            seen.add(e.insn)

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
        """The functions: ``func`` symbols, and global code labels without a type (a
        ``SYM_FUNC_START`` whose ``SYM_FUNC_END`` is missing, which is what emits the
        ``.type`` and the ``.size``)."""
        return sorted((s for s in self.symbols.values() if self.is_function(s)),
                      key=lambda s: s.addr)

    def is_function(self, sym: Symbol) -> bool:
        if sym.kind == "func":
            return True
        if sym.kind != "notype" or not sym.is_global or sym.size:
            return False
        sec = self._section_of(sym.addr)
        return sec is not None and sec.executable

    def extent(self, sym: Symbol) -> int:
        """The bytes ``sym`` covers: its size; for a function without one (a missing
        ``SYM_FUNC_END`` leaves no ``.size``) up to the next function or global symbol of
        its section, else to the section's end — as far as ``emu run`` would execute it."""
        if sym.size or not self.is_function(sym):
            return sym.size
        sec = self._section_of(sym.addr)
        if sec is None:
            return 0
        end = sec.end
        for s in self.symbols.values():
            if (s.kind == "func" or s.is_global) and sym.addr < s.addr < end:
                end = s.addr
        return end - sym.addr

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
        if best is None:   # a function without a size (no SYM_FUNC_END): its extent
            for s in self.symbols.values():
                if not s.size and self.is_function(s) and s.addr <= addr < s.addr + self.extent(s):
                    if best is None or s.addr > best.addr:
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

"""Exception-table entries: the three ``__ex_table`` encodings and the EX_TYPE_* tables.

Follows kernel-facts.md §5 (arch/x86/include/asm/extable_fixup_types.h, arch/x86/mm/extable.c):

* up to v5.15 (``Encoding.HANDLER``): three relative words, the third pointing at a handler
  function (ex_handler_default / _uaccess / _copy / _fault, ...);
* v5.16 (``Encoding.TYPE``): the third word is an absolute EX_TYPE_* number (2cadf5248b93);
* v5.17 and later (``Encoding.DATA``): the third word is data, type in bits 0-7, register in
  8-11, flags in 12-15 and a signed immediate in 16-31 (4b5305decc84).

The numbering of EX_TYPE_* changed twice; ``LAYOUTS`` holds one table per numbering.  Handler
*semantics* (what each type does to the registers) live in ``policy.py``, because they are
kernel behaviour; this module only names things.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from enum import Enum, IntEnum

from emu.errors import ImageError


class Encoding(IntEnum):
    """How the third word of an entry is encoded (also the -DEMU_EXTABLE_ABI value)."""

    HANDLER = 1
    TYPE = 2
    DATA = 3


class ExType(str, Enum):
    """Fixup types by name, independent of their numbering in any one kernel version."""

    NONE = "NONE"
    DEFAULT = "DEFAULT"
    FAULT = "FAULT"
    UACCESS = "UACCESS"
    COPY = "COPY"
    CLEAR_FS = "CLEAR_FS"
    FPU_RESTORE = "FPU_RESTORE"
    WRMSR = "WRMSR"
    RDMSR = "RDMSR"
    BPF = "BPF"
    WRMSR_SAFE = "WRMSR_SAFE"
    RDMSR_SAFE = "RDMSR_SAFE"
    WRMSR_IN_MCE = "WRMSR_IN_MCE"
    RDMSR_IN_MCE = "RDMSR_IN_MCE"
    DEFAULT_MCE_SAFE = "DEFAULT_MCE_SAFE"
    FAULT_MCE_SAFE = "FAULT_MCE_SAFE"
    POP_REG = "POP_REG"
    IMM_REG = "IMM_REG"
    FAULT_SGX = "FAULT_SGX"
    UCOPY_LEN = "UCOPY_LEN"
    ZEROPAD = "ZEROPAD"
    ERETU = "ERETU"
    OTHER = "OTHER"  # a handler function emu has no semantics for (ex_handler_ext, ...)


T = ExType
#: EX_TYPE numbering of v5.16 (kernel-facts §5b).
LAYOUT_516: dict[int, ExType] = {
    0: T.NONE, 1: T.DEFAULT, 2: T.FAULT, 3: T.UACCESS, 4: T.COPY, 5: T.CLEAR_FS,
    6: T.FPU_RESTORE, 7: T.WRMSR, 8: T.RDMSR, 9: T.BPF, 10: T.WRMSR_IN_MCE,
    11: T.RDMSR_IN_MCE, 12: T.DEFAULT_MCE_SAFE, 13: T.FAULT_MCE_SAFE,
}
#: The "later layout" (v5.17 onwards, renumbering commit UNVERIFIED).
LAYOUT_517: dict[int, ExType] = {
    0: T.NONE, 1: T.DEFAULT, 2: T.FAULT, 3: T.UACCESS, 4: T.COPY, 5: T.CLEAR_FS,
    6: T.FPU_RESTORE, 7: T.BPF, 8: T.WRMSR, 9: T.RDMSR, 10: T.WRMSR_SAFE, 11: T.RDMSR_SAFE,
    12: T.WRMSR_IN_MCE, 13: T.RDMSR_IN_MCE, 14: T.DEFAULT_MCE_SAFE, 15: T.FAULT_MCE_SAFE,
    16: T.POP_REG, 17: T.IMM_REG, 18: T.FAULT_SGX, 19: T.UCOPY_LEN, 20: T.ZEROPAD,
}
#: The modern layout (after cb517619f967, ~v6.10): 4 is unused, ERETU added.
LAYOUT_610: dict[int, ExType] = {**{k: v for k, v in LAYOUT_517.items() if k != 4}, 21: T.ERETU}
LAYOUTS: dict[int, dict[int, ExType]] = {516: LAYOUT_516, 517: LAYOUT_517, 610: LAYOUT_610}

#: Handler functions of the pointer encoding (≤ v5.15) and the type each stands for.
HANDLERS: dict[str, ExType] = {
    "ex_handler_default": T.DEFAULT,
    "ex_handler_fault": T.FAULT,
    "ex_handler_uaccess": T.UACCESS,
    "ex_handler_copy": T.COPY,
    "ex_handler_clear_fs": T.CLEAR_FS,
    "ex_handler_fprestore": T.FPU_RESTORE,
    "ex_handler_wrmsr_unsafe": T.WRMSR,
    "ex_handler_rdmsr_unsafe": T.RDMSR,
}

EX_FLAG_CLEAR_AX = 1
EX_FLAG_CLEAR_DX = 2

#: Register numbers of the data word (instruction-encoding order).
REG_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


@dataclass(frozen=True, slots=True)
class ExtableEntry:
    """One resolved ``__ex_table`` entry.

    ``insn`` and ``fixup`` are absolute addresses in the image.  ``data`` is the raw third
    word (0 for the handler encoding, where ``handler`` names the function instead).
    """

    insn: int
    fixup: int
    type: ExType
    data: int = 0
    reg: int = 0
    flags: int = 0
    imm: int = 0
    handler: str | None = None
    raw_type: int | None = None

    @property
    def type_name(self) -> str:
        """The name a kernel developer would grep for: EX_TYPE_* or ex_handler_*."""
        if self.handler is not None:
            return self.handler
        name = f"EX_TYPE_{self.type.value}"
        if self.type is ExType.IMM_REG:
            name = {-14: "EX_TYPE_EFAULT_REG", 0: "EX_TYPE_ZERO_REG", 1: "EX_TYPE_ONE_REG"}.get(
                self.imm, f"EX_TYPE_IMM_REG({self.imm})")
        if self.type is ExType.OTHER and self.raw_type is not None:
            name = f"EX_TYPE_{self.raw_type}"
        return name

    @property
    def reg_name(self) -> str:
        return REG_NAMES[self.reg]


def _signed16(value: int) -> int:
    value &= 0xFFFF
    return value - 0x10000 if value & 0x8000 else value


def decode(encoding: Encoding, layout: int, insn: int, fixup: int, third: int,
           handler: str | None = None) -> ExtableEntry:
    """Decode one entry from its resolved insn/fixup addresses and its third word.

    Args:
        encoding: which encoding the object uses.
        layout: EX_TYPE numbering (516, 517 or 610); ignored for ``Encoding.HANDLER``.
        insn: absolute address of the faulting instruction.
        fixup: absolute address of the fixup.
        third: the third word as stored (data or type), 0 for the handler encoding.
        handler: the handler's symbol name, for the handler encoding.

    Raises:
        ImageError: a handler-encoded entry without a handler name.
    """
    if encoding is Encoding.HANDLER:
        if handler is None:
            raise ImageError(f"__ex_table entry for {insn:#x}: no handler symbol in the "
                             "handler-pointer encoding")
        return ExtableEntry(insn, fixup, HANDLERS.get(handler, ExType.OTHER), handler=handler)
    table = LAYOUTS[layout]
    third &= 0xFFFFFFFF
    if encoding is Encoding.TYPE:
        return ExtableEntry(insn, fixup, table.get(third, ExType.OTHER), data=third,
                            raw_type=third)
    raw = third & 0xFF
    return ExtableEntry(insn, fixup, table.get(raw, ExType.OTHER), data=third,
                        reg=(third >> 8) & 0xF, flags=(third >> 12) & 0xF,
                        imm=_signed16(third >> 16), raw_type=raw)


class Extable:
    """A sorted exception table with the kernel's lookup by faulting instruction.

    Invariant: entries are sorted by ``insn``; ``search`` is a binary search as
    search_exception_tables() does.
    """

    def __init__(self, entries: list[ExtableEntry] | tuple[ExtableEntry, ...]) -> None:
        self.entries: tuple[ExtableEntry, ...] = tuple(sorted(entries, key=lambda e: e.insn))
        self._keys = [e.insn for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.entries)

    def search(self, ip: int) -> ExtableEntry | None:
        """Return the entry whose insn is ``ip``, or None."""
        i = bisect.bisect_left(self._keys, ip)
        if i < len(self._keys) and self._keys[i] == ip:
            return self.entries[i]
        return None

    def within(self, lo: int, hi: int) -> tuple[ExtableEntry, ...]:
        """Entries whose insn lies in [lo, hi)."""
        return self.entries[bisect.bisect_left(self._keys, lo):bisect.bisect_left(self._keys, hi)]

"""The machine's records and buffer contents: what goes into a run and what comes out.

Frozen, slotted dataclasses (equality means "same behaviour"): ``Buffers`` and ``Call`` in,
``FaultEvent`` / ``Redirect`` / ``Halt`` / ``FaultRecord`` / ``RawRun`` out, the fault kinds
and end states, and the deterministic source pattern and destination fill the windows hold.
``machine.py`` re-exports every name, so ``from emu.core.machine import Buffers`` works too.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from emu.caching import Bounded
from emu.core import layout as L
from emu.errors import UsageError

# ---- records ---------------------------------------------------------------------------


def fast_init(cls: type) -> type:
    """Give a frozen, slotted dataclass without ``__post_init__`` a faster ``__init__``.

    The generated one assigns each field with ``object.__setattr__`` (about 0.1 µs a field);
    this one calls the slots' descriptors directly.  Signature, defaults and the resulting
    object are the same, so equality, hashing and repr are unchanged.
    """
    import dataclasses
    fields = dataclasses.fields(cls)
    assert getattr(cls, "__slots__", None) and not hasattr(cls, "__post_init__")
    ns: dict[str, object] = {"_new": object.__new__, "_cls": cls}
    params, body = [], []
    for i, f in enumerate(fields):
        if f.default is not dataclasses.MISSING:
            ns[f"_d{i}"] = f.default
            params.append(f"{f.name}=_d{i}")
        elif f.default_factory is not dataclasses.MISSING:
            raise TypeError("fast_init: default_factory fields are not supported")
        else:
            params.append(f.name)
        ns[f"_s{i}"] = cls.__dict__[f.name].__set__
        body.append(f"    _s{i}(self, {f.name})")
    src = f"def __init__(self, {', '.join(params)}):\n" + "\n".join(body or ["    pass"])
    exec(src, ns)  # noqa: S102 - source built above from the dataclass's own field names
    init = ns["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"  # type: ignore[attr-defined]
    init.__doc__ = cls.__init__.__doc__  # type: ignore[misc]
    cls.__init__ = init  # type: ignore[misc]
    return cls



class FaultKind(str, Enum):
    """What the CPU raised."""

    PF = "pf"
    MC = "mc"
    GP = "gp"
    UD = "ud"
    TRAP = "trap"


#: CPU vector → fault kind (the one errno/vector table of the machine).
VECTORS: dict[int, FaultKind] = {14: FaultKind.PF, 18: FaultKind.MC, 13: FaultKind.GP,
                                 6: FaultKind.UD}
TRAPNR: dict[FaultKind, int] = {FaultKind.PF: 14, FaultKind.MC: 18, FaultKind.GP: 13,
                                FaultKind.UD: 6}


#: #PF error code bits (Intel SDM vol. 3A §4.7): the page was present (a protection
#: violation), the access was a write, an instruction fetch.  Kernel mode: U/S is 0.
PF_PROT, PF_WRITE, PF_INSTR = 0x1, 0x2, 0x10


class State(str, Enum):
    """How a run ended."""

    RETURNED = "returned"
    OOPS = "oops"
    PANIC = "panic"
    HANG = "hang"
    SMAP_VIOLATION = "smap_violation"
    #: A #PF on a present page with no __ex_table entry (an oops in the kernel): a write to
    #: read-only kernel memory (text, rodata), an instruction fetch from a non-executable
    #: page (NX: data, the stack, the direct map), or from a user page on a CPU with SMEP.
    PROTECTION_FAULT = "protection_fault"
    #: The routine reached a system instruction (hlt, wrmsr, syscall, int, mov to %cr0, ...;
    #: ``sysinsn.py``), which a copy routine never executes and emu does not model.
    SYSTEM_INSTRUCTION = "system_instruction"


@fast_init
@dataclass(frozen=True, slots=True)
class FaultEvent:
    """A fault as the CPU reports it, before the kernel decides anything.

    ``error`` is the #PF error code of a fault on a present page (``PF_PROT`` and
    ``PF_WRITE`` or ``PF_INSTR``); 0 for a page that is not present (emu does not tell reads
    from writes there) and for other faults.
    """

    kind: FaultKind
    rip: int
    address: int
    user: bool
    error: int = 0


@fast_init
@dataclass(frozen=True, slots=True)
class Redirect:
    """Resume at ``rip`` after writing ``regs`` (the fixup a handler applied)."""

    rip: int
    regs: tuple[tuple[str, int], ...] = ()
    entry: object = None
    note: str = ""


@fast_init
@dataclass(frozen=True, slots=True)
class Halt:
    """Stop the run in ``state`` (oops, panic, ...) with the kernel's message."""

    state: State
    message: str
    entry: object = None
    note: str = ""


Resolution = Redirect | Halt


class CpuView(Protocol):
    """What a fault handler may ask the machine: registers, and what an address is."""

    def reg(self, name: str) -> int: ...

    def where(self, addr: int) -> str:
        """The address's place in the memory map, e.g. "kernel text (f+0x4)"."""
        ...


FaultHandler = Callable[[CpuView, FaultEvent], Resolution]


@fast_init
@dataclass(frozen=True, slots=True)
class Reuse:
    """A handler's promise about the faults of one kind at one instruction: it resolves
    every one of them the same way, or (with ``operand``) every one whose memory operand
    lies on the same side of TASK_SIZE_MAX (a user address or not).

    A handler may offer ``reuse(kind, rip) -> Reuse | None`` (None: no promise, ask every
    time); the machine's compiled hooks then keep its resolutions in a table instead of
    calling it for every fault (``fastpath``).  ``operand`` is (base, index, scale, disp):
    the address base + index * scale + disp, register names ("" for none).
    """

    operand: tuple[str, str, int, int] | None = None


class CodeSection(Protocol):
    """One block of code or data at a kernel address (``emu.kernel.image.Section`` is one)."""

    @property
    def addr(self) -> int: ...
    @property
    def data(self) -> bytes: ...
    @property
    def executable(self) -> bool: ...
    @property
    def writable(self) -> bool: ...
    @property
    def end(self) -> int: ...


class Code(Protocol):
    """What the machine runs: placed sections, stub slots for undefined calls, symbol names.

    ``emu.kernel.image.Image`` is one; the machine needs nothing else of an image.
    """

    @property
    def sections(self) -> tuple[CodeSection, ...]: ...
    @property
    def stubs(self) -> dict[str, int]: ...
    def symbolize(self, addr: int) -> str: ...


#: The registers a ``FaultRecord`` keeps from before its handler ran.
SNAPSHOT_REGS = ("rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "eflags")


@fast_init
@dataclass(frozen=True, slots=True)
class FaultRecord:
    """One fault taken during a run and what the handler did with it.

    ``before`` holds the values of ``SNAPSHOT_REGS`` when the fault was raised, in that
    order (``regs_before`` names them); pairing them up is left to the few readers.
    """

    event: FaultEvent
    resolution: Resolution
    before: tuple[int, ...] = field(repr=False, compare=False, default=())

    @property
    def regs_before(self) -> tuple[tuple[str, int], ...]:
        return tuple(zip(SNAPSHOT_REGS, self.before))


@fast_init
@dataclass(frozen=True, slots=True)
class Call:
    """How the routine is entered: address, argument registers, and the caller's STAC."""

    entry: int
    regs: tuple[tuple[str, int], ...]
    stac: bool = False


@dataclass(frozen=True, slots=True)
class Buffers:
    """Where the copy's source and destination are and which faults they carry.

    Offsets in ``poison`` are relative to the source start; each poisons the 64-byte line
    holding that byte.  Offsets in ``unmapped`` are relative to the *user* buffer (the
    source for ``from``, the destination for ``to``); each makes the page holding that byte
    non-present.
    """

    direction: str = "from"
    length: int = 4096
    src_align: int = 0
    dst_align: int = 0
    poison: tuple[int, ...] = ()
    unmapped: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.direction not in ("from", "to"):
            raise UsageError(f"direction must be 'from' or 'to', not '{self.direction}'")
        if self.length < 0:
            raise UsageError(f"length {self.length} is negative")
        for what, a in (("source", self.src_align), ("destination", self.dst_align)):
            if not 0 <= a < L.PAGE:
                raise UsageError(f"{what} alignment {a} is outside 0..{L.PAGE - 1}")
            if a + self.length > L.MAX_SPAN:
                raise UsageError(f"len {self.length} + {what} alignment {a} exceeds the "
                                 f"{L.MAX_SPAN}-byte buffer window")
        for off in self.poison:
            if not 0 <= off < self.length:
                raise UsageError(f"poison offset {off} is outside the {self.length}-byte source")
        for off in self.unmapped:
            if not 0 <= off < self.length:
                raise UsageError(f"unmapped offset {off} is outside the {self.length}-byte "
                                 "user buffer")

    @property
    def src_window(self) -> int:
        return L.USER_WINDOW if self.direction == "from" else L.KERNEL_WINDOW

    @property
    def dst_window(self) -> int:
        return L.KERNEL_WINDOW if self.direction == "from" else L.USER_WINDOW

    @property
    def src(self) -> int:
        return self.src_window + self.src_align

    @property
    def dst(self) -> int:
        return self.dst_window + self.dst_align

    @property
    def user(self) -> int:
        return self.src if self.direction == "from" else self.dst


@fast_init
@dataclass(frozen=True, slots=True)
class RawRun:
    """What the machine observed; ``outcome.py`` turns it into an ``Outcome``.

    Memory is kept as the pages the run changed, ``(page index in the window, contents)``
    in ascending index order, index 0 being the lower guard page; every other page holds its
    initial contents.  The whole windows are built on demand (``src_window``,
    ``dst_window``); ``outcome.build`` reads only the ranges it measures (``src_bytes``,
    ``dst_bytes``).
    """

    state: State
    message: str
    regs: tuple[tuple[str, int], ...]
    faults: tuple[FaultRecord, ...]
    src_pages: tuple[tuple[int, bytes], ...] = field(repr=False, default=())
    dst_pages: tuple[tuple[int, bytes], ...] = field(repr=False, default=())
    ac_at_return: bool = False
    insns: int | None = None

    @property
    def src_window(self) -> bytes:
        """The source data pages after the run (``MAX_SPAN`` bytes from the source start
        minus its alignment; the guard pages are not included)."""
        return self.src_bytes(0, L.MAX_SPAN)

    @property
    def dst_window(self) -> bytes:
        """The whole destination window after the run, guard pages included."""
        return self.dst_bytes(0, WINDOW_SPAN)

    @property
    def dst_initial(self) -> bytes:
        """The destination window before the run."""
        return DST_WINDOW_BYTES

    def src_bytes(self, lo: int, hi: int) -> bytes:
        """``src_window[lo:hi]``."""
        return _overlay(SRC_WINDOW_BYTES, self.src_pages, lo + L.PAGE,
                        min(hi, L.MAX_SPAN) + L.PAGE)

    def dst_bytes(self, lo: int, hi: int) -> bytes:
        """``dst_window[lo:hi]``."""
        return _overlay(DST_WINDOW_BYTES, self.dst_pages, lo, hi)


def _overlay(base: bytes, pages: tuple[tuple[int, bytes], ...], lo: int, hi: int) -> bytes:
    """``base[lo:hi]`` with each (page index, contents) of ``pages`` (ascending) over it."""
    if len(pages) == 1:                 # the usual case: one changed page
        i, data = pages[0]
        p0 = i * L.PAGE
        if p0 <= lo and hi <= p0 + L.PAGE:
            return data if hi - lo == L.PAGE else data[lo - p0:hi - p0]
    pieces: list[bytes | memoryview] = []   # whole pages and views: the join is the only copy
    pos = lo
    view = memoryview(base)
    for i, data in pages:
        p0 = i * L.PAGE
        p1 = p0 + L.PAGE
        if p0 >= hi:
            break
        if p1 <= pos:
            continue
        if p0 > pos:
            pieces.append(view[pos:p0])
            pos = p0
        end = hi if hi < p1 else p1
        pieces.append(data if pos == p0 and end == p1 else memoryview(data)[pos - p0:end - p0])
        pos = end
    if not pieces:
        return base_slice(base, lo, hi)
    if pos < hi:
        pieces.append(view[pos:hi])
    return b"".join(pieces)


_SLICES: Bounded[tuple[int, int, int], bytes] = Bounded(64, "records.slices")


def base_slice(base: bytes, lo: int, hi: int) -> bytes:
    """``base[lo:hi]`` of an initial window, kept: a sweep asks for the same few slices (the
    untouched source, the destination's fill) at every case."""
    key = (id(base), lo, hi)             # the bases are the two module-level windows
    got = _SLICES.get(key)
    if got is None:
        got = _SLICES[key] = base[lo:hi]
    return got


# ---- memory contents --------------------------------------------------------------------

WINDOW_PAGES = L.WINDOW_PAGES + 2  # guard + data + guard
WINDOW_SPAN = WINDOW_PAGES * L.PAGE
DST_FILL = 0xFF


def source_pattern(size: int) -> bytes:
    """Deterministic source bytes, never equal to the destination fill 0xFF."""
    return bytes(((k * 7) + (k >> 8) * 13) % 251 + 1 for k in range(size))


SRC_WINDOW_BYTES = source_pattern(WINDOW_SPAN)
DST_WINDOW_BYTES = bytes([DST_FILL]) * WINDOW_SPAN
SENTINEL_BYTES = struct.pack("<Q", L.SENTINEL)
SRC_PAGES = tuple(SRC_WINDOW_BYTES[i * L.PAGE:(i + 1) * L.PAGE] for i in range(WINDOW_PAGES))
DST_PAGES = tuple(DST_WINDOW_BYTES[i * L.PAGE:(i + 1) * L.PAGE] for i in range(WINDOW_PAGES))

"""The emulated address space: where code, stacks and buffers live, and each page's protection.

Real kernel addresses are used (unicorn-notes §1): text at the kernel's usual base, kernel
buffers and the stack in the direct map, user buffers below TASK_SIZE_MAX.  Page numbers are
chosen to differ modulo 64 so that source and destination pages do not alias in Unicorn's
software TLB (unicorn-notes §3, "TLB-index aliasing").

Every page carries the protection a booted x86-64 kernel gives it (the kernel's strict RWX
mapping, CONFIG_STRICT_KERNEL_RWX, with the PTE bits R/W, U/S and XD of the Intel SDM vol. 3A
§4.5): kernel text is read-only and executable, rodata read-only and not executable (NX),
data, bss, the stack and the direct map writable and NX, and user pages writable and
executable with U/S set, so that a CPU with SMEP refuses to run them in kernel mode and one
with SMAP refuses kernel data accesses to them while EFLAGS.AC is clear.
"""

from __future__ import annotations

from dataclasses import dataclass

PAGE = 0x1000
LINE = 64

TASK_SIZE_MAX = 0x00007FFFFFFFF000
DIRECT_MAP = 0xFFFF888000000000

#: Kernel text: sections of the image are placed from here (page index 0 mod 64).
TEXT_BASE = 0xFFFFFFFF81000000
#: Undefined symbols (calls out of the image) resolve to ud2 slots here.
STUB_BASE = TEXT_BASE + 0x3C000
#: The sentinel return address: the routine "returns to the caller" when RIP gets here.
SENTINEL = TEXT_BASE + 0x3E000
#: Largest image (all allocated sections) that fits below the stubs.
TEXT_LIMIT = STUB_BASE - TEXT_BASE

#: Data pages of each buffer window; one canary-filled guard page sits on each side.
WINDOW_PAGES = 16
#: User window: guard page at page index 15 mod 64, data pages 16..31.
USER_WINDOW = 0x00007F0000010000
#: Kernel buffer window in the direct map: guard at 34 mod 64, data 35..50.
KERNEL_WINDOW = DIRECT_MAP + 0x23000
#: Kernel stack: 4 pages at 52..55 mod 64; the stack pointer starts near the top.
STACK_BASE = DIRECT_MAP + 0x34000
STACK_PAGES = 4
STACK_TOP = STACK_BASE + STACK_PAGES * PAGE - 0x100

#: The largest len + alignment a case can use.
MAX_SPAN = WINDOW_PAGES * PAGE


# ---- page protections ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Protection:
    """What a page allows in kernel mode, and what to call it in a message."""

    name: str
    writable: bool
    executable: bool
    user: bool = False

    def union(self, other: Protection) -> Protection:
        """The protection of a page two sections share: what either allows."""
        if other == self:
            return self
        name = self.name if self.name == other.name else "kernel image"
        return Protection(name, self.writable or other.writable,
                          self.executable or other.executable, self.user or other.user)


#: Executable sections (and the ud2 stubs, the return sentinel): read-only, executable.
TEXT = Protection("kernel text", writable=False, executable=True)
#: Allocated sections that are neither executable nor writable (and gaps between sections).
RODATA = Protection("kernel rodata", writable=False, executable=False)
#: Writable sections (.data, .bss): writable, NX.
DATA = Protection("kernel data", writable=True, executable=False)
STACK = Protection("the kernel stack", writable=True, executable=False)
KERNEL_BUFFER = Protection("the kernel buffer", writable=True, executable=False)
#: User pages: U/S set; executable (a user mapping may be), so SMEP is what protects them.
USER_BUFFER = Protection("the user buffer", writable=True, executable=True, user=True)

#: The order of the classes in an object's layout (as the kernel's linker script orders
#: them): each class starts on a page of its own, so that each page has one protection.
SECTION_CLASSES = (TEXT, RODATA, DATA)


def section_protection(executable: bool, writable: bool) -> Protection:
    """The protection of an allocated section with these flags (SHF_EXECINSTR, SHF_WRITE).

    An executable section is read-only whatever its flags say: a booted kernel maps no page
    writable and executable at once (W^X).
    """
    if executable:
        return TEXT
    return DATA if writable else RODATA

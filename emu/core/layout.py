"""The emulated address space: where code, stacks and buffers live.

Real kernel addresses are used (unicorn-notes §1): text at the kernel's usual base, kernel
buffers and the stack in the direct map, user buffers below TASK_SIZE_MAX.  Page numbers are
chosen to differ modulo 64 so that source and destination pages do not alias in Unicorn's
software TLB (unicorn-notes §3, "TLB-index aliasing").
"""

from __future__ import annotations

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

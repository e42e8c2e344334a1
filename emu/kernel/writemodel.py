"""The caller's side of an era: what write(2) around copy_user did in that kernel.

Kernel facts (kernel-facts.md §6d, §7, §8), one ``WriteModel`` per era, held by the era's
record in ``emu.kernel.eras``.  ``emu.runs.caller`` runs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from emu.kernel.severity import Severity


class FaultIn(str, Enum):
    """The extable type of the fault-in load (kernel-facts §4b getuser row, §8)."""

    UACCESS = "uaccess"
    DEFAULT = "default"
    EFAULT_REG = "efault_reg"

    @property
    def routine(self) -> str:
        return {"uaccess": "emu_fault_in_ua", "default": "emu_fault_in_default",
                "efault_reg": "emu_fault_in_efault_reg"}[self.value]


class Touch(str, Enum):
    """Which bytes of the range the fault-in loads."""

    FIRST_PAGES_LAST = "first byte, each later page start, last byte"   # fault_in_pages_readable
    FIRST_PAGES = "first byte, then each later page start"             # fault_in_readable


class TaskWork(str, Enum):
    """What a COPYIN #MC queues for the return to user (kernel-facts §6d)."""

    NONE = "none"
    KILL_ME_MAYBE = "kill_me_maybe"
    KILL_ME_NEVER = "kill_me_never"


@dataclass(frozen=True)
class WriteModel:
    """One era's caller-level facts, and the assumptions made where the facts stop."""

    era: str
    severity: Severity
    fault_in: FaultIn
    touch: Touch
    efault_if_any_missing: bool
    task_work: TaskWork
    mce_count: bool
    assumptions: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"era": self.era, "mce_rules": self.severity.value,
                "fault_in_fixup": self.fault_in.value, "fault_in_touches": self.touch.value,
                "efault_when": ("any byte not faulted in" if self.efault_if_any_missing
                                else "no byte faulted in"),
                "task_work": self.task_work.value, "mce_count": self.mce_count,
                "assumptions": list(self.assumptions)}


COMMON = (
    "write(fd, buf, len) at a file position whose page offset is --dst-align; one iovec; "
    "generic_perform_write() chunks are min(PAGE_SIZE - offset, remaining).",
    "->write_end accepts a short copy (tmpfs-like shmem_write_end, as for the ras-tools "
    "copyin test's mkstemp() file); a filesystem that rejects short copies of a !uptodate "
    "page would only add one more copy of the prefix.",
    "copied == 0 goes back to the fault-in with the same chunk (≤ 5.13: chunk shrunk to the "
    "single segment, the same for one iovec; 5.14+: 'goto again').",
    "--unmapped pages have no VMA: the fault-in fails on them with -EFAULT (a #PF on a "
    "valid but absent page would just be served).",
    "fatal_signal_pending() stays false inside the loop: task_work is not a signal.",
)
PAGES_READABLE = ("fault_in_pages_readable() touches the first byte, each later page start "
                   "and the last byte (kernel-facts §7a: UNVERIFIED); any failure → -EFAULT.")
READABLE = ("fault_in_readable() (5.16, Andreas Gruenbacher) touches the first byte and each "
             "later page start and returns the bytes not faulted in; generic_perform_write() "
             "fails with -EFAULT only if none was faulted in (that it uses unsafe_get_user() "
             "is UNVERIFIED; emu uses a get_user style movzbl load).")

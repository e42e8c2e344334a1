"""Which kernel's severity.c rules grade a kernel-mode machine check.

Follows kernel-facts.md §6a (arch/x86/kernel/cpu/mce/severity.c, per version).  A data module:
``emu.kernel.eras`` names one ``Severity`` per era and ``emu.kernel.policy`` applies it, so
reading the era catalog does not load the emulator.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emu.kernel.cpus import KernelVersion


class Severity(str, Enum):
    """Which severity.c rules grade a kernel-mode #MC (kernel-facts §6a)."""

    V5_9 = "v5.9"      # only ex_handler_fault entries recover (a05d54c41ecf)
    V5_10 = "v5.10"    # + uaccess/copy handlers when is_copy_from_user (300638101329)
    V5_16 = "v5.16"    # switch on EX_TYPE: UACCESS/COPY + copy-from-user, *_MCE_SAFE (2cadf5248b93)
    V5_17 = "v5.17"    # as 5.16; EFAULT_REG/DEFAULT fixups are not recoverable (to v6.14)
    V2025 = "2025"     # is_copy_from_user first, whatever the type (1a15bb8303b6)


@dataclass(frozen=True, slots=True)
class MceRules:
    """The #MC rules a target is judged by, and how emu knew (shown with every result).

    Attributes:
        severity: the rule set.
        how: where it came from, e.g. "from debian-6.1 severity.c: ...", "era E's rules",
            "--mce-rules".
    """

    severity: Severity
    how: str

    def describe(self) -> str:
        return f"{self.severity.value} ({self.how})"

    def to_json(self) -> dict[str, str]:
        return {"mce": self.severity.value, "how": self.how}


def release_rules(version: KernelVersion | None) -> Severity:
    """The #MC rules of a kernel release, from the documented table of releases and stable
    backports (used where the rules cannot be read from the kernel itself): the 2025 rules
    from v6.15 and in stable trees that carry 1a15bb8303b6 (Debian 6.1.192 and 6.12.118 do:
    their severity.c tests is_copy_from_user() first; other point releases UNVERIFIED),
    else the rules of the release's era.  No version: v5.17's."""
    if version is None:
        return Severity.V5_17
    v = version.version
    if v >= (6, 15) or (version.stable or (0, 0, 0)) >= {(6, 1): (6, 1, 192),
                                                        (6, 12): (6, 12, 118)}.get(v, (99, 0, 0)):
        return Severity.V2025
    if v <= (5, 9):
        return Severity.V5_9
    if v <= (5, 15):
        return Severity.V5_10
    return Severity.V5_16 if v == (5, 16) else Severity.V5_17

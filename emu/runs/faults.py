"""Fault kinds: one table row per kind, naming what it injects and where.

Sweep, fuzz and check read this table; nothing else spells a kind out.  A row's ``place``
turns a fault offset (a byte of the user buffer) into the poisoned source offsets (#MC: the
64-byte line holding each offset is poisoned) and the absent user pages (#PF: the page
holding each offset is not present).  ``per_page`` kinds are swept once per user page the
buffer touches (the fault lands on the page boundary) instead of once per byte.

Adding a kind: add its row here.  ``emu sweep --faults``, ``emu fuzz --faults`` and the
reports pick it up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from emu.core import layout as L
from emu.errors import UsageError

Placement = tuple[tuple[int, ...], tuple[int, ...]]


@dataclass(frozen=True, slots=True)
class Where:
    """The geometry a placement needs: length, source offset, user-buffer offset."""

    n: int
    src_align: int
    user_align: int

    def next_line(self, off: int) -> int | None:
        """Offset of the first byte of the source line after the one holding ``off``."""
        nxt = (self.src_align + off) // L.LINE * L.LINE + L.LINE - self.src_align
        return nxt if nxt < self.n else None

    def next_page(self, off: int) -> int | None:
        """Offset of the first byte of the user page after the one holding ``off``."""
        nxt = (self.user_align + off) // L.PAGE * L.PAGE + L.PAGE - self.user_align
        return nxt if nxt < self.n else None


@dataclass(frozen=True, slots=True)
class FaultKind:
    """One kind of injected fault.

    Attributes:
        name: the stable name (``--faults``, results, reports).
        text: what it injects, for help and reports.
        per_page: swept once per user page instead of once per byte.
        first: the fault at the offset itself: "mc", "pf" or "" (no fault).
        second: the second fault, if any: "line" (#MC on the next source line), "page" (#PF
            on the next user page) or "".
        second_kind: "mc" or "pf": what the second fault is.
    """

    name: str
    text: str
    per_page: bool
    first: str
    second: str = ""
    second_kind: str = ""

    def place(self, off: int, w: Where, *, partial: bool = False) -> Placement | None:
        """(poison, unmapped) offsets for a fault at ``off``; None when the second fault
        does not fit in the buffer (``partial``: keep the first fault alone instead)."""
        poison: list[int] = []
        unmapped: list[int] = []
        if self.first == "mc":
            poison.append(off)
        elif self.first == "pf":
            unmapped.append(off)
        if self.second:
            nxt = w.next_line(off) if self.second == "line" else w.next_page(off)
            if nxt is None:
                if not partial:
                    return None
            else:
                (poison if self.second_kind == "mc" else unmapped).append(nxt)
        return tuple(poison), tuple(unmapped)


KINDS: dict[str, FaultKind] = {k.name: k for k in (
    FaultKind("mc", "one #MC: the source line holding the offset is poisoned", False, "mc"),
    FaultKind("mc2", "two #MC: that line and the next one are poisoned", False, "mc",
              "line", "mc"),
    FaultKind("pf", "one #PF: the user page holding the offset is not present "
              "(one case per page)", True, "pf"),
    FaultKind("pf2", "two #PF: that user page and the next one are not present", True, "pf",
              "page", "pf"),
    FaultKind("mc+pf", "#MC on the line holding the offset and #PF on the next user page",
              False, "mc", "page", "pf"),
)}

#: ``emu check`` also has clean cells; they are not a sweep kind.
CLEAN = FaultKind("none", "no fault: a clean copy", False, "")


def get_kind(name: str) -> FaultKind:
    k = KINDS.get(name)
    if k is None:
        raise UsageError(f"unknown fault kind '{name}' (known: {', '.join(KINDS)})")
    return k


def parse_kinds(text: str) -> tuple[str, ...]:
    """``--faults`` value: a comma list of kind names, or ``all``."""
    if text.strip() == "all":
        return tuple(KINDS)
    names = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    if not names:
        raise UsageError(f"--faults '{text}' names no fault kind (known: {', '.join(KINDS)}, "
                         "all)")
    for n in names:
        get_kind(n)
    return names


def count(kind: str, n: int, sa: int, da: int, direction: str, step: int,
          offsets: Sequence[int]) -> int:
    """How many placements ``placements`` yields for one cell, without making them: O(1)
    (O(len(offsets)) with explicit offsets).  Equal to ``sum(1 for _ in placements(...))``,
    which the tests check."""
    k = get_kind(kind)
    if n <= 0:
        return 0
    w = Where(n, sa, sa if direction == "from" else da)
    if offsets:
        return sum(1 for o in offsets if 0 <= o < n and k.place(o, w) is not None)
    if k.per_page:
        pages = (w.user_align + n - 1) // L.PAGE + 1 - w.user_align // L.PAGE
        # the first byte of each page the buffer touches; the last one has no next page
        return pages - 1 if k.second == "page" else pages
    end = n                      # offsets [0, end) keep their second fault inside the buffer
    if k.second:
        unit, align = (L.LINE, w.src_align) if k.second == "line" else (L.PAGE, w.user_align)
        # The next line/page exists (starts before n) unless the offset lies in the unit
        # holding the buffer's last byte: offsets before that unit's start keep both faults.
        last = (align + n - 1) // unit              # the unit holding the last byte
        end = min(n, max(0, last * unit - align))
    return (end + step - 1) // step if end > 0 else 0


def placements(kind: str, n: int, sa: int, da: int, direction: str, step: int,
               offsets: Sequence[int]) -> Iterator[tuple[int, tuple[int, ...], tuple[int, ...]]]:
    """Every (offset, poison, unmapped) of one kind in one (length, alignment) cell.

    Byte kinds take every ``step``-th offset (or ``offsets``); page kinds take the first
    byte of each user page the buffer touches (or ``offsets``).
    """
    k = get_kind(kind)
    w = Where(n, sa, sa if direction == "from" else da)
    if k.per_page:
        pages = [max(0, p - w.user_align) for p in range(0, w.user_align + n, L.PAGE)
                 if max(0, p - w.user_align) < n]
        offs: Iterator[int] | list[int] = [o for o in offsets if 0 <= o < n] if offsets else pages
    else:
        offs = (o for o in offsets if 0 <= o < n) if offsets else iter(range(0, n, step))
    for off in offs:
        placed = k.place(off, w)
        if placed is not None:
            yield off, placed[0], placed[1]


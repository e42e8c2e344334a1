"""Golden outcome tables: a fixed scenario grid per era × routine, rendered as reviewable text.

One file per era × routine (× CPU path where the routine has ALTERNATIVEs) lives in
``fixtures/golden/``.  Each line is one case and its outcome, with offsets only (no host or
emulated addresses), so a behaviour change shows up as a one-line diff in review.
``make golden`` rewrites the files (``pytest --update-golden``); the tests compare.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from emu.kernel.eras import CPUS, ERAS, Era
from emu.core.machine import Buffers
from emu.kernel.outcome import Outcome
from emu.build.target import era_target

LENGTHS = (0, 1, 7, 8, 9, 63, 64, 65, 127, 200, 4096)
ALIGNS = ((0, 0), (3, 0), (0x20, 5), (0x7E0, 0))


@dataclass(frozen=True, slots=True)
class Table:
    """One golden file: an era, a routine and the CPU its ALTERNATIVE sites were built for."""

    era: Era
    routine: str
    cpu: str

    @property
    def filename(self) -> str:
        return f"{self.era.key}.{self.routine}.{self.cpu}.txt"


def tables() -> list[Table]:
    out = []
    for era in ERAS.values():
        if era.modern:
            out += [Table(era, "copy_user_generic", "none"), Table(era, "copy_user_generic", "fsrm"),
                    Table(era, "rep_movs_alternative", "none"),
                    Table(era, "rep_movs_alternative", "erms")]
        else:
            out += [Table(era, r.name, "none") for r in era.routines]
    return out


def cases() -> Iterator[tuple[str, Buffers]]:
    """The grid: every length × alignment with no fault, a #PF and #MCs at three offsets."""
    for n in LENGTHS:
        for sa, da in ALIGNS:
            yield f"len={n} src+{sa:#x} dst+{da:#x} clean", Buffers(length=n, src_align=sa,
                                                                  dst_align=da)
            if n == 0:
                continue
            boundary = 0x1000 - sa if sa else 0
            if 0 < boundary < n:
                yield (f"len={n} src+{sa:#x} dst+{da:#x} pf@{boundary:#x}",
                       Buffers(length=n, src_align=sa, dst_align=da, unmapped=(boundary,)))
            if da and 0x1000 - da < n:
                yield (f"len={n} src+{sa:#x} dst+{da:#x} to-user pf@{0x1000 - da:#x}",
                       Buffers(direction="to", length=n, src_align=sa, dst_align=da,
                               unmapped=(0x1000 - da,)))
            for off in sorted({0, n // 2, n - 1}):
                yield (f"len={n} src+{sa:#x} dst+{da:#x} mc@{off:#x}",
                       Buffers(length=n, src_align=sa, dst_align=da, poison=(off,)))


def line(o: Outcome) -> str:
    ret = "-" if o.return_value is None else str(o.return_value)
    faults = " ".join(f"{f.kind}@{f.offset:#x}" if f.offset is not None else f.kind
                      for f in o.faults) or "-"
    return (f"{o.state.value} ret={ret} copied={o.bytes_copied} beyond={o.written_beyond} "
            f"faults=[{faults}] retry={'yes' if o.retouched else 'no'} verdict={o.verdict}")


def render(table: Table) -> str:
    t = era_target(table.era, CPUS[table.cpu])
    routine = table.era.routine(table.routine)
    rows = [f"# emu golden table: era {table.era.key} ({table.era.versions}), "
            f"{table.routine}, cpu {table.cpu}",
            "# case -> state ret copied beyond faults retry verdict"]
    for name, bufs in cases():
        rows.append(f"{name:<40} -> {line(t.run(routine, bufs))}")
    return "\n".join(rows) + "\n"

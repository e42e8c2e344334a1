"""Fast-forward (issue 8): starting a faulting case from its clean run's checkpoint must give
exactly the outcome of a full run — same return value, bytes, faults (RIPs, addresses,
handlers), state and verdict — in every era, routine and CPU path."""

from __future__ import annotations

import pytest

from emu.eras import CPUS, ERAS
from emu.machine import Buffers
from emu.target import era_target


def cases(length: int, sa: int, da: int, direction: str, step: int) -> list[Buffers]:
    out = []
    for off in range(0, length, step):
        out.append(Buffers(direction, length, sa, da, poison=(off,)))
        out.append(Buffers(direction, length, sa, da, unmapped=(off,)))
    out.append(Buffers(direction, length, sa, da, poison=(length - 1, length // 3)))
    out.append(Buffers(direction, length, sa, da, poison=(length // 2,),
                       unmapped=(length - 1,)))
    return out


def combos():  # type: ignore[no-untyped-def]
    """Every routine once; era F's routines on each CPU path their ALTERNATIVEs choose from
    (the A-E sources have no ALTERNATIVE sites, so their CPU does not change the code)."""
    for era in ERAS.values():
        for r in era.routines:
            cpus = (("none", "fsrm") if r.name == "copy_user_generic" else
                    ("none", "erms") if era.modern else ("none",))
            for cpu in cpus:
                yield pytest.param(era.key, cpu, r.name, id=f"{era.key}-{cpu}-{r.name}")


def check(era_key: str, cpu: str, routine: str, lengths, aligns, divisions: int) -> int:  # type: ignore[no-untyped-def]
    era = ERAS[era_key]
    t = era_target(era, CPUS[cpu])
    r = era.routine(routine)
    n = 0
    for length in lengths:
        for sa, da in aligns:
            for direction in ("from", "to"):
                for b in cases(length, sa, da, direction, max(1, length // divisions)):
                    full = t.run(r, b)
                    ff = t.run(r, b, fast_forward=True)
                    assert ff == full, f"{b}:\n full {full}\n ff   {ff}"
                    n += 1
    return n


@pytest.mark.parametrize("era_key, cpu, routine", list(combos()))
def test_fast_forward_matches_full_run(era_key: str, cpu: str, routine: str) -> None:
    assert check(era_key, cpu, routine, (9, 100, 4096), ((0x7E3, 5),), 10) > 50


@pytest.mark.slow
@pytest.mark.parametrize("era_key, cpu, routine", list(combos()))
def test_fast_forward_matches_full_run_deep(era_key: str, cpu: str, routine: str) -> None:
    check(era_key, cpu, routine, (1, 7, 8, 63, 64, 65, 127, 200, 1000, 4096),
          ((0, 0), (3, 5), (0x20, 0), (0x7E0, 7)), 64)


def test_fast_forward_actually_resumes_mid_copy() -> None:
    """The checkpoint for a line deep in the copy starts after the routine's entry."""
    era = ERAS["E"]
    t = era_target(era, CPUS["erms"])
    r = era.routine("copy_user_enhanced_fast_string")
    b = Buffers(length=4096, src_align=0x7E0, poison=(0x960,))
    cp = t.checkpoint(r, b)
    assert cp is not None
    assert cp.rip != t.image.symbol(r.name).addr     # at the rep movsb, not the entry
    assert cp.seq > 30                               # the 38th line the copy touched

"""Fast-forward (issue 8): starting a faulting case from its clean run's checkpoint must give
exactly the outcome of a full run — same return value, bytes, faults (RIPs, addresses,
handlers), state and verdict — in every era, routine and CPU path."""

from __future__ import annotations

import copy

import pytest

from emu.kernel.eras import CPUS, ERAS
from emu.core.machine import Buffers
from emu.build.target import era_target


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
                    ff = t.run(r, b, fast_forward=True, every_checkpoint=True)
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
    """The checkpoint for a line deep in the copy starts after the routine's entry: on a
    machine that iterates ``rep movsb``, at the iteration that first reads the line."""
    from emu.core.machine import Machine
    era = ERAS["E"]
    t = copy.copy(era_target(era, CPUS["erms"]))
    t.machine = Machine(t.image, bulk_strings=False, smap=t.machine.smap)
    t._calls = {}
    r = era.routine("copy_user_enhanced_fast_string")
    b = Buffers(length=4096, src_align=0x7E0, poison=(0x960,))
    cp = t.checkpoint(r, b, every=True)
    assert cp is not None
    assert cp.rip != t.image.symbol(r.name).addr     # at the rep movsb, not the entry
    assert cp.seq > 30                               # the 38th line the copy touched
    assert t.run(r, b, fast_forward=True, every_checkpoint=True) == t.run(r, b)
    t.machine.close()


@pytest.mark.parametrize("cpu, routine", [("rep_good", "copy_user_generic_string"),
                                          ("erms", "copy_user_enhanced_fast_string")])
def test_a_bulk_rep_movs_is_recorded_once_for_all_the_lines_it_reads(cpu: str,
                                                                     routine: str) -> None:
    """With rep strings in bulk, the recording takes one checkpoint at a rep movs's first
    iteration for every line the instruction goes on to read (nothing else runs before
    them), instead of breaking the bulk step at every line: a 64 KiB copy's recording was
    1,024 checkpoints (11.5 MB, ~46 ms).  Every line still fast-forwards to the full run's
    outcome."""
    era = ERAS["E"]
    t = era_target(era, CPUS[cpu])
    r = era.routine(routine)
    n = 65536
    clean = Buffers(length=n)
    ff = t.machine.record(t._call(r, clean), clean, t.kernel)
    assert ff is not None
    cps = {id(cp): cp for cp in ff.lines.values()}
    assert len(ff.lines) == n // 64 and len(cps) <= 2
    assert all(cp.at_bulk_string for cp in cps.values())
    assert ff.nbytes() < 1 << 20
    for off in (0, 64 * 511, n - 1):
        b = Buffers(length=n, poison=(off,))
        assert t.run(r, b, fast_forward=True, every_checkpoint=True) == t.run(r, b)


def test_a_checkpoint_inside_a_bulk_rep_string_is_skipped_as_it_saves_nothing() -> None:
    """A run from the entry reaches the poisoned line of a ``rep movsb`` in one bulk step,
    so starting from the checkpoint there saves nothing (it cost 7-10 % more per case, make
    bench): fast-forward skips it.  A checkpoint in the unrolled loop is kept, and on a
    machine that iterates rep strings (no bulk step) the rep movsb's is kept too."""
    from emu.core.machine import Machine
    era = ERAS["E"]
    b = Buffers(length=4096, src_align=0x7E0, poison=(0x960,))
    t = era_target(era, CPUS["erms"])
    r = era.routine("copy_user_enhanced_fast_string")
    cp = t.checkpoint(r, b, every=True)
    assert cp is not None and cp.at_bulk_string
    assert t.image.read(cp.rip, 2) == bytes.fromhex("f3a4")      # rep movsb
    assert t.checkpoint(r, b) is None
    assert t.run(r, b, fast_forward=True) == t.run(r, b)
    iterating = copy.copy(t)
    iterating.machine = Machine(t.image, bulk_strings=False, smap=t.machine.smap)
    iterating._calls = {}
    kept = iterating.checkpoint(r, b)
    assert kept is not None and not kept.at_bulk_string and kept.rip == cp.rip
    unrolled = era_target(era, CPUS["none"])
    ru = era.routine("copy_user_generic_unrolled")
    cpu_ = unrolled.checkpoint(ru, b)
    assert cpu_ is not None and not cpu_.at_bulk_string
    iterating.machine.close()


@pytest.mark.parametrize("era_key", ["A", "D", "E"])
def test_a_reused_machine_matches_fresh_machines_in_any_order(era_key: str) -> None:
    """Window pages a run changed stay in place until the next run needs them gone
    (``Machine._settle``); whatever came before — full runs, fast-forwarded runs of the same
    or another clean run, the other direction, missing pages, other lengths — a case must
    see exactly the windows a fresh machine shows it: same outcome, same source and
    destination windows after the run.  (Eras A and D retry the tail byte by byte after a
    #PF, D after a #MC too, so a fast-forwarded run writes into the page its checkpoint left
    half copied.)"""
    import random

    from emu.kernel import outcome
    from emu.core.machine import Machine

    era = ERAS[era_key]
    t = era_target(era, CPUS["none"])
    rnd = random.Random(8)
    unrolled = era.routines[0]
    assert "unrolled" in unrolled.name
    seq = []
    for _ in range(60):                  # anything after anything
        length = rnd.choice((100, 4096, 9000))
        kw: dict[str, tuple[int, ...]] = {}
        roll = rnd.random()
        if roll < 0.5:
            kw["poison"] = (rnd.randrange(length),)
        elif roll < 0.7:
            kw["unmapped"] = (rnd.randrange(length),)
        b = Buffers(rnd.choice(("from", "to")), length, rnd.choice((0, 5)), rnd.choice((0, 3)),
                    **kw)
        seq.append((rnd.choice(era.routines), b, rnd.random() < 0.6))
    for off in (8000, 4100, 4000, 6000, 300, 8999):   # one clean run's checkpoints, shuffled
        seq.append((unrolled, Buffers("from", 9000, 5, 3, poison=(off,)), True))
        seq.append((unrolled, Buffers("from", 9000, 5, 3, unmapped=(off,)), True))
    for r, b, ff in seq:
        got = t.run(r, b, fast_forward=ff, every_checkpoint=True)
        raw = t.machine.run(t._call(r, b), b, t.kernel,
                            start=t.checkpoint(r, b, every=True) if ff else None)
        fresh = Machine(t.image)
        try:
            ref = fresh.run(t._call(r, b), b, t.kernel)
        finally:
            fresh.close()
        assert got == outcome.build(ref, b, r.ret_reg, t.image.symbolize), f"{b} ff={ff}"
        assert raw.dst_window == ref.dst_window and raw.src_window == ref.src_window, b


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_recordings_are_bounded_by_the_bytes_they_hold_not_only_their_number() -> None:
    """A 64 KiB copy's recording holds ~11 MB (a checkpoint per line: CPU context + the
    destination page).  Eight of them (the old entry bound) made a ``make bench-sweep`` worker
    158 MB; recording six in a row must leave the cache within its byte budget and the
    process's RSS grown by about that budget, not by six recordings."""
    from emu.build import target as T
    from emu.caching import clear_all
    clear_all()
    era = ERAS["E"]
    t = era_target(era, CPUS["none"])
    r = era.routine("copy_user_generic_unrolled")
    one = None
    before = _rss_mb()
    for da in range(6):
        b = Buffers("from", 60 * 1024, 0, da, poison=(4096 + 64 * da,))
        assert t.checkpoint(r, b) is not None
        key = next(reversed(T._RECORDINGS))
        one = one or T._RECORDINGS[key].nbytes()
    grown = _rss_mb() - before
    assert one > 8 << 20                      # the weight is the checkpoints' real size
    assert grown < (T.RECORDINGS_BUDGET >> 20) + 16, f"RSS grew {grown:.0f} MB"
    assert len(T._RECORDINGS) < 6 and T._RECORDINGS.weight() <= T.RECORDINGS_BUDGET
    # and a fast-forwarded case still gives the full run's outcome after the evictions
    b = Buffers("from", 60 * 1024, 0, 0, poison=(4096,))
    assert t.run(r, b, fast_forward=True) == t.run(r, b, fast_forward=False)

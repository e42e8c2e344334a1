"""The sweep grid: which cases it enumerates, and how a case maps to an ``emu run`` command."""

from __future__ import annotations

import pytest

from emu.core import layout as L
from emu.errors import UsageError
from emu.runs.sweep import Case, Grid, classify, parse_ints, parse_variant


def grid(**kw):  # type: ignore[no-untyped-def]
    variants = tuple(parse_variant(v, None) for v in kw.pop("variants", ("C",)))
    return Grid(variants=variants, **kw)


def test_every_byte_by_default_and_every_line_with_step() -> None:
    g = grid(lengths=(300,), src_aligns=(0x7E0,))
    offs = [c.offset for c in g.cases()]
    assert offs == list(range(300))
    assert all(c.poison == (c.offset,) and not c.unmapped for c in g.cases())
    g = grid(lengths=(300,), step=64)
    assert [c.offset for c in g.cases()] == [0, 64, 128, 192, 256]


def test_pf_cases_fall_on_page_boundaries() -> None:
    g = grid(lengths=(0x2100,), src_aligns=(0x7E0,), kinds=("pf",))
    cases = list(g.cases())
    # the user buffer spans 3 pages: offset 0, then each page start after it
    assert [c.unmapped for c in cases] == [(0,), (0x1000 - 0x7E0,), (0x2000 - 0x7E0,)]
    for c in cases[1:]:
        assert (c.src_align + c.unmapped[0]) % L.PAGE == 0
    two = list(grid(lengths=(0x2100,), src_aligns=(0x7E0,), kinds=("pf2",)).cases())
    assert [c.unmapped for c in two] == [(0, 0x820), (0x820, 0x1820)]


def test_two_fault_kinds() -> None:
    g = grid(lengths=(0x900,), src_aligns=(0x7E0,), kinds=("mc2", "mc+pf"), step=0x100)
    mc2 = [c for c in g.cases() if c.kind == "mc2"]
    for c in mc2:
        first, second = c.poison
        assert (c.src_align + second) % L.LINE == 0
        assert (c.src_align + second) // L.LINE == (c.src_align + first) // L.LINE + 1
    mcpf = [c for c in g.cases() if c.kind == "mc+pf"]
    assert mcpf and all((c.src_align + c.unmapped[0]) % L.PAGE == 0 for c in mcpf)
    assert all(c.unmapped[0] > c.poison[0] for c in mcpf)
    # no next page inside the buffer → no mc+pf case
    assert all(c.poison[0] < 0x1000 - 0x7E0 for c in mcpf)


def test_routines_cpus_directions_multiply() -> None:
    g = grid(variants=("E", "F"), routines=("all",), cpus=("none", "erms"),
             directions=("from", "to"), lengths=(16,), step=8)
    cases = list(g.cases())
    # E has 4 routines, F has 2; × 2 cpus × 2 directions × 2 offsets
    assert len(cases) == (4 + 2) * 2 * 2 * 2
    assert len({c.id for c in cases}) == len(cases)


def test_default_routine_is_the_cpu_choice() -> None:
    g = grid(variants=("E",), cpus=("none", "rep_good", "erms"), lengths=(8,), step=8)
    assert [c.routine for c in g.cases()] == ["copy_user_generic_unrolled",
                                             "copy_user_generic_string",
                                             "copy_user_enhanced_fast_string"]


@pytest.mark.parametrize("kw", [dict(kinds=("nope",)), dict(step=0),
                                dict(lengths=(0x10000,), src_aligns=(1,)),
                                dict(routines=("no_such_routine",)), dict(cpus=("AVX",))])
def test_bad_grids_are_usage_errors(kw) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError):
        grid(**kw)


def test_source_file_needs_a_routine(tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "x.S"
    src.write_text("nop\n")
    with pytest.raises(UsageError, match="--routine"):
        Grid(variants=(parse_variant(str(src), None),))


def test_parse_ints() -> None:
    assert parse_ints("1,4..8/2,0x10") == (1, 4, 6, 8, 16)
    assert parse_ints("3,3") == (3,)
    for bad in ("", "x", "1..y"):
        with pytest.raises(UsageError):
            parse_ints(bad)


def test_case_json_round_trip_and_command() -> None:
    c = Case("sub/x.S", "f", "erms", "to", 100, 3, 5, "mc+pf", 7, (7,), (0xFFB,), "C")
    assert Case.from_json(c.to_json()) == c
    assert c.command() == ("emu run sub/x.S --era C --len 100 --src-align 0x3 --dst-align 0x5 "
                           "--poison 0x7 --unmapped 0xffb --direction to --cpu erms --routine f")


def test_classify_uses_benign_set_only_for_copy_from_user() -> None:
    from emu.kernel.eras import ERAS
    from emu.core.machine import Buffers
    from emu.build.target import era_target
    e = ERAS["E"]
    t = era_target(e, frozenset())
    # seed scenario: E rounds back to the block start → bytes past the report, benign
    o = t.run(e.select_routine(frozenset()), Buffers(length=4096, src_align=0x7E0,
                                                     poison=(0x960,)))
    assert o.violations == ("modified_past_reported",)
    assert classify(o, "from") == "benign"
    assert classify(o, "to") == "violation"
    o = t.run(e.select_routine(frozenset()), Buffers(length=64, poison=(0,)))
    assert o.violations == () and o.return_value == 64 and o.bytes_copied == 0
    assert classify(o, "from") == "ok"


def test_a_sweep_fast_forwards_long_copies_only() -> None:
    """Below ``FAST_FORWARD_FROM`` a sweep runs each case from the entry (a cell's recording
    would cost more than it saves); from there on, the cell's clean run is recorded once and
    its faulting cases start from checkpoints.  Either way the record is a full run's."""
    from emu.build import target as T
    from emu.caching import clear_all
    from emu.runs.sweep import FAST_FORWARD_FROM, Runner, record
    runner = Runner()
    for n, recorded in ((4096, False), (FAST_FORWARD_FROM, True)):
        clear_all()
        g = grid(variants=("E",), lengths=(n,), src_aligns=(0,), step=64 * 13)
        cases = list(g.cases())
        assert len(cases) > 1
        for c in cases:
            t, r = runner.target_and_routine(c)
            assert runner.run(c) == record(c, t.run(r, c.buffers()))
        assert (T._RECORDINGS.weight() > 0) is recorded

"""Regression: the second #PF of one run was reported as vector 8 (double fault).

QEMU keeps the vector of an exception in flight until it is delivered through the IDT, which
never happens when UC_HOOK_INTR redirects it; the handle_tail retry's #PF on the same missing
page was then promoted to #DF.  The machine now marks each redirected exception as delivered.
"""

from __future__ import annotations

from emu.kernel.eras import CPUS, ERAS
from emu.core.machine import Buffers
from emu.build.target import era_target


def test_handle_tail_retry_takes_a_second_page_fault() -> None:
    era = ERAS["E"]
    t = era_target(era, CPUS["none"])
    o = t.run(era.routine("copy_user_generic_unrolled"),
              Buffers(length=4096, src_align=0x7E0, unmapped=(0x820,)))
    assert [f.kind for f in o.faults] == ["pf", "pf"]
    assert o.faults[1].where.startswith(".Lcopy_user_handle_tail")
    assert o.return_value == 4096 - 0x820


def test_many_page_faults_in_one_run_stay_page_faults(demo) -> None:  # type: ignore[no-untyped-def]
    from tests.unit.test_machine import raw_run
    raw = raw_run(demo, "demo_refault", Buffers(length=10, unmapped=(0,)))
    kinds = {r.event.kind.value for r in raw.faults}
    assert kinds == {"pf"} and len(raw.faults) > 10

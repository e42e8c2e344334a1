"""The caller model beyond the seed: fault-in fixup types, mce_count, #PF, bad input.

Facts: §6a (which types recover under which rules), §6d (queue_task_work and mce_count, the
pre-5.15 double queue), §7 (fault-in semantics before and after 5.16), §8 (the 5.17-6.14
EFAULT_REG class and the 6.4-6.7 getuser.S DEFAULT entries).
"""

from __future__ import annotations

import pytest

from emu.runs.caller import FaultIn, PANIC_OTHER_PAGE, simulate
from emu.cli.main import main
from emu.kernel.eras import CPUS, ERAS
from emu.core.machine import Buffers
from emu.kernel.policy import PANIC_MC
from emu.kernel.severity import Severity

SEED = Buffers(length=4096, src_align=0x7E0, poison=(0x960,))


@pytest.mark.parametrize("era, fault_in", [("E", FaultIn.EFAULT_REG), ("F", FaultIn.EFAULT_REG),
                                            ("F", FaultIn.DEFAULT)])
def test_fault_in_types_the_517_rules_reject_panic(era: str, fault_in: FaultIn) -> None:
    r = simulate(ERAS[era], CPUS["erms"], SEED, fault_in=fault_in)
    assert r.state == "panic" and r.panic == PANIC_MC
    assert [(m.stage, m.recovered) for m in r.mcs] == [("copy", True), ("fault_in", False)]


@pytest.mark.parametrize("fault_in", list(FaultIn))
def test_2025_rules_recover_any_decoded_user_load(fault_in: FaultIn) -> None:
    r = simulate(ERAS["F"], CPUS["erms"], SEED, fault_in=fault_in, mce_rules=Severity.V2025)
    assert (r.state, r.bytes_written, r.signal) == ("returned", 0x960, None)
    assert all(m.recovered for m in r.mcs)


def test_two_poisoned_pages_before_515_loop_in_task_work() -> None:
    # Two chunks, each copy returns 0 (pretend success) after an #MC on a different page:
    # without mce_count the same callback_head is queued twice (81065b35e248).
    case = Buffers(length=8192, src_align=0, poison=(0x100, 0x1100))
    r = simulate(ERAS["C"], CPUS["erms"], case, mce_count=False)
    assert r.state == "hang" and r.mc_count == 2
    assert r.steps[-1].kind == "return_to_user"


def test_two_poisoned_pages_from_515_panic() -> None:
    case = Buffers(length=8192, src_align=0, poison=(0x100, 0x1100))
    r = simulate(ERAS["C"], CPUS["erms"], case)
    assert (r.state, r.panic, r.mc_count) == ("panic", PANIC_OTHER_PAGE, 2)


@pytest.mark.parametrize("era, expected", [("C", -14), ("E", 0x820)])
def test_unmapped_page_fault_in_before_and_after_516(era: str, expected: int) -> None:
    # buf+0x820 starts the second user page; it has no VMA.  Up to 5.15 the fault-in of the
    # whole chunk fails (-EFAULT, nothing written); from 5.16 it fails only if no byte could
    # be faulted in, so the copy runs, stops at the hole, and the next fault-in fails.
    r = simulate(ERAS[era], CPUS["erms"], Buffers(length=4096, src_align=0x7E0,
                                                   unmapped=(0x820,)))
    assert r.state == "returned" and r.return_value == expected
    assert r.errno == ("EFAULT" if expected < 0 else None)
    assert r.mc_count == 0 and r.signal is None


@pytest.mark.parametrize("argv", [
    ["run", "C", "--caller", "write", "--fault-in", "efault_reg"],
    ["run", "E", "--caller", "write", "--direction", "to"],
    ["run", "tests/fixtures/regress_4c132d1d844a_uaccess.S", "--caller", "write"],
    ["run", "E", "--caller", "write", "--mce-rules", "v9"],
    ["run", "E", "--no-mce-count"],
    ["run", "E", "--caller", "write", "--len", "0"],
])
def test_bad_caller_input_is_one_line_and_exit_2(argv: list[str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("emu: error: ") and err.count("\n") == 1


def test_short_count_without_mce_count_loops_in_task_work() -> None:
    # kernel-facts §7a inference: "returning bytes not copied ... puts the kernel into a loop"
    # (Sept 2020) matches the double queue of 81065b35e248.  Era D semantics (tail retry, then
    # the fault-in touches the poison) without mce_count queue the same work three times.
    r = simulate(ERAS["D"], CPUS["erms"], SEED, mce_count=False)
    assert r.state == "hang" and r.mc_count == 3 and r.bytes_written is None
    with_count = simulate(ERAS["D"], CPUS["erms"], SEED)
    assert with_count.state == "returned" and with_count.mc_count == 3

"""``emu explain`` tells each era's story for the seed scenario (kernel-facts §3, §5c, §11).

The strings checked are facts about the era, not the tool's formatting choices: which handler
type the faulting load has, whether the handler writes the trap number (18) into rax (COPY
does, UACCESS does not: §5c), which instructions the fixup path runs (handle_tail's
`cmp $18` test before or after `movl %edx,%ecx`, the pretend-success `xorl %eax,%eax`), and
the value returned.
"""

from __future__ import annotations

import io

import pytest

from emu.cli.main import main

SEED = ["--src-align", "0x7e0", "--poison", "0x960"]
EXACT, ROUNDED = 4096 - 0x960, 4096 - 0x940


def explain(*args: str) -> str:
    out = io.StringIO()
    assert main(["explain", *args, *SEED], out) == 0
    return out.getvalue()


def faulting(cpu: str) -> str:
    # unrolled: the 5th load of the block at source offset 0x940 reads 0x960;
    # ERMS: the rep movsb itself
    return "movq 0x20(%rsi), %r8" if cpu == "none" else "rep movsb (%rsi), (%rdi)"


@pytest.mark.parametrize("cpu", ["none", "erms"])
def test_a_the_uaccess_entry_is_not_enough(cpu: str) -> None:
    t = explain("A", "--cpu", cpu)
    assert "fault 1: #MC at" in t and faulting(cpu) in t
    assert "ex_handler_uaccess" in t and "only ex_handler_fault entries recover" in t
    assert "=> panic" in t and "fault 2" not in t


@pytest.mark.parametrize("cpu", ["none", "erms"])
@pytest.mark.parametrize("era", ["B", "C"])
def test_b_c_trap_number_then_pretend_success(era: str, cpu: str) -> None:
    t = explain(era, "--cpu", cpu)
    assert "ex_handler_copy" in t and "rax 0x0 -> 0x12 (trap number 18)" in t
    path = t[t.index("fixup path:"):t.index("result:")]
    assert "cmpl $0x12, %eax" in path and "xorl %eax, %eax" in path
    assert "rep movsb" not in path.split("cmpl $0x12")[1]     # no tail retry after the test
    assert "result: eax = 0 " in t


@pytest.mark.parametrize("cpu", ["none", "erms"])
def test_d_tail_retry_takes_a_second_mc(cpu: str) -> None:
    t = explain("D", "--cpu", cpu)
    assert "fault 2: #MC at" in t and "<.Lcopy_user_handle_tail" in t.split("fault 2:")[1].split("\n")[0]
    assert "EX_TYPE_COPY" in t and "cmpl $0x12" not in t     # the revert removed the test
    assert f"result: eax = {EXACT} " in t


@pytest.mark.parametrize("cpu, ret", [("none", ROUNDED), ("erms", EXACT)])
def test_e_test_before_the_retry_returns_edx(cpu: str, ret: int) -> None:
    t = explain("E", "--cpu", cpu)
    path = t[t.index("fixup path:"):t.index("result:")]
    assert path.index("cmpl $0x12, %eax") < path.index("movl %edx, %eax")
    assert "fault 2" not in t
    assert f"result: eax = {ret} " in t


@pytest.mark.parametrize("cpu, faults", [("none", 2), ("erms", 1)])
def test_f_uaccess_leaves_rax_alone_and_returns_rcx(cpu: str, faults: int) -> None:
    t = explain("F", "--cpu", cpu)
    assert "EX_TYPE_UACCESS" in t and "no register besides rip" in t and "trap number" not in t
    assert (f"fault {faults}: #MC" in t) and (f"fault {faults + 1}:" not in t)
    assert f"result: rcx = {EXACT} " in t


@pytest.mark.parametrize("era, sees", [
    ("A", "the kernel panics"),
    ("B", "killed by SIGBUS (BUS_MCEERR_AR)"),
    ("C", "killed by SIGBUS (BUS_MCEERR_AR)"),
    ("D", f"write() = {0x960}"),
    ("E", f"write() = {0x960}"),
    ("F", f"write() = {0x960}"),
])
def test_caller_level_story_shows_each_step(era: str, sees: str) -> None:
    t = explain(era, "--caller", "write", "--cpu", "erms")
    (line,) = [ln for ln in t.splitlines() if ln.startswith("user sees: ")]
    assert sees in line
    assert "fault-in: " in t and "copy: copy_user" in t
    assert "model assumptions:" in t
    if era in "DEF":   # the fault-in load meets the poison: shown with its own disassembly
        assert "movzbl (%rax), %edx" in t and "kill_me_never" in t
    if era in "BC":
        assert "kill_me_maybe" in t


def test_explain_json_and_bad_source(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "nosuch.S", "--routine", "x"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["explain", "E", "--fault-in", "uaccess"]) == 2

"""write(2) over one poisoned line, any size and alignment, where the facts fix the answer.

* Eras D (v5.16) and F (v6.4+, 5.17 rules, fault-in EX_TYPE_UACCESS): every copy path returns
  the exact remainder after an #MC (§3 rows D and F, §11), the fault-in of the next chunk
  then starts on the poisoned line, takes a recoverable #MC (UACCESS + is_copy_from_user) and
  fails with -EFAULT (§7b).  So write() returns the bytes before the line, or -EFAULT if the
  line holds the first byte; no signal (kill_me_never, §6d); one line → one page, and at most
  four #MCs, so mce_count never panics.
* Era C (v5.10-v5.15 with mce_count): whatever the copy returned, the task_work queued by the
  first COPYIN #MC is kill_me_maybe → SIGBUS BUS_MCEERR_AR at the decoded user address, which
  lies within the 8 bytes before the line or in the line (§6b, §6d).
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from emu.runs.caller import simulate
from emu.kernel.eras import CPUS, ERAS
from emu.core.layout import USER_WINDOW
from emu.core.machine import Buffers

PAGE, LINE = 4096, 64
cases = dict(cpu=st.sampled_from(list(CPUS)), n=st.integers(1, 2 * PAGE),
             align=st.integers(0, PAGE - 1), file_off=st.integers(0, PAGE - 1),
             frac=st.floats(0, 1, exclude_max=True))


def line_start(align: int, off: int) -> int:
    return max(((align + off) & ~(LINE - 1)) - align, 0)


@given(era=st.sampled_from(["D", "F"]), **cases)
@example(era="D", cpu="none", n=4096, align=0x7E0, file_off=0, frac=0x960 / 4096)
@example(era="F", cpu="none", n=48, align=32, file_off=0, frac=40 / 48)
@example(era="F", cpu="fsrm", n=64, align=0, file_off=4090, frac=0.0)
def test_exact_eras_write_up_to_the_line(era: str, cpu: str, n: int, align: int,
                                         file_off: int, frac: float) -> None:
    off = min(int(frac * n), n - 1)
    r = simulate(ERAS[era], CPUS[cpu], Buffers(length=n, src_align=align, dst_align=file_off,
                                               poison=(off,)))
    p = line_start(align, off)
    assert r.state == "returned" and r.signal is None
    assert r.return_value == (p if p else -14)
    assert 1 <= r.mc_count <= 4 and all(m.recovered for m in r.mcs)
    assert r.mcs[-1].stage == "fault_in" and r.mcs[-1].offset == p


@given(**cases)
@example(cpu="erms", n=4096, align=0x7E0, file_off=0, frac=0x960 / 4096)
def test_era_c_always_ends_in_sigbus(cpu: str, n: int, align: int, file_off: int,
                                     frac: float) -> None:
    off = min(int(frac * n), n - 1)
    r = simulate(ERAS["C"], CPUS[cpu], Buffers(length=n, src_align=align, dst_align=file_off,
                                               poison=(off,)))
    line = USER_WINDOW + ((align + off) & ~(LINE - 1))
    assert (r.state, r.signal, r.si_code) == ("killed", "SIGBUS", "BUS_MCEERR_AR")
    assert r.si_addr is not None and line - 7 <= r.si_addr < line + LINE

"""write(2) over a hole in the user buffer, every era: the #PF story of kernel-facts §7.

A page of the buffer has no VMA.  Every copy routine returns the exact remainder on a #PF
(§3, "#PF" column), so what write(2) returns is decided by the fault-in:

* up to v5.15 fault_in_pages_readable() touches every page of the chunk and any failure
  fails the whole chunk with -EFAULT: write() returns the chunks that end before the hole;
* from v5.16 fault_in_iov_iter_readable() fails only if the chunk's first byte cannot be
  faulted in, so the copy runs up to the hole: write() returns exactly the bytes before it.

Either way nothing is written → -EFAULT.  No machine check, no signal.
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from emu.runs.caller import simulate
from emu.kernel.eras import CPUS, ERAS
from emu.core.machine import Buffers

PAGE = 4096


def expected(era: str, n: int, align: int, file_off: int, hole_at: int) -> int:
    hole = max(((align + hole_at) & ~(PAGE - 1)) - align, 0)    # first unreadable byte
    if era in "DEF":
        return hole if hole else -14
    done, end = 0, min(PAGE - file_off % PAGE, n)
    while end <= hole:
        done = end
        end = min(end + PAGE, n)
        if done == n:
            break
    return done if done else -14


@given(era=st.sampled_from(list(ERAS)), cpu=st.sampled_from(list(CPUS)),
       n=st.integers(1, 3 * PAGE), align=st.integers(0, PAGE - 1),
       file_off=st.integers(0, PAGE - 1), frac=st.floats(0, 1, exclude_max=True))
@example(era="C", cpu="erms", n=4096, align=0x7E0, file_off=0, frac=0x820 / 4096)
@example(era="E", cpu="none", n=4096, align=0x7E0, file_off=0, frac=0x820 / 4096)
@example(era="F", cpu="none", n=100, align=4090, file_off=5, frac=0.5)
def test_hole_in_user_buffer(era: str, cpu: str, n: int, align: int, file_off: int,
                             frac: float) -> None:
    hole_at = min(int(frac * n), n - 1)
    r = simulate(ERAS[era], CPUS[cpu], Buffers(length=n, src_align=align, dst_align=file_off,
                                               unmapped=(hole_at,)))
    want = expected(era, n, align, file_off, hole_at)
    assert r.state == "returned" and r.return_value == want
    assert r.errno == ("EFAULT" if want < 0 else None)
    assert r.mc_count == 0 and r.signal is None

"""write(2) of the seed scenario in every era, against kernel-facts.md §11 (table), §6d, §7.

Seed: write(fd, buf, 4096) at file offset 0, buf at +0x7e0 in its page, the 64-byte line at
buf+0x960 poisoned (P = 0x960 = 2400; it starts on a line boundary: 0x7e0 + 0x960 = 0x1140).
The first generic_perform_write() chunk is the whole 4096 bytes, so the first atomic copy is
exactly the seed copy_from_user().  Expected values are derived here from the facts:

* exact count: size - P = 1696;
* era E unrolled (cpu none): the fault is in the 64-byte block that starts at source offset
  0x940 (0x7e0 + 0x940 = 0x1120 is the block holding the line's first qword), so edx is
  rounded back to it: 4096 - 0x940 = 1728 (§4b);
* the fault-in of the chunk after a short copy starts at the first byte not copied.  When
  that is the poisoned byte (exact counts) the fault-in takes an #MC; when it is before the
  line (era E unrolled: 0x940) it does not, the copy runs again, copies nothing, and the
  loop repeats until mce_count > 10 panics (§6d, 81065b35e248).
"""

from __future__ import annotations

import json
import io

import pytest

from emu.runs.caller import PANIC_TOO_MANY, simulate
from emu.cli.main import main
from emu.kernel.eras import CPUS, ERAS
from emu.core.layout import USER_WINDOW
from emu.core.machine import Buffers

N, ALIGN, P = 4096, 0x7E0, 0x960
EXACT = N - P
SEED = Buffers(length=N, src_align=ALIGN, poison=(P,))
BUF = USER_WINDOW + ALIGN


def write(era: str, cpu: str, **kw):  # type: ignore[no-untyped-def]
    return simulate(ERAS[era], CPUS[cpu], SEED, **kw)


def first_copy(r):  # type: ignore[no-untyped-def]
    return next(s for s in r.steps if s.kind == "copy")


@pytest.mark.parametrize("cpu", ["none", "erms"])
def test_era_a_panics_in_the_copy(cpu: str) -> None:
    r = write("A", cpu)
    assert r.state == "panic" and "Fatal local machine check" in (r.panic or "")
    assert [(m.stage, m.recovered) for m in r.mcs] == [("copy", False)]
    assert r.bytes_written is None and r.signal is None


@pytest.mark.parametrize("cpu", ["none", "erms"])
@pytest.mark.parametrize("era", ["B", "C"])
def test_eras_b_c_pretend_success_then_sigbus(era: str, cpu: str) -> None:
    r = write(era, cpu)
    assert first_copy(r).data["returned"] == 0
    assert r.bytes_written == N                      # the whole chunk is committed
    assert r.uncopied_committed == N - P             # ... though only P bytes were copied
    assert (r.state, r.signal, r.si_code) == ("killed", "SIGBUS", "BUS_MCEERR_AR")
    assert r.si_addr == BUF + P                      # mce_vaddr: the decoded load address
    assert [m.stage for m in r.mcs] == ["copy"]      # no tail retry, no fault-in retry


@pytest.mark.parametrize("cpu", ["none", "erms"])
def test_era_d_exact_short_count_two_mc_in_copy(cpu: str) -> None:
    r = write("D", cpu)
    assert first_copy(r).data["returned"] == EXACT
    assert [m.stage for m in r.mcs] == ["copy", "copy", "fault_in"]
    assert all(m.recovered and m.offset == P for m in r.mcs)
    assert (r.state, r.bytes_written, r.errno, r.signal) == ("returned", P, None, None)


def test_era_e_erms_returns_edx_exact_no_signal() -> None:
    r = write("E", "erms")
    assert first_copy(r).data["returned"] == EXACT
    assert [m.stage for m in r.mcs] == ["copy", "fault_in"]   # no tail retry in the copy
    assert (r.state, r.bytes_written, r.errno, r.signal) == ("returned", P, None, None)


def test_era_e_unrolled_edx_rounded_back_then_mce_count_panic() -> None:
    r = write("E", "none")
    assert first_copy(r).data["returned"] == N - 0x940
    assert r.signal is None
    copies = [s for s in r.steps if s.kind == "copy"]
    assert all(s.data["returned"] == s.data["length"] for s in copies[1:])   # nothing copied
    assert r.mc_count == 11 and all(m.stage == "copy" for m in r.mcs)
    assert (r.state, r.panic) == ("panic", PANIC_TOO_MANY)


@pytest.mark.parametrize("cpu, in_copy", [("none", 2), ("erms", 1)])
def test_era_f_rcx_exact_no_signal(cpu: str, in_copy: int) -> None:
    r = write("F", cpu)
    assert first_copy(r).data["returned"] == EXACT
    assert [m.stage for m in r.mcs] == ["copy"] * in_copy + ["fault_in"]
    assert (r.state, r.bytes_written, r.errno, r.signal) == ("returned", P, None, None)


def test_cli_json_has_the_interface_fields() -> None:
    out = io.StringIO()
    rc = main(["run", "D", "--caller", "write", "--src-align", hex(ALIGN), "--poison", hex(P),
               "--cpu", "erms", "--json"], out)
    j = json.loads(out.getvalue())
    assert rc == 0
    for key in ("bytes_written", "errno", "signal", "state", "mc_count", "steps"):
        assert key in j
    assert (j["bytes_written"], j["mc_count"], j["signal"]) == (P, 3, None)
    assert j["model"]["assumptions"]


@pytest.mark.parametrize("cpu", ["none", "erms"])
def test_diff_caller_agrees_with_each_era_model(cpu: str) -> None:
    out = io.StringIO()
    rc = main(["diff", "--caller", "write", "--src-align", hex(ALIGN), "--poison", hex(P),
               "--cpu", cpu, "--json"], out)
    rows = json.loads(out.getvalue())["rows"]
    assert rc == 0 and [r["era"] for r in rows] == list(ERAS)
    for row in rows:
        r = write(row["era"], cpu)
        assert (row["state"], row["bytes_written"], row["signal"], row["mc_count"]) == \
            (r.state, r.bytes_written, r.signal, r.mc_count)

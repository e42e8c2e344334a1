"""Debian's real debug vmlinux images (6.1 and 6.12): the scenario and the census.

``make test`` (and so ``.ci/run``) runs scripts/linux-dbg first, which downloads Debian's
linux-image-*-amd64-dbg packages matching the installed linux-source versions once and
extracts only the vmlinux into a cache outside the repository.  A missing image fails with
that hint; it is never skipped.

* every CPU path (presets and server models): the routine the CPU selects, run from the
  image, behaves exactly as the same routine assembled from the same release's source;
* the census covers every __ex_table entry (count = section size / 12) and its decoded
  instructions agree with capstone's own decoding of the bytes at each entry's address.
"""

from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path

import pytest

from emu.build.objects import built_target, kernel_version, open_linked
from emu.cli.main import main
from emu.core.machine import Buffers
from emu.kernel.eras import parse_cpu
from emu.kernel.policy import Severity
from emu.runs import census

from debian_sources import debian_target

CPUS = ["none", "rep_good", "erms", "fsrm", "haswell-ep", "skylake-sp", "cascadelake-sp",
        "icelake-sp", "sapphirerapids", "rome", "milan"]
CASES = [Buffers(length=n, src_align=a, poison=(p,)) for n in (4096, 100, 7) for a in (0, 0x7E4)
         for p in (0, n // 2, n - 1)] + [
    Buffers(length=4096, src_align=0x7E0, unmapped=(0x820,)), Buffers(length=300, src_align=3),
    Buffers(length=4096, src_align=0x7E0, poison=(0x960,), direction="to")]


def vmlinux(version: str) -> Path:
    root = Path(os.environ.get("EMU_LINUX_DBG") or (
        Path(os.environ["EMU_CACHE"]) / "linux-dbg" if os.environ.get("EMU_CACHE") else
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "emu" / "linux-dbg"))
    p = root / version / "vmlinux"
    if not p.is_file():
        pytest.fail(f"{p}: missing -- these tests need Debian's {version} debug vmlinux; "
                    "`make test` runs scripts/linux-dbg to download it", pytrace=False)
    return p


def behaviour(o):  # type: ignore[no-untyped-def]
    return (o.state, o.return_value, o.bytes_copied, o.written_beyond, o.mc_count,
            o.pf_count, o.retouched, o.violations, [f.handler for f in o.faults])


@pytest.mark.parametrize("cpu", CPUS)
@pytest.mark.parametrize("version", ["6.1", "6.12"])
def test_image_gives_the_sources_answers(version: str, cpu: str) -> None:
    c = parse_cpu(cpu)
    src = debian_target(version, cpu=c)
    r = src.routine_for(None, c)
    t = built_target(str(vmlinux(version)), linked=True, cpu=c, routine=r.name)
    assert t.version is not None and t.version.version == tuple(map(int, version.split(".")))
    assert t.machine.smap == ("SMAP" in c)
    assert t.routine_for(r.name, c) == r
    for b in CASES:
        assert behaviour(t.run(r, b)) == behaviour(src.run(r, b)), (cpu, b)


@pytest.mark.parametrize("version", ["6.1", "6.12"])
def test_smap_stac_is_an_alternative_of_the_image(version: str) -> None:
    """The issue's first symptom: without the SMAP feature the image's STAC is a NOP, and a
    CPU with SMAP gets stac patched in; neither is an SMAP violation."""
    routine = "copy_user_generic_unrolled" if version == "6.1" else "rep_movs_alternative"
    b = Buffers(length=4096, src_align=32, poison=(2016,))
    states = set()
    for cpu in ("none", "haswell-ep", "skylake-sp"):
        t = built_target(str(vmlinux(version)), linked=True, cpu=parse_cpu(cpu), routine=routine)
        r = t.routine_for(routine, parse_cpu(cpu))
        states.add(t.run(r, b).state.value)
    assert states == {"returned"}


@pytest.mark.parametrize("version", ["6.1", "6.12"])
def test_census_covers_every_entry_and_decodes_like_capstone(version: str) -> None:
    from capstone import CS_ARCH_X86, CS_MODE_64, CS_OPT_SYNTAX_ATT, Cs
    lf = open_linked(str(vmlinux(version)))
    ver = kernel_version(lf)
    sites, rules = census.census(lf, ver)
    ex = lf.section("__ex_table")
    assert ex is not None and len(sites) == ex.size // 12 > 100
    assert rules.name == "image" and "error_context" in rules.how
    md = Cs(CS_ARCH_X86, CS_MODE_64)
    md.syntax = CS_OPT_SYNTAX_ATT
    raw = lf.data(ex)
    for i in range(0, len(sites), max(1, len(sites) // 40)):       # ~40 spot checks
        insn = ex.addr + 12 * i + struct.unpack_from("<i", raw, 12 * i)[0]
        assert sites[i].address == insn
        ref = next(md.disasm(lf.read(insn, 16), insn, 1))
        assert sites[i].insn == f"{ref.mnemonic} {ref.op_str}".strip()
    assert {s.mc for s in sites} == {"recovers", "panics"}


@pytest.mark.parametrize("version", ["6.1", "6.12"])
def test_census_rules_override_flags_efault_reg_loads(version: str) -> None:
    """Under v5.17 rules every EX_TYPE_EFAULT_REG user load panics; under the image's own
    (is_copy_from_user first) some recover; an atomic RMW is never a copy-in."""
    lf = open_linked(str(vmlinux(version)))
    ver = kernel_version(lf)
    own, _ = census.census(lf, ver)
    old, rules = census.census(lf, ver, Severity.V5_17)
    assert rules.how == "--mce-rules"
    ef_old = [s for s in old if s.type == "EX_TYPE_EFAULT_REG" and s.touches == "user load"]
    ef_own = [s for s in own if s.type == "EX_TYPE_EFAULT_REG" and s.touches == "user load"]
    assert ef_old and all(s.mc == "panics" for s in ef_old)
    assert any(s.mc == "recovers" for s in ef_own)
    rmw = [s for s in own if s.user and s.insn.startswith(("lock ", "xchg"))]
    assert rmw and all(not s.copyin for s in rmw)


def test_census_cli_json_and_diff(capsys) -> None:  # type: ignore[no-untyped-def]
    a, b = str(vmlinux("6.1")), str(vmlinux("6.12"))
    out = io.StringIO()
    assert main(["map", "--vmlinux", a, "--json", "--user-only"], out) == 0
    doc = json.loads(out.getvalue())
    assert doc["sites"] and all(s["touches"].startswith("user") for s in doc["sites"])
    assert doc["summary"]["total"]["sites"] == len(doc["sites"])
    out = io.StringIO()
    assert main(["map", "--diff", f"vmlinux:{a}", f"vmlinux:{b}", "--json"], out) in (0, 1)
    changes = json.loads(out.getvalue())["changes"]
    assert {c["kind"] for c in changes} >= {"added", "removed"}


#: capstone's names of the system instructions (emu/core/sysinsn.py), as ``decode`` names them.
_SYSTEM_MNEMONICS = {"iretd": "iret", "iretq": "iretq", "sysretq": "sysret",
                     "sysexitq": "sysexit", "xrstors64": "xrstors", "xsaves64": "xsaves"}


@pytest.mark.parametrize("version", ["6.1", "6.12"])
def test_system_instruction_decoder_agrees_with_capstone_on_kernel_text(version: str) -> None:
    """At every instruction start of the first 2 MiB of the image's .text (a linear sweep,
    where the kernel's own wrmsr, cli, mov to %cr3, lgdt, swapgs, ... live), ``decode``
    names exactly the instructions capstone reads as system instructions; and the copy
    routines the CPU paths select hold none (their windows' exits are elsewhere)."""
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs

    from emu.core import sysinsn
    lf = open_linked(str(vmlinux(version)))
    text = lf.section(".text")
    assert text is not None
    data = bytes(lf.buf[text.offset:text.offset + min(text.size, 2 << 20)])
    names = set(sysinsn.ONE_BYTE.values()) | set(sysinsn.TWO_BYTE.values()) | {
        *sysinsn.GROUP6, *sysinsn.GROUP7_MEM.values(), *sysinsn.GROUP7_REG.values(),
        *sysinsn.GROUP9_MEM.values(), "vmptrld", "vmclear", "vmxon", "vmread", "vmwrite",
        "wrfsbase", "wrgsbase", "invept", "invvpid", "invpcid", "wbnoinvd", "iretq", "insw",
        "outsw"}
    md = Cs(CS_ARCH_X86, CS_MODE_64)
    md.skipdata = True
    seen: dict[str, int] = {}
    for addr, size, mnemonic, ops in md.disasm_lite(data, text.addr):
        off = addr - text.addr
        ours = sysinsn.decode(data[off:off + 15])
        if mnemonic == ".byte":
            continue                 # capstone 5 does not know it (invlpgb, tlbsync, ...)
        mn = mnemonic.split()[-1]
        theirs: str | None
        if mn == "mov" and ("cr" in ops or "dr" in ops):
            dst = ops.split(", ")[0]
            reg = ops.replace("dr", "db").split(", ")[0 if dst[:2] in ("cr", "dr") else 1]
            theirs = f"mov {'to' if dst[:2] in ('cr', 'dr') else 'from'} %{reg}"
        elif mn == "vmmcall" and data[off:off + 1] == b"\xf3":
            theirs = "vmgexit"
        else:
            theirs = _SYSTEM_MNEMONICS.get(mn, mn if mn in names else None)
        assert ours == theirs, (hex(addr), mnemonic, ops, data[off:off + size].hex())
        if ours:
            seen[ours] = seen.get(ours, 0) + 1
    assert {"wrmsr", "rdmsr", "hlt", "mov to %cr3", "out", "int3"} <= set(seen)
    for cpu in ("none", "erms", "skylake-sp"):
        c = parse_cpu(cpu)
        r = debian_target(version, cpu=c).routine_for(None, c)
        t = built_target(str(vmlinux(version)), linked=True, cpu=c, routine=r.name)
        fn = t.image.symbol(r.name)
        assert not [a for a in t.machine._system if fn.addr <= a < fn.addr + fn.size]

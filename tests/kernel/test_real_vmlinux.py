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

from dataclasses import replace

from emu.build.objects import built_target, kernel_version, open_linked
from emu.cli.main import main
from emu.core.machine import Buffers
from emu.errors import UsageError
from emu.kernel.decode import att_disassembler
from emu.kernel.eras import parse_cpu
from emu.kernel.helpers import HelperResult
from emu.kernel.policy import Severity
from emu.runs import census, codediff

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


# ---- other user-access routines: clear_user, put_user, get_user (issue 14, item 5) --------

#: Per release: the file and the routines of each convention the tests run from the image.
HELPERS = {
    "6.1": {"clear_page_64.S": ("clear_user_original", "clear_user_rep_good", "clear_user_erms"),
            "putuser.S": ("__put_user_1", "__put_user_8", "__put_user_nocheck_8"),
            "getuser.S": ("__get_user_1", "__get_user_8", "__get_user_nocheck_8")},
    "6.12": {"clear_page_64.S": ("rep_stos_alternative",),
             "putuser.S": ("__put_user_1", "__put_user_8", "__put_user_nocheck_8"),
             "getuser.S": ("__get_user_1", "__get_user_8", "__get_user_nocheck_8")},
}
#: clear_user cases: clean, #PF on a page boundary (aligned and not), #PF inside a short
#: clear, a 7-byte clear ending in an absent page, and a poisoned line (a store: no #MC).
CLEAR_CASES = [Buffers(length=4096, src_align=0x7E0), Buffers(length=4096, src_align=0x7E0,
               unmapped=(0x820,)), Buffers(length=4096, src_align=0x7E3, unmapped=(0x900,)),
               Buffers(length=100, src_align=0xFC1, unmapped=(0x60,)),
               Buffers(length=7, src_align=0xFFD, unmapped=(6,)),
               Buffers(length=63, src_align=5), Buffers(length=4096, poison=(0x960,))]


def helper_cases(size: int) -> list[Buffers]:
    """A get_user / put_user helper: aligned, odd, straddling a page (the second page
    absent), absent at the first byte, and poisoned."""
    return [Buffers(length=size, src_align=a) for a in (0, 0x7E3)] + [
        Buffers(length=size, src_align=0x1000 - max(size // 2, 1), unmapped=(size - 1,)),
        Buffers(length=size, src_align=0x10, unmapped=(0,)),
        Buffers(length=size, src_align=0x7E0, poison=(0,))]


def result(o):  # type: ignore[no-untyped-def]
    if isinstance(o, HelperResult):
        return (o.state, o.err, o.value, o.expected, o.before, o.written_outside, o.verdict,
                [(f.kind, f.handler, f.action) for f in o.faults])
    return behaviour(o) + (o.written_outside,)


@pytest.mark.parametrize("cpu", CPUS)
@pytest.mark.parametrize("version", ["6.1", "6.12"])
def test_clear_put_and_get_user_in_the_image_give_the_sources_answers(version: str,
                                                                      cpu: str) -> None:
    c = parse_cpu(cpu)
    for name, routines in HELPERS[version].items():
        src = debian_target(version, name, cpu=c)
        for routine in routines:
            t = built_target(str(vmlinux(version)), linked=True, cpu=c, routine=routine)
            r = t.routine_for(routine)
            assert r == src.routine_for(routine) and r.convention.name in (
                "clear", "put_user", "get_user")
            cases = CLEAR_CASES if r.size is None else helper_cases(r.size)
            for b in cases:
                got, want = t.call(r, b), src.call(r, b)
                assert result(got) == result(want), (routine, cpu, b)
                assert (got.state.value, got.verdict) == ("returned", "ok"), (routine, cpu, b)


@pytest.mark.parametrize("version", ["6.1", "6.12"])
def test_helpers_under_mc_do_what_the_images_own_severity_code_says(version: str) -> None:
    """The census runs the image's own error_context() on every __ex_table entry.  Where it
    grades a helper's access as a recoverable user load (get_user), emu's run of the helper
    with the line poisoned recovers with -EFAULT; where the access is a user store
    (clear_user, put_user), the store consumes no poison and emu takes no #MC."""
    lf = open_linked(str(vmlinux(version)))
    sites, rules = census.census(lf, kernel_version(lf))
    assert rules.name == "image"
    names = {r for rs in HELPERS[version].values() for r in rs}
    graded = {s.function: s for s in sites if s.function in names}
    assert graded.keys() == names - {"__put_user_nocheck_8"} or graded.keys() == names
    c = parse_cpu("skylake-sp")
    for name, site in graded.items():
        t = built_target(str(vmlinux(version)), linked=True, cpu=c, routine=name)
        r = t.routine_for(name)
        b = Buffers(length=r.size or 4096, src_align=0x7E0, poison=(0,))
        got = t.call(r, b)
        mcs = [f for f in got.faults if f.kind == "mc"]
        if site.touches == "user load":
            assert site.mc == "recovers" and r.convention.name == "get_user"
            assert len(mcs) == 1 and mcs[0].action == "fixup"
            assert (got.state.value, got.err, got.verdict) == ("returned", -14, "ok")
        else:
            assert site.touches == "user store" and r.convention.name in ("clear", "put_user")
            assert mcs == [] and got.verdict == "ok"


@pytest.mark.parametrize("version", ["6.1", "6.12"])
def test_clear_user_routine_the_cpu_selects(version: str) -> None:
    """__clear_user()'s ALTERNATIVE (uaccess_64.h) picks the same routine from the image's
    and from the source's routines; on a CPU where it is an inline rep stosb, both refuse."""
    for cpu in CPUS:
        c = parse_cpu(cpu)
        src = debian_target(version, "clear_page_64.S", cpu=c)
        inline = ("FSRS" if version == "6.12" else "FSRM") in c
        if inline:
            with pytest.raises(UsageError, match="inline rep stosb"):
                src.routine_for(None, c)
            continue
        r = src.routine_for(None, c)
        assert r.name in HELPERS[version]["clear_page_64.S"]
        t = built_target(str(vmlinux(version)), linked=True, cpu=c, routine=r.name)
        assert t.call(r, CLEAR_CASES[1]).return_value == src.call(r, CLEAR_CASES[1]).return_value


# ---- the code of the image against the source's (issue 14, item 3) ------------------------

@pytest.mark.parametrize("version", ["6.1", "6.12"])
def test_code_comparison_finds_a_changed_instruction_in_the_image(version: str) -> None:
    """The image's routine against itself is the same; with one immediate changed in its
    bytes, exactly that instruction differs, at its offset."""
    c = parse_cpu("none")
    routine = "copy_user_generic_unrolled" if version == "6.1" else "rep_movs_alternative"
    img = built_target(str(vmlinux(version)), linked=True, cpu=c, routine=routine).image
    assert codediff.compare(img, img, routine).same
    insn = next(i for i in codediff.stream(img, routine) if i.text.startswith("cmp")
                and "$" in i.text)
    addr = img.symbol(routine).addr + insn.offset
    sec = next(s for s in img.sections if s.addr <= addr < s.end)
    data = bytearray(sec.data)
    size = next(x for x in att_disassembler().disasm(img.read(addr, 16), addr, 1)).size
    imm = addr - sec.addr + size - 1                              # its last byte: the imm8
    data[imm] ^= 1
    changed = replace(img, sections=tuple(replace(s, data=bytes(data)) if s is sec else s
                                          for s in img.sections))
    d = codediff.compare(changed, img, routine)
    assert (d.differing, d.padding) == (1, 0) and d.places[0][0] == insn.offset
    assert d.places[0][1] != d.places[0][2] and d.cell() == "differs (1)"


@pytest.mark.parametrize("version", ["6.1", "6.12"])
def test_emu_diff_of_image_and_source_has_a_code_column(version: str) -> None:
    out = io.StringIO()
    assert main(["diff", f"debian:{version}", f"vmlinux:{vmlinux(version)}", "--len", "4096",
                 "--src-align", "0x7e0", "--poison", "0x960", "--json"], out) == 0
    rows = json.loads(out.getvalue())["rows"]
    assert rows[0]["code"] == "reference"
    code = rows[1]["code"]
    assert code["routine"] == rows[1]["routine"] == rows[0]["routine"]
    assert code["same"] == (code["differing"] == code["padding"] == 0)
    assert len(code["places"]) <= code["differing"]
    text = io.StringIO()
    assert main(["diff", f"debian:{version}", f"vmlinux:{vmlinux(version)}", "--len", "4096",
                 "--src-align", "0x7e0", "--poison", "0x960"], text) == 0
    assert "code: vmlinux (" in text.getvalue() and f"vs debian-{version}:" in text.getvalue()


def test_run_clear_user_from_the_image_cli(capsys) -> None:  # type: ignore[no-untyped-def]
    out = io.StringIO()
    assert main(["run", "--vmlinux", str(vmlinux("6.1")), "--routine", "clear_user_rep_good",
                 "--len", "4096", "--poison", "0x960", "--json"], out) == 0
    doc = json.loads(out.getvalue())
    assert (doc["convention"], doc["verdict"], doc["return_value"], doc["mc_count"]) == (
        "clear", "ok", 0, 0)
    assert main(["run", "--vmlinux", str(vmlinux("6.12")), "--routine", "vfs_read",
                 "--len", "8"], io.StringIO()) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--convention" in err and "put_user" in err


@pytest.mark.parametrize("version", ["6.1", "6.12"])
def test_an_image_is_judged_by_its_release_s_mce_rules_not_its_copy_routine_era_s(
        version: str) -> None:
    """`emu run --vmlinux` on a stable kernel: the #MC rules follow the image's release (its
    banner; Debian 6.1.192 and 6.12.118 carry the 2025 fix), not the era its copy routine
    matches (v5.17).  They are the rules the same release's source reads from its own
    severity.c, found independently; `--era` and `--mce-rules` still override."""
    c = parse_cpu("none")
    img = built_target(str(vmlinux(version)), linked=True, cpu=c)
    from emu.build.resolve import parse_spec, resolve
    src = resolve(parse_spec(f"debian:{version}"), c)
    assert "severity.c" in src.rules.how
    assert img.rules.severity is src.rules.severity
    assert img.rules.severity is not img.era.severity          # the era alone would differ
    assert "table of releases" in img.rules.how and img.version.describe() in img.rules.how
    forced = built_target(str(vmlinux(version)), linked=True, cpu=c, era=img.era.key)
    assert forced.rules.severity is img.era.severity
    assert built_target(str(vmlinux(version)), linked=True, cpu=c,
                        severity=Severity.V5_17).rules.severity is Severity.V5_17

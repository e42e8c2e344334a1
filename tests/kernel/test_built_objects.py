"""--object and --vmlinux on objects built here from Debian's real sources with gcc and ld.

The relocatable objects are what ``gcc -c`` makes of the real copy_user_64.S / getuser.S with
emu's headers (kbuild-style .o: __ex_table as PC32 relocations).  The linked images come from
GNU ld with a small linker script placing .text at the kernel's base, so __ex_table is resolved
relative to each field's address as in a vmlinux.  Handler-pointer (<= v5.15) images are
built from emu's own era C source plus a project-written stub that defines ex_handler_*.
"""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pytest

from emu.build.assemble import AsmConfig, GasAssembler
from emu.cli.main import main
from emu.kernel.eras import ERAS
from emu.core.machine import Buffers
from emu.build.objects import built_target

from debian_sources import debian, debian_target

ROOT = Path(__file__).resolve().parents[2]
LDS = """SECTIONS
{
  . = 0xffffffff81000000;
  .text : { *(.text) *(.text.*) *(.fixup) }
  . = ALIGN(16);
  __ex_table : { *(__ex_table) }
  .data : { *(.data) *(.bss) }
}
"""
HANDLERS = "".join(f"\t.globl {h}\n\t.type {h}, @function\n{h}:\tret\n" for h in (
    "ex_handler_default", "ex_handler_uaccess", "ex_handler_copy", "ex_handler_fault"))
CASES = [Buffers(length=n, src_align=a, poison=(p,)) for n in (4096, 100) for a in (0, 0x7E4)
         for p in (1, n // 2, n - 1)] + [Buffers(length=4096, src_align=0x7E0,
                                                 unmapped=(0x820,))]


def behaviour(o):  # type: ignore[no-untyped-def]
    return (o.state, o.return_value, o.bytes_copied, o.written_beyond, o.mc_count,
            o.pf_count, o.retouched, o.violations, [f.handler for f in o.faults])


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("built")
    gas = GasAssembler()
    (d / "link.lds").write_text(LDS)
    (d / "handlers.S").write_text("\t.text\n" + HANDLERS)
    subprocess.run(["gcc", "-c", str(d / "handlers.S"), "-o", str(d / "handlers.o")],
                   check=True)
    out: dict[str, Path] = {}
    srcs = {"cu61": (debian("6.1").read_text(), ERAS["E"]),
            "cu612": (debian("6.12").read_text(), ERAS["F"]),
            "gu612": (debian("6.12", "getuser.S").read_text(), ERAS["F"]),
            "eraC": ((ROOT / "asm" / "era-C.S").read_text(), ERAS["C"])}
    for key, (text, era) in srcs.items():
        obj = d / f"{key}.o"
        obj.write_bytes(gas.assemble(text, AsmConfig(int(era.encoding), era.ex_layout,
                                                     frozenset()), f"{key}.S"))
        exe = d / f"{key}.vmlinux"
        subprocess.run(["ld", "-z", "noexecstack", "-T", str(d / "link.lds"), "-o", str(exe),
                        str(d / "handlers.o"), str(obj)], check=True)
        out[key], out[key + ".vmlinux"] = obj, exe
    return out


@pytest.mark.parametrize("linked", [False, True])
@pytest.mark.parametrize("routine", ["copy_user_generic_unrolled", "copy_user_generic_string",
                                     "copy_user_enhanced_fast_string", "__copy_user_nocache"])
def test_61_object_and_vmlinux_behave_like_the_source(built, linked: bool,  # type: ignore[no-untyped-def]
                                                     routine: str) -> None:
    path = built["cu61.vmlinux" if linked else "cu61"]
    t = built_target(str(path), linked=linked, cpu=frozenset())
    assert t.detection.era.key == "E"
    src = debian_target("6.1")
    r = src.routine_for(routine, frozenset())
    assert t.routine_for(routine, frozenset()) == r
    for b in CASES:
        assert behaviour(t.run(r, b)) == behaviour(src.run(r, b)), b


@pytest.mark.parametrize("linked", [False, True])
def test_612_object_and_vmlinux_behave_like_the_source(built, linked: bool) -> None:  # type: ignore[no-untyped-def]
    t = built_target(str(built["cu612.vmlinux" if linked else "cu612"]), linked=linked,
                     cpu=frozenset())
    assert t.detection.era.key == "F"
    src = debian_target("6.12")
    r = t.routine_for(None, frozenset())
    assert r.name == "rep_movs_alternative" and r.caller_stac
    for b in CASES:
        assert behaviour(t.run(r, b)) == behaviour(src.run(r, b)), b


def test_vmlinux_selects_the_entries_of_the_chosen_routine(built) -> None:  # type: ignore[no-untyped-def]
    whole = built_target(str(built["cu61.vmlinux"]), linked=True, cpu=frozenset())
    one = built_target(str(built["cu61.vmlinux"]), linked=True, cpu=frozenset(),
                       routine="copy_user_enhanced_fast_string")
    assert 0 < len(one.image.extable) < len(whole.image.extable)
    lo = min(s.addr for s in one.image.sections)
    hi = max(s.end for s in one.image.sections)
    assert all(lo <= e.insn < hi and lo <= e.fixup < hi for e in one.image.extable)

    def own(t):  # type: ignore[no-untyped-def]
        sym = t.image.symbol("copy_user_enhanced_fast_string")
        return [(e.insn - sym.addr, e.fixup - sym.addr, e.type)
                for e in t.image.extable.within(sym.addr, sym.addr + sym.size)]
    assert own(one) == own(whole) != []
    r = one.routine_for("copy_user_enhanced_fast_string", frozenset())
    o = one.run(r, Buffers(length=4096, src_align=0x7E0, poison=(0x960,)))
    assert o.return_value == 4096 - 0x960


@pytest.mark.parametrize("linked", [False, True])
def test_handler_pointer_encoding_resolves_ex_handler_names(built, linked: bool) -> None:  # type: ignore[no-untyped-def]
    t = built_target(str(built["eraC.vmlinux" if linked else "eraC"]), linked=linked,
                     cpu=frozenset())
    assert t.detection.era.key == "C"
    assert {e.handler for e in t.image.extable} == {"ex_handler_copy"}
    o = t.run(t.routine_for(None, frozenset()),
              Buffers(length=4096, src_align=0x7E0, poison=(0x960,)))
    assert o.return_value == 0 and [f.handler for f in o.faults] == ["ex_handler_copy"]


@pytest.mark.parametrize("linked", [False, True])
def test_getuser_object_reads_or_returns_efault(built, linked: bool) -> None:  # type: ignore[no-untyped-def]
    t = built_target(str(built["gu612.vmlinux" if linked else "gu612"]), linked=linked,
                     cpu=frozenset())
    g = t.routine_for("__get_user_4")
    ok = t.call(g, Buffers(length=4, src_align=8))
    assert (ok.err, ok.verdict) == (0, "ok")
    mc = t.call(g, Buffers(length=4, src_align=8, poison=(0,)))
    assert (mc.err, mc.value, mc.verdict) == (-14, 0, "ok")


def test_cli_object_and_vmlinux(built, capsys) -> None:  # type: ignore[no-untyped-def]
    rows = []
    for opt, key in (("--object", "cu61"), ("--vmlinux", "cu61.vmlinux")):
        out = io.StringIO()
        assert main(["run", opt, str(built[key]), "--cpu", "erms", "--src-align", "0x7e0",
                     "--poison", "0x960", "--json"], out) == 0
        rows.append(json.loads(out.getvalue()))
    assert [r["variant"] for r in rows] == ["cu61.o (E)", "cu61.vmlinux (E)"]
    assert {r["routine"] for r in rows} == {"copy_user_enhanced_fast_string"}
    assert {r["return_value"] for r in rows} == {4096 - 0x960}
    out = io.StringIO()
    assert main(["run", "--vmlinux", str(built["cu61"])], out) == 2
    assert "is not a linked kernel image" in capsys.readouterr().err


def _kbuild_object(text: str, era, out: Path) -> Path:  # type: ignore[no-untyped-def]
    """gcc -c with the ALTERNATIVE sites left for boot-time patching (-DEMU_ALT_KBUILD=1)."""
    src = out.with_suffix(".S")
    src.write_text(text)
    cmd = ["gcc", "-c", "-x", "assembler-with-cpp", "-nostdinc", "-I", str(ROOT / "asm" / "include"),
           "-D__ASSEMBLY__", "-D__KERNEL__", "-DCONFIG_X86_64", "-DCONFIG_64BIT",
           *AsmConfig(int(era.encoding), era.ex_layout, frozenset()).defines(),
           "-DEMU_ALT_KBUILD=1", "-o", str(out), str(src)]
    subprocess.run(cmd, check=True)
    return out


@pytest.mark.parametrize("cpu", ["none", "erms", "fsrm"])
@pytest.mark.parametrize("which", ["debian-6.12", "era-F"])
def test_altinstructions_are_patched_for_the_cpu(tmp_path: Path, which: str, cpu: str) -> None:
    from emu.kernel.eras import CPUS
    from emu.build.resolve import source_target as kernel_target
    from emu.build.sources import Source
    text = (debian("6.12").read_text() if which == "debian-6.12"
            else (ROOT / "asm" / "era-F.S").read_text())
    obj = _kbuild_object(text, ERAS["F"], tmp_path / f"{which}.o")
    t = built_target(str(obj), linked=False, cpu=CPUS[cpu])
    assert any(s.name == ".altinstructions" for s in t.image.sections)
    sites = 1 if which == "debian-6.12" else 2
    patched = {"none": 0, "erms": 1, "fsrm": sites}[cpu]
    assert f"{patched} ALTERNATIVE site(s) patched for this CPU" in t.detection.evidence
    ref = kernel_target(Source(text, which, which), CPUS[cpu])   # resolved when assembled
    r = t.routine_for(None, CPUS[cpu])
    assert r == ref.routine_for(None, CPUS[cpu])
    for b in CASES:
        assert behaviour(t.run(r, b)) == behaviour(ref.run(r, b)), (cpu, b)

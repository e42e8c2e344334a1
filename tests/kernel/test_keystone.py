"""The keystone backend against GNU as, byte for byte (unicorn-notes §5).

Every bundled source (asm/*.S, asm/examples/*.S) and every Debian kernel file the tests use is
assembled by both backends for two CPU selections; the code bytes, the section layout, the
exception table and the function symbols must be identical.  A difference is reported with
its offset and the bytes of both, and the backend's own cross-check refuses such an input.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from emu.build.assemble import AsmConfig, GasAssembler
from emu.cli.main import main
from emu.build.detect import detect
from emu.errors import AssembleError
from emu.build.elf import load_object
from emu.build.keystone import KeystoneAssembler, _run_keystone, compare

from debian_sources import debian

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = sorted((ROOT / "asm").glob("*.S")) + sorted((ROOT / "asm" / "examples").glob("*.S"))
DEBIAN = [(v, f) for v in ("6.1", "6.12") for f in ("copy_user_64.S", "copy_mc_64.S",
                                                    "getuser.S")]
CPUS = [frozenset(), frozenset({"REP_GOOD", "ERMS", "FSRM"})]


def both(text: str, name: str, cpu: frozenset[str]):  # type: ignore[no-untyped-def]
    era = detect(text).era
    cfg = AsmConfig(int(era.encoding), era.ex_layout, cpu)
    ks = KeystoneAssembler(check=False).assemble_image(text, cfg, name, encoding=era.encoding,
                                                       layout_id=era.ex_layout)
    gas = load_object(GasAssembler().assemble(text, cfg, name), encoding=era.encoding,
                      layout_id=era.ex_layout, name=name)
    return ks, gas


def assert_same(ks, gas, what: str) -> None:  # type: ignore[no-untyped-def]
    diff = compare(ks, gas)
    assert diff == "", f"KEYSTONE DIFFERS FROM GNU AS for {what}: {diff}"
    assert len(ks.extable) > 0
    funcs = {(s.name, s.addr, s.size) for s in gas.functions()}
    assert funcs <= {(s.name, s.addr, s.size) for s in ks.symbols.values()}, what


@pytest.mark.parametrize("cpu", CPUS, ids=["none", "fsrm"])
@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.name)
def test_bundled_sources_match_gas_byte_for_byte(path: Path, cpu: frozenset[str]) -> None:
    ks, gas = both(path.read_text(), path.name, cpu)
    assert_same(ks, gas, f"{path.name} cpu={sorted(cpu)}")


@pytest.mark.parametrize("cpu", CPUS, ids=["none", "fsrm"])
@pytest.mark.parametrize("version, name", DEBIAN)
def test_debian_kernel_files_match_gas_byte_for_byte(version: str, name: str,
                                                     cpu: frozenset[str]) -> None:
    ks, gas = both(debian(version, name).read_text(), name, cpu)
    assert_same(ks, gas, f"Debian {version} {name} cpu={sorted(cpu)}")


def test_preprocessing_covers_each_keystone_trap() -> None:
    # decimals (keystone reads 63 as 0x63), numeric labels, a section switch, .rept, .irp
    text = ("#include <linux/linkage.h>\n#include <asm/asm.h>\n"
            "SYM_FUNC_START(f)\n\tandl $63,%edx\n1:\tleaq 64(%rsi),%rsi\n"
            "\t.rept 3\n\tnop\n\t.endr\n\t.irp r,8,9\n\tmovq %r\\r,%rax\n\t.endr\n"
            "2:\tmovb (%rsi),%al\n\tjnz 1b\n\t.section .fixup,\"ax\"\n3:\tmovl $200,%eax\n"
            "\tjmp 2b\n\t.previous\n\t_ASM_EXTABLE_UA(2b, 3b)\n\tret\nSYM_FUNC_END(f)\n")
    ks, gas = both(text, "traps.S", frozenset())
    assert_same(ks, gas, "traps.S")
    assert {s.name for s in ks.sections} == {".text", ".fixup"}


def test_a_known_misencoding_is_refused() -> None:
    text = "#include <linux/linkage.h>\nSYM_FUNC_START(f)\n\tmovq %gs:0x10,%rax\n\tret\n" \
           "SYM_FUNC_END(f)\n"
    with pytest.raises(AssembleError, match="RIP-relative"):
        KeystoneAssembler(check=False).assemble_image(
            text, AsmConfig(), "gs.S", encoding=detect(text).era.encoding, layout_id=517)


def test_a_difference_from_gas_is_refused_loudly() -> None:
    # keystone encodes "nopl 0(%rax)" as a hint NOP (0f 18 20); gas as 0f 1f 00
    text = "#include <linux/linkage.h>\nSYM_FUNC_START(f)\n\tnopl 0(%rax)\n\tret\n" \
           "SYM_FUNC_END(f)\n"
    with pytest.raises(AssembleError, match=r"differs from GNU as \(\.text\+0x1 \(f\+0x1\): "
                                            r"keystone 1820c3 vs gas 1f00c3\); refusing"):
        KeystoneAssembler(check=True).assemble_image(text, AsmConfig(), "nop.S",
                                                     encoding=detect(text).era.encoding,
                                                     layout_id=517)


def test_a_keystone_crash_is_an_error_not_a_dead_process() -> None:
    with pytest.raises(AssembleError, match="keystone crashed"):
        _run_keystone([(".text\nnop\n.section .a\nL1: nop\n.text\n.long L1 - .\n", 0)], {},
                      "crash.S")


def test_cli_keystone_gives_the_same_outcome_as_gas(capsys) -> None:  # type: ignore[no-untyped-def]
    outs = []
    for asm in ("gas", "keystone"):
        out = io.StringIO()
        assert main(["run", "debian:6.1", "--src-align", "0x7e0", "--poison", "0x960",
                     "--assembler", asm, "--json"], out) == 0
        outs.append(json.loads(out.getvalue()))
    assert outs[0] == outs[1] and outs[0]["return_value"] == 4096 - 0x940

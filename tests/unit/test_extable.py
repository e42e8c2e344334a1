"""__ex_table decoding in both encodings, checked against binutils' own reading of the object.

``readelf -rW`` lists the relocations of ``.rela__ex_table``: the insn and fixup fields are
PC32 relocations against ``.text`` (or another section) plus an addend, and in the handler
encoding the third field is a relocation against the handler symbol.  ``readelf -x`` dumps
the raw third word of the data encodings.  Our loader must agree with both.
"""

from __future__ import annotations

import re
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from emu.build.assemble import AsmConfig, get_assembler
from emu.kernel.extable import Encoding, ExType, decode
from emu.build.elf import load_object
from tests.conftest import EXAMPLES

REL = re.compile(r"^([0-9a-f]+)\s+[0-9a-f]+\s+(R_X86_64_\w+)\s+[0-9a-f]+\s+(\S+)\s*([+-])\s*([0-9a-f]+)")


def readelf_relocs(obj: bytes) -> dict[int, tuple[str, int]]:
    with tempfile.NamedTemporaryFile(suffix=".o") as f:
        f.write(obj)
        f.flush()
        out = subprocess.run(["readelf", "-rW", f.name], capture_output=True, text=True,
                             check=True, env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"}).stdout
    section = out.split("Relocation section '.rela__ex_table'")[1].split("Relocation section")[0]
    rel: dict[int, tuple[str, int]] = {}
    for line in section.splitlines():
        m = REL.match(line.strip())
        if m:
            add = int(m[5], 16) * (-1 if m[4] == "-" else 1)
            rel[int(m[1], 16)] = (m[3], add)
    return rel


@pytest.mark.parametrize("encoding, layout", [(Encoding.HANDLER, 516), (Encoding.TYPE, 516),
                                              (Encoding.DATA, 517)])
def test_entries_match_readelf(encoding: Encoding, layout: int) -> None:
    text = EXAMPLES.read_text()
    obj = get_assembler().assemble(text, AsmConfig(int(encoding), layout), EXAMPLES.name)
    img = load_object(obj, encoding=encoding, layout_id=layout, name=EXAMPLES.name)
    rel = readelf_relocs(obj)
    sec = {s.name: s.addr for s in img.sections}
    raw_third = _raw_extable(obj)
    expected = []
    for off in range(0, 12 * len(raw_third), 12):
        insn_sym, insn_add = rel[off]
        fix_sym, fix_add = rel[off + 4]
        insn = sec[insn_sym] + insn_add
        fixup = sec[fix_sym] + fix_add
        if encoding is Encoding.HANDLER:
            handler = rel[off + 8][0]
            assert off + 8 in rel
            expected.append((insn, fixup, handler))
        else:
            assert off + 8 not in rel            # data, not a relocation
            expected.append((insn, fixup, raw_third[off // 12]))
    expected.sort()
    got = []
    for e in img.extable:
        got.append((e.insn, e.fixup, e.handler if encoding is Encoding.HANDLER else e.data))
    assert got == expected
    types = {e.type for e in img.extable}
    assert types == {ExType.UACCESS, ExType.FAULT}


def _raw_extable(obj: bytes) -> list[int]:
    from elftools.elf.elffile import ELFFile
    import io
    data = ELFFile(io.BytesIO(obj)).get_section_by_name("__ex_table").data()
    return [struct.unpack_from("<I", data, o + 8)[0] for o in range(0, len(data), 12)]


def test_data_word_fields() -> None:
    # EX_TYPE_EFAULT_REG on %rdx: type 17, reg 2, imm -14  (0xfff20211)
    e = decode(Encoding.DATA, 517, 0x10, 0x20, 0xFFF20211)
    assert (e.type, e.reg_name, e.imm, e.flags) == (ExType.IMM_REG, "rdx", -14, 0)
    assert e.type_name == "EX_TYPE_EFAULT_REG"
    e = decode(Encoding.DATA, 517, 0x10, 0x20, 0x3001)      # DEFAULT + CLEAR_AX|CLEAR_DX
    assert (e.type, e.flags) == (ExType.DEFAULT, 3)


def test_type_numbering_differs_between_layouts() -> None:
    assert decode(Encoding.TYPE, 516, 0, 0, 12).type is ExType.DEFAULT_MCE_SAFE
    assert decode(Encoding.DATA, 517, 0, 0, 14).type is ExType.DEFAULT_MCE_SAFE
    assert decode(Encoding.DATA, 610, 0, 0, 4).type is ExType.OTHER   # "unused, was COPY"
    assert decode(Encoding.DATA, 517, 0, 0, 4).type is ExType.COPY


def test_header_register_macro_encodes_every_width(tmp_path: Path) -> None:
    src = "#include <asm/asm.h>\n" + "".join(
        f"{i}: nop\n _ASM_EXTABLE_TYPE_REG({i}b, {i}b, EX_TYPE_ZERO_REG, %{r})\n"
        for i, r in enumerate(["rcx", "r9d", "si", "r15b"], 1))
    obj = get_assembler().assemble(src, AsmConfig(3, 517), "regs.S")
    img = load_object(obj, encoding=Encoding.DATA, layout_id=517)
    assert [e.reg_name for e in img.extable] == ["rcx", "r9", "rsi", "r15"]
    assert {e.type_name for e in img.extable} == {"EX_TYPE_ZERO_REG"}

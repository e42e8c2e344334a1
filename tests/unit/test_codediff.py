"""emu.runs.codediff: a routine's code in two images, placement normalised away.

Each case assembles two small routines written for this test that differ in one known way,
and checks that the comparison finds exactly that difference (or none, for differences that
are only placement)."""

from __future__ import annotations

import pytest

from emu.build.target import Settings, assemble_image
from emu.kernel.extable import Encoding
from emu.kernel.image import Image
from emu.kernel.severity import Severity
from emu.runs.codediff import compare, stream

HEAD = "#include <linux/linkage.h>\n"
BASE = """SYM_FUNC_START(f)
{pre}	cmpq ${limit},%rcx
	jae {jae}
	movb (%rsi),%al
	movb %al,(%rdi)
{pad}1:	xorl %eax,%eax
2:	ret
SYM_FUNC_END(f)
SYM_FUNC_START(g)
	call f
	ret
SYM_FUNC_END(g)
"""


def image(name: str, *, pre: str = "", limit: int = 64, jae: str = "1f", pad: str = "",
          before: str = "") -> Image:
    text = HEAD + before + BASE.format(pre=pre, limit=limit, jae=jae, pad=pad)
    return assemble_image(text, name, Settings(Encoding.DATA, 517, Severity.V5_17),
                          frozenset({"SMAP"}))


@pytest.fixture(scope="module")
def base() -> Image:
    return image("base.S")


def test_a_routine_equals_itself(base: Image) -> None:
    d = compare(base, base, "f")
    assert d.same and d.cell() == "same" and d.instructions == 6


def test_code_placed_elsewhere_is_the_same(base: Image) -> None:
    """Another function before it moves every address; targets compare by landing place."""
    moved = image("moved.S", before="SYM_FUNC_START(h)\n\tnop\n\tnop\n\tret\nSYM_FUNC_END(h)\n")
    assert moved.symbol("f").addr != base.symbol("f").addr
    assert compare(moved, base, "f").same
    assert compare(moved, base, "g").same          # a call to f, wherever f is


def test_alignment_padding_is_reported_as_padding_only(base: Image) -> None:
    padded = image("padded.S", pad="\t.p2align 4\n")
    d = compare(padded, base, "f")
    assert (d.differing, d.cell()) == (0, "padding") and d.padding >= 1
    assert d.places == ()


def test_an_inserted_endbr64_is_one_instruction_at_the_entry(base: Image) -> None:
    ibt = image("ibt.S", pre="\tendbr64\n")
    d = compare(ibt, base, "f")
    assert (d.differing, d.padding, d.cell()) == (1, 0, "differs (1)")
    assert d.places == ((0, "endbr64", ""),)
    assert compare(base, ibt, "f").places == ((0, "", "endbr64"),)


def test_a_changed_immediate_is_found_where_it_is(base: Image) -> None:
    other = image("other.S", limit=65)
    d = compare(other, base, "f")
    assert d.differing == 1
    assert d.places == ((0, "cmpq $0x41, %rcx", "cmpq $0x40, %rcx"),)


def test_a_branch_that_lands_elsewhere_differs(base: Image) -> None:
    other = image("other.S", jae="2f")                 # skips the xorl
    d = compare(other, base, "f")
    jae = next(i for i in stream(other, "f") if i.text.startswith("jae"))
    assert d.differing == 1 and d.places[0][0] == jae.offset


def test_a_near_jump_to_the_same_place_is_the_same(base: Image) -> None:
    """The image's jump may be encoded otherwise (rel32 where the source has rel8)."""
    near = image("near.S", jae="1f")
    text = HEAD + BASE.format(pre="", limit=64, jae="1f", pad="").replace(
        "\tjae 1f\n", "\t.byte 0x0f, 0x83\n\t.long 1f - . - 4\n")
    near = assemble_image(text, "near.S", Settings(Encoding.DATA, 517, Severity.V5_17),
                          frozenset({"SMAP"}))
    jae = stream(base, "f")[1].offset
    assert base.read(base.symbol("f").addr + jae, 1) == b"\x73"            # jae rel8
    assert near.read(near.symbol("f").addr + jae, 2) == b"\x0f\x83"       # jae rel32
    assert compare(near, base, "f").same

"""Bad input, table-driven (issue 9): every case gives exactly one line on stderr, names what
is wrong and where (file:line, symbol, offset, revision), exits 2, and never a traceback.

Cases that need files build them in tmp_path; none touches anything the user owns.
"""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from emu.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = str(ROOT / "asm" / "examples" / "test_routines.S")
HEADER = "#include <linux/linkage.h>\n#include <asm/asm.h>\n"


def write(name: str, text: str | bytes) -> Callable[[Path], str]:
    def make(tmp: Path) -> str:
        p = tmp / name
        if isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(text)
        return str(p)
    return make


def assemble(name: str, text: str) -> Callable[[Path], str]:
    """A relocatable object built by gcc from a small project-written source."""
    def make(tmp: Path) -> str:
        src = tmp / (name + ".S")
        src.write_text(text)
        obj = tmp / (name + ".o")
        subprocess.run(["gcc", "-c", "-x", "assembler-with-cpp", "-I",
                        str(ROOT / "asm" / "include"), str(src), "-o", str(obj)], check=True)
        return str(obj)
    return make


def truncated_object(tmp: Path) -> str:
    obj = Path(assemble("whole", HEADER + "SYM_FUNC_START(f)\n\tret\nSYM_FUNC_END(f)\n")(tmp))
    cut = tmp / "cut.o"
    cut.write_bytes(obj.read_bytes()[:200])
    return str(cut)


def foreign_object(tmp: Path) -> str:
    obj = Path(assemble("x86", HEADER + "SYM_FUNC_START(f)\n\tret\nSYM_FUNC_END(f)\n")(tmp))
    data = bytearray(obj.read_bytes())
    data[18:20] = (183).to_bytes(2, "little")          # e_machine = EM_AARCH64
    arm = tmp / "arm.o"
    arm.write_bytes(bytes(data))
    return str(arm)


def git_tree(tmp: Path) -> str:
    subprocess.run([str(ROOT / "scripts" / "demo-tree"), str(tmp / "tree")], check=True,
                   capture_output=True)
    return str(tmp / "tree")


def stale_patch(tmp: Path) -> str:
    p = tmp / "stale.diff"
    p.write_text("--- a/asm/era-E.S\n+++ b/asm/era-E.S\n@@ -1,3 +1,3 @@\n-this line\n"
                 "+that line\n context that is not in the file\n context\n")
    return str(p)


DUP = HEADER + """SYM_FUNC_START(f)
	ASM_STAC
1:	movb (%rsi),%al
2:	ASM_CLAC
	RET
	_ASM_EXTABLE_UA(1b, 2b)
	_ASM_EXTABLE_UA(1b, 2b)
SYM_FUNC_END(f)
"""
OUTSIDE = HEADER + """SYM_FUNC_START(f)
	ASM_STAC
1:	movb (%rsi),%al
2:	ASM_CLAC
	RET
SYM_FUNC_END(f)
	.data
3:	.long 0
	_ASM_EXTABLE_UA(3b, 2b)
"""

# (id, argv with {0} for the made path, maker or None, what the line must say)
CASES: list[tuple[str, list[str], Callable[[Path], str] | None, str]] = [
    ("malformed assembly", ["run", "{0}", "--routine", "f"],
     write("bad.S", HEADER + "SYM_FUNC_START(f)\n\tmovq %rax,\n\tret\n"), "bad.S:4:"),
    ("unknown kernel macro", ["run", "{0}", "--routine", "f"],
     write("macro.S", HEADER + "SYM_FUNC_START(f)\n\tFROBNICATE_USER(1b)\n\tret\n"),
     "unknown macro 'FROBNICATE_USER'"),
    ("missing routine symbol", ["run", EXAMPLES, "--routine", "nope"], None, "no symbol 'nope'"),
    ("empty file", ["run", "{0}", "--routine", "f"], write("empty.S", ""), "empty file"),
    ("binary garbage as .S", ["run", "{0}", "--routine", "f"],
     write("garbage.S", bytes(range(128, 256)) * 3), "not a text assembly source"),
    ("a directory as the source", ["run", "{0}", "--routine", "f"],
     lambda tmp: str(tmp), "is a directory"),
    ("no such file", ["run", "/nonexistent/x.S", "--routine", "f"], None, "no such file"),
    ("not an ELF", ["run", "--object", "{0}", "--routine", "f"],
     write("text.o", "hello"), "not a valid ELF"),
    ("truncated ELF", ["run", "--object", "{0}", "--routine", "f"], truncated_object, "cut.o"),
    ("ELF of another architecture", ["run", "--object", "{0}", "--routine", "f"],
     foreign_object, "not x86-64"),
    ("object given as vmlinux", ["run", "--vmlinux", "{0}", "--routine", "f"],
     assemble("rel", HEADER + "SYM_FUNC_START(f)\n\tret\nSYM_FUNC_END(f)\n"),
     "not a linked kernel image"),
    ("duplicate __ex_table entries", ["run", "{0}", "--routine", "f", "--convention", "copy", "--len", "8"],
     write("dup.S", DUP), "two __ex_table entries for the instruction at f+0x3"),
    ("__ex_table entry outside the code", ["run", "{0}", "--routine", "f", "--convention", "copy", "--len", "8"],
     write("outside.S", OUTSIDE), "is outside the loaded code"),
    ("fixup that faults again forever",
     ["run", EXAMPLES, "--routine", "demo_refault", "--convention", "copy", "--len", "8", "--poison", "0"], None,
     "demo_refault: 256 faults taken: the fixup faults again forever"),
    ("routine that never returns", ["run", EXAMPLES, "--routine", "demo_runaway", "--convention", "copy", "--len", "8"],
     None, "demo_runaway: no return after"),
    ("len 0 with a fault", ["run", "E", "--len", "0", "--poison", "0"], None,
     "poison offset 0 is outside the 0-byte source"),
    ("negative len", ["run", "E", "--len", "-1"], None, "length -1 is negative"),
    ("len larger than the mapped buffer", ["run", "E", "--len", "70000"], None,
     "exceeds the 65536-byte buffer window"),
    ("len not a number", ["run", "E", "--len", "4k"], None, "'4k' is not a number"),
    ("poison outside the buffer", ["run", "E", "--len", "100", "--poison", "100"], None,
     "poison offset 100 is outside"),
    ("unmapped offset outside the buffer", ["run", "E", "--len", "100", "--unmapped", "300"],
     None, "unmapped offset 300 is outside"),
    ("alignment outside the page", ["run", "E", "--src-align", "5000"], None,
     "source alignment 5000"),
    ("unknown direction", ["run", "E", "--direction", "sideways"], None, "invalid choice"),
    ("unknown CPU feature", ["run", "E", "--cpu", "AVX512"], None, "unknown CPU feature AVX512"),
    ("routine of another era", ["run", "E", "--routine", "rep_movs_alternative"], None,
     "era E has no routine 'rep_movs_alternative'"),
    ("unknown era", ["run", EXAMPLES, "--era", "Z", "--routine", "demo_movsb"], None,
     "unknown era 'Z'"),
    ("neither era nor file", ["diff", "Q"], None, "'Q' is neither an era"),
    ("bad git revision", ["run", "--tree", "{0}", "--rev", "v9.99"], git_tree,
     "unknown revision 'v9.99'"),
    ("tree that does not exist", ["run", "--tree", "/nonexistent/linux", "--rev", "v5.9"],
     None, "/nonexistent/linux"),
    ("patch that does not apply", ["run", "E", "--patch", "{0}"], stale_patch, "stale.diff"),
    ("unknown assembler", ["run", "E", "--assembler", "nasm"], None, "unknown assembler 'nasm'"),
    ("sweep list that is not a list", ["sweep", "E", "--len", "abc"], None,
     "'abc' is not a list of numbers"),
    ("sweep would overwrite a results file", ["sweep", "E", "--len", "8", "--results", "{0}"],
     write("results.db", "keep me\n"), "exists; use --resume"),
    ("snapshot would overwrite a file", ["snapshot", "E", "-o", "{0}"],
     write("golden.json", "keep me\n"), "exists; use --force"),
    ("unknown fuzz class", ["fuzz", "E", "--want", "nonsense"], None,
     "unknown failure class nonsense"),
    ("unknown subcommand", ["frobnicate"], None, "invalid choice"),
]


@pytest.mark.parametrize("argv, make, needle", [pytest.param(a, m, n, id=i)
                                                for i, a, m, n in CASES])
def test_bad_input(argv: list[str], make: Callable[[Path], str] | None, needle: str,
                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    made = make(tmp_path) if make else ""
    before = Path(made).read_bytes() if made and Path(made).is_file() else None
    argv = [x.replace("{0}", made) for x in argv]
    code = main(argv, io.StringIO())
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("emu: error: ") and err.count("\n") == 1, err
    assert needle in err, err
    assert "Traceback" not in err
    if before is not None:                      # nothing the user gave is changed
        assert Path(made).read_bytes() == before


def test_table_has_at_least_thirty_distinct_cases() -> None:
    assert len({i for i, *_ in CASES}) == len(CASES) >= 30


def test_missing_gnu_as_gives_an_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import emu.build.target
    monkeypatch.setenv("EMU_GCC", "/nonexistent/gcc")
    monkeypatch.setenv("EMU_CACHE", str(tmp_path))        # no cached objects to fall back on
    monkeypatch.setattr(emu.build.target, "_CACHE", {})          # nor targets built earlier
    code = main(["run", "E"], io.StringIO())
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "apt-get install" in err


def test_keystone_crash_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    import emu.build.keystone as kb
    import emu.build.target
    monkeypatch.setattr(kb, "_WORKER", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    monkeypatch.setenv("EMU_CACHE", str(tmp_path))
    monkeypatch.setattr(emu.build.target, "_CACHE", {})
    code = main(["run", EXAMPLES, "--routine", "demo_movsb", "--convention", "copy", "--assembler", "keystone"],
                io.StringIO())
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "keystone crashed (signal 11)" in err


def test_overlapping_buffers_cannot_be_expressed() -> None:
    """emu places source and destination in separate windows; only offsets are user input,
    so an overlapping copy is impossible by construction (documented, not an error case)."""
    from emu.core import layout as L
    assert L.USER_WINDOW + L.MAX_SPAN + L.PAGE < L.KERNEL_WINDOW or \
        L.KERNEL_WINDOW + L.MAX_SPAN + L.PAGE < L.USER_WINDOW
    assert os.path.exists(EXAMPLES)

"""Assembler output that is not UTF-8 gives one line (or a result), never a traceback.

Issue 17, class 2: ``.error``/``.warning`` strings and file names can make GNU as (or cpp)
print bytes that are not UTF-8, and emu decoded its output strictly.  The sources below are
UTF-8 text whose escapes, line markers and names make the tools print such bytes; each goes
through both assembler backends, and through a file name that is not UTF-8 itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EMU = [sys.executable, "-m", "emu.cli.main"]
HEAD = ".text\n.globl f\n.type f, @function\nf:\n"
SOURCES = {
    "error_string": (HEAD + '.error "bad \\377\\376 byte"\nret\n', 2),
    "warning_string": (HEAD + '.warning "odd \\377\\376 byte"\nxorl %eax, %eax\nret\n', 0),
    "print_string": (HEAD + '.print "\\377\\200"\nxorl %eax, %eax\nret\n', 0),
    "line_marker_name": ('# 1 "\\377\\376.S"\n' + HEAD + "movq %rax\nret\n", 2),
    "include_name": (HEAD + '.include "\\377\\376.inc"\nret\n', 2),
    "cpp_include_name": ('#include "\\377\\376.h"\n' + HEAD + "ret\n", 2),
    "file_directive": ('.file "\\377\\376.c"\n' + HEAD + "movq %rax\nret\n", 2),
}


def run(tmp: Path, fname: bytes, text: str, *extra: str) -> subprocess.CompletedProcess[bytes]:
    path = os.path.join(os.fsencode(tmp), fname)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return subprocess.run([*map(os.fsencode, EMU), b"run", path, b"--routine", b"f",
                           b"--convention", b"copy",
                           b"--len", b"64", *map(os.fsencode, extra)], capture_output=True,
                          env={**os.environ, "EMU_CACHE": str(tmp / "cache")}, timeout=120)


@pytest.mark.parametrize("assembler", ["gas", "keystone"])
@pytest.mark.parametrize("fname", [b"plain.S", b"\xff\xfe.S"], ids=["utf8_name", "bytes_name"])
@pytest.mark.parametrize("key", list(SOURCES))
def test_not_utf8_from_the_assembler(tmp_path: Path, key: str, fname: bytes,
                                     assembler: str) -> None:
    if assembler == "keystone":
        pytest.importorskip("keystone")
    text, want = SOURCES[key]
    p = run(tmp_path, fname, text, "--assembler", assembler)
    err = p.stderr.decode("utf-8", errors="replace")
    assert b"Traceback" not in p.stderr, err
    if assembler == "gas":
        assert p.returncode == want, err
    else:          # keystone may refuse what it cannot do: still one line
        assert p.returncode in (0, 2), err
    if p.returncode == 2:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("emu: error: "), err
    else:
        assert err == "" and b"returned" in p.stdout

"""Corrupt ELF files (``--object`` .o and ``--vmlinux`` images) give one line and exit 2.

Issue 17, class 1: sizes or offsets near 2^63 raised MemoryError or OverflowError, and a
4 GiB ``.bss`` was allocated before its size was checked.  Here our own corruptor
(``elf_corruptor.py``) mutates objects and linked images built from our era sources —
targeted hostile values in the ELF header, section headers (``.text``, ``.bss``,
``__ex_table``, ``.symtab``, ``.rela*``), symbols and relocations, random bytes,
truncation — and every file goes through ``emu run`` and ``emu map``, in one process under
a 1.5 GiB address-space limit: each command must end with exit code 0 or 2 (a mutation
may be harmless), at most one ``emu: error:`` line, no exception, within seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import elf_corruptor as C

HERE = Path(__file__).resolve().parent
LIMIT = 1536 << 20


def corrupt_all(tmp: Path, count: int, seed0: int) -> tuple[list[Path], dict[str, str]]:
    built = C.build(tmp)
    files: list[Path] = []
    what: dict[str, str] = {}
    originals = sorted(built.items())
    for i in range(count):
        name, path = originals[i % len(originals)]
        data, how = C.mutate(path.read_bytes(), seed0 + i)
        p = tmp / f"bad{i:04d}{path.suffix}"
        p.write_bytes(data)
        files.append(p)
        what[p.name] = f"{name}: {how}"
    return files, what


def check(tmp: Path, count: int, seed0: int) -> None:
    files, what = corrupt_all(tmp, count, seed0)
    proc = subprocess.run([sys.executable, str(HERE / "elf_corruptor.py"), str(LIMIT),
                           *map(str, files)], capture_output=True, text=True,
                          env={**__import__("os").environ, "EMU_CACHE": str(tmp / "cache")},
                          timeout=60 + 5 * count)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bad = []
    for r in json.loads(proc.stdout):
        lines = [ln for ln in r["stderr"].splitlines() if ln.strip()]
        ok = (r["rc"] in (0, 2) and not r["exception"] and len(lines) <= 1
              and all(ln.startswith("emu: error: ") for ln in lines)
              and (r["rc"] == 0) == (not lines) and r["seconds"] < 10)
        if not ok:
            bad.append(f"{r['file']} ({what[r['file']]}) {r['cmd']}: rc {r['rc']}, "
                       f"{r['seconds']:.1f} s, {r['stderr'][-300:]!r} {r['exception'][-600:]}")
    assert not bad, f"{len(bad)} of {len(files) * 2} commands:\n" + "\n".join(bad[:20])


def test_corrupted_objects_and_images_give_one_line(tmp_path: Path) -> None:
    check(tmp_path, 300, 1000)


@pytest.mark.slow
def test_corrupted_objects_and_images_soak(tmp_path: Path) -> None:
    check(tmp_path, 3000, 50_000)


def test_a_4gib_bss_is_refused_before_it_is_allocated(tmp_path: Path) -> None:
    """Targeted: a .o whose .bss claims 4 GiB (and one near 2^63): refused at once, with
    memory limited to 1.5 GiB (an allocation would fail loudly)."""
    built = C.build(tmp_path)
    src = built["eraE.o"]
    files = []
    for size in (1 << 32, (1 << 63) - 1, 1 << 63, (1 << 64) - 1):
        elf = C.Elf(src.read_bytes())
        buf = bytearray(elf.data)
        C.put(buf, elf.shdrs[elf.names[".bss"]] + 32, 8, size)
        p = tmp_path / f"bss{size:x}.o"
        p.write_bytes(bytes(buf))
        files.append(p)
    proc = subprocess.run([sys.executable, str(HERE / "elf_corruptor.py"), str(LIMIT),
                           *map(str, files)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in json.loads(proc.stdout):
        assert r["rc"] == 2 and not r["exception"], r
        assert r["stderr"].count("\n") == 1 and ".bss" in r["stderr"], r
        assert r["seconds"] < 3, r

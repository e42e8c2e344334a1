"""A corruptor of ELF files: targeted and random mutations of objects built from our sources.

Used by ``test_corrupt_elf_is_one_line.py`` (and its ``slow`` soak).  Every mutation is
deterministic for a seed.  Targeted mutations write a hostile value (0, 1, all ones, 2^31,
2^32, 2^63 - 1, 2^63, 2^64 - 1, the file size + 1, a random value) into one field of the
ELF header, one section header, one symbol or one relocation; random ones flip bytes or
truncate the file.  A section header named after the target makes the mutation hit the
sections that matter (``.text``, ``.bss``, ``__ex_table``, ``.symtab``, ``.rela*``).
"""

from __future__ import annotations

import random
import struct
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

EHDR_FIELDS = {   # name: (offset, size)
    "e_type": (16, 2), "e_machine": (18, 2), "e_entry": (24, 8), "e_phoff": (32, 8),
    "e_shoff": (40, 8), "e_shentsize": (58, 2), "e_shnum": (60, 2), "e_shstrndx": (62, 2),
    "ei_class": (4, 1), "ei_data": (5, 1),
}
SHDR_FIELDS = {   # Elf64_Shdr
    "sh_name": (0, 4), "sh_type": (4, 4), "sh_flags": (8, 8), "sh_addr": (16, 8),
    "sh_offset": (24, 8), "sh_size": (32, 8), "sh_link": (40, 4), "sh_info": (44, 4),
    "sh_addralign": (48, 8), "sh_entsize": (56, 8),
}
SYM_FIELDS = {"st_name": (0, 4), "st_info": (4, 1), "st_shndx": (6, 2), "st_value": (8, 8),
              "st_size": (16, 8)}
RELA_FIELDS = {"r_offset": (0, 8), "r_info_type": (8, 4), "r_info_sym": (12, 4),
               "r_addend": (16, 8)}


def hostile(size: int, filesize: int, rng: random.Random) -> int:
    bits = 8 * size
    top = (1 << bits) - 1
    pool = [0, 1, top, 1 << (bits - 1), (1 << (bits - 1)) - 1, rng.getrandbits(bits)]
    if bits >= 32:
        pool += [1 << 31, 0xFFFFFFFF, filesize + 1, filesize * 2]
    if bits == 64:
        pool += [1 << 32, 0x1_0000_0000, (1 << 63) - 1, 1 << 63, top - 7, 0x100000000]
    return rng.choice(pool) & top


class Elf:
    """Offsets of the parts of a little-endian ELF64 file."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.shoff = struct.unpack_from("<Q", data, 40)[0]
        self.shnum, self.shstrndx = struct.unpack_from("<HH", data, 60)
        self.shdrs = [self.shoff + 64 * i for i in range(self.shnum)]
        strsec = self.shdrs[self.shstrndx]
        so, = struct.unpack_from("<Q", data, strsec + 24)
        self.names: dict[str, int] = {}
        for i, h in enumerate(self.shdrs):
            nm, = struct.unpack_from("<I", data, h)
            end = data.index(b"\0", so + nm)
            self.names[data[so + nm:end].decode("latin-1")] = i

    def section(self, i: int) -> tuple[int, int, int]:
        """(type, offset, size) of section i."""
        h = self.shdrs[i]
        typ, = struct.unpack_from("<I", self.data, h + 4)
        off, size = struct.unpack_from("<QQ", self.data, h + 24)
        return typ, off, size


def put(buf: bytearray, off: int, size: int, value: int) -> None:
    buf[off:off + size] = value.to_bytes(size, "little")


def mutate(data: bytes, seed: int) -> tuple[bytes, str]:
    """One mutation of ``data``: the new bytes and what was done."""
    rng = random.Random(seed)
    elf = Elf(data)
    buf = bytearray(data)
    kind = rng.choice(["ehdr", "shdr", "shdr", "shdr", "shdr", "sym", "rela", "flip",
                       "truncate", "stack"])
    if kind == "ehdr":
        f = rng.choice(list(EHDR_FIELDS))
        off, size = EHDR_FIELDS[f]
        v = hostile(size, len(data), rng)
        put(buf, off, size, v)
        return bytes(buf), f"{f}={v:#x}"
    if kind in ("shdr", "stack"):
        names = [n for n in elf.names if n]
        prefer = [n for n in names if n in (".text", ".bss", "__ex_table", ".symtab",
                                            ".strtab", ".shstrtab", ".data", ".altinstructions")
                  or n.startswith(".rela")]
        n = rng.choice(prefer or names)
        h = elf.shdrs[elf.names[n]]
        done = []
        for _ in range(1 if kind == "shdr" else rng.randint(2, 4)):
            f = rng.choice(list(SHDR_FIELDS))
            off, size = SHDR_FIELDS[f]
            v = hostile(size, len(data), rng)
            put(buf, h + off, size, v)
            done.append(f"{f}={v:#x}")
        return bytes(buf), f"{n}: " + ", ".join(done)
    if kind == "sym" and ".symtab" in elf.names:
        _t, so, ss = elf.section(elf.names[".symtab"])
        if ss >= 48:
            i = rng.randrange(1, ss // 24)
            f = rng.choice(list(SYM_FIELDS))
            off, size = SYM_FIELDS[f]
            v = hostile(size, len(data), rng)
            put(buf, so + 24 * i + off, size, v)
            return bytes(buf), f"symbol {i}: {f}={v:#x}"
    if kind == "rela":
        relas = [n for n in elf.names if n.startswith(".rela")]
        if relas:
            n = rng.choice(relas)
            _t, ro, rs = elf.section(elf.names[n])
            if rs >= 24:
                i = rng.randrange(rs // 24)
                f = rng.choice(list(RELA_FIELDS))
                off, size = RELA_FIELDS[f]
                v = hostile(size, len(data), rng)
                put(buf, ro + 24 * i + off, size, v)
                return bytes(buf), f"{n} entry {i}: {f}={v:#x}"
    if kind == "truncate":
        cut = rng.randrange(1, len(data))
        return bytes(buf[:cut]), f"truncated to {cut}"
    flips = rng.randint(1, 16)
    for _ in range(flips):
        buf[rng.randrange(len(buf))] = rng.randrange(256)
    return bytes(buf), f"{flips} random bytes"


LDS = """SECTIONS
{
  . = 0xffffffff81000000;
  .text : { *(.text) *(.text.*) *(.fixup) }
  . = ALIGN(16);
  __ex_table : { *(__ex_table) }
  .data : { *(.data) }
  .bss : { *(.bss) }
}
"""
HANDLERS = "".join(f"\t.globl {h}\n\t.type {h}, @function\n{h}:\tret\n" for h in (
    "ex_handler_default", "ex_handler_uaccess", "ex_handler_copy", "ex_handler_fault"))


def build(d: Path) -> dict[str, Path]:
    """Objects and linked images of our era sources E and C (gcc + ld), plus a small data
    and bss section so that those headers exist to be corrupted."""
    from emu.build.assemble import AsmConfig, GasAssembler
    from emu.kernel.eras import ERAS
    gas = GasAssembler()
    (d / "link.lds").write_text(LDS)
    (d / "handlers.S").write_text("\t.text\n" + HANDLERS + "\t.data\n\t.quad 1\n\t.bss\n"
                                  "\t.skip 64\n")
    subprocess.run(["gcc", "-c", str(d / "handlers.S"), "-o", str(d / "handlers.o")],
                   check=True)
    out: dict[str, Path] = {}
    for key in ("E", "C"):
        era = ERAS[key]
        text = (ROOT / "asm" / f"era-{key}.S").read_text()
        obj = d / f"era{key}.o"
        obj.write_bytes(gas.assemble(text + "\n\t.bss\n\t.skip 32\n",
                                     AsmConfig(int(era.encoding), era.ex_layout, frozenset()),
                                     f"era-{key}.S"))
        exe = d / f"era{key}.vmlinux"
        subprocess.run(["ld", "-z", "noexecstack", "-T", str(d / "link.lds"), "-o", str(exe),
                        str(d / "handlers.o"), str(obj)], check=True)
        out[f"era{key}.o"], out[f"era{key}.vmlinux"] = obj, exe
    return out


def commands(path: Path) -> list[list[str]]:
    """The emu commands each corrupted file goes through."""
    opt = "--vmlinux" if path.suffix == ".vmlinux" else "--object"
    return [["run", opt, str(path), "--len", "64", "--poison", "1"],
            ["map", opt, str(path)]]


def drive(files: list[Path], limit_bytes: int) -> list[dict[str, object]]:
    """Run every command on every file in this process (under an address-space limit):
    exit code, stderr, seconds, and the exception if one escaped ``main``."""
    import contextlib
    import io
    import resource
    import time
    import traceback

    from emu.caching import clear_all
    from emu.cli.main import main
    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    out: list[dict[str, object]] = []
    for f in files:
        for cmd in commands(f):
            err, sink = io.StringIO(), io.StringIO()
            t0 = time.monotonic()
            exc = ""
            try:
                with contextlib.redirect_stderr(err):
                    rc = main(cmd, out=sink)
            except BaseException as e:  # noqa: BLE001 - this is what the test looks for
                rc = -1
                exc = "".join(traceback.format_exception(e))[-1500:]
            clear_all()
            out.append({"file": f.name, "cmd": cmd[0], "rc": rc, "stderr": err.getvalue(),
                        "seconds": time.monotonic() - t0, "exception": exc})
    return out


if __name__ == "__main__":
    import json
    import sys
    limit = int(sys.argv[1])
    files = [Path(p) for p in sys.argv[2:]]
    json.dump(drive(files, limit), sys.stdout)

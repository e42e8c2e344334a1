"""Built inputs as a cluster worker gets them: an object's bytes, a vmlinux's slice.

A Dask worker (``emu.runs.cluster``) has emu installed and none of the user's files.  A
source travels as its text (``resolve.portable``); a built input travels as its contents,
named by a digest of them, so that each worker receives it once however many tasks use it:

* a ``.o`` (``--object``) is small: its bytes, as read.
* a vmlinux is 350-650 MB, nearly all DWARF, and a run reads a few KB of it.  ``slice_linked``
  keeps what loading the named routines reads (an ``elf.LinkedSlice``):

  1. per routine, its window (``elf.linked_window``: the routine and the fixups of its
     entries), the symbols inside it, and what the boot passes read for it
     (``boot.reads``: the table records whose site lies there, each alternative's
     replacement);
  2. for the image, the section headers, the whole ``__ex_table`` (every entry is
     decoded), the symbols at the entries' third-word targets (the handler encoding names
     its handlers by them), every symbol named like a routine, the thunks the boot passes
     look up, ``linux_banner`` and its bytes, and the first function names an error lists.

  The worker runs ``objects.built_target`` on the slice, so the window it loads, the boot
  passes and the era detection are those of a local run; a read outside the slice raises
  instead of returning zeros (``LinkedSlice.bytes_at``).
"""

from __future__ import annotations

import hashlib
import pickle
import struct
from dataclasses import dataclass, field

from emu.build import boot
from emu.kernel.conventions import KNOWN
from emu.build.elf import (EXTABLE, SHT_NOBITS, LinkedFile, LinkedSlice, LinkedSymbol,
                           linked_extable, linked_window, loadable_sections)
from emu.build.objects import banner_span, kernel_version, open_linked, read_input
from emu.errors import ImageError
from emu.kernel.extable import Encoding

#: Function names a "defines none of" error lists (``elf.linked_window``), plus one.
_LISTED = 21


@dataclass(frozen=True, slots=True)
class Shipment:
    """A built input's contents as they travel, and the digest that names them.

    Attributes:
        digest: ``object-…`` / ``vmlinux-…`` and the SHA-256 of the pickled contents.
        contents: the object's bytes, or the vmlinux's ``LinkedSlice``.
        size: the bytes the contents pickle to: what one worker receives.
    """

    digest: str
    contents: bytes | LinkedSlice = field(repr=False)
    size: int


def ship(path: str, *, linked: bool, routines: tuple[str, ...] = ()) -> Shipment:
    """What a worker needs of the built input at ``path`` to run ``routines``.

    Args:
        path: the ``.o`` or vmlinux.
        linked: a vmlinux (``--vmlinux``).
        routines: the routines the worker will run (vmlinux; default: every routine emu
            knows that the image defines).

    Raises:
        InputError: the file cannot be read.
        ImageError: not a linked image (vmlinux).
    """
    contents: bytes | LinkedSlice
    if linked:
        contents = slice_linked(open_linked(path), routines)
    else:
        contents = read_input(path, "--object")
    blob = pickle.dumps(contents, protocol=5)
    kind = "vmlinux" if linked else "object"
    return Shipment(f"{kind}-{hashlib.sha256(blob).hexdigest()[:32]}", contents, len(blob))


def slice_linked(lf: LinkedFile, routines: tuple[str, ...] = ()) -> LinkedSlice:
    """The parts of ``lf`` that loading each of ``routines`` reads (the module docstring).

    A routine the image does not define, or whose window is too large, gets no window:
    the worker then raises the error a local run would (every symbol of that name is kept).
    """
    syms = lf.symbols()
    if not routines:
        known = set(KNOWN)
        routines = tuple(sorted({n for n, *_ in syms if n in known}))
    version = kernel_version(lf)
    keep: list[tuple[int, int]] = []           # (address, size)
    ranges: list[tuple[int, int]] = []         # (file offset, size)
    # 2. Image-wide: the exception table, the banner, the third-word targets.
    ex = lf.section(EXTABLE)
    targets: set[int] = set()
    if ex is not None and ex.size and ex.type != SHT_NOBITS:
        ranges.append((ex.offset, ex.size))
        for a, raw in lf.records(ex, 12):
            targets.add(a + 8 + struct.unpack_from("<i", raw, 8)[0])
    for n, a, size, _k, _g in syms:
        if n == "linux_banner":
            keep.append(banner_span(a, size))
    # 1. Per routine: the window, and what the boot passes read for it.
    entries = linked_extable(lf, Encoding.DATA)
    windows: list[tuple[int, int]] = []
    for r in routines:
        try:
            lo, hi = linked_window(lf, (r,), entries)
        except ImageError:
            continue
        windows.append((lo, hi))
        for s in loadable_sections(lf):
            a0, a1 = max(s.addr, lo), min(s.addr + s.size, hi)
            if a0 < a1 and s.type != SHT_NOBITS:
                ranges.append((s.offset + a0 - s.addr, a1 - a0))
        keep += boot.reads(lf, version, lo, hi)
    for addr, size in keep:
        s = lf.section_at(addr, size)
        if s is not None and s.type != SHT_NOBITS:
            ranges.append((s.offset + addr - s.addr, size))
    named = set(routines)
    listed = set(sorted(n for n, _a, _s, k, _g in syms if k == "func")[:_LISTED])

    def wanted(sym: LinkedSymbol) -> bool:
        n, a = sym[0], sym[1]
        return (any(lo <= a < hi for lo, hi in windows) or a in targets or n in named
                or n in listed or n == "linux_banner" or boot.thunk_symbol(n))
    return LinkedSlice(lf, ranges, [s for s in syms if wanted(s)])


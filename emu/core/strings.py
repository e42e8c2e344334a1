"""``rep movs`` / ``rep stos`` in bulk: the string instructions at memcpy speed.

QEMU (and so Unicorn 2.1) runs a ``rep``-prefixed string instruction one iteration per pass
through its translated block (unicorn-notes §3, "rep strings are slow"): about 33 ns an
iteration, so a 60 KiB ``rep movsb`` costs 2 ms.  QEMU ends a block after each iteration and
starts the next one at the instruction itself, so a block hook at every ``rep movs``/``rep
stos`` of the image runs before each iteration but the first.  The hook asks ``plan`` how many
of the remaining iterations nothing watches (no poisoned line, no absent or SMAP-protected
page, no page outside the buffer windows, no line the fast-forward recording has yet to see),
does those in one step (read, copy with the instruction's element-by-element semantics
(``sequential_copy``) or store (``stos_bytes``), write) and sets RCX, RSI and RDI as the CPU
would have left them.  The instruction then runs on in Unicorn: with RCX = 0 it does nothing,
otherwise its next iteration is the first watched one, which Unicorn executes itself (and
which faults precisely, unicorn-notes §1).

The string instructions change no arithmetic flag; EFLAGS.DF picks the direction (Intel SDM
vol. 2B, MOVS/STOS and REP).  Only the forms a kernel copy routine uses are taken: an F3
prefix, optional 66 and REX prefixes, opcodes A4/A5 (movs) and AA/AB (stos), 64-bit address
size.  Anything else (a 67 prefix, a segment override) runs iteration by iteration as before.

Nothing here knows about Unicorn; ``machine.py`` reads and writes the memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

PAGE = 0x1000
EFLAGS_DF = 1 << 10
_OPCODES = {0xA4: ("movs", 1), 0xA5: ("movs", 4), 0xAA: ("stos", 1), 0xAB: ("stos", 4)}


@dataclass(frozen=True, slots=True)
class StringOp:
    """One ``rep movs``/``rep stos`` instruction: where, what, and the element size."""

    addr: int
    length: int
    op: str        # "movs" or "stos"
    size: int      # bytes per iteration: 1, 2, 4 or 8


def decode(code: bytes, addr: int) -> StringOp | None:
    """The string instruction starting at ``code[0]`` (at ``addr``), or None.

    Accepted: prefixes 66 and F3 in any order (F3 required), then an optional REX, then
    A4/A5/AA/AB.
    """
    i, rep, opsize = 0, False, False
    while i < len(code) and code[i] in (0x66, 0xF3) and i < 4:
        rep |= code[i] == 0xF3
        opsize |= code[i] == 0x66
        i += 1
    rex_w = False
    if i < len(code) and 0x40 <= code[i] <= 0x4F:
        rex_w = bool(code[i] & 8)
        i += 1
    if not rep or i >= len(code) or code[i] not in _OPCODES:
        return None
    op, size = _OPCODES[code[i]]
    if size == 4:
        size = 8 if rex_w else 2 if opsize else 4
    return StringOp(addr, i + 1, op, size)


def find(sections: Iterable[tuple[int, bytes]]) -> list[StringOp]:
    """Every byte position of the executable ``sections`` ((address, bytes)) where a rep
    string instruction would decode.

    A position that is not an instruction boundary is harmless: a block hook there never
    fires (no block starts there).
    """
    out = []
    for base, data in sections:
        for i, b in enumerate(data):
            if b in (0x66, 0xF3):
                op = decode(data[i:i + 6], base + i)
                if op is not None:
                    out.append(op)
    return out


def span(base: int, size: int, down: bool, count: int) -> tuple[int, int]:
    """[lo, hi) of the bytes ``count`` elements touch from ``base`` (element 0 at base)."""
    if count <= 0:
        return base, base
    if down:
        return base - (count - 1) * size, base + size
    return base, base + count * size


def first_hit(base: int, size: int, down: bool, count: int, a: int, b: int) -> int:
    """The smallest i < ``count`` whose element [base ± i·size, +size) overlaps [a, b), or
    ``count`` if none does."""
    if down:
        # element i is [base - i*size, base - i*size + size): overlap iff it starts below b
        # and ends above a; the start decreases with i.
        i = max(0, (base - b) // size + 1)
        if i < count and base - i * size + size > a:
            return i
        return count
    i = max(0, (a - base - size) // size + 1)       # first element ending above a
    if i < count and base + i * size < b:
        return i
    return count


def walk_pages(base: int, size: int, down: bool, count: int,
               allowed: Callable[[int], bool]) -> int:
    """The number of leading elements whose bytes lie only on pages ``allowed`` accepts.

    Pages are visited in the order the iterations meet them and the walk stops at the first
    refused one, so a huge count costs no more than the pages it can reach.
    """
    lo, hi = span(base, size, down, count)
    if down:
        page = (hi - 1) & ~(PAGE - 1)
        while page + PAGE > lo:
            if not allowed(page):
                return first_hit(base, size, down, count, page, page + PAGE)
            page -= PAGE
    else:
        page = lo & ~(PAGE - 1)
        while page < hi:
            if not allowed(page):
                return first_hit(base, size, down, count, page, page + PAGE)
            page += PAGE
    return count


def plan(op: StringOp, rcx: int, rsi: int, rdi: int, eflags: int,
         allowed_read: Callable[[int], bool], allowed_write: Callable[[int], bool],
         watched_reads: Iterable[tuple[int, int]]) -> int:
    """How many of the ``rcx`` remaining iterations can run in bulk (0: none).

    Args:
        op: the instruction.
        rcx, rsi, rdi, eflags: the registers before the next iteration.
        allowed_read, allowed_write: whether a page (virtual address) may be read / written
            without the CPU's help (present, mapped, no SMAP fault, no code on it).
        watched_reads: [a, b) virtual ranges a read must not touch in bulk (poisoned lines,
            lines a recording still needs to see).
    """
    down = bool(eflags & EFLAGS_DF)
    size = op.size
    k = walk_pages(rdi, size, down, rcx, allowed_write)
    if op.op == "movs" and k:
        k = walk_pages(rsi, size, down, k, allowed_read)
        for a, b in watched_reads:
            if not k:
                break
            k = first_hit(rsi, size, down, k, a, b)
    return k


def sequential_copy(mem: bytearray, src: int, dst: int, count: int, size: int,
                    down: bool) -> None:
    """``rep movs`` semantics inside one buffer: element i is read from ``src ± i·size``
    and then written to ``dst ± i·size``, in order, so overlapping ranges come out as the
    CPU leaves them (a byte written by an earlier element is read back by a later one).

    Elements are moved in chunks no element of which reads what another of the same chunk
    wrote: all at once when the destination trails the source, ⌊distance/size⌋ at a time
    when it leads, one at a time when it leads by less than one element.
    """
    if count <= 0:
        return
    d = dst - src
    leads = d < 0 if down else d > 0             # writes run ahead into bytes still to read
    per = count if not leads or abs(d) >= count * size else max(1, abs(d) // size)
    done = 0
    while done < count:
        n = min(per, count - done)
        if down:
            s0 = src - (done + n - 1) * size
            d0 = dst - (done + n - 1) * size
        else:
            s0 = src + done * size
            d0 = dst + done * size
        mem[d0:d0 + n * size] = mem[s0:s0 + n * size]
        done += n


def stos_bytes(rax: int, size: int, count: int) -> bytes:
    """The bytes ``count`` iterations of ``rep stos`` of ``size`` store (AL/AX/EAX/RAX)."""
    return (rax & ((1 << (8 * size)) - 1)).to_bytes(size, "little") * count

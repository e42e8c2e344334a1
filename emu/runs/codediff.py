"""Does a routine's code in one image equal the same routine's code in another?

The comparison the real-image checks need (issue 14, item 3): the routine in a built image
(a distribution vmlinux, a kbuild object) against the same routine assembled from the source
of the same release.  The two run the same behaviour when their instructions are the same;
where the compiler or the configuration made them differ (an IBT ``endbr64``, the return
thunk's ``ret; int3`` padding, alignment NOPs, another instruction selection), the table
shown to users says so.

Both images are taken as emu runs them: ALTERNATIVE sites, return sites and retpolines
already patched for the CPU.  Each routine is decoded with capstone (AT&T) from its symbol
over its extent, and each instruction is normalised so that placement does not count:

1. a branch or call target inside the routine is compared by where it lands: the two
   streams are aligned first (``difflib``, targets left out), and an aligned pair of
   branches is the same when the target of one lands on the instruction aligned with the
   target of the other;
2. a target outside the routine becomes the name of the function that starts there, or
   ``outside`` (the two images' local labels differ);
3. a RIP-relative operand becomes the symbol it points at, or ``outside``.

Padding instructions (``nop`` in any form, ``int3``) are compared separately: a routine whose
other instructions are the same differs "in padding only".
"""

from __future__ import annotations

import bisect
import difflib
import re
from dataclasses import dataclass
from typing import Any

from emu.kernel.decode import att_disassembler
from emu.kernel.image import Image

_PADDING = ("nop", "int3")
_HEX = re.compile(r"^\$?(0x[0-9a-f]+|\d+)$")
_RIP = re.compile(r"(-?0x[0-9a-f]+|-?\d+)?\(%rip\)")


@dataclass(frozen=True, slots=True)
class Insn:
    """One decoded instruction of a routine, normalised (see the module docstring).

    ``target`` is the index (among the routine's non-padding instructions) of the instruction
    an in-routine branch lands on (the next one when it lands on padding), else None.
    """

    offset: int
    text: str           # as capstone prints it
    norm: str           # normalised for comparison, in-routine targets left out
    padding: bool
    target: int | None = None


@dataclass(frozen=True, slots=True)
class CodeDiff:
    """How a routine's code in ``image`` compares with the same routine in ``reference``.

    ``differing`` counts the non-padding instructions that differ (the larger side of each
    differing run), ``padding`` the padding instructions that differ; ``places`` lists each
    differing run by its offset in the image and the first instruction of each side there
    ("" for a side that has none).
    """

    routine: str
    image: str
    reference: str
    instructions: int
    differing: int
    padding: int
    places: tuple[tuple[int, str, str], ...] = ()

    @property
    def first(self) -> int | None:
        return self.places[0][0] if self.places else None

    @property
    def same(self) -> bool:
        return not self.differing and not self.padding

    def cell(self) -> str:
        """The table cell: ``same``, ``padding`` (only padding differs) or ``differs (N)``
        (N instructions; the line under the table says where)."""
        if self.same:
            return "same"
        if not self.differing:
            return "padding"
        return f"differs ({self.differing})"

    def describe(self) -> str:
        """One line for under the table."""
        head = f"{self.image} vs {self.reference}, {self.routine}"
        if self.same:
            return f"{head}: same {self.instructions} instructions"
        parts = []
        if self.differing:
            where = ", ".join(f"+{o:#x} {a or '-'} / {b or '-'}" for o, a, b in self.places[:3])
            more = f", and {len(self.places) - 3} more" if len(self.places) > 3 else ""
            parts.append(f"{self.differing} instruction(s) differ (image / reference: "
                         f"{where}{more})")
        if self.padding:
            parts.append(f"{self.padding} padding instruction(s) (nop, int3) differ")
        return f"{head}: " + "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"routine": self.routine, "reference": self.reference, "same": self.same,
                "instructions": self.instructions, "differing": self.differing,
                "padding": self.padding,
                "places": [{"offset": hex(o), "image": a or None, "reference": b or None}
                           for o, a, b in self.places]}


def _is_padding(mnemonic: str) -> bool:
    return mnemonic.startswith(_PADDING)


def _outside(image: Image, addr: int) -> str:
    """The name of the function starting at ``addr`` (or a stub there), else ``outside``."""
    for name, stub in image.stubs.items():
        if stub == addr:
            return name
    for s in image.symbols.values():
        if s.addr == addr and image.is_function(s):
            return s.name
    return "outside"


def stream(image: Image, routine: str) -> list[Insn]:
    """The normalised instructions of ``routine`` in ``image``.

    Raises:
        ImageError: ``routine`` is not a symbol of the image.
    """
    sym = image.symbol(routine)
    start, end = sym.addr, sym.addr + image.extent(sym)
    raw = list(att_disassembler().disasm(image.read(start, end - start), start))
    real = [i.address for i in raw if not _is_padding(i.mnemonic)]
    out = []
    for i in raw:
        ops, target = i.op_str, None
        if (i.group(1) or i.group(2)) and _HEX.match(ops):
            # CS_GRP_JUMP (1) / CS_GRP_CALL (2) with an immediate target
            t = int(ops.lstrip("$"), 0)
            if start <= t < end:
                ops, target = "L", bisect.bisect_left(real, t)
            else:
                ops = _outside(image, t)
        m = _RIP.search(ops)
        if m:
            t = i.address + i.size + int(m.group(1) or "0", 0)
            ops = ops.replace(m.group(0), f"{_outside(image, t)}(%rip)")
        out.append(Insn(i.address - start, f"{i.mnemonic} {i.op_str}".strip(),
                        f"{i.mnemonic} {ops}".strip(), _is_padding(i.mnemonic), target))
    return out


def compare(image: Image, reference: Image, routine: str, *, image_name: str = "",
            reference_name: str = "") -> CodeDiff:
    """Compare ``routine`` in ``image`` with ``routine`` in ``reference``.

    Raises:
        ImageError: either image does not define ``routine``.
    """
    a, b = stream(image, routine), stream(reference, routine)
    ra = [x for x in a if not x.padding]
    rb = [x for x in b if not x.padding]
    # 1. Align the non-padding instructions, targets left out.
    ops = difflib.SequenceMatcher(None, [x.norm for x in ra], [x.norm for x in rb],
                                  autojunk=False).get_opcodes()
    pair = {i1 + k: j1 + k for tag, i1, i2, j1, _ in ops if tag == "equal"
            for k in range(i2 - i1)}
    # 2. Differing runs, and aligned branches whose targets do not correspond.
    bad: list[tuple[int, int, str, str]] = []    # (offset in a, size, a's text, b's text)
    end_a = a[-1].offset if a else 0
    for tag, i1, i2, j1, j2 in ops:
        if tag == "equal":
            continue
        # within a differing run, pair instructions by mnemonic: an inserted endbr64 and a
        # changed immediate are two places, not one
        sub = difflib.SequenceMatcher(None, [x.text.split()[0] for x in ra[i1:i2]],
                                      [x.text.split()[0] for x in rb[j1:j2]], autojunk=False)
        for stag, k1, k2, l1, l2 in sub.get_opcodes():
            if stag == "equal":
                bad.extend((ra[i1 + k].offset, 1, ra[i1 + k].text, rb[j1 + l1 + k - k1].text)
                           for k in range(k1, k2))
            else:
                i, j = i1 + k1, j1 + l1
                bad.append((ra[i].offset if i < len(ra) else end_a, max(k2 - k1, l2 - l1),
                            ra[i].text if k2 > k1 else "", rb[j].text if l2 > l1 else ""))
    for i, j in pair.items():
        ta, tb = ra[i].target, rb[j].target
        if ta is not None and tb is not None and pair.get(ta, -1) != tb and \
                not (ta == len(ra) and tb == len(rb)):
            bad.append((ra[i].offset, 1, ra[i].text, rb[j].text))
    bad.sort()
    differing = sum(n for _, n, _, _ in bad)
    # 3. Padding: the whole streams, non-padding differences already counted.
    padding = 0
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(
            None, [x.norm for x in a], [x.norm for x in b], autojunk=False).get_opcodes():
        if tag != "equal":
            padding += max(sum(x.padding for x in a[i1:i2]), sum(x.padding for x in b[j1:j2]))
    return CodeDiff(routine, image_name or image.name, reference_name or reference.name,
                    len(ra), differing, padding, tuple((o, x, y) for o, _, x, y in bad))

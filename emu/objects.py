"""Built kernel objects as inputs: a kbuild ``.o`` (``--object``) or a linked ``--vmlinux``.

The code, symbols and ``__ex_table`` come from the file (``image.load_object`` /
``image.load_linked``); nothing is assembled.  The era is read from what the binary carries
(kernel-facts.md §3, §5a), unless ``--era`` forces it:

* the third ``__ex_table`` word is a relocation / pointer to ``ex_handler_*`` → the handler
  encoding (≤ v5.15): ``ex_handler_copy`` entries → era C, uaccess-only → era A;
* otherwise it is data; ``rep_movs_alternative`` → era F; EX_TYPE_COPY (4) entries → era D
  when a ``.fixup`` section exists (≤ v5.16), else era E; anything else → era E.

ALTERNATIVEs: objects built with emu's headers have them resolved at assembly time, so the
ones the tests build carry no ``.altinstructions``.  Applying a kbuild object's
``.altinstructions`` for another CPU is not implemented: such an object runs as built (the
boot-time default instructions).
"""

from __future__ import annotations

from pathlib import Path

from .detect import GET_USER_SIZES, KNOWN_ROUTINES, Detection
from .eras import ERAS, Era
from .errors import ImageError, InputError, UsageError
from .extable import Encoding, ExType
from .image import Image, load_linked, load_object
from .inputs import KernelTarget
from .machine import Machine
from .policy import Kernel
from .sources import Source
from .target import Settings


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file ({what})") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({what}): {e.strerror}") from None


def _era_of(img: Image, forced: str | None) -> tuple[Era, list[str]]:
    if forced is not None:
        era = ERAS.get(forced.upper())
        if era is None:
            raise UsageError(f"unknown era '{forced}' (known: {', '.join(ERAS)})")
        return era, ["forced by --era"]
    types = {e.type for e in img.extable}
    names = {s.name for s in img.sections}
    if img.encoding is Encoding.HANDLER:
        if ExType.COPY in types:
            return ERAS["C"], ["__ex_table points at ex_handler_copy (v5.10 - v5.15)"]
        if ExType.FAULT in types:
            return ERAS["C"], ["__ex_table points at ex_handler_fault (copy_mc, <= v5.15)"]
        return ERAS["A"], ["__ex_table points at uaccess handlers only (<= v5.9)"]
    if "rep_movs_alternative" in img.symbols:
        return ERAS["F"], ["defines rep_movs_alternative (v6.4+)", "type/data __ex_table"]
    if ExType.COPY in types:
        if ".fixup" in names:
            return ERAS["D"], ["EX_TYPE_COPY entries and a .fixup section (v5.16)"]
        return ERAS["E"], ["EX_TYPE_COPY entries, no .fixup section (v5.17 - v6.3)"]
    return ERAS["E"], ["type/data __ex_table; era E rules by default"]


class ObjectTarget(KernelTarget):
    """A ``KernelTarget`` whose image comes from a built file instead of the assembler."""

    def __init__(self, image: Image, era: Era, evidence: list[str], cpu: frozenset[str],
                 path: str, forced: bool, count_insns: bool = False) -> None:
        self.name = image.name
        self.settings = Settings.of(era)
        self.cpu = cpu
        self.image = image
        self.machine = Machine(image, count_insns=count_insns)
        self.kernel = Kernel(image.extable, self.settings.severity, image.read)
        self.source = Source("", image.name, path)
        syms = [s.name for s in image.functions()] + [
            n for n in image.symbols if n not in {f.name for f in image.functions()}]
        kind = ("copy_user" if any(n.startswith(("copy_user", "rep_movs", "__copy_user"))
                                   for n in syms) else
                "copy_mc" if any(n.startswith("copy_mc") for n in syms) else
                "getuser" if any(n in GET_USER_SIZES for n in syms) else "unknown")
        self.detection = Detection(kind, era, tuple(KNOWN_ROUTINES[n] for n in syms
                                                    if n in KNOWN_ROUTINES),
                                   tuple(n for n in syms if n in GET_USER_SIZES),
                                   tuple(evidence), forced)


def _load(loader, data: bytes, name: str, era: Era, keep: tuple[str, ...]) -> Image:  # type: ignore[no-untyped-def]
    if loader is load_object:
        return load_object(data, encoding=era.encoding, layout_id=era.ex_layout, name=name)
    return load_linked(data, encoding=era.encoding, layout_id=era.ex_layout, name=name,
                       keep=keep)


def built_target(path: str, *, linked: bool, cpu: frozenset[str], era: str | None = None,
                 routine: str | None = None, count_insns: bool = False) -> ObjectTarget:
    """Load ``path`` (a .o, or a vmlinux if ``linked``) and configure it for its era.

    The extable encoding is tried as handler pointers first (a relocation or pointer in
    the third word), then as data; the era then follows from the entries and symbols.

    Raises:
        InputError: the file cannot be read.
        ImageError: it is not a usable object / linked image in either encoding.
    """
    what = "--vmlinux" if linked else "--object"
    data = _read(path, what)
    name = Path(path).name
    loader = load_linked if linked else load_object
    keep: tuple[str, ...] = (routine,) if routine else tuple(KNOWN_ROUTINES) + tuple(
        GET_USER_SIZES)
    first_error: ImageError | None = None
    for guess in (ERAS["C"], ERAS["E"]):     # handler encoding, then data encoding
        try:
            img = _load(loader, data, name, guess, keep)
            break
        except ImageError as e:
            first_error = first_error or e
            if "encoding" not in str(e):
                raise
    else:
        assert first_error is not None
        raise first_error
    chosen, evidence = _era_of(img, era)
    if (chosen.encoding, chosen.ex_layout) != (guess.encoding, guess.ex_layout):
        img = _load(loader, data, name, chosen, keep)
    return ObjectTarget(img, chosen, evidence, cpu, path, era is not None, count_insns)

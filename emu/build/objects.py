"""Built kernel objects as inputs: a kbuild ``.o`` (``--object``) or a linked ``--vmlinux``.

The code, symbols and ``__ex_table`` come from the file (``image.load_object`` /
``image.load_linked``); nothing is assembled.  The era is read from what the binary carries
(kernel-facts.md §3, §5a), unless ``--era`` forces it:

* the third ``__ex_table`` word is a relocation / pointer to ``ex_handler_*`` → the handler
  encoding (≤ v5.15): ``ex_handler_copy`` entries → era C, uaccess-only → era A;
* otherwise it is data; ``rep_movs_alternative`` → era F; EX_TYPE_COPY (4) entries → era D
  when a ``.fixup`` section exists (≤ v5.16), else era E; anything else → era E.

ALTERNATIVEs: a relocatable object that carries ``.altinstructions`` (a kernel build, or emu's
headers with -DEMU_ALT_KBUILD=1) has its sites patched for the selected CPU here, as the
boot-time alternatives pass would: records are read in order (a later match overrides an
earlier one), the replacement is copied over the site, the rest of the site is filled with
NOPs, and a leading rel32 call/jmp is re-aimed.  Records use the v6.3+ layout (s32 site,
s32 replacement, u32 feature|flags, u8 site length, u8 replacement length; UNVERIFIED for
other releases); another size is refused.  A linked image is run as linked: its window
does not include ``.altinstructions``.
A linked image (a real vmlinux) is read through mmap (``elf.LinkedFile``, symbols cached by
build-id) and its window gets the boot-time passes of ``boot.patch`` (alternatives, return
sites, retpolines) for the CPU, with the feature numbers of the kernel version its
``linux_banner`` names.  SMAP is enforced exactly when the CPU has it.
"""

from __future__ import annotations

import struct
from dataclasses import replace
from operator import itemgetter

from pathlib import Path

from emu.build.detect import CLEAR_NAMES, GET_USER_NAMES, PUT_USER_NAMES, Detection
from emu.build import boot
from emu.build.elf import LinkedFile, load_linked, load_object
from emu.kernel.cpus import KernelVersion, parse_banner
from emu.build.target import Settings, Target
from emu.errors import ImageError, InputError
from emu.kernel.conventions import KNOWN
from emu.kernel.eras import ERAS, Era, ImageMarks, default_era, get_era, sniff
from emu.kernel.extable import Encoding
from emu.kernel.image import Image
from emu.kernel.severity import MceRules, Severity, release_rules


#: X86_FEATURE_* numbers (32 * word + bit) of what emu selects, as in asm/emu_kernel.h.
FEATURE_BITS = {"ALWAYS": 3 * 32 + 21, "REP_GOOD": 3 * 32 + 16, "ERMS": 9 * 32 + 9,
                "SMAP": 9 * 32 + 20, "FSRM": 18 * 32 + 4}
ALT_RECORD = 14
ALT_FLAG_NOT = 1


def apply_alternatives(img: Image, cpu: frozenset[str]) -> tuple[Image, int]:
    """Patch every ALTERNATIVE site of ``img`` for ``cpu``; returns the image and the count.

    Raises:
        ImageError: a record that is not 14 bytes, points outside the image, or has a
            replacement longer than its site.
    """
    alt = next((s for s in img.sections if s.name == ".altinstructions"), None)
    if alt is None:
        return img, 0
    if len(alt.data) % ALT_RECORD:
        raise ImageError(f"{img.name}: .altinstructions is {len(alt.data)} bytes, not a "
                         f"multiple of the {ALT_RECORD}-byte record emu reads (v6.3+ layout)")
    have = {FEATURE_BITS[f] for f in cpu if f in FEATURE_BITS}
    have |= {FEATURE_BITS["ALWAYS"]}
    code = {s.name: bytearray(s.data) for s in img.sections}
    owner = {s.name: s for s in img.sections}

    def where(addr: int, size: int) -> tuple[str, int]:
        for s in img.sections:
            if s.addr <= addr and addr + size <= s.end:
                return s.name, addr - s.addr
        raise ImageError(f"{img.name}: .altinstructions points at {addr:#x}, outside the image")
    patched = 0
    for off in range(0, len(alt.data), ALT_RECORD):
        a = alt.addr + off
        site_rel, repl_rel, ft, ilen, rlen = struct.unpack_from("<iiIBB", alt.data, off)
        site, repl = a + site_rel, a + 4 + repl_rel
        on = (ft & 0xFFFF) in have
        if (ft >> 16) & ALT_FLAG_NOT:
            on = not on
        if not on:
            continue
        if rlen > ilen:
            raise ImageError(f"{img.name}: ALTERNATIVE at {img.symbolize(site)}: replacement "
                             f"({rlen} bytes) longer than the site ({ilen})")
        rname, roff = where(repl, rlen)
        new = bytearray(owner[rname].data[roff:roff + rlen])
        if rlen >= 5 and new[0] in (0xE8, 0xE9):
            rel = struct.unpack_from("<i", new, 1)[0] + (repl - site)
            struct.pack_into("<i", new, 1, rel)
        sname, soff = where(site, ilen)
        code[sname][soff:soff + ilen] = new + b"\x90" * (ilen - rlen)
        patched += 1
    sections = tuple(replace(s, data=bytes(code[s.name])) for s in img.sections)
    return replace(img, sections=sections), patched


def read_input(path: str, what: str) -> bytes:
    """A built input's bytes, with a one-line error if it cannot be read."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file ({what})") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({what}): {e.strerror}") from None


def _era_of(img: Image, forced: str | None,
            known: frozenset[str] = frozenset()) -> tuple[Era, list[str]]:
    """The era whose image marks ``img`` carries (``--era`` overrides); ``known``: the
    routines of ``emu.kernel.conventions.KNOWN`` the whole file defines (a vmlinux window
    holds only the routine it runs)."""
    if forced is not None:
        return get_era(forced), ["forced by --era"]
    m = ImageMarks(handler_encoding=img.encoding is Encoding.HANDLER,
                   types=frozenset(e.type for e in img.extable),
                   sections=frozenset(s.name for s in img.sections),
                   symbols=frozenset(img.symbols) | known)
    hit = sniff("image", m)
    if hit is None:
        era = default_era()
        return era, [f"type/data __ex_table; era {era.key} rules by default"]
    era, why = hit
    return era, [why]


def _detection(image: Image, era: Era, evidence: list[str], forced: bool) -> Detection:
    """What a built image offers: the routines of ``emu.kernel.conventions.KNOWN`` in it."""
    syms = [s.name for s in image.functions()] + [
        n for n in image.symbols if n not in {f.name for f in image.functions()}]
    has = set(syms)
    kind = ("copy_user" if any(n.startswith(("copy_user", "rep_movs", "__copy_user"))
                               for n in syms) else
            "copy_mc" if any(n.startswith("copy_mc") for n in syms) else
            "getuser" if has & GET_USER_NAMES else
            "putuser" if has & PUT_USER_NAMES else
            "clear_user" if has & CLEAR_NAMES else "unknown")
    return Detection(kind, era, tuple(KNOWN[n] for n in syms if n in KNOWN), tuple(evidence),
                     forced)


def _load(loader, data, name: str, era: Era, keep: tuple[str, ...]) -> Image:  # type: ignore[no-untyped-def]
    if loader is load_object:
        return load_object(data, encoding=era.encoding, layout_id=era.ex_layout, name=name)
    return load_linked(data, encoding=era.encoding, layout_id=era.ex_layout, name=name,
                       keep=keep)


def built_target(path: str, *, linked: bool, cpu: frozenset[str], era: str | None = None,
                 routine: str | None = None, count_insns: bool = False,
                 severity: Severity | None = None,
                 contents: bytes | LinkedFile | None = None) -> Target:
    """Load ``path`` (a .o, or a vmlinux if ``linked``) and configure it for its era.

    The extable encoding is tried as handler pointers first (a relocation or pointer in
    the third word), then as data; the era then follows from the entries and symbols.

    Args:
        contents: the file's contents instead of reading ``path`` (an object's bytes, a
            ``LinkedFile`` or a ``LinkedSlice``): how a cluster worker, which does not have
            the file, builds it from what the client sent (``emu.build.shipping``).

    Raises:
        InputError: the file cannot be read.
        ImageError: it is not a usable object / linked image in either encoding.
    """
    name = Path(path).name
    data: object
    if contents is not None:
        data = LinkedFile(contents, name) if linked and isinstance(contents, bytes) else contents
    elif linked:
        data = open_linked(path)
    else:
        data = read_input(path, "--object")
    loader = load_linked if linked else load_object
    keep: tuple[str, ...] = (routine,) if routine else tuple(KNOWN)
    first_error: ImageError | None = None
    version = kernel_version(data) if isinstance(data, LinkedFile) else None
    order = (Encoding.HANDLER, Encoding.DATA)
    if version is not None and version.version >= (5, 16):
        order = (Encoding.DATA, Encoding.HANDLER)    # the banner says: no handler pointers
    guesses = [next(e for e in ERAS.values() if e.encoding is enc) for enc in order]
    for guess in guesses:                     # handler encoding, then data encoding
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
    # (filter/map: iterated in C, ~18 ms over 6.12's 199k symbols instead of ~80)
    known = (frozenset(filter(KNOWN.__contains__, map(itemgetter(0), data.symbols())))
             if isinstance(data, LinkedFile) else frozenset())
    chosen, evidence = _era_of(img, era, known)
    if (chosen.encoding, chosen.ex_layout) != (guess.encoding, guess.ex_layout):
        img = _load(loader, data, name, chosen, keep)
    if isinstance(data, LinkedFile):
        img, rep = boot.patch(img, data, version, cpu)
        evidence = [*evidence, *rep.evidence()]
    else:
        img, patched = apply_alternatives(img, cpu)
        if patched or any(s.name == ".altinstructions" for s in img.sections):
            evidence = [*evidence, f"{patched} ALTERNATIVE site(s) patched for this CPU"]
    det = _detection(img, chosen, evidence, era is not None)
    rules = None
    if severity is None and era is None and version is not None:
        # the image's release, not the era of its copy routine: a stable kernel carries
        # later #MC fixes (Debian 6.1.192 has the 2025 rules); ``emu map`` runs the image's
        # own error_context() instead, which needs the whole image
        rules = MceRules(release_rules(version),
                         f"{version.describe()}: the table of releases and stable backports")
    t = Target(img, Settings.of(chosen, severity, rules), cpu, catalog=det, era=chosen,
               detection=det, count_insns=count_insns)
    t.version = version          # type: ignore[attr-defined]  # the image's linux_banner
    return t


def vmlinux_cache_dir() -> Path:
    """Where parsed vmlinux symbol tables are kept, by build-id."""
    from emu.build.assemble import cache_dir
    return cache_dir() / "vmlinux"


def open_linked(path: str) -> LinkedFile:
    """Map a vmlinux (symbols cached by build-id in ``vmlinux_cache_dir``).

    Raises:
        InputError: the file cannot be opened.
        ImageError: not a linked x86-64 ELF image.
    """
    return LinkedFile(path, Path(path).name, vmlinux_cache_dir())


def banner_span(addr: int, size: int) -> tuple[int, int]:
    """(address, size) of what ``kernel_version`` reads of a ``linux_banner`` symbol."""
    return addr, max(min(size, 512), 1)


def kernel_version(lf: LinkedFile) -> KernelVersion | None:
    """The image's ``linux_banner`` ("Linux version ..."), parsed; None without one."""
    for n, a, size, _k, _g in lf.symbols():
        if n == "linux_banner":
            try:
                raw = lf.read(*banner_span(a, size))
            except ImageError:
                return None
            return parse_banner(raw.split(b"\0", 1)[0].decode("latin-1"))
    return None

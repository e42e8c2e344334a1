"""What every subcommand shares: number parsing, the case options, the source options that
become a ``Spec``, the #MC-rules option, and safe output files.

One convention for every subcommand module (``run``, ``policy``, ``sweep``, ``check``):
``register(sub)`` adds its parsers, each with ``set_defaults(func=...)``; a command is
``func(args, out) -> exit code``; sources go through ``specs()`` / ``spec()`` into
``emu.build.resolve`` and nowhere else.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from emu.build.resolve import Spec, parse_spec
from emu.build.sources import COPY_USER
from emu.core.machine import Buffers
from emu.errors import InputError, UsageError
from emu.kernel.conventions import CONVENTIONS, Convention, Oracle
from emu.kernel.eras import ERAS
from emu.kernel.severity import Severity


def to_int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None


def positive(text: str) -> int:
    n = to_int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"'{text}' must be at least 1")
    return n


def offsets(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(x, 0) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma list of offsets") from None
    if not out:
        raise argparse.ArgumentTypeError(f"'{text}' names no offset")
    return out


def case_args(p: argparse.ArgumentParser) -> None:
    """One case: length, alignments, faults, direction, CPU, routine, JSON."""
    p.add_argument("--len", dest="length", type=to_int, default=4096, help="bytes to copy")
    p.add_argument("--src-align", type=to_int, default=0, help="source offset in its page window")
    p.add_argument("--dst-align", type=to_int, default=0, help="destination offset")
    p.add_argument("--poison", type=offsets, default=(),
                   help="source offsets whose 64-byte line is poisoned (#MC), comma list")
    p.add_argument("--unmapped", type=offsets, default=(),
                   help="user-buffer offsets whose page is not present (#PF), comma list")
    p.add_argument("--direction", choices=("from", "to"), default="from",
                   help="copy from user (default) or to user")
    p.add_argument("--cpu", default="none",
                   help="CPU features: none, rep_good, erms, fsrm, or a list like REP_GOOD,ERMS")
    p.add_argument("--routine", help="call this routine instead of the CPU's choice")
    p.add_argument("--convention", choices=tuple(CONVENTIONS), metavar="CONVENTION",
                   help="how to call a --routine emu does not know: "
                   + "; ".join(f"{c.name}: {c.describe()}" for c in CONVENTIONS.values())
                   + ". Copy conventions take two buffers (--direction says which is user "
                   "memory); the others one user buffer, placed by --src-align and addressed "
                   "by --poison and --unmapped")
    p.add_argument("--json", action="store_true", help="print JSON")


def store_note(conv: Convention, poison: tuple[int, ...]) -> str:
    """The remark for --poison on a routine that only stores to its user buffer."""
    if not poison or conv.oracle not in (Oracle.CLEAR, Oracle.PUT_USER):
        return ""
    return "no #MC: the poisoned line is only stored to, and a store does not consume poison"


def buffers(a: argparse.Namespace) -> Buffers:
    return Buffers(direction=a.direction, length=a.length, src_align=a.src_align,
                   dst_align=a.dst_align, poison=tuple(a.poison), unmapped=tuple(a.unmapped))


SPEC_HELP = ("an era key (A-F), a .S file, debian:6.1 / debian:6.12, a revision with --tree "
             "(REV or REV:PATH), a built .o, or vmlinux:FILE")


def source_args(p: argparse.ArgumentParser, *, built: bool = True, era_help: str | None = None
                ) -> None:
    """The options that, with the positional spec(s), name sources (``emu.build.resolve``)."""
    p.add_argument("--era", help=era_help or "era whose rules apply to a kernel file instead "
                   "of the detected one")
    p.add_argument("--tree", metavar="DIR",
                   help="a kernel git tree: sources are revisions, read with git show REV:PATH")
    p.add_argument("--rev", metavar="REV",
                   help="(run) revision of --tree; the positional is then the path in the tree")
    p.add_argument("--file", metavar="PATH", default=None,
                   help=f"file inside --tree or a debian: source (default {COPY_USER})")
    p.add_argument("--patch", metavar="FILE", action="append", default=[],
                   help="apply an mbox (like git am) or a plain diff (like git apply) first; "
                        "repeat for a series, applied in order")
    if built:
        p.add_argument("--object", metavar="FILE.o", help="a built relocatable object (kbuild "
                       ".o) instead of a source (as a variant: name FILE.o)")
        p.add_argument("--vmlinux", metavar="FILE", help="a linked kernel image with symbols "
                       "(as a variant: vmlinux:FILE)")
    p.add_argument("--assembler", default="gas", help="assembler backend: gas (default) "
                   "or keystone")


def _file_for(a: argparse.Namespace, text: str | None, several: bool) -> str | None:
    """``--file`` for one of several variants: only the kinds that hold files use it."""
    f = getattr(a, "file", None)
    if f and several and not getattr(a, "tree", None) and not (text or "").startswith("debian:"):
        return None
    return f


def spec(a: argparse.Namespace, text: str | None, *, patches: bool = True,
         use_era: bool = True, several: bool = False) -> Spec:
    """One positional spec plus the source options → a ``Spec`` (``use_era``: ``--era``
    overrides the source's rules; ``check`` reads ``--era`` itself)."""
    return parse_spec(text, tree=getattr(a, "tree", None), rev=getattr(a, "rev", None),
                      file=_file_for(a, text, several),
                      patches=tuple(getattr(a, "patch", ()) or ()) if patches else (),
                      era=getattr(a, "era", None) if use_era else None,
                      assembler=getattr(a, "assembler", "gas"),
                      obj=getattr(a, "object", None), vmlinux=getattr(a, "vmlinux", None))


def specs(a: argparse.Namespace, texts: list[str] | None, *, patches: bool = True) -> list[Spec]:
    """Several variant specs (``diff``, ``sweep``, ``fuzz``); none given means every era.

    ``--era`` applies to kernel files; with only era keys it would change nothing and is
    refused (``parse_spec``).  ``--object``/``--vmlinux`` add a variant.
    """
    if getattr(a, "rev", None):
        raise UsageError("--rev applies to emu run; here name revisions as variants with --tree")
    texts = list(texts or [])
    extra = [s for s in (getattr(a, "object", None),
                         f"vmlinux:{a.vmlinux}" if getattr(a, "vmlinux", None) else None) if s]
    if not texts and not extra:
        if getattr(a, "tree", None):
            raise UsageError("--tree needs revisions to compare (e.g. v5.9 v5.17 v6.4)")
        texts = list(ERAS)
    era = getattr(a, "era", None)
    tree = getattr(a, "tree", None)
    keys = {x for x in texts if not tree and x.upper() in ERAS and not Path(x).suffix
            and not Path(x).exists()}
    if era is not None and texts and len(keys) == len(texts) and not extra:
        raise UsageError(f"--era {era} changes nothing here: every variant is an era key, "
                         "which uses its own rules (give .S files to judge them by other rules)")
    return [parse_spec(x, tree=tree, file=_file_for(a, x, True),
                       patches=tuple(getattr(a, "patch", ()) or ()) if patches else (),
                       era=None if x in keys else era, assembler=getattr(a, "assembler", "gas"))
            for x in texts + extra]


RULES = {s.value: s for s in Severity}


def rules(text: str | None) -> Severity | None:
    """``--mce-rules`` → severity rules (None: each source's own)."""
    if text is None:
        return None
    key = text.strip().lower()
    key = {"5.9": "v5.9", "5.10": "v5.10", "5.16": "v5.16", "5.17": "v5.17",
           "v2025": "2025"}.get(key, key)
    if key not in RULES:
        raise UsageError(f"unknown --mce-rules '{text}' (known: {', '.join(RULES)})")
    return RULES[key]


def fmt_offsets(offs: tuple[int, ...]) -> str:
    return ",".join(f"{o:#x}" for o in offs) or "-"


def write_atomic(path: str, text: str, force: bool, what: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same directory.

    Without ``force`` an existing file is never replaced (the final step is a hard link,
    which fails if the name exists).  Only a regular file is ever replaced.

    Raises:
        UsageError: the file exists and ``force`` is not set, or it is not a regular file.
        InputError: the directory cannot be written.
    """
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{path}: is a directory ({what})")
    if p.exists() and not p.is_file():
        raise UsageError(f"{path}: not a regular file; emu replaces only regular files "
                         f"({what})")
    if p.exists() and not force:
        raise UsageError(f"{path} exists; use --force to replace it ({what})")
    d = p.parent if str(p.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=d)
    except OSError as e:
        raise InputError(f"{path}: cannot write: {e.strerror}") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if force:
            os.replace(tmp, p)
        else:
            try:
                os.link(tmp, p)
            except FileExistsError:
                raise UsageError(f"{path} exists; use --force to replace it ({what})") from None
            except OSError as e:
                raise InputError(f"{path}: cannot write: {e.strerror}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
